#include "harness/workloads/averaging.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>
#include <set>

#include "harness/runner.hpp"
#include "harness/spec.hpp"

namespace apiary {

using namespace averaging;

AveragingApp::AveragingApp(Runtime& rt, Rpc& rpc, dht::DhtNode* dht, const AveragingWorkloadSpec& spec,
                           MemberKind kind, GridPosition position)
    : rt_(rt), spec_(spec), kind_(kind), position_(std::move(position)) {
  if (dht) mm_ = std::make_unique<Matchmaker>(rt, rpc, *dht, spec.matchmaking);
  avg_ = std::make_unique<Averager>(rt, rpc, spec.allreduce);
}

AveragingApp::~AveragingApp() { scope_.destroy_all(); }

void AveragingApp::skip_round(std::uint64_t t) {
  if (spec_.grid_rule == "rank" && spec_.skip_rule == "park" && position_.park(t)) rt_.observer.count("avg.parked");
}

void AveragingApp::start_round(std::uint64_t t, std::string key) {
  if (busy_) {
    rt_.observer.count("avg.rounds_overlapped");
    skip_round(t);
    return;
  }
  scope_.spawn(round(t, std::move(key), std::nullopt));
}

void AveragingApp::start_static_round(std::uint64_t t, Group group) {
  if (busy_) {
    rt_.observer.count("avg.rounds_overlapped");
    return;
  }
  scope_.spawn(round(t, "", std::move(group)));
}

Task<void> AveragingApp::round(std::uint64_t t, std::string key, std::optional<Group> known) {
  busy_ = true;
  const TimePoint t0 = rt_.now();
  const TensorSchema schema{{{static_cast<std::int64_t>(spec_.elements)}}};
  Group group;
  if (known) {
    group = std::move(*known);
  } else {
    Member self{rt_.transport.local(), kind_, bandwidth_};
    Result<Group> g = co_await mm_->find_group(key, schema, self);
    if (!g.ok()) {
      rt_.observer.count("avg.matchmaking_failures");
      rt_.observer.log(LogLevel::kInfo, "avg", "round " + std::to_string(t) + ": " + g.error().describe());
      busy_ = false;
      co_return;
    }
    group = std::move(*g);
  }
  rt_.observer.sample("avg.group_size", static_cast<double>(group.members.size()));
  rt_.observer.log(LogLevel::kDebug, "avg", "round " + std::to_string(t) + " key " + key + ": group of " +
                                               std::to_string(group.members.size()) + " led by " +
                                               group.members[0].endpoint.to_string());
  const auto rank = group.index_of(rt_.transport.local());
  std::vector<float> local = sends(kind_) ? values_ : std::vector<float>{};
  const std::uint64_t group_id = group.id;
  if (ledger_) ledger_->contribute(t, group_id, group.members.size(), local, 1.0);
  Result<AllReduceReport> r = co_await avg_->all_reduce(std::move(group), std::move(local), 1.0);
  if (ledger_) {
    if (r.ok())
      ledger_->completed(t, group_id, r->averaged,  // a clipped contribution makes its part differ from the mean
                         r->failed_reducers.empty() && r->excluded_senders.empty() && r->excluded_me.empty() && r->pieces_kept == 0 &&
                             r->clipped == 0);
    else
      ledger_->failed(t, group_id);
  }
  if (!r.ok()) {
    rt_.observer.count("avg.allreduce_failures");
    rt_.observer.log(LogLevel::kDebug, "avg", "round " + std::to_string(t) + ": " + r.error().describe());
    busy_ = false;
    co_return;
  }
  if (sends(kind_)) values_ = std::move(r->averaged);
  if (rank && spec_.grid_rule == "rank") position_.update(t, *rank);
  rt_.observer.count("avg.rounds_ok");
  rt_.observer.count("avg.pieces_kept", static_cast<std::int64_t>(r->pieces_kept));
  rt_.observer.count("avg.failed_reducers", static_cast<std::int64_t>(r->failed_reducers.size()));
  rt_.observer.sample("avg.round.seconds", to_seconds(rt_.now() - t0));
  rt_.observer.sample("avg.round.bytes_sent", static_cast<double>(r->bytes_sent));
  rt_.observer.sample("avg.allreduce.seconds", to_seconds(r->elapsed));
  busy_ = false;
}

void AllReduceLedger::contribute(std::uint64_t t, std::uint64_t group, std::size_t size, const std::vector<float>& input,
                                 double weight) {
  // Rounds two or more behind are over: a member that never reported (it went down) frees them,
  // and one that comes to such a round late (it was frozen) is not checked: the others' inputs
  // are gone.
  if (t >= 2) forgotten_below_ = std::max(forgotten_below_, t - 1);
  while (!rounds_.empty() && rounds_.begin()->first.first < forgotten_below_) {
    floats_ -= rounds_.begin()->second.recorded();
    rounds_.erase(rounds_.begin());
  }
  if (t < forgotten_below_) return;
  auto& r = rounds_[{t, group}];
  r.size = size;
  if (input.empty()) return;
  if (r.inputs == 0) {
    if (floats_ + 3 * input.size() > max_floats_) {
      r.clean = false;  // not recorded: no check for this group
      r.unrecorded = true;
      return;
    }
    floats_ += 3 * input.size();
    r.lo.assign(input.size(), HUGE_VAL);
    r.hi.assign(input.size(), -HUGE_VAL);
    r.sum.assign(input.size(), 0.0);
  }
  if (r.unrecorded || input.size() != r.sum.size()) {
    r.clean = false;
    return;
  }
  // What a completed member is held to, kept as the inputs arrive: each element's range, the
  // largest magnitude, the weighted sum.
  for (std::size_t k = 0; k < input.size(); ++k) {
    const double x = input[k];
    r.lo[k] = std::min(r.lo[k], x);
    r.hi[k] = std::max(r.hi[k], x);
    r.sum[k] += weight * x;
    r.absmax = std::max(r.absmax, std::fabs(x));
  }
  r.weight += weight;
  ++r.inputs;
}

double mean_tolerance(compression::Codec codec, double absmax) {
  using compression::Codec;
  const double share = codec == Codec::kFloat32                                     ? 1e-5
                       : codec == Codec::kFloat16 || codec == Codec::kScaledFloat16 ? 4e-3
                       : codec == Codec::kQuantile8                                 ? 0.25
                                                                                    : 0.02;
  return share * std::max(absmax, 1e-30) + 1e-30;
}

void parse_aggregation(Scenario& s, const std::string& prefix, averaging::AggregationConfig& a) {
  const auto rule = s.get_string(prefix + ".aggregation", averaging::to_string(a.rule), {"mean", "centered_clip"});
  a.rule = rule == "mean" ? averaging::AggregationRule::kMean : averaging::AggregationRule::kCenteredClip;
  a.tau = s.get_double(prefix + ".clip_tau", a.tau, 1e-12, 1e30);
  a.iterations = static_cast<std::uint32_t>(s.get_int(prefix + ".clip_iterations", a.iterations, 1, 10000));
  a.stop_step = s.get_double(prefix + ".clip_stop_step", a.stop_step, 0, 1e30);
}

void AllReduceLedger::completed(std::uint64_t t, std::uint64_t group, const std::vector<float>& result, bool clean) {
  auto it = rounds_.find({t, group});
  if (it == rounds_.end()) return;
  auto& r = it->second;
  ++r.done;
  r.clean = r.clean && clean;
  if (!result.empty() && r.inputs > 0) {
    const double tol = tolerance(r.absmax);
    std::uint64_t outside = 0;
    for (std::size_t k = 0; k < result.size(); ++k) {
      const double x = result[k];
      if (!(k < r.lo.size() && x >= r.lo[k] - tol && x <= r.hi[k] + tol)) ++outside;  // NaN is outside too
    }
    if (outside) metrics_.count("invariant.avg.result_outside_inputs", outside);
    if (r.clean) r.results.push_back(result);
  }
  if (r.done == r.size) settle(t, group);
}

void AllReduceLedger::failed(std::uint64_t t, std::uint64_t group) {
  auto it = rounds_.find({t, group});
  if (it == rounds_.end()) return;
  it->second.clean = false;
  if (++it->second.done == it->second.size) settle(t, group);
}

void AllReduceLedger::settle(std::uint64_t t, std::uint64_t group) {
  auto it = rounds_.find({t, group});
  auto& r = it->second;
  if (r.clean && r.inputs > 0) {
    const double tol = tolerance(r.absmax);
    metrics_.count("avg.ledger.groups_checked_exactly", 1);
    std::uint64_t off = 0;
    for (const auto& v : r.results)
      for (std::size_t k = 0; k < r.sum.size(); ++k)
        if (!(k < v.size() && std::fabs(v[k] - r.sum[k] / r.weight) <= tol)) ++off;
    if (off) metrics_.count("invariant.avg.result_not_group_mean", off);
  }
  floats_ -= r.recorded();
  rounds_.erase(it);
}

AveragingDriver::AveragingDriver(const SwarmSpec& spec, Metrics& metrics)
    : spec_(spec), avg_(spec.workload_config<AveragingWorkloadSpec>()), metrics_(metrics), rng_(spec.seed ^ 0x61766572616765ULL) {
  true_mean_.assign(avg_.elements, 0.0);
  std::size_t holders = 0;
  for (std::uint32_t i = 0; i < spec_.peers; ++i) {
    if (!sends(kind_of(i))) continue;
    const auto v = initial_values(i);
    for (std::size_t k = 0; k < v.size(); ++k) true_mean_[k] += v[k];
    ++holders;
  }
  for (auto& m : true_mean_) m /= static_cast<double>(std::max<std::size_t>(holders, 1));
}

MemberKind AveragingDriver::kind_of(std::uint32_t peer) const {
  // Deterministic spread: aux first, then clients, over the peer index space.
  if (spec_.behind_nat(peer)) return MemberKind::kClient;  // it cannot reduce: nobody can reach it
  const double x = (static_cast<double>(peer) + 0.5) / spec_.peers;
  if (x < avg_.aux_fraction) return MemberKind::kAux;
  if (x < avg_.aux_fraction + avg_.client_fraction) return MemberKind::kClient;
  return MemberKind::kFull;
}

std::vector<float> AveragingDriver::initial_values(std::uint32_t peer) const {
  if (!sends(kind_of(peer))) return {};
  Rng r = Rng(spec_.seed ^ 0x76616c756573ULL).fork(peer + 1);
  std::vector<float> v(avg_.elements);
  for (auto& x : v) x = static_cast<float>(r.normal(0, 1));
  return v;
}

GridPosition AveragingDriver::initial_position(std::uint32_t peer) const {
  std::uint64_t cells = 1;
  for (std::uint32_t d = 0; d < avg_.grid_dims; ++d) cells *= avg_.grid_side;
  const bool fill = avg_.placement == "fill" || (avg_.placement == "auto" && cells == spec_.peers);
  if (fill) return GridPosition::of_index(peer % cells, avg_.grid_side, avg_.grid_dims);
  if (avg_.placement == "distinct" || avg_.placement == "auto") {
    // Random cells without replacement, the same on every peer (from the seed): peer i takes the
    // i-th cell drawn (the grid wraps if there are more peers than cells). Floyd's sampling
    // draws them without building the whole grid.
    if (distinct_cells_.empty()) {
      const std::uint64_t n = std::min<std::uint64_t>(cells, spec_.peers);
      Rng r(spec_.seed ^ 0x6469737463ULL);  // "distc"
      std::set<std::uint64_t> taken;
      for (std::uint64_t j = cells - n; j < cells; ++j) {
        const std::uint64_t t = r.below(j + 1);
        const std::uint64_t pick = taken.count(t) ? j : t;
        taken.insert(pick);
        distinct_cells_.push_back(pick);
      }
    }
    return GridPosition::of_index(distinct_cells_[peer % distinct_cells_.size()], avg_.grid_side, avg_.grid_dims);
  }
  Rng r = Rng(spec_.seed ^ 0x67726964ULL).fork(peer + 1);
  GridPosition g;
  g.side = avg_.grid_side;
  for (std::uint32_t d = 0; d < avg_.grid_dims; ++d) g.coords.push_back(static_cast<std::uint32_t>(r.below(avg_.grid_side)));
  return g;
}

void AveragingDriver::record_variance(std::uint64_t completed, const std::vector<AveragingApp*>& apps) {
  double sq = 0;
  std::size_t n = 0;
  for (auto* a : apps) {
    if (!a || !sends(a->kind()) || a->values().size() != true_mean_.size()) continue;
    for (std::size_t k = 0; k < true_mean_.size(); ++k) {
      const double d = a->values()[k] - true_mean_[k];
      sq += d * d;
    }
    ++n;
  }
  const double var = n ? sq / static_cast<double>(n * std::max<std::size_t>(true_mean_.size(), 1)) : 0;
  metrics_.sample("avg.round.variance", var);
  metrics_.sample("avg.round.peers_up", static_cast<double>(n));
  if (!reached_ && var < avg_.target_variance) {
    reached_ = true;
    reached_round_ = completed;
    metrics_.count("avg.rounds_to_target", static_cast<std::int64_t>(completed));
  }
}

bool AveragingDriver::begin_round(std::uint64_t t, const std::vector<AveragingApp*>& apps,
                                  const std::vector<Endpoint>& directory) {
  record_variance(t, apps);
  if (reached_ && avg_.stop_at_target) return false;
  const std::uint32_t n = spec_.peers;
  std::vector<bool> fails(n);
  bool any_failed = false;
  for (std::uint32_t i = 0; i < n; ++i) {
    fails[i] = !apps[i] || (avg_.fail_probability > 0 && rng_.uniform(0, 1) < avg_.fail_probability);
    any_failed |= fails[i];
  }
  std::int64_t failed = 0;
  for (bool f : fails) failed += f;
  metrics_.count("avg.peer_round_failures", failed);
  metrics_.sample("avg.round.failed_peers", static_cast<double>(failed));
  const TensorSchema schema{{{static_cast<std::int64_t>(avg_.elements)}}};
  // Static groups (the baselines): membership handed out by the driver, as a coordinator would.
  auto run_static = [&](const std::vector<std::uint32_t>& who) {
    if (who.size() < 2) return;
    Group g;
    g.id = (0x5354415449430000ULL ^ (t << 24)) + who.front();
    g.schema = schema;
    for (auto i : who) g.members.push_back(Member{directory[i], apps[i]->kind(), apps[i]->bandwidth()});
    for (auto i : who) apps[i]->start_static_round(t, g);
  };
  if (avg_.grouping == "allreduce") {
    if (any_failed) {
      metrics_.count("avg.rounds_void", 1);
      return true;
    }
    std::vector<std::uint32_t> all(n);
    std::iota(all.begin(), all.end(), 0u);
    run_static(all);
    return true;
  }
  if (avg_.grouping == "random") {
    std::vector<std::uint32_t> up;
    for (std::uint32_t i = 0; i < n; ++i)
      if (!fails[i]) up.push_back(i);
    for (std::size_t i = up.size(); i > 1; --i) std::swap(up[i - 1], up[rng_.below(i)]);
    for (std::size_t at = 0; at < up.size(); at += avg_.group_size) {
      std::vector<std::uint32_t> g(up.begin() + static_cast<std::ptrdiff_t>(at),
                                   up.begin() + static_cast<std::ptrdiff_t>(std::min<std::size_t>(up.size(), at + avg_.group_size)));
      std::sort(g.begin(), g.end());
      run_static(g);
    }
    return true;
  }
  if (avg_.grouping == "gossip") {  // pairs on a ring, alternating neighbours
    for (std::uint32_t i = t % 2; i < n; i += 2) {
      const std::uint32_t j = (i + 1) % n;
      if (j == i || (t % 2 == 1 && i == n - 1 && n % 2 == 1)) continue;
      if (!fails[i] && !fails[j]) run_static({i, j});
    }
    return true;
  }
  for (std::uint32_t i = 0; i < n; ++i) {  // moshpit: matchmaking through the DHT
    if (!fails[i])
      apps[i]->start_round(t, apps[i]->position().key(t));
    else if (apps[i])
      apps[i]->skip_round(t);
  }
  return true;
}

void AveragingDriver::finish(const std::vector<AveragingApp*>& apps) {
  record_variance(avg_.rounds, apps);
  if (!reached_) metrics_.count("avg.target_not_reached", 1);
}

// ---- the workload ------------------------------------------------------------------------

namespace {

// Rounds run one period apart; the run ends after the last one, or once the target variance is
// reached if the scenario says so. A peer that leaves keeps its values and grid cell, and has
// them again when it comes back.
class AveragingWorkload final : public Workload {
 public:
  AveragingWorkload(const SwarmSpec& spec, Metrics& metrics)
      : cfg_(spec.workload_config<AveragingWorkloadSpec>()),
        driver_(spec, metrics),
        ledger_(metrics, cfg_.allreduce.codec.codec, std::size_t{1} << 26),
        kept_(spec.peers) {}
  std::unique_ptr<PeerApp> make_app(PeerStack& p) override {
    const auto i = p.index();
    auto app = std::make_unique<AveragingApp>(p.runtime(), p.rpc(), p.dht(), cfg_, driver_.kind_of(i), driver_.initial_position(i));
    app->values() = driver_.initial_values(i);
    app->set_bandwidth(p.bandwidth());
    app->set_ledger(&ledger_);
    app->set_identity(p.identity());
    auto& memo = kept_[i];
    if (memo.values) app->values() = std::move(*memo.values);
    if (memo.position) app->position() = *memo.position;
    memo = {};
    return app;
  }
  void peer_down(Runner& r, std::uint32_t i) override {
    auto* app = r.peer(i)->app_as<AveragingApp>();
    kept_[i] = Memo{app->values(), app->position()};
  }
  void begin(Runner& r) override {
    r.at(cfg_.start, [this, &r] { round(r, 0); });
  }
  void finish(Runner& r, RunInfo& info) override {
    info.figures["rounds_to_target"] = driver_.rounds_to_target();
    const auto& s = r.metrics().series();
    auto it = s.find("avg.round.variance");
    info.figures["final_variance"] = it != s.end() && !it->second.empty() ? it->second.back() : 0;
  }

