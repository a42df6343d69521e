#include "harness/workloads/dmoe.hpp"

#include "core/moe/quorum.hpp"
#include "harness/runner.hpp"

#include <algorithm>

namespace apiary {

namespace {

// A [rows, hidden] float32 tensor on the wire, size-only: its bytes are modelled, not moved.
moe::TensorShape rows_of(std::uint32_t rows, std::uint32_t hidden) { return moe::TensorShape{{rows, hidden}}; }
Payload modelled(const moe::TensorShape& shape) { return Payload::size_only(static_cast<std::uint64_t>(shape.elements()) * 4); }

std::string layer_prefix(std::uint32_t layer) { return "ffn" + std::to_string(layer); }

}  // namespace

std::vector<std::pair<moe::ExpertUid, std::uint32_t>> dmoe_experts(const DmoeSimSpec& spec, std::uint32_t layer) {
  std::vector<std::pair<moe::ExpertUid, std::uint32_t>> out;
  std::size_t n = 1;
  for (std::uint32_t d = 0; d < spec.grid_dims; ++d) n *= spec.grid_side;
  for (std::size_t e = 0; e < n; ++e) {
    moe::ExpertUid u{layer_prefix(layer), {}};
    std::size_t rest = e;
    for (std::uint32_t d = 0; d < spec.grid_dims; ++d) {
      u.coords.insert(u.coords.begin(), static_cast<std::uint32_t>(rest % spec.grid_side));
      rest /= spec.grid_side;
    }
    out.emplace_back(u, static_cast<std::uint32_t>((e + layer) % spec.servers));
  }
  return out;
}

DmoeServerApp::DmoeServerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const DmoeSimSpec& spec, std::uint32_t index,
                             double forward_speed, double backward_speed)
    : rt_(rt), dht_(dht), spec_(spec), index_(index), fwd_(forward_speed), bwd_(backward_speed) {
  for (std::uint32_t l = 0; l < spec.layers; ++l)
    for (auto& [uid, server] : dmoe_experts(spec, l))
      if (server == index) mine_.push_back(uid);
  // The expert protocol (core/moe/protocol.hpp), answered by a compute model: requests run one at
  // a time in arrival order on the server's device, rows / speed seconds each.
  const moe::ExpertInfo info{spec.hidden, spec.hidden, false, "modelled"};
  auto check = [this, info](const std::string& uid, const moe::TensorShape& shape) -> std::optional<Error> {
    if (std::find_if(mine_.begin(), mine_.end(), [&](const moe::ExpertUid& u) { return u.str() == uid; }) == mine_.end())
      return Error{ErrorCode::kInvalidArgument, "no expert " + uid + " here"};
    if (!moe::fits(info, shape.dims)) return Error{ErrorCode::kInvalidArgument, moe::misfit(uid, info, shape.dims)};
    if (spec_.fail_probability > 0 && rt_.rng.uniform01() < spec_.fail_probability) {
      rt_.observer.count("dmoe.injected_failures");
      return Error{ErrorCode::kRejected, "expert " + uid + ": injected failure"};
    }
    return std::nullopt;
  };
  rpc.serve<moe::InfoRequest, moe::ExpertInfo>([info](const Endpoint&, moe::InfoRequest) -> Task<Result<moe::ExpertInfo>> {
    co_return info;
  });
  rpc.serve<moe::ForwardRequest, moe::TensorReply>(
      [this, check](const Endpoint&, moe::ForwardRequest q) -> Task<Result<moe::TensorReply>> {
        if (auto e = check(q.uid, q.shape)) co_return *e;
        co_await compute(q.shape.dims[0], fwd_);
        rt_.observer.count("dmoe.server_forwards");
        co_return moe::TensorReply{q.shape, modelled(q.shape), 0};
      });
  rpc.serve<moe::BackwardRequest, moe::TensorReply>(
      [this, check](const Endpoint&, moe::BackwardRequest q) -> Task<Result<moe::TensorReply>> {
        if (auto e = check(q.uid, q.input)) co_return *e;
        if (q.grad.dims != q.input.dims) co_return Error{ErrorCode::kInvalidArgument, "output gradients must match the inputs"};
        co_await compute(q.input.dims[0], bwd_);
        rt_.observer.count("dmoe.server_backwards");
        co_return moe::TensorReply{q.input, modelled(q.input), 0};
      });
}

