#include "core/moe/mixture.hpp"

#include <algorithm>
#include <map>
#include <stdexcept>

#include "core/moe/quorum.hpp"

namespace apiary::moe {

const char* to_string(Routing r) {
  switch (r) {
    case Routing::kBatch:
      return "batch";
    case Routing::kSample:
      return "sample";
    case Routing::kSwitch:
      return "switch";
  }
  return "?";
}

std::optional<Routing> parse_routing(std::string_view text) {
  if (text == "batch") return Routing::kBatch;
  if (text == "sample") return Routing::kSample;
  if (text == "switch") return Routing::kSwitch;
  return std::nullopt;
}

MixtureRouter::MixtureRouter(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MixtureConfig config)
    : rt_(rt), rpc_(rpc), cfg_(std::move(config)), finder_(rt, dht, cfg_.prefix, cfg_.grid, cfg_.finder) {
  if (cfg_.grid.empty()) throw std::invalid_argument("a mixture needs a grid of at least one dimension");
  if (cfg_.k == 0) throw std::invalid_argument("a mixture needs k >= 1");
  if (cfg_.routing == Routing::kSwitch) {
    cfg_.k = 1;
    cfg_.k_min = std::min<std::size_t>(cfg_.k_min, 1);
  }
  for (auto g : cfg_.grid) width_ += g;
}

MixtureRouter::~MixtureRouter() { late_.destroy_all(); }

Task<std::vector<std::vector<FoundExpert>>> MixtureRouter::route(const GateScores& scores, const std::vector<std::string>& failed) {
  const std::size_t batch = scores.batch;
  auto row_scores = [&](auto score_of) {  // one row's scores, split by grid dimension
    std::vector<std::vector<float>> out;
    std::size_t at = 0;
    for (auto g : cfg_.grid) {
      std::vector<float> d(g);
      for (std::uint32_t i = 0; i < g; ++i) d[i] = score_of(at + i);
      out.push_back(std::move(d));
      at += g;
    }
    return out;
  };
  auto alive = [&](std::vector<FoundExpert> found) {
    std::vector<FoundExpert> out;
    for (auto& f : found)
      if (std::find(failed.begin(), failed.end(), f.uid) == failed.end() && out.size() < cfg_.k) out.push_back(std::move(f));
    return out;
  };
  std::vector<std::vector<FoundExpert>> routes(batch);
  if (cfg_.routing == Routing::kBatch) {
    // The batch's mean scores (in double: identical rows give exactly their own scores back).
    std::vector<std::vector<float>> mean = row_scores([&](std::size_t c) {
      double sum = 0;
      for (std::size_t b = 0; b < batch; ++b) sum += scores.values[b * width_ + c];
      return static_cast<float>(sum / static_cast<double>(batch));
    });
    std::vector<FoundExpert> found = co_await finder_.find_best(std::move(mean), cfg_.k + failed.size());
    const std::vector<FoundExpert> best = alive(std::move(found));
    for (auto& r : routes) r = best;
    co_return routes;
  }
  for (std::size_t b = 0; b < batch; ++b) {  // the finder's cache makes later samples cheap
    std::vector<std::vector<float>> mine = row_scores([&](std::size_t c) { return scores.values[b * width_ + c]; });
    std::vector<FoundExpert> found = co_await finder_.find_best(std::move(mine), cfg_.k + failed.size());
    routes[b] = alive(std::move(found));
  }
  co_return routes;
}

Task<Result<MixturePlan>> MixtureRouter::forward(GateScores scores, MixtureTensors& tensors) {
  if (scores.batch == 0 || scores.values.size() != scores.batch * width_)
    co_return Error{ErrorCode::kInvalidArgument, "gate scores: expected " + std::to_string(scores.batch) + " x " +
                                                     std::to_string(width_) + " values, got " + std::to_string(scores.values.size())};
  std::vector<std::string> failed;
  const std::size_t rounds = std::max<std::size_t>(1, cfg_.searches);
  for (std::size_t round = 0; round < rounds; ++round) {
    std::vector<std::vector<FoundExpert>> routes = co_await route(scores, failed);
    // Each chosen expert once, with the samples routed to it (in uid order).
    std::map<std::string, ExpertCall> by_uid;
    for (std::size_t b = 0; b < routes.size(); ++b)
      for (const auto& f : routes[b]) {
        ExpertCall& c = by_uid[f.uid];
        c.expert = f;
        c.rows.push_back(static_cast<std::int64_t>(b));
      }
    std::vector<ExpertCall> calls;
    for (auto& [uid, c] : by_uid) {
      c.keep = next_keep_++;
      c.slot = calls.size();
      calls.push_back(std::move(c));
    }
    std::vector<ExpertCall> sent = calls;
    std::vector<bool> ok = co_await call(std::move(sent), cfg_.k_min, tensors);
    std::vector<std::size_t> got(scores.batch, 0);
    MixturePlan plan;
    for (std::size_t j = 0; j < calls.size(); ++j) {
      if (!ok[j]) {
        failed.push_back(calls[j].expert.uid);
        rt_.observer.count("moe.expert_failures");
        continue;
      }
      for (auto b : calls[j].rows) ++got[static_cast<std::size_t>(b)];
      plan.calls.push_back(calls[j]);
    }
    bool enough = !plan.calls.empty();
    for (std::size_t b = 0; b < scores.batch && enough; ++b) enough = got[b] >= std::min(cfg_.k_min, routes[b].size());
    if (enough) {
      plan.rounds = round + 1;
      for (const auto& r : routes) {
        std::vector<std::string> uids;
        for (const auto& f : r) uids.push_back(f.uid);
        plan.routes.push_back(std::move(uids));
      }
      co_return plan;
    }
    rt_.observer.count("moe.researches");
  }
  co_return Error{ErrorCode::kTimeout, "fewer than " + std::to_string(cfg_.k_min) + " experts answered every sample after " +
                                               std::to_string(rounds) + " searches"};
}

void MixtureRouter::check_bounded(TimePoint t0, Duration frozen0, Duration timeout) {
  // Invariant: every expert call is answered or failed within its timeout (timers may fire a
  // little late in a live process: 100 ms of grace), not counting time this peer was frozen (its
  // own timers could not fire then).
  if (rt_.now() - t0 - (rt_.clock.frozen() - frozen0) > timeout + std::chrono::milliseconds(100)) {
    rt_.observer.count("invariant.moe.call_over_timeout");
    rt_.observer.log(LogLevel::kWarn, "invariant", "expert calls took " + format_duration(rt_.now() - t0) + ", over their timeout " +
                                                       format_duration(timeout));
  }
}

Task<std::vector<bool>> MixtureRouter::call(std::vector<ExpertCall> calls, std::size_t k_min, MixtureTensors& tensors) {
  // Which calls each sample waits on, for the rule "every sample has min(k_min, its experts)".
  std::map<std::int64_t, std::vector<std::size_t>> of_sample;
  for (std::size_t j = 0; j < calls.size(); ++j)
    for (auto b : calls[j].rows) of_sample[b].push_back(j);
  std::function<Task<Result<TensorReply>>(std::size_t)> send = [this, &calls, &tensors](std::size_t j) {
    MixtureTensors::Body in = tensors.inputs(calls[j].rows);
    ForwardRequest q{calls[j].expert.uid, std::move(in.shape), calls[j].keep, std::move(in.payload), in.codec};
    return rpc_.call<TensorReply>(calls[j].expert.server, std::move(q), cfg_.forward_timeout);
  };
  std::vector<bool> usable(calls.size(), false);  // answered, and the answer decodes to the right shape
  std::function<bool(std::size_t, const Result<TensorReply>&)> accept = [this, &calls, &tensors, &usable](std::size_t j,
                                                                                                          const Result<TensorReply>& r) {
    usable[j] = r.ok() && answered_by_owner(rt_, calls[j].expert) && tensors.take_output(j, calls[j].rows, *r);
    return usable[j];
  };
  QuorumRule rule{k_min, cfg_.grace, cfg_.forward_timeout, {}};
  rule.enough = [of_sample, k_min](const std::vector<bool>& ok) {
    for (const auto& [b, js] : of_sample) {
      std::size_t n = 0;
      for (auto j : js) n += ok[j] ? 1 : 0;
      if (n < std::min(k_min, js.size())) return false;
    }
    return true;
  };
  const TimePoint t0 = rt_.now();
  const Duration frozen0 = rt_.clock.frozen();
  co_await call_quorum<TensorReply>(rt_, late_, calls.size(), std::move(send), std::move(accept), std::move(rule));
  check_bounded(t0, frozen0, cfg_.forward_timeout);
  co_return usable;
}

Task<std::vector<bool>> MixtureRouter::backward(MixturePlan plan, MixtureTensors& tensors) {
  const std::size_t n = plan.calls.size();
  std::vector<ExpertCall>& calls = plan.calls;
  std::function<Task<Result<TensorReply>>(std::size_t)> send = [this, &calls, &tensors](std::size_t j) {
    MixtureTensors::Body in = tensors.inputs(calls[j].rows);
    MixtureTensors::Body g = tensors.output_grads(j, calls[j].rows);
    BackwardRequest q =
        backward_request(calls[j].expert.uid, std::move(in.shape), in.payload, std::move(g.shape), g.payload, calls[j].keep, in.codec);
    return rpc_.call<TensorReply>(calls[j].expert.server, std::move(q), cfg_.backward_timeout);
  };
  std::vector<bool> usable(n, false);
  std::function<bool(std::size_t, const Result<TensorReply>&)> accept = [this, &calls, &tensors, &usable](std::size_t j,
                                                                                                          const Result<TensorReply>& r) {
    usable[j] = r.ok() && answered_by_owner(rt_, calls[j].expert) && tensors.take_input_grad(j, calls[j].rows, *r);
    return usable[j];
  };
  const QuorumRule rule{n, Duration::zero(), cfg_.backward_timeout, {}};
  const TimePoint t0 = rt_.now();
  const Duration frozen0 = rt_.clock.frozen();
  co_await call_quorum<TensorReply>(rt_, late_, n, std::move(send), std::move(accept), rule);
  check_bounded(t0, frozen0, cfg_.backward_timeout);
  for (std::size_t j = 0; j < n; ++j)
    if (!usable[j]) rt_.observer.count("moe.backward_failures");
  co_return usable;
}

}  // namespace apiary::moe
