#include "real/torch_collaborative.hpp"

namespace apiary::real {

namespace {

averaging::TensorSchema schema_of(const std::vector<torch::Tensor>& params) {
  averaging::TensorSchema s;
  for (const auto& p : params) s.shapes.push_back(p.sizes().vec());
  return s;
}

std::vector<float> flat(const std::vector<torch::Tensor>& ts) {
  std::vector<float> out;
  for (const auto& t : ts) {
    const torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
    out.insert(out.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
  return out;
}

// Copies consecutive slices of `flat` into the tensors of `dst`, in order.
void unflatten_into(std::vector<float>& flat, const std::vector<torch::Tensor>& dst) {
  torch::NoGradGuard no_grad;
  std::size_t at = 0;
  for (auto t : dst) {
    t.copy_(torch::from_blob(flat.data() + at, t.sizes(), torch::kFloat));
    at += static_cast<std::size_t>(t.numel());
  }
}

}  // namespace

TorchCollaborative::TorchCollaborative(torch::nn::Module& model, torch::optim::Optimizer& optimizer, Runtime& rt,
                                       Rpc& rpc, dht::DhtNode& dht, dht::Identity identity,
                                       optim::CollaborativeConfig config)
    : params_(model.parameters()), optimizer_(optimizer) {
  config.apply_sgd = false;  // the torch optimizer steps
  collab_ = std::make_unique<optim::CollaborativeOptimizer>(rt, rpc, dht, std::move(identity), schema_of(params_),
                                                            flat(params_), std::move(config));
}

void TorchCollaborative::accumulate(std::uint64_t samples) {
  std::vector<torch::Tensor> grads;
  for (const auto& p : params_) grads.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
  std::vector<float> g = flat(grads);
  for (auto& v : g) v *= static_cast<float>(samples);  // the optimizer averages over the global batch
  collab_->accumulate(g, samples);
}

Task<Result<optim::StepReport>> TorchCollaborative::step() {
  Result<optim::StepReport> r = co_await collab_->step();
  if (!r.ok()) co_return r;
  // The averaged gradient into .grad(), then the optimizer's own step.
  std::vector<torch::Tensor> grads;
  for (auto& p : params_) {
    if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
    grads.push_back(p.mutable_grad());
  }
  unflatten_into(r->mean_gradient, grads);
  optimizer_.step();
  optimizer_.zero_grad();
  collab_->parameters() = flat(params_);  // what newcomers download
  co_return r;
}

Task<Result<std::uint64_t>> TorchCollaborative::join() {
  Result<std::uint64_t> r = co_await collab_->join();
  if (!r.ok()) co_return r;
  unflatten_into(collab_->parameters(), params_);
  co_return r;
}

}  // namespace apiary::real