Task<void> DmoeServerApp::compute(std::int64_t rows, double speed) {
  const double seconds = static_cast<double>(rows) / speed;
  const TimePoint begin = std::max(rt_.now(), busy_until_);
  busy_until_ = begin + Duration(static_cast<std::int64_t>(seconds * 1e9));
  co_await sleep_on(rt_.timers, busy_until_ - rt_.now());
}

DmoeServerApp::~DmoeServerApp() { scope_.destroy_all(); }

void DmoeServerApp::joined() { scope_.spawn(declare_loop()); }

Task<void> DmoeServerApp::declare_loop() {
  while (true) {
    std::vector<moe::ExpertUid> uids = mine_;
    // As hivemind's servers do: declare every 30 s, so the declarations follow the swarm as it
    // grows (stored to the key's nearest peers at each declaration), and expire 2 min after the
    // last one (a server that leaves is gone from searches soon).
    co_await moe::declare_experts(dht_, std::move(uids), rt_.transport.local(), rt_.now() + std::chrono::minutes(2));
    co_await sleep_on(rt_.timers, std::chrono::seconds(30));
  }
}

DmoeTrainerApp::DmoeTrainerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const DmoeSimSpec& spec,
                               const std::vector<Endpoint>& directory)
    : rt_(rt), rpc_(rpc), spec_(spec), directory_(directory) {
  moe::FinderConfig fc;
  fc.positive_ttl = std::chrono::seconds(30);  // declarations change slowly; reuse prefix reads
  fc.negative_ttl = std::chrono::seconds(2);   // but look again soon where nothing was declared yet
  const std::vector<std::uint32_t> grid(spec.grid_dims, spec.grid_side);
  for (std::uint32_t l = 0; l < spec.layers; ++l)
    finders_.push_back(std::make_unique<moe::ExpertFinder>(rt, dht, layer_prefix(l), grid, fc));
}

DmoeTrainerApp::~DmoeTrainerApp() {
  scope_.destroy_all();
  calls_.destroy_all();
}

void DmoeTrainerApp::begin() {
  if (begun_) return;
  begun_ = true;
  if (joined_) start_workers();
}

void DmoeTrainerApp::joined() {
  joined_ = true;
  if (begun_) start_workers();
}

void DmoeTrainerApp::start_workers() {
  const std::uint32_t workers = spec_.mode == "dmoe" ? std::max<std::uint32_t>(1, spec_.concurrency) : 1;
  for (std::uint32_t w = 0; w < workers; ++w) scope_.spawn(worker());
}

Task<void> DmoeTrainerApp::worker() {
  while (true) {
    const TimePoint t0 = rt_.now();
    bool ok = false;
    if (spec_.mode == "dmoe")
      ok = co_await dmoe_batch();
    else
      ok = co_await chain_batch();
    if (ok) {
      rt_.observer.count("dmoe.samples", spec_.batch_size);
      rt_.observer.sample("dmoe.batch_seconds", to_seconds(rt_.now() - t0));
    } else {
      rt_.observer.count("dmoe.failed_batches");
      co_await sleep_on(rt_.timers, std::chrono::milliseconds(100));
    }
  }
}