 private:
  struct Memo {
    std::optional<std::vector<float>> values;
    std::optional<GridPosition> position;
  };
  void round(Runner& r, std::uint32_t t) {
    if (t == cfg_.rounds) {
      driver_.finish(r.apps<AveragingApp>(true));
      r.stop();
      return;
    }
    if (!driver_.begin_round(t, r.apps<AveragingApp>(true), r.directory())) {
      r.stop();
      return;
    }
    // Peers that are down sit this round out too.
    if (cfg_.grid_rule == "rank" && cfg_.skip_rule == "park")
      for (auto& memo : kept_)
        if (memo.position) memo.position->park(t);
    r.after(cfg_.period, [this, &r, t] { round(r, t + 1); });
  }
  const AveragingWorkloadSpec& cfg_;
  AveragingDriver driver_;
  AllReduceLedger ledger_;  // every peer of this workload shares the process
  std::vector<Memo> kept_;
};

std::shared_ptr<const WorkloadConfig> parse_averaging(Scenario& s, const SwarmSpec& spec) {
  auto c = std::make_shared<AveragingWorkloadSpec>();
  auto& a = *c;
  a.grouping = s.get_string("averaging.grouping", a.grouping, {"moshpit", "random", "gossip", "allreduce"});
  a.grid_side = static_cast<std::uint32_t>(s.get_int("averaging.grid_side", a.grid_side, 1, 1 << 20));
  a.grid_dims = static_cast<std::uint32_t>(s.get_int("averaging.grid_dims", a.grid_dims, 1, 16));
  std::uint64_t cells = 1;
  for (std::uint32_t d = 0; d < a.grid_dims; ++d)
    if ((cells *= a.grid_side) > (std::uint64_t{1} << 40)) s.fail("averaging.grid_dims", "grid_side^grid_dims is over 2^40 cells");
  a.placement = s.get_string("averaging.placement", a.placement, {"auto", "fill", "random", "distinct"});
  a.grid_rule = s.get_string("averaging.grid_rule", a.grid_rule, {"rank", "fixed"});
  a.skip_rule = s.get_string("averaging.skip_rule", a.skip_rule, {"park", "keep"});
  a.group_size = static_cast<std::uint32_t>(s.get_int("averaging.group_size", a.group_size, 2, 4096));
  a.elements = static_cast<std::uint64_t>(s.get_int("averaging.elements", static_cast<std::int64_t>(a.elements), 1, std::int64_t{1} << 32));
  a.rounds = static_cast<std::uint32_t>(s.get_int("averaging.rounds", a.rounds, 1, 100000));
  a.start = s.get_duration("averaging.start", a.start);
  a.period = s.get_duration("averaging.period", a.period);
  if (a.period <= Duration::zero()) s.fail("averaging.period", "must be positive");
  a.fail_probability = s.get_double("averaging.fail_probability", a.fail_probability, 0, 1);
  a.target_variance = s.get_double("averaging.target_variance", a.target_variance, 0, 1e30);
  a.stop_at_target = s.get_bool("averaging.stop_at_target", a.stop_at_target);
  a.client_fraction = s.get_double("averaging.client_fraction", a.client_fraction, 0, 1);
  a.aux_fraction = s.get_double("averaging.aux_fraction", a.aux_fraction, 0, 1);
  if (a.client_fraction + a.aux_fraction >= 1) s.fail("averaging.aux_fraction", "client_fraction + aux_fraction must be below 1");
  auto& m = a.matchmaking;
  const std::int64_t natural = a.grouping == "moshpit" ? a.grid_side : a.grouping == "random" ? a.group_size : 2;
  m.target_group_size = static_cast<std::size_t>(s.get_int("averaging.target_group_size", natural, 1, 4096));
  m.min_group_size = static_cast<std::size_t>(s.get_int("averaging.min_group_size", 2, 1, 4096));
  if (m.min_group_size > m.target_group_size) s.fail("averaging.min_group_size", "must not exceed target_group_size");
  m.budget = s.get_duration("averaging.matchmaking_budget", std::chrono::seconds(3));
  m.poll = s.get_duration("averaging.poll", std::chrono::milliseconds(500));
  if (m.budget <= Duration::zero() || m.poll <= Duration::zero()) s.fail("averaging.poll", "budget and poll must be positive");
  auto& r = a.allreduce;
  r.piece_elements =
      static_cast<std::uint64_t>(s.get_int("averaging.piece_elements", static_cast<std::int64_t>(r.piece_elements), 1, 1 << 26));
  r.window = static_cast<std::uint32_t>(s.get_int("averaging.window", r.window, 1, 1024));
  r.max_in_flight_bytes = s.get_bytes("averaging.max_in_flight", r.max_in_flight_bytes);
  r.min_part = static_cast<std::uint64_t>(s.get_int("averaging.min_part", static_cast<std::int64_t>(r.min_part), 0, std::int64_t{1} << 32));
  r.parts = s.get_string("averaging.parts", averaging::to_string(r.parts), {"minmax", "proportional"}) == "minmax"
                ? averaging::PartRule::kMinMax
                : averaging::PartRule::kProportional;
  r.sender_timeout = s.get_duration("averaging.sender_timeout", r.sender_timeout);
  r.reducer_timeout = s.get_duration("averaging.reducer_timeout", r.reducer_timeout);
  if (r.reducer_timeout <= r.sender_timeout) s.fail("averaging.reducer_timeout", "must be longer than sender_timeout");
  r.codec.codec = *compression::codec_from_string(s.get_string("averaging.codec", "float32", compression::codec_names()));
  r.codec.min_elements = static_cast<std::uint64_t>(s.get_int("averaging.codec_min_elements", 0, 0, std::int64_t{1} << 40));
  parse_aggregation(s, "averaging", r.aggregation);
  if (a.start + a.period * a.rounds > spec.duration)
    s.fail("averaging.rounds", "the rounds end after the run does: start + rounds * period = " +
                                   format_duration(a.start + a.period * a.rounds) + " > duration " + format_duration(spec.duration));
  return c;
}

void summarize_averaging(std::FILE* f, const Metrics& m, const RunInfo&) {
  auto c = [&](const char* k) { return static_cast<long long>(m.counter(k)); };
  std::fprintf(f, "  averaging: %lld peer-rounds ok, %lld matchmaking failures, %lld failed reducers, %lld void rounds\n",
               c("avg.rounds_ok"), c("avg.matchmaking_failures"), c("avg.failed_reducers"), c("avg.rounds_void"));
  std::fprintf(f, "  round time p50 %.3f s, bytes sent per peer-round p50 %.0f, group size p50 %.0f\n",
               m.quantile("avg.round.seconds", 0.5), m.quantile("avg.round.bytes_sent", 0.5), m.quantile("avg.group_size", 0.5));
  std::fprintf(f, "  variance by round:");
  if (auto it = m.series().find("avg.round.variance"); it != m.series().end())
    for (double v : it->second) std::fprintf(f, " %.3g", v);
  std::fprintf(f, "\n");
}

const RegisterWorkload kRegister{WorkloadType{
    "averaging", "rounds of decentralized averaging: Moshpit grid groups through the DHT, or static baselines", true,
    parse_averaging, [](const SwarmSpec& spec, Metrics& m) { return std::make_unique<AveragingWorkload>(spec, m); },
    summarize_averaging}};

}  // namespace
}  // namespace apiary
