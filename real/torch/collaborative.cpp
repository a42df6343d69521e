#include "real/torch/collaborative.hpp"

#include <c10/util/string_utils.h>

namespace apiary::real {

std::vector<float> flat(const std::vector<torch::Tensor>& ts) {
  std::vector<float> out;
  for (const auto& t : ts) {
    const torch::Tensor c = t.detach().to(torch::kCPU, torch::kFloat).contiguous();  // off the device: the wire's copy
    out.insert(out.end(), c.data_ptr<float>(), c.data_ptr<float>() + c.numel());
  }
  return out;
}

void unflatten_into(std::span<const float> flat, const std::vector<torch::Tensor>& dst) {
  torch::NoGradGuard no_grad;
  std::size_t at = 0;
  for (auto t : dst) {
    t.copy_(torch::from_blob(const_cast<float*>(flat.data()) + at, t.sizes(), torch::kFloat));
    at += static_cast<std::size_t>(t.numel());
  }
}

namespace {

averaging::TensorSchema schema_of(const std::vector<torch::Tensor>& params) {
  averaging::TensorSchema s;
  for (const auto& p : params) s.shapes.push_back(p.sizes().vec());
  return s;
}

std::vector<torch::Tensor> all_params(const torch::optim::Optimizer& opt) {
  std::vector<torch::Tensor> out;
  for (const auto& g : opt.param_groups())
    for (const auto& p : g.params()) out.push_back(p);
  return out;
}

std::string key_of(const torch::Tensor& p) { return c10::guts::to_string(p.unsafeGetTensorImpl()); }

enum class Kind { kNone, kSgd, kAdam, kAdamW };

Kind kind_of(const torch::optim::Optimizer& opt) {
  if (auto* sgd = dynamic_cast<const torch::optim::SGD*>(&opt))
    return static_cast<const torch::optim::SGDOptions&>(sgd->defaults()).momentum() != 0 ? Kind::kSgd : Kind::kNone;
  if (dynamic_cast<const torch::optim::Adam*>(&opt)) return Kind::kAdam;
  if (dynamic_cast<const torch::optim::AdamW*>(&opt)) return Kind::kAdamW;
  return Kind::kNone;
}

template <class State>
void adam_get(torch::optim::Optimizer& opt, std::vector<torch::Tensor>& moments1, std::vector<torch::Tensor>& moments2,
              std::vector<torch::Tensor>& steps) {
  for (const auto& p : all_params(opt)) {
    auto it = opt.state().find(key_of(p));
    auto* st = it == opt.state().end() ? nullptr : static_cast<State*>(it->second.get());
    moments1.push_back(st && st->exp_avg().defined() ? st->exp_avg() : torch::zeros_like(p));
    moments2.push_back(st && st->exp_avg_sq().defined() ? st->exp_avg_sq() : torch::zeros_like(p));
    steps.push_back(torch::tensor(static_cast<float>(st ? st->step() : 0)));
  }
}

template <class State>
void adam_set(torch::optim::Optimizer& opt, std::span<const float> flat) {
  const auto params = all_params(opt);
  std::size_t at = 0, total = 0;
  for (const auto& p : params) total += static_cast<std::size_t>(p.numel());
  for (std::size_t i = 0; i < params.size(); ++i) {
    const auto& p = params[i];
    const auto n = static_cast<std::size_t>(p.numel());
    auto st = std::make_unique<State>();
    st->exp_avg(torch::from_blob(const_cast<float*>(flat.data()) + at, p.sizes(), torch::kFloat).to(p.options(), false, true));
    st->exp_avg_sq(
        torch::from_blob(const_cast<float*>(flat.data()) + total + at, p.sizes(), torch::kFloat).to(p.options(), false, true));
    st->step(static_cast<std::int64_t>(std::lround(flat[2 * total + i])));
    opt.state()[key_of(p)] = std::move(st);
    at += n;
  }
}

}  // namespace

averaging::TensorSchema optimizer_state_schema(const torch::optim::Optimizer& opt) {
  averaging::TensorSchema s;
  const auto params = all_params(opt);
  switch (kind_of(opt)) {
    case Kind::kNone: break;
    case Kind::kSgd:
      for (const auto& p : params) s.shapes.push_back(p.sizes().vec());
      break;
    case Kind::kAdam:
    case Kind::kAdamW:
      for (int twice = 0; twice < 2; ++twice)
        for (const auto& p : params) s.shapes.push_back(p.sizes().vec());
      for (std::size_t i = 0; i < params.size(); ++i) s.shapes.push_back({});
      break;
  }
  return s;
}

std::vector<float> get_optimizer_state(torch::optim::Optimizer& opt) {
  std::vector<torch::Tensor> a, b, steps;
  switch (kind_of(opt)) {
    case Kind::kNone: return {};
    case Kind::kSgd:
      for (const auto& p : all_params(opt)) {
        auto it = opt.state().find(key_of(p));
        auto* st = it == opt.state().end() ? nullptr : static_cast<torch::optim::SGDParamState*>(it->second.get());
        a.push_back(st && st->momentum_buffer().defined() ? st->momentum_buffer() : torch::zeros_like(p));
      }
      return flat(a);
    case Kind::kAdam: adam_get<torch::optim::AdamParamState>(opt, a, b, steps); break;
    case Kind::kAdamW: adam_get<torch::optim::AdamWParamState>(opt, a, b, steps); break;
  }
  a.insert(a.end(), b.begin(), b.end());
  a.insert(a.end(), steps.begin(), steps.end());
  return flat(a);
}

void set_optimizer_state(torch::optim::Optimizer& opt, std::span<const float> flat) {
  if (flat.size() != optimizer_state_schema(opt).total())
    throw std::invalid_argument("optimizer state has " + std::to_string(flat.size()) + " values, the optimizer " +
                                std::to_string(optimizer_state_schema(opt).total()));
  switch (kind_of(opt)) {
    case Kind::kNone: return;
    case Kind::kSgd: {
      std::size_t at = 0;
      for (const auto& p : all_params(opt)) {
        auto st = std::make_unique<torch::optim::SGDParamState>();
        st->momentum_buffer(torch::from_blob(const_cast<float*>(flat.data()) + at, p.sizes(), torch::kFloat).to(p.options(), false, true));
        opt.state()[key_of(p)] = std::move(st);
        at += static_cast<std::size_t>(p.numel());
      }
      return;
    }
    case Kind::kAdam: adam_set<torch::optim::AdamParamState>(opt, flat); return;
    case Kind::kAdamW: adam_set<torch::optim::AdamWParamState>(opt, flat); return;
  }
}

TorchCollaborative::TorchCollaborative(torch::nn::Module& model, torch::optim::Optimizer& optimizer, Runtime& rt,
                                       Rpc& rpc, dht::DhtNode& dht, dht::Identity identity,
                                       optim::CollaborativeConfig config)
    : params_(model.parameters()), optimizer_(optimizer) {
  config.apply_sgd = false;  // the torch optimizer steps
  config.momentum = 0;
  collab_ = std::make_unique<optim::CollaborativeOptimizer>(rt, rpc, dht, std::move(identity), schema_of(params_),
                                                            flat(params_), std::move(config));
  collab_->set_optimizer_state(
      optimizer_state_schema(optimizer_), [this] { return get_optimizer_state(optimizer_); },
      [this](std::vector<float> s) { set_optimizer_state(optimizer_, s); });
}

void TorchCollaborative::accumulate(std::uint64_t samples) {
  if (collab_->config().local_updates) {
    collab_->parameters() = flat(params_);  // the caller stepped its optimizer: keep the copy current
    collab_->accumulate({}, samples);
    return;
  }
  std::vector<torch::Tensor> grads;
  for (const auto& p : params_) grads.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
  std::vector<float> g = flat(grads);
  for (auto& v : g) v *= static_cast<float>(samples);  // the optimizer averages over the global batch
  collab_->accumulate(g, samples);
}

Task<Result<optim::StepReport>> TorchCollaborative::step() {
  if (collab_->config().local_updates) collab_->parameters() = flat(params_);
  Result<optim::StepReport> r = co_await collab_->step();
  if (!r.ok()) {
    if (r.error().code == ErrorCode::kCancelled) unflatten_into(collab_->parameters(), params_);  // caught up
    co_return r;
  }
  if (r->resynced) {  // BTARD: the group's parameters (and optimizer state) replaced this peer's
    unflatten_into(collab_->parameters(), params_);
    co_return r;
  }
  if (!collab_->config().local_updates) {
    // The averaged gradient into .grad(), then the optimizer's own step.
    std::vector<torch::Tensor> grads;
    for (auto& p : params_) {
      if (!p.grad().defined()) p.mutable_grad() = torch::zeros_like(p);
      grads.push_back(p.mutable_grad());
    }
    unflatten_into(r->mean_gradient, grads);
    if (r->state_averaged) unflatten_into(collab_->parameters(), params_);
    optimizer_.step();
    optimizer_.zero_grad();
    collab_->parameters() = flat(params_);  // what newcomers download
  } else if (r->state_averaged) {
    unflatten_into(collab_->parameters(), params_);
  }
  co_return r;
}

Task<Result<std::uint64_t>> TorchCollaborative::join() {
  Result<std::uint64_t> r = co_await collab_->join();
  if (!r.ok()) co_return r;
  unflatten_into(collab_->parameters(), params_);
  co_return r;
}

TorchDiloco::TorchDiloco(torch::nn::Module& model, Runtime& rt, Rpc& rpc, dht::DhtNode& dht, optim::DilocoConfig config)
    : params_(model.parameters()),
      core_(std::make_unique<optim::DilocoOptimizer>(rt, rpc, dht, schema_of(params_), flat(params_), std::move(config))) {}

Task<Result<optim::OuterReport>> TorchDiloco::outer_step() {
  core_->parameters() = flat(params_);  // where the inner steps got to
  Result<optim::OuterReport> r = co_await core_->outer_step();
  if (r.ok()) unflatten_into(core_->parameters(), params_);  // the outer step's parameters
  co_return r;
}

bool GradScaler::unscale(const std::vector<torch::Tensor>& params) {
  torch::NoGradGuard no_grad;
  bool finite = true;
  for (const auto& p : params) {
    if (!p.grad().defined()) continue;
    auto g = p.grad();
    g.div_(scale_);
    if (!torch::isfinite(g).all().item<bool>()) finite = false;
  }
  return finite;
}

void GradScaler::update(bool found_inf) {
  if (found_inf) {
    scale_ *= o_.backoff_factor;
    clean_ = 0;
  } else if (++clean_ >= o_.growth_interval) {
    scale_ *= o_.growth_factor;
    clean_ = 0;
  }
}

}  // namespace apiary::real