namespace {

// Calls every expert at once by the protocol's messages and sizes (a forward sends the inputs, a
// backward the inputs and the output gradients) and waits by the mixture's quorum rule; returns
// who answered. Calls still in flight at the return finish (or time out) in `scope`.
Task<std::vector<bool>> call_all(Runtime& rt, Rpc& rpc, TaskScope& scope, std::vector<moe::FoundExpert> experts, bool backward,
                                 std::uint32_t rows, std::uint32_t hidden, std::size_t min_answers, Duration grace,
                                 Duration timeout) {
  const moe::TensorShape shape = rows_of(rows, hidden);
  std::function<Task<Result<moe::TensorReply>>(std::size_t)> call = [&rpc, experts, shape, backward, timeout](std::size_t j) {
    if (backward) {
      moe::BackwardRequest q{experts[j].uid, shape, shape, 0, Payload::size_only(2 * modelled(shape).size()), 0, modelled(shape).size()};
      return rpc.call<moe::TensorReply>(experts[j].server, std::move(q), timeout);
    }
    moe::ForwardRequest q{experts[j].uid, shape, 0, modelled(shape), 0};
    return rpc.call<moe::TensorReply>(experts[j].server, std::move(q), timeout);
  };
  std::function<bool(std::size_t, const Result<moe::TensorReply>&)> accept = [shape](std::size_t, const Result<moe::TensorReply>& r) {
    return r.ok() && r->shape.dims == shape.dims;
  };
  const moe::QuorumRule rule{min_answers, grace, timeout};
  Task<std::vector<std::optional<Result<moe::TensorReply>>>> quorum =
      moe::call_quorum<moe::TensorReply>(rt, scope, experts.size(), std::move(call), std::move(accept), rule);
  std::vector<std::optional<Result<moe::TensorReply>>> replies = co_await std::move(quorum);
  std::vector<bool> out;
  for (const auto& r : replies) out.push_back(r && r->ok() && (*r)->shape.dims == shape.dims);
  co_return out;
}

}  // namespace

Task<bool> DmoeTrainerApp::dmoe_batch() {
  std::vector<std::vector<moe::FoundExpert>> used(spec_.layers);
  for (std::uint32_t l = 0; l < spec_.layers; ++l) {
    std::vector<moe::FoundExpert> answered;
    for (int attempt = 0; attempt < 2 && answered.size() < spec_.k_min; ++attempt) {
      std::vector<std::vector<float>> scores(spec_.grid_dims, std::vector<float>(spec_.grid_side));
      for (auto& d : scores)
        for (auto& v : d) v = static_cast<float>(rt_.rng.normal(0, 1));
      std::vector<moe::FoundExpert> chosen = co_await finders_[l]->find_best(std::move(scores), spec_.k);
      if (chosen.empty()) break;
      std::vector<moe::FoundExpert> calls = chosen;
      std::vector<bool> ok = co_await call_all(rt_, rpc_, calls_, std::move(calls), false, spec_.batch_size, spec_.hidden, spec_.k_min,
                                               spec_.grace, spec_.timeout);
      answered.clear();
      for (std::size_t j = 0; j < chosen.size(); ++j)
        if (ok[j]) answered.push_back(chosen[j]);
      rt_.observer.count("dmoe.expert_failures", static_cast<std::int64_t>(chosen.size() - answered.size()));
    }
    if (answered.empty() || answered.size() < std::min<std::size_t>(spec_.k_min, spec_.k)) co_return false;
    used[l] = std::move(answered);
  }
  for (std::uint32_t l = spec_.layers; l-- > 0;) {
    std::vector<moe::FoundExpert> calls = used[l];
    std::vector<bool> ok = co_await call_all(rt_, rpc_, calls_, std::move(calls), true, spec_.batch_size, spec_.hidden, used[l].size(),
                                             Duration::zero(), spec_.timeout);
    (void)ok;  // an expert that fails in the backward contributes no gradient, like dropout
  }
  co_return true;
}

Task<bool> DmoeTrainerApp::chain_batch() {
  std::vector<moe::FoundExpert> blocks;
  for (std::uint32_t l = 0; l < spec_.layers; ++l) {
    const auto experts = dmoe_experts(spec_, l);
    blocks.push_back(moe::FoundExpert{experts[0].first.str(), directory_[experts[0].second], 0});
  }
  for (std::uint32_t step = 0; step < 2 * spec_.layers; ++step) {  // forward through the chain, then back
    const bool backward = step >= spec_.layers;
    const std::uint32_t l = backward ? 2 * spec_.layers - 1 - step : step;
    std::vector<moe::FoundExpert> one{blocks[l]};
    std::vector<bool> ok = co_await call_all(rt_, rpc_, calls_, std::move(one), backward, spec_.batch_size, spec_.hidden, 1,
                                             Duration::zero(), spec_.timeout);
    if (!ok[0]) co_return false;
  }
  co_return true;
}

// ---- the workload ------------------------------------------------------------------------

