#include "harness/workloads/dmoe.hpp"

#include "core/compression/codecs.hpp"
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

namespace {

// Server `index`'s experts, over every layer.
std::vector<moe::ExpertUid> hosted_by(const DmoeSimSpec& spec, std::uint32_t index) {
  std::vector<moe::ExpertUid> out;
  for (std::uint32_t l = 0; l < spec.layers; ++l)
    for (auto& [uid, server] : dmoe_experts(spec, l))
      if (server == index) out.push_back(uid);
  return out;
}

std::set<std::string> uids_of(const std::vector<moe::ExpertUid>& experts) {
  std::set<std::string> out;
  for (const auto& u : experts) out.insert(u.str());
  return out;
}

moe::ServerOptions server_options(const DmoeSimSpec& spec) {
  moe::ServerOptions o = spec.server;
  o.fail_probability = spec.fail_probability;
  return o;
}

// The tensors of a modelled mixture: [rows, hidden] float32, size-only, every way.
class SizedTensors final : public moe::MixtureTensors {
 public:
  explicit SizedTensors(std::uint32_t hidden) : hidden_(hidden) {}
  Body inputs(const std::vector<std::int64_t>& rows) override {
    const moe::TensorShape shape = rows_of(static_cast<std::uint32_t>(rows.size()), hidden_);
    return Body{shape, modelled(shape), 0};
  }
  bool take_output(std::size_t, const std::vector<std::int64_t>& rows, const moe::TensorReply& r) override { return fits(rows, r); }
  Body output_grads(std::size_t, const std::vector<std::int64_t>& rows) override { return inputs(rows); }
  bool take_input_grad(std::size_t, const std::vector<std::int64_t>& rows, const moe::TensorReply& r) override { return fits(rows, r); }

 private:
  bool fits(const std::vector<std::int64_t>& rows, const moe::TensorReply& r) const {
    return r.shape.dims == rows_of(static_cast<std::uint32_t>(rows.size()), hidden_).dims;
  }
  std::uint32_t hidden_;
};

}  // namespace

std::optional<moe::ExpertInfo> DmoeServerApp::SizedExperts::info(const std::string& uid) {
  if (!uids_.count(uid)) return std::nullopt;
  return moe::ExpertInfo{hidden_, hidden_, false, "modelled"};
}

Task<void> DmoeServerApp::SizedExperts::run(const std::string&, bool, std::vector<moe::ExpertJob*> jobs) {
  for (auto* j : jobs) j->reply = moe::TensorReply{j->input, modelled(j->input), 0};
  co_return;
}

DmoeServerApp::DmoeServerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const dht::Identity& identity, const DmoeSimSpec& spec,
                             std::uint32_t index, double forward_speed, double backward_speed)
    : rt_(rt),
      dht_(dht),
      identity_(identity),
      mine_(hosted_by(spec, index)),
      experts_(uids_of(mine_), spec.hidden),
      device_(rt, experts_, forward_speed, backward_speed),
      server_(rt, rpc, device_, server_options(spec)) {}

DmoeServerApp::~DmoeServerApp() { scope_.destroy_all(); }

void DmoeServerApp::joined() { scope_.spawn(declare_loop()); }

Task<void> DmoeServerApp::declare_loop() {
  while (true) {
    std::vector<moe::ExpertUid> uids = mine_;
    // As hivemind's servers do: declare every 30 s, so the declarations follow the swarm as it
    // grows (stored to the key's nearest peers at each declaration), and expire 2 min after the
    // last one (a server that leaves is gone from searches soon).
    co_await moe::declare_experts(dht_, std::move(uids), rt_.transport.local(), rt_.now() + std::chrono::minutes(2), &identity_);
    co_await sleep_on(rt_.timers, std::chrono::seconds(30));
  }
}

DmoeTrainerApp::DmoeTrainerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const DmoeSimSpec& spec,
                               const std::vector<Endpoint>& directory)
    : rt_(rt), spec_(spec), directory_(directory) {
  for (std::uint32_t l = 0; l < spec.layers; ++l) {
    moe::MixtureConfig mc;
    mc.prefix = layer_prefix(l);
    mc.grid.assign(spec.grid_dims, spec.grid_side);
    mc.routing = spec.routing;
    mc.k = spec.k;
    mc.k_min = spec.k_min;
    mc.forward_timeout = mc.backward_timeout = spec.timeout;
    mc.grace = spec.grace;
    mc.searches = 2;
    mc.finder.positive_ttl = std::chrono::seconds(30);  // declarations change slowly; reuse prefix reads
    mc.finder.negative_ttl = std::chrono::seconds(2);   // but look again soon where nothing was declared yet
    layers_.push_back(std::make_unique<moe::MixtureRouter>(rt, rpc, dht, mc));
  }
}

