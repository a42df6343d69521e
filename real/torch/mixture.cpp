#include "real/torch/mixture.hpp"

#include <set>
#include <stdexcept>

#include "core/moe/quorum.hpp"
#include "real/torch/tensor.hpp"

namespace apiary::real {


using Shape = moe::TensorShape;
using moe::BackwardRequest;
using moe::ForwardRequest;
using moe::InfoRequest;
using moe::TensorReply;


RemoteExpert::RemoteExpert(Rpc& rpc, Endpoint server, std::string uid, Drive drive, Duration timeout)
    : rpc_(rpc), server_(server), uid_(std::move(uid)), drive_(std::move(drive)), timeout_(timeout) {}

ExpertInfo RemoteExpert::info() {
  InfoRequest q{uid_};
  auto task = rpc_.call<ExpertInfo>(server_, std::move(q), timeout_);
  task.start();
  drive_([&] { return task.done(); });
  if (!task.done()) throw std::runtime_error("expert " + uid_ + ": the event loop stopped before the reply");
  Result<ExpertInfo> r = task.result();
  if (!r.ok()) throw std::runtime_error("expert " + uid_ + ": " + r.error().describe());
  return *r;
}

namespace {

template <class Req>
torch::Tensor call(Rpc& rpc, const Endpoint& to, Req req, Duration timeout, const RemoteExpert::Drive& drive,
                   const std::string& uid) {
  auto task = rpc.call<TensorReply>(to, std::move(req), timeout);
  task.start();
  drive([&] { return task.done(); });
  if (!task.done()) throw std::runtime_error("expert " + uid + ": the event loop stopped before the reply");
  Result<TensorReply> r = task.result();
  if (!r.ok()) throw std::runtime_error("expert " + uid + " at " + to.to_string() + ": " + r.error().describe());
  return unpack(r->payload, r->shape.dims, r->codec);
}

struct RemoteExpertFunction : torch::autograd::Function<RemoteExpertFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, std::int64_t self) {
    ctx->save_for_backward({x});
    ctx->saved_data["self"] = self;
    auto* expert = reinterpret_cast<RemoteExpert*>(self);
    const std::int64_t keep = static_cast<std::int64_t>(expert->next_keep());
    ctx->saved_data["keep"] = keep;
    return expert->call_forward(x, static_cast<std::uint64_t>(keep));
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* self = reinterpret_cast<RemoteExpert*>(ctx->saved_data["self"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    return {self->call_backward(x, grads[0], static_cast<std::uint64_t>(ctx->saved_data["keep"].toInt())), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RemoteExpert::call_forward(const torch::Tensor& x, std::uint64_t keep) {
  const std::uint8_t c = codec_for(x);
  ForwardRequest q{uid_, shape_of(x), keep, pack(x, c), c};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

torch::Tensor RemoteExpert::call_backward(const torch::Tensor& x, const torch::Tensor& grad_output, std::uint64_t keep) {
  const std::uint8_t c = codec_for(x);
  Payload xs = pack(x, c), gs = pack(grad_output, c);
  Bytes both(xs.data().begin(), xs.data().end());
  both.insert(both.end(), gs.data().begin(), gs.data().end());
  BackwardRequest q{uid_, shape_of(x), shape_of(grad_output), keep, Payload::bytes(std::move(both)), c, xs.size()};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

// An expert's output computed already (in the layer's parallel round of calls), as a node of the
// autograd graph whose backward asks that expert for the input gradients.
struct PrecomputedRemoteFunction : torch::autograd::Function<PrecomputedRemoteFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor out,
                               std::int64_t self, std::int64_t keep) {
    ctx->save_for_backward({x});
    ctx->saved_data["self"] = self;
    ctx->saved_data["keep"] = keep;
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* expert = reinterpret_cast<RemoteExpert*>(ctx->saved_data["self"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    torch::Tensor gx;
    try {
      gx = expert->call_backward(x, grads[0], static_cast<std::uint64_t>(ctx->saved_data["keep"].toInt()));
    } catch (const std::runtime_error&) {
      gx = torch::zeros_like(x);  // the expert failed after answering: it contributes no gradient
      expert->count_backward_failure();
    }
    return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

Task<Result<TensorReply>> RemoteExpert::start_forward(torch::Tensor x, std::uint64_t keep, Duration timeout) {
  const std::uint8_t c = codec_for(x);
  ForwardRequest q{uid_, shape_of(x), keep, pack(x, c), c};
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return r;
}

namespace {

Result<torch::Tensor> to_tensor(Result<TensorReply>& r) {
  if (!r.ok()) return r.error();
  std::optional<torch::Tensor> t;
  std::string why;
  try {
    t = unpack(r->payload, r->shape.dims, r->codec);
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (!t) return Error{ErrorCode::kBadMessage, "the reply is not a tensor: " + why};
  return *t;
}

}  // namespace

Task<Result<torch::Tensor>> RemoteExpert::forward_async(torch::Tensor x, std::uint64_t keep, Duration timeout) {
  const std::uint8_t c = codec_for(x);
  ForwardRequest q{uid_, shape_of(x), keep, pack(x, c), c};
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return to_tensor(r);
}

Task<Result<torch::Tensor>> RemoteExpert::backward_async(torch::Tensor x, torch::Tensor grad_output, std::uint64_t keep,
                                                         Duration timeout) {
  const std::uint8_t c = codec_for(x);
  Payload xs = pack(x, c), gs = pack(grad_output, c);
  Bytes both(xs.data().begin(), xs.data().end());
  both.insert(both.end(), gs.data().begin(), gs.data().end());
  BackwardRequest q{uid_, shape_of(x), shape_of(grad_output), keep, Payload::bytes(std::move(both)), c, xs.size()};
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return to_tensor(r);
}

RemoteMixtureOfExpertsImpl::RemoteMixtureOfExpertsImpl(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MoeOptions options,
                                                       RemoteExpert::Drive drive)
    : rt_(rt),
      rpc_(rpc),
      opt_(std::move(options)),
      drive_(std::move(drive)),
      finder_(rt, dht, opt_.prefix, opt_.grid,
              moe::FinderConfig{8, 3, std::chrono::seconds(30),
                                opt_.cache_ttl}) {
  if (opt_.switch_mode) {
    opt_.per_sample = true;
    opt_.k_best = 1;
    opt_.k_min = std::min<std::size_t>(opt_.k_min, 1);
  }
  std::int64_t scores = 0;
  for (auto g : opt_.grid) scores += g;
  gate = register_module("gate", torch::nn::Linear(opt_.dim, scores));
}

torch::Tensor RemoteMixtureOfExpertsImpl::forward(torch::Tensor x) {
  if (x.dim() != 2 || x.size(1) != opt_.dim)
    throw std::invalid_argument("the mixture takes [batch, " + std::to_string(opt_.dim) + "] inputs");
  const torch::Tensor logits = gate(x);  // [batch, sum(grid)]
  std::vector<torch::Tensor> per_dim;
  std::int64_t at = 0;
  for (auto g : opt_.grid) {
    per_dim.push_back(logits.narrow(1, at, g));
    at += g;
  }
  if (opt_.per_sample) return forward_per_sample(x, per_dim);
  std::set<std::string> failed;
  for (std::size_t attempt = 0; attempt < std::max<std::size_t>(1, opt_.searches); ++attempt) {
    // Route the batch: the k best alive experts by the batch-mean gate scores (skipping failures).
    std::vector<std::vector<float>> mean;
    for (const auto& d : per_dim) {
      const torch::Tensor m = d.detach().mean(0).contiguous();
      mean.emplace_back(m.data_ptr<float>(), m.data_ptr<float>() + m.numel());
    }
    auto search = finder_.find_best(mean, opt_.k_best + failed.size());
    search.start();
    drive_([&] { return search.done(); });
    if (!search.done()) throw std::runtime_error("expert search did not finish");
    std::vector<moe::FoundExpert> chosen;
    for (auto& f : search.result())
      if (!failed.count(f.uid) && chosen.size() < opt_.k_best) chosen.push_back(f);

    // Call them all at once; stop waiting once k_min answered and the grace period passed.
    for (const auto& e : experts_)  // the last forward's experts whose backward failed
      if (e->backward_failures()) rt_.observer.count("moe.backward_failures", static_cast<std::int64_t>(e->backward_failures()));
    // Earlier forwards' graphs may still be back-propagated: their experts stay alive a while.
    for (auto& e : experts_) retired_.push_back(std::move(e));
    while (retired_.size() > 64) retired_.pop_front();
    experts_.clear();
    std::vector<std::uint64_t> keeps;
    for (std::size_t j = 0; j < chosen.size(); ++j) {
      experts_.push_back(std::make_unique<RemoteExpert>(rpc_, chosen[j].server, chosen[j].uid, drive_, opt_.backward_timeout));
      experts_.back()->set_codec(opt_.codec);
      keeps.push_back(experts_.back()->next_keep());
    }
    // The quorum rule (core/moe/quorum.hpp); calls still in flight when it is met are abandoned
    // with `inflight`, at the end of this attempt.
    std::vector<std::optional<torch::Tensor>> outputs(chosen.size());
    TaskScope inflight;
    const torch::Tensor input = x.detach();
    std::function<Task<Result<TensorReply>>(std::size_t)> call = [&](std::size_t j) {
      return experts_[j]->start_forward(input, keeps[j], opt_.forward_timeout);
    };
    std::function<bool(std::size_t, const Result<TensorReply>&)> accept = [&](std::size_t j, const Result<TensorReply>& r) {
      if (!r.ok()) return false;
      try {
        torch::Tensor y = unpack(r->payload, r->shape.dims, r->codec);
        if (y.sizes() != x.sizes()) return false;
        outputs[j] = std::move(y);
        return true;
      } catch (const std::invalid_argument&) {
        return false;
      }
    };
    auto quorum = moe::call_quorum<TensorReply>(rt_, inflight, chosen.size(), std::move(call), std::move(accept),
                                                moe::QuorumRule{opt_.k_min, opt_.timeout_after_k_min, opt_.forward_timeout});
    quorum.start();
    drive_([&] { return quorum.done(); });
    if (!quorum.done()) throw std::runtime_error("the expert calls did not finish");
    std::vector<std::size_t> ok;
    std::vector<torch::Tensor> outs;
    for (std::size_t j = 0; j < chosen.size(); ++j) {
      if (!outputs[j]) {
        failed.insert(chosen[j].uid);
        rt_.observer.count("moe.expert_failures");
        continue;
      }
      ok.push_back(j);
      outs.push_back(*outputs[j]);
    }
    if (ok.size() < std::min(opt_.k_min, chosen.size()) || ok.empty()) {
      rt_.observer.count("moe.researches");
      continue;
    }
    // Mix by the softmax of each sample's gate scores over the experts that answered.
    std::vector<torch::Tensor> gate_scores;
    for (auto j : ok) {
      torch::Tensor s = torch::zeros({x.size(0)}, x.options());
      for (std::size_t d = 0; d < opt_.grid.size(); ++d) {
        const auto u = moe::ExpertUid::parse(chosen[j].uid, opt_.grid);
        s = s + per_dim[d].select(1, u->coords[d]);
      }
      gate_scores.push_back(s);
    }
    const torch::Tensor weights = torch::softmax(torch::stack(gate_scores, 1), 1);  // [batch, answered]
    torch::Tensor y = torch::zeros_like(x);
    last_responders_.clear();
    for (std::size_t n = 0; n < ok.size(); ++n) {
      const auto j = ok[n];
      torch::Tensor out = PrecomputedRemoteFunction::apply(x, outs[n], reinterpret_cast<std::int64_t>(experts_[j].get()),
                                                           static_cast<std::int64_t>(keeps[j]));
      y = y + weights.select(1, static_cast<std::int64_t>(n)).unsqueeze(1) * out;
      last_responders_.push_back(chosen[j].uid);
    }
    return y;
  }
  throw std::runtime_error("fewer than " + std::to_string(opt_.k_min) + " experts answered after " +
                           std::to_string(opt_.searches) + " searches");
}

// The experts one per-sample forward called: which rows each got and where its output sits in
// the concatenated outputs. Its backward asks all of them for input gradients at once.
struct RemoteMixtureOfExpertsImpl::CallSet {
  std::vector<std::unique_ptr<RemoteExpert>> experts;
  std::vector<torch::Tensor> rows;  // int64 sample indices per expert
  std::vector<std::uint64_t> keeps;
  std::vector<std::int64_t> offsets;  // into the concatenated outputs
  Runtime* rt = nullptr;
  RemoteExpert::Drive drive;
  Duration timeout{};
};

namespace {

// y_all = the experts' outputs, concatenated; backward: every expert's backward in parallel, its
// input gradients added into the rows it served (a failed expert contributes none).
struct ParallelExpertsFunction : torch::autograd::Function<ParallelExpertsFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor y_all, std::int64_t calls) {
    ctx->save_for_backward({x});
    ctx->saved_data["calls"] = calls;
    return y_all;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* cs = reinterpret_cast<RemoteMixtureOfExpertsImpl::CallSet*>(ctx->saved_data["calls"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    const torch::Tensor g = grads[0];
    const std::size_t n = cs->experts.size();
    std::vector<std::optional<Result<torch::Tensor>>> out(n);
    std::vector<Task<void>> calls;
    for (std::size_t j = 0; j < n; ++j) {
      const std::int64_t rows = cs->rows[j].size(0);
      torch::Tensor xj = x.index_select(0, cs->rows[j]);
      torch::Tensor gj = g.narrow(0, cs->offsets[j], rows).contiguous();
      calls.push_back([](Task<Result<torch::Tensor>> t, std::optional<Result<torch::Tensor>>* o) -> Task<void> {
        *o = co_await std::move(t);
      }(cs->experts[j]->backward_async(xj, gj, cs->keeps[j], cs->timeout), &out[j]));
      calls.back().start();
    }
    const TimePoint start = cs->rt->now();
    cs->drive([&] {
      return std::all_of(out.begin(), out.end(), [](const auto& o) { return o.has_value(); }) ||
             cs->rt->now() - start >= cs->timeout;
    });
    torch::Tensor gx = torch::zeros_like(x);
    for (std::size_t j = 0; j < n; ++j) {
      if (out[j] && out[j]->ok() && (**out[j]).sizes() == torch::IntArrayRef{cs->rows[j].size(0), x.size(1)}) {
        gx.index_add_(0, cs->rows[j], **out[j]);
      } else {
        cs->rt->observer.count("moe.backward_failures");
      }
    }
    return {gx, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RemoteMixtureOfExpertsImpl::forward_per_sample(const torch::Tensor& x, const std::vector<torch::Tensor>& per_dim) {
  const std::int64_t batch = x.size(0);
  const std::size_t dims = opt_.grid.size();
  std::vector<torch::Tensor> scores_cpu;
  for (const auto& d : per_dim) scores_cpu.push_back(d.detach().to(torch::kFloat).contiguous());
  std::set<std::string> failed;
  for (std::size_t attempt = 0; attempt < std::max<std::size_t>(1, opt_.searches); ++attempt) {
    // Each sample's k best alive experts (the finder's cache makes later samples cheap).
    std::vector<std::vector<moe::FoundExpert>> routes(static_cast<std::size_t>(batch));
    for (std::int64_t b = 0; b < batch; ++b) {
      std::vector<std::vector<float>> sc;
      for (const auto& d : scores_cpu) {
        const float* p = d.data_ptr<float>() + b * d.size(1);
        sc.emplace_back(p, p + d.size(1));
      }
      auto search = finder_.find_best(std::move(sc), opt_.k_best + failed.size());
      search.start();
      drive_([&] { return search.done(); });
      if (!search.done()) throw std::runtime_error("expert search did not finish");
      for (auto& f : search.result())
        if (!failed.count(f.uid) && routes[static_cast<std::size_t>(b)].size() < opt_.k_best)
          routes[static_cast<std::size_t>(b)].push_back(f);
    }
    // Group the rows by expert and call every expert once, all at the same time.
    std::map<std::string, std::pair<Endpoint, std::vector<std::int64_t>>> by_expert;
    for (std::int64_t b = 0; b < batch; ++b)
      for (const auto& f : routes[static_cast<std::size_t>(b)]) {
        auto& e = by_expert[f.uid];
        e.first = f.server;
        e.second.push_back(b);
      }
    auto cs = std::make_shared<CallSet>();
    cs->rt = &rt_;
    cs->drive = drive_;
    cs->timeout = opt_.backward_timeout;
    std::vector<std::string> uids;
    std::vector<std::optional<Result<torch::Tensor>>> replies(by_expert.size());
    std::vector<Task<void>> calls;
    for (auto& [uid, e] : by_expert) {
      uids.push_back(uid);
      cs->experts.push_back(std::make_unique<RemoteExpert>(rpc_, e.first, uid, drive_, opt_.backward_timeout));
      cs->experts.back()->set_codec(opt_.codec);
      cs->rows.push_back(torch::tensor(e.second, torch::kLong));
      cs->keeps.push_back(cs->experts.back()->next_keep());
      torch::Tensor xe = x.detach().index_select(0, cs->rows.back());
      calls.push_back([](Task<Result<torch::Tensor>> t, std::optional<Result<torch::Tensor>>* o) -> Task<void> {
        *o = co_await std::move(t);
      }(cs->experts.back()->forward_async(xe, cs->keeps.back(), opt_.forward_timeout), &replies[uids.size() - 1]));
      calls.back().start();
    }
    auto answered = [&](std::size_t j) {
      return replies[j] && replies[j]->ok() &&
             (**replies[j]).sizes() == torch::IntArrayRef{cs->rows[j].size(0), x.size(1)};
    };
    // Enough when every sample has min(k_min, its routes) answers; then a grace period for the rest.
    auto samples_served = [&] {
      std::vector<std::size_t> got(static_cast<std::size_t>(batch), 0);
      for (std::size_t j = 0; j < uids.size(); ++j)
        if (answered(j))
          for (auto b : by_expert[uids[j]].second) ++got[static_cast<std::size_t>(b)];
      for (std::int64_t b = 0; b < batch; ++b)
        if (got[static_cast<std::size_t>(b)] < std::min(opt_.k_min, routes[static_cast<std::size_t>(b)].size())) return false;
      return true;
    };
    const TimePoint start = rt_.now();
    std::optional<TimePoint> served_at;
    drive_([&] {
      const TimePoint now = rt_.now();
      if (!served_at && samples_served()) served_at = now;
      const bool all = std::all_of(replies.begin(), replies.end(), [](const auto& r) { return r.has_value(); });
      return all || now - start >= opt_.forward_timeout || (served_at && now - *served_at >= opt_.timeout_after_k_min);
    });
    const bool enough = samples_served();
    calls.clear();  // abandons the calls still in flight
    std::vector<std::size_t> ok;
    for (std::size_t j = 0; j < uids.size(); ++j) {
      if (answered(j)) {
        ok.push_back(j);
      } else {
        failed.insert(uids[j]);
        rt_.observer.count("moe.expert_failures");
      }
    }
    if (!enough || ok.empty()) {
      rt_.observer.count("moe.researches");
      continue;
    }
    // The answering experts' outputs as one tensor whose backward calls them all in parallel.
    auto kept = std::make_shared<CallSet>();
    kept->rt = &rt_;
    kept->drive = drive_;
    kept->timeout = opt_.backward_timeout;
    std::vector<torch::Tensor> outs, rows;
    std::vector<std::vector<torch::Tensor>> coords(dims);
    std::int64_t at = 0;
    last_responders_.clear();
    for (auto j : ok) {
      kept->experts.push_back(std::move(cs->experts[j]));
      kept->rows.push_back(cs->rows[j]);
      kept->keeps.push_back(cs->keeps[j]);
      kept->offsets.push_back(at);
      at += cs->rows[j].size(0);
      outs.push_back(**replies[j]);
      rows.push_back(cs->rows[j]);
      const auto u = moe::ExpertUid::parse(uids[j], opt_.grid);
      for (std::size_t d = 0; d < dims; ++d)
        coords[d].push_back(torch::full({cs->rows[j].size(0)}, static_cast<std::int64_t>(u->coords[d]), torch::kLong));
      last_responders_.push_back(uids[j]);
    }
    if (torch::GradMode::is_enabled()) {  // a backward may come: keep its experts a while
      recent_.push_back(kept);
      while (recent_.size() > 16) recent_.pop_front();
    }
    const torch::Tensor b_idx = torch::cat(rows);
    const torch::Tensor y_all = ParallelExpertsFunction::apply(x, torch::cat(outs), reinterpret_cast<std::int64_t>(kept.get()));
    torch::Tensor w;
    if (opt_.switch_mode) {
      // The gate's probability of the chosen expert: the product of the per-dimension softmaxes.
      w = torch::ones({b_idx.size(0)}, x.options());
      torch::Tensor balance = torch::zeros({}, x.options());
      for (std::size_t d = 0; d < dims; ++d) {
        const torch::Tensor prob = torch::softmax(per_dim[d], 1);  // [batch, g_d]
        w = w * prob.index({b_idx, torch::cat(coords[d])});
        const torch::Tensor share = torch::bincount(torch::cat(coords[d]), {}, static_cast<std::int64_t>(opt_.grid[d]))
                                        .to(x.dtype()) / static_cast<double>(b_idx.size(0));
        balance = balance + static_cast<double>(opt_.grid[d]) * (share * prob.mean(0)).sum();
      }
      balance_loss_ = balance / static_cast<double>(dims);
    } else {
      // Softmax of each sample's gate scores over its experts that answered.
      torch::Tensor s = torch::zeros({b_idx.size(0)}, x.options());
      for (std::size_t d = 0; d < dims; ++d) s = s + per_dim[d].index({b_idx, torch::cat(coords[d])});
      const std::int64_t n_ok = static_cast<std::int64_t>(ok.size());
      std::vector<torch::Tensor> e_idx;
      for (std::int64_t e = 0; e < n_ok; ++e)
        e_idx.push_back(torch::full({kept->rows[static_cast<std::size_t>(e)].size(0)}, e, torch::kLong));
      const torch::Tensor ei = torch::cat(e_idx);
      torch::Tensor m = torch::full({batch, n_ok}, -std::numeric_limits<float>::infinity(), x.options());
      m = m.index_put({b_idx, ei}, s);
      w = torch::softmax(m, 1).index({b_idx, ei});
    }
    last_routes_.assign(static_cast<std::size_t>(batch), {});
    for (std::int64_t b = 0; b < batch; ++b)
      for (const auto& f : routes[static_cast<std::size_t>(b)]) last_routes_[static_cast<std::size_t>(b)].push_back(f.uid);
    return torch::zeros_like(x).index_add(0, b_idx, w.unsqueeze(1) * y_all);
  }
  throw std::runtime_error("fewer than " + std::to_string(opt_.k_min) + " experts answered every sample after " +
                           std::to_string(opt_.searches) + " searches");
}

torch::Tensor RemoteExpert::forward(torch::Tensor x) {
  return RemoteExpertFunction::apply(x, reinterpret_cast<std::int64_t>(this));
}

}  // namespace apiary::real