namespace {

// Peers 0..servers-1 are expert servers (each with its device speeds drawn from the scenario),
// the others trainers; trainers begin at dmoe.start (a trainer that comes up later begins at
// once). Throughput: samples whose forward and backward completed, per second since the start.
class DmoeWorkload final : public Workload {
 public:
  explicit DmoeWorkload(const SwarmSpec& spec) : spec_(spec), cfg_(spec.workload_config<DmoeWorkloadConfig>().sim) {}
  std::unique_ptr<PeerApp> make_app(PeerStack& p) override {
    const auto i = p.index();
    if (i < cfg_.servers) {
      Rng speed(spec_.seed ^ 0x64736e6f6465ULL);
      Rng mine = speed.fork(i + 1);
      const double fwd = std::max(1.0, cfg_.forward_speed.sample(mine)), bwd = std::max(1.0, cfg_.backward_speed.sample(mine));
      return std::make_unique<DmoeServerApp>(p.runtime(), p.rpc(), *p.dht(), cfg_, i, fwd, bwd);
    }
    return std::make_unique<DmoeTrainerApp>(p.runtime(), p.rpc(), *p.dht(), cfg_, p.directory());
  }
  void begin(Runner& r) override {
    r.at(cfg_.start, [this, &r] {
      started_ = true;
      for (std::uint32_t i = cfg_.servers; i < r.peers(); ++i)
        if (auto* p = r.peer(i)) p->app_as<DmoeTrainerApp>()->begin();
    });
  }
  void peer_up(Runner& r, std::uint32_t i) override {
    if (started_ && i >= cfg_.servers) r.peer(i)->app_as<DmoeTrainerApp>()->begin();
  }
  void finish(Runner& r, RunInfo& info) override {
    const double secs = std::max(1e-9, info.run_seconds - to_seconds(cfg_.start));
    info.figures["throughput_samples_per_second"] = static_cast<double>(r.metrics().counter("dmoe.samples")) / secs;
    info.figures["batch_seconds_mean"] = r.metrics().mean("dmoe.batch_seconds");
  }

