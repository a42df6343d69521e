#include "core/workloads/averaging_workload.hpp"

#include <algorithm>
#include <numeric>

#include "core/scenario/swarm_spec.hpp"

namespace apiary {

using namespace averaging;

AveragingApp::AveragingApp(Runtime& rt, Rpc& rpc, dht::DhtNode* dht, const AveragingWorkloadSpec& spec,
                           MemberKind kind, GridPosition position)
    : rt_(rt), spec_(spec), kind_(kind), position_(std::move(position)) {
  if (dht) mm_ = std::make_unique<Matchmaker>(rt, rpc, *dht, spec.matchmaking);
  avg_ = std::make_unique<Averager>(rt, rpc, spec.allreduce);
}

AveragingApp::~AveragingApp() { scope_.destroy_all(); }

void AveragingApp::start_round(std::uint64_t t, std::string key) {
  if (busy_) {
    rt_.observer.count("avg.rounds_overlapped");
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
  Result<AllReduceReport> r = co_await avg_->all_reduce(std::move(group), std::move(local), 1.0);
  if (!r.ok()) {
    rt_.observer.count("avg.allreduce_failures");
    rt_.observer.log(LogLevel::kDebug, "avg", "round " + std::to_string(t) + ": " + r.error().describe());
    busy_ = false;
    co_return;
  }
  if (sends(kind_)) values_ = std::move(r->averaged);
  if (rank) position_.update(t, *rank);
  rt_.observer.count("avg.rounds_ok");
  rt_.observer.count("avg.pieces_kept", static_cast<std::int64_t>(r->pieces_kept));
  rt_.observer.count("avg.failed_reducers", static_cast<std::int64_t>(r->failed_reducers.size()));
  rt_.observer.sample("avg.round.seconds", to_seconds(rt_.now() - t0));
  rt_.observer.sample("avg.round.bytes_sent", static_cast<double>(r->bytes_sent));
  rt_.observer.sample("avg.allreduce.seconds", to_seconds(r->elapsed));
  busy_ = false;
}

void AveragingMemo::save(AveragingApp* app) {
  if (!app) return;
  values = app->values();
  position = app->position();
}

void AveragingMemo::restore(AveragingApp* app) {
  if (!app) return;
  if (values) app->values() = std::move(*values);
  if (position) app->position() = *position;
}

AveragingDriver::AveragingDriver(const SwarmSpec& spec, Metrics& metrics)
    : spec_(spec), avg_(spec.averaging), metrics_(metrics), rng_(spec.seed ^ 0x61766572616765ULL) {
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
    for (auto i : who) g.members.push_back(Member{directory[i], apps[i]->kind(), 1.0});
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
  for (std::uint32_t i = 0; i < n; ++i)  // moshpit: matchmaking through the DHT
    if (!fails[i]) apps[i]->start_round(t, apps[i]->position().key(t));
  return true;
}

void AveragingDriver::finish(const std::vector<AveragingApp*>& apps) {
  record_variance(avg_.rounds, apps);
  if (!reached_) metrics_.count("avg.target_not_reached", 1);
}

}  // namespace apiary
