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
  std::size_t at = 0;
  {
    torch::NoGradGuard no_grad;
    for (auto& p : params_) {
      const auto n = static_cast<std::size_t>(p.numel());
      torch::Tensor g = torch::from_blob(r->mean_gradient.data() + at, p.sizes(), torch::kFloat).clone();
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      p.mutable_grad().copy_(g);
      at += n;
    }
  }
  optimizer_.step();
  optimizer_.zero_grad();
  collab_->parameters() = flat(params_);  // what newcomers download
  co_return r;
}

Task<Result<std::uint64_t>> TorchCollaborative::join() {
  Result<std::uint64_t> r = co_await collab_->join();
  if (!r.ok()) co_return r;
  std::size_t at = 0;
  torch::NoGradGuard no_grad;
  for (auto& p : params_) {
    p.copy_(torch::from_blob(collab_->parameters().data() + at, p.sizes(), torch::kFloat));
    at += static_cast<std::size_t>(p.numel());
  }
  co_return r;
}

}  // namespace apiary::real