 private:
  const SwarmSpec& spec_;
  const DmoeSimSpec& cfg_;
  bool started_ = false;
};

void parse_dmoe_torch(Scenario& s, DmoeTorchSpec& d) {
  d.servers = static_cast<std::uint32_t>(s.get_int("dmoe.servers", d.servers, 1, 256));
  d.grid_side = static_cast<std::uint32_t>(s.get_int("dmoe.grid_side", d.grid_side, 1, 256));
  d.grid_dims = static_cast<std::uint32_t>(s.get_int("dmoe.grid_dims", d.grid_dims, 1, 4));
  d.dim = s.get_int("dmoe.dim", d.dim, 1, 1 << 16);
  d.hidden = s.get_int("dmoe.hidden", d.hidden, 1, 1 << 16);
  d.k = static_cast<std::uint32_t>(s.get_int("dmoe.k", d.k, 1, 256));
  d.k_min = static_cast<std::uint32_t>(s.get_int("dmoe.k_min", d.k_min, 0, 256));
  if (d.k_min > d.k) s.fail("dmoe.k_min", "must not exceed dmoe.k");
  d.routing = s.get_string("dmoe.routing", d.routing, {"batch", "sample", "switch"});
  d.grace = s.get_duration("dmoe.grace", d.grace);
  d.forward_timeout = s.get_duration("dmoe.forward_timeout", d.forward_timeout);
  d.backward_timeout = s.get_duration("dmoe.backward_timeout", d.backward_timeout);
  d.fail_probability = s.get_double("dmoe.fail_probability", d.fail_probability, 0, 1);
  d.codec = s.get_string("dmoe.codec", d.codec, {"float32", "float16", "scaled-float16", "uniform8", "quantile8", "blockwise8"});
  d.steps = static_cast<std::uint32_t>(s.get_int("dmoe.steps", d.steps, 1, 10'000'000));
  d.batch_size = static_cast<std::uint32_t>(s.get_int("dmoe.batch_size", d.batch_size, 1, 1 << 16));
  d.eval_every = static_cast<std::uint32_t>(s.get_int("dmoe.eval_every", d.eval_every, 0, 1 << 30));
  d.eval_samples = static_cast<std::uint64_t>(s.get_int("dmoe.eval_samples", static_cast<std::int64_t>(d.eval_samples), 1, 10000));
  d.train_samples = static_cast<std::uint64_t>(s.get_int("dmoe.train_samples", 0, 0, 60000));
  d.learning_rate = s.get_double("dmoe.learning_rate", d.learning_rate, 0, 1e6);
  d.dataset_dir = path_beside(s, s.get_string("dmoe.dataset_dir", d.dataset_dir));
  d.baseline = s.get_bool("dmoe.baseline", d.baseline);
}

void parse_dmoe_sim(Scenario& s, const SwarmSpec& spec, DmoeSimSpec& d) {
  d.mode = s.get_string("dmoe.mode", d.mode, {"dmoe", "model-parallel"});
  d.servers = static_cast<std::uint32_t>(s.get_int("dmoe.servers", d.servers, 1, 100000));
  if (d.servers >= spec.peers) s.fail("dmoe.servers", "leaves no peer to train: peers = " + std::to_string(spec.peers));
  d.layers = static_cast<std::uint32_t>(s.get_int("dmoe.layers", d.layers, 1, 1024));
  d.grid_side = static_cast<std::uint32_t>(s.get_int("dmoe.grid_side", d.grid_side, 1, 4096));
  d.grid_dims = static_cast<std::uint32_t>(s.get_int("dmoe.grid_dims", d.grid_dims, 1, 4));
  d.k = static_cast<std::uint32_t>(s.get_int("dmoe.k", d.k, 1, 256));
  d.k_min = static_cast<std::uint32_t>(s.get_int("dmoe.k_min", d.k_min, 1, 256));
  if (d.k_min > d.k) s.fail("dmoe.k_min", "must not exceed dmoe.k");
  d.batch_size = static_cast<std::uint32_t>(s.get_int("dmoe.batch_size", d.batch_size, 1, 1 << 20));
  d.hidden = static_cast<std::uint32_t>(s.get_int("dmoe.hidden", d.hidden, 1, 1 << 20));
  d.concurrency = static_cast<std::uint32_t>(s.get_int("dmoe.concurrency", d.concurrency, 1, 4096));
  d.forward_speed = s.get_distribution("dmoe.forward_speed", d.forward_speed, "rate");
  d.backward_speed = s.get_distribution("dmoe.backward_speed", d.backward_speed, "rate");
  d.timeout = s.get_duration("dmoe.timeout", d.timeout);
  d.grace = s.get_duration("dmoe.grace", d.grace);
  d.start = s.get_duration("dmoe.start", d.start);
  d.fail_probability = s.get_double("dmoe.fail_probability", d.fail_probability, 0, 1);
}

std::shared_ptr<const WorkloadConfig> parse_dmoe(Scenario& s, const SwarmSpec& spec) {
  auto c = std::make_shared<DmoeWorkloadConfig>();
  if (spec.live_processes)
    parse_dmoe_torch(s, c->torch);
  else
    parse_dmoe_sim(s, spec, c->sim);
  return c;
}

void summarize_dmoe(std::FILE* f, const Metrics& m, const RunInfo& info) {
  auto fig = [&](const char* k) { return info.figures.count(k) ? info.figures.at(k) : 0.0; };
  if (info.figures.count("throughput_samples_per_second"))
    std::fprintf(
        f, "  dmoe: %.1f samples/s trained (forward and backward), %.2f s per batch; %lld expert calls unanswered, %lld batches failed\n",
        fig("throughput_samples_per_second"), fig("batch_seconds_mean"), static_cast<long long>(m.counter("dmoe.expert_failures")),
        static_cast<long long>(m.counter("dmoe.failed_batches")));
  if (info.figures.count("final_accuracy"))
    std::fprintf(f, "  dmoe: %.0f steps, %.2f steps/s; test accuracy %.1f%%\n", fig("steps"), fig("steps_per_second"),
                 100 * fig("final_accuracy"));
}

const RegisterWorkload kRegister{WorkloadType{
    "dmoe", "trainers route batches through mixture layers of experts found through the DHT (Learning@home)", true,
    parse_dmoe, [](const SwarmSpec& spec, Metrics&) { return std::make_unique<DmoeWorkload>(spec); }, summarize_dmoe}};

}  // namespace
}  // namespace apiary