DmoeTrainerApp::~DmoeTrainerApp() {
  scope_.destroy_all();
  layers_.clear();
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

// The gate is not modelled: its scores are drawn at random, one row for the whole batch with
// batch routing (every sample then has the batch's scores), one row per sample otherwise.
moe::GateScores DmoeTrainerApp::draw_scores() {
  const std::size_t width = static_cast<std::size_t>(spec_.grid_dims) * spec_.grid_side;
  moe::GateScores g{spec_.batch_size, std::vector<float>(spec_.batch_size * width)};
  const std::size_t drawn = spec_.routing == moe::Routing::kBatch ? 1 : spec_.batch_size;
  for (std::size_t b = 0; b < drawn; ++b)
    for (std::size_t c = 0; c < width; ++c) g.values[b * width + c] = static_cast<float>(rt_.rng.normal(0, 1));
  for (std::size_t b = drawn; b < spec_.batch_size; ++b)
    std::copy_n(g.values.begin(), width, g.values.begin() + static_cast<std::ptrdiff_t>(b * width));
  return g;
}

Task<bool> DmoeTrainerApp::dmoe_batch() {
  SizedTensors tensors(spec_.hidden);
  std::vector<moe::MixturePlan> plans;
  for (std::uint32_t l = 0; l < spec_.layers; ++l) {  // forward through every layer
    Result<moe::MixturePlan> plan = co_await layers_[l]->forward(draw_scores(), tensors);
    if (!plan.ok()) co_return false;
    plans.push_back(std::move(*plan));
  }
  for (std::uint32_t l = spec_.layers; l-- > 0;) {  // then backward in reverse
    // An expert that fails in the backward contributes no gradient, like dropout.
    std::vector<bool> ok = co_await layers_[l]->backward(std::move(plans[l]), tensors);
    (void)ok;
  }
  co_return true;
}

Task<bool> DmoeTrainerApp::chain_batch() {
  SizedTensors tensors(spec_.hidden);
  std::vector<std::int64_t> rows(spec_.batch_size);
  for (std::uint32_t b = 0; b < spec_.batch_size; ++b) rows[b] = b;
  std::vector<moe::MixturePlan> blocks(spec_.layers);
  for (std::uint32_t l = 0; l < spec_.layers; ++l) {  // forward through the chain, one block after another
    const auto experts = dmoe_experts(spec_, l);
    blocks[l].calls.push_back(moe::ExpertCall{moe::FoundExpert{experts[0].first.str(), directory_[experts[0].second], 0}, rows, 0, 0});
    std::vector<moe::ExpertCall> one = blocks[l].calls;
    std::vector<bool> ok = co_await layers_[l]->call(std::move(one), 1, tensors);
    if (!ok[0]) co_return false;
  }
  for (std::uint32_t l = spec_.layers; l-- > 0;) {  // then back
    std::vector<bool> ok = co_await layers_[l]->backward(std::move(blocks[l]), tensors);
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
      return std::make_unique<DmoeServerApp>(p.runtime(), p.rpc(), *p.dht(), p.identity(), cfg_, i, fwd, bwd);
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

// Batching at the expert servers, the same keys in every world.
void parse_server(Scenario& s, moe::ServerOptions& o) {
  o.max_batch = s.get_int("dmoe.max_batch", o.max_batch, 1, 1 << 24);
  o.min_batch = s.get_int("dmoe.min_batch", o.min_batch, 1, 1 << 24);
  o.batch_wait = s.get_duration("dmoe.batch_wait", o.batch_wait);
}

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
  parse_server(s, d.server);
  d.codec = s.get_string("dmoe.codec", d.codec, compression::codec_names());
  d.steps = static_cast<std::uint32_t>(s.get_int("dmoe.steps", d.steps, 1, 10'000'000));
  d.batch_size = static_cast<std::uint32_t>(s.get_int("dmoe.batch_size", d.batch_size, 1, 1 << 16));
  d.eval_every = static_cast<std::uint32_t>(s.get_int("dmoe.eval_every", d.eval_every, 0, 1 << 30));
  d.eval_samples = static_cast<std::uint64_t>(s.get_int("dmoe.eval_samples", static_cast<std::int64_t>(d.eval_samples), 1, 10000));
  d.train_samples = static_cast<std::uint64_t>(s.get_int("dmoe.train_samples", 0, 0, 60000));
  d.learning_rate = s.get_double("dmoe.learning_rate", d.learning_rate, 0, 1e6);
  d.dataset_dir = path_beside(s, s.get_string("dmoe.dataset_dir", d.dataset_dir));
  d.device = s.get_device("dmoe.device", d.device);
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
  d.routing = *moe::parse_routing(s.get_string("dmoe.routing", moe::to_string(d.routing), {"batch", "sample", "switch"}));
  parse_server(s, d.server);
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
        fig("throughput_samples_per_second"), fig("batch_seconds_mean"), static_cast<long long>(m.counter("moe.expert_failures")),
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
