#include "sim/sim_swarm.hpp"

#include <chrono>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <ns3/simulator.h>

#include "core/workloads/dht_workload.hpp"
#include "sim/sim_network.hpp"

namespace apiary::sim {

using namespace ns3;

namespace {

std::uint64_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * 4096;
}

// APIARY_LOG=debug|info|warn|error prints the peers' logs at that level and above to stderr,
// stamped with simulated time and peer index.
void sim_log(void*, std::uint32_t peer, LogLevel level, std::string_view component, std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "%12.6f peer %u [%s] %.*s: %.*s\n", Simulator::Now().GetSeconds(), peer,
               names[static_cast<int>(level)], static_cast<int>(component.size()), component.data(),
               static_cast<int>(msg.size()), msg.data());
}

std::optional<LogLevel> log_level_from_env() {
  const char* v = std::getenv("APIARY_LOG");
  if (!v) return std::nullopt;
  const std::string s(v);
  if (s == "debug") return LogLevel::kDebug;
  if (s == "info") return LogLevel::kInfo;
  if (s == "warn") return LogLevel::kWarn;
  if (s == "error") return LogLevel::kError;
  return std::nullopt;
}

struct SimPeer {
  std::unique_ptr<PeerEnv> env;
  std::unique_ptr<PeerStack> stack;
  bool up = false;
  double bandwidth = 0;
  AveragingMemo kept;  // what it holds while it is down
};

class Swarm {
 public:
  Swarm(const SwarmSpec& spec, Metrics& metrics) : spec_(spec), metrics_(metrics) {}

  RunInfo run(const ProgressFn& progress) {
    const auto wall0 = std::chrono::steady_clock::now();
    const std::uint64_t rss0 = rss_bytes();
    Rng net_rng(spec_.seed ^ 0x6e6574776f726bULL);  // "network"
    peers_.resize(spec_.peers);
    const auto log_level = log_level_from_env();
    directory_.reserve(spec_.peers);
    for (std::uint32_t i = 0; i < spec_.peers; ++i) directory_.push_back(net_.endpoint(i));
    for (std::uint32_t i = 0; i < spec_.peers; ++i) {
      LinkParams link;
      link.latency = NanoSeconds(static_cast<std::int64_t>(spec_.latency.sample(net_rng)));
      link.up_bps = link.down_bps = std::max(1e3, spec_.bandwidth.sample(net_rng));
      auto& p = peers_[i];
      p.bandwidth = link.up_bps;
      net_.add_peer(link);
      p.env = std::make_unique<PeerEnv>(net_.runtime(i), metrics_, i, Rng(spec_.seed).fork(i + 1));
      net_.runtime(i).set_observer(p.env->observer);
      if (log_level) p.env->observer.set_log_sink(&sim_log, nullptr, *log_level);
      if (spec_.hop_delay) {
        auto rng = std::make_shared<Rng>(Rng(spec_.seed ^ 0x686f70ULL).fork(i + 1));  // "hop"
        const Distribution d = *spec_.hop_delay;
        net_.runtime(i).set_receive_delay([rng, d] { return Duration(static_cast<std::int64_t>(d.sample(*rng))); });
      }
    }
    if (spec_.latency_matrix) {
      const auto& m = *spec_.latency_matrix;
      const std::uint32_t base = net_.endpoint(0).ip;
      net_.channel().SetLatencyFunction([&m, base](std::uint32_t from, std::uint32_t to) {
        return NanoSeconds(static_cast<std::int64_t>(m.between(from - base, to - base) * 1e6));
      });
    }
    const std::uint64_t rss1 = rss_bytes();

    const bool averaging = spec_.workload == "averaging";
    const bool training = spec_.workload == "training";
    const bool dmoe = spec_.workload == "dmoe";
    const bool dht = spec_.workload == "dht" || averaging || training || dmoe;
    if (averaging) avg_driver_ = std::make_unique<AveragingDriver>(spec_, metrics_);
    if (training) train_driver_ = std::make_unique<TrainingDriver>(spec_, metrics_);
    Rng join_rng(spec_.seed ^ 0x6a6f696eULL);
    // A peer whose first churn-trace event is "up" starts down: it joins at that time.
    const std::vector<bool> starts_down = spec_.churn.starts_down(spec_.peers);
    for (std::uint32_t i = 0; i < spec_.peers; ++i) {
      if (starts_down[i]) continue;
      const bool seed_peer = dht && i < spec_.dht.bootstrap_peers;
      if (!dht || seed_peer) {
        join(i);
      } else {
        const auto at = NanoSeconds(static_cast<std::int64_t>(join_rng.uniform(0, static_cast<double>(spec_.dht.join_window.count()))));
        Simulator::Schedule(at, [this, i] { join(i); });
      }
    }
    if (spec_.churn.kind == ChurnSpec::Kind::kTrace) {
      for (const auto& ev : spec_.churn.trace)
        Simulator::Schedule(NanoSeconds(ev.at.count()), [this, ev] {
          if (ev.up && !peers_[ev.peer].up) {
            join(ev.peer);
            metrics_.count("churn.joins", 1);
          } else if (!ev.up && peers_[ev.peer].up) {
            leave(ev.peer);
            metrics_.count("churn.leaves", 1);
          }
        });
    } else if (spec_.churn.kind != ChurnSpec::Kind::kNone)
      for (std::uint32_t i = dht ? spec_.dht.bootstrap_peers : 0; i < spec_.peers; ++i)
        Simulator::Schedule(dht ? NanoSeconds(spec_.dht.join_window.count()) : Seconds(0),
                            [this, i] { schedule_leave(i); });
    if (averaging) {
      Simulator::Schedule(NanoSeconds(spec_.averaging.start.count()), [this] { averaging_round(0); });
    } else if (training) {
      Simulator::Schedule(NanoSeconds(spec_.training.start.count()), [this] {
        training_started_ = true;
        for (auto& p : peers_)
          if (p.up) p.stack->begin_training(false);
        training_eval();
      });
    } else if (dmoe) {
      // servers declare and trainers begin on their own (PeerStack); the run's duration ends it
    } else if (dht) {
      driver_ = std::make_unique<DhtWorkloadDriver>(spec_, metrics_, spec_.seed ^ 0x64726976ULL);
      Simulator::Schedule(NanoSeconds(spec_.dht.start.count()), [this] {
        schedule_store();
        schedule_get();
      });
    }

    const Time end = NanoSeconds(spec_.duration.count());
    if (progress) {
      for (int k = 1; k < 100; ++k)
        Simulator::Schedule(NanoSeconds(spec_.duration.count() / 100 * k),
                            [progress, k] { progress(k / 100.0); });
    }
    Simulator::Stop(end);
    const auto wall_sim0 = std::chrono::steady_clock::now();
    Simulator::Run();
    const auto wall_sim1 = std::chrono::steady_clock::now();
    if (progress) progress(1.0);
    const std::uint64_t rss2 = rss_bytes();

    RunInfo info;
    info.backend = "sim";
    info.run_seconds = Simulator::Now().GetSeconds();  // earlier than duration if a workload stopped the run
    const double sim_wall = std::chrono::duration<double>(wall_sim1 - wall_sim0).count();
    const auto messages = metrics_.counter("transport.messages_sent");
    info.figures["sim_wall_seconds"] = sim_wall;
    info.figures["messages"] = static_cast<double>(messages);
    info.figures["us_per_message"] = messages ? sim_wall * 1e6 / static_cast<double>(messages) : 0;
    info.figures["speedup_vs_real_time"] = sim_wall > 0 ? info.run_seconds / sim_wall : 0;
    info.figures["build_bytes_per_peer"] =
        static_cast<double>(rss1 > rss0 ? rss1 - rss0 : 0) / spec_.peers;
    info.figures["peak_bytes_per_peer"] =
        static_cast<double>(rss2 > rss0 ? rss2 - rss0 : 0) / spec_.peers;
    info.figures["channel_packets"] = static_cast<double>(net_.channel().stats().packets);
    info.figures["channel_dropped_down"] = static_cast<double>(net_.channel().stats().dropped_down);
    info.figures["sidecar_swept"] = static_cast<double>(net_.sidecar().swept());
    const double peer_minutes = spec_.peers * info.run_seconds / 60.0;
    info.figures["messages_per_peer_minute"] = static_cast<double>(messages) / peer_minutes;
    info.figures["bytes_per_peer_minute"] =
        static_cast<double>(metrics_.counter("transport.bytes_sent")) / peer_minutes;
    if (dmoe) {
      const double secs = std::max(1e-9, info.run_seconds - to_seconds(spec_.dmoe_sim.start));
      info.figures["throughput_samples_per_second"] = static_cast<double>(metrics_.counter("dmoe.samples")) / secs;
      info.figures["batch_seconds_mean"] = metrics_.mean("dmoe.batch_seconds");
    }
    if (training) {
      const double elapsed = std::max(0.0, info.run_seconds - to_seconds(spec_.training.start));
      train_driver_->finish(elapsed, train_apps(), info.figures);
    }
    if (averaging) {
      info.figures["rounds_to_target"] = avg_driver_->rounds_to_target();
      info.figures["final_variance"] = metrics_.series().count("avg.round.variance")
                                           ? metrics_.series().find("avg.round.variance")->second.back()
                                           : 0;
    } else if (dht && !training && !dmoe) {
      record_table_health();
      metrics_.count("dht.ops_abandoned", driver_->abandoned());
    }

    for (std::uint32_t i = 0; i < spec_.peers; ++i) leave(i);  // tear down before ns-3 goes
    info.wall_seconds =
        std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
    return info;
  }

 private:
  void join(std::uint32_t i) {
    auto& p = peers_[i];
    net_.set_up(i, true);
    p.stack = std::make_unique<PeerStack>(p.env->runtime, spec_, directory_, i, avg_driver_.get(), train_driver_.get());
    if (auto* a = p.stack->averaging()) a->set_bandwidth(p.bandwidth);
    p.kept.restore(p.stack->averaging());
    p.up = true;
    p.env->observer.trace("peer.join", i, 0);
    p.stack->start();
    if (training_started_) p.stack->begin_training(true);
  }
  void leave(std::uint32_t i) {
    auto& p = peers_[i];
    if (!p.up) return;
    p.env->observer.trace("peer.leave", i, 0);
    p.kept.save(p.stack->averaging());
    p.stack.reset();
    net_.set_up(i, false);
    p.up = false;
  }
  // Churn decisions use the swarm's own stream so they do not shift a peer's protocol stream.
  void schedule_leave(std::uint32_t i) {
    Simulator::Schedule(NanoSeconds(spec_.churn.draw_session(churn_rng_).count()), [this, i] {
      leave(i);
      metrics_.count("churn.leaves", 1);
      const Duration down = spec_.churn.draw_downtime(churn_rng_);
      Simulator::Schedule(NanoSeconds(down.count()), [this, i] {
        join(i);
        metrics_.count("churn.joins", 1);
        schedule_leave(i);
      });
    });
  }

  std::optional<std::uint32_t> pick_joined_peer(Rng& rng) {
    for (int tries = 0; tries < 64; ++tries) {
      const auto i = static_cast<std::uint32_t>(rng.below(spec_.peers));
      if (peers_[i].up && peers_[i].stack->joined()) return i;
    }
    return std::nullopt;
  }
  void schedule_store() {
    Simulator::Schedule(NanoSeconds(driver_->next_store_gap().count()), [this] {
      if (auto i = pick_joined_peer(driver_->rng()))
        driver_->issue_store(*peers_[*i].stack->dht(), *i, peers_[*i].env->runtime.now());
      schedule_store();
    });
  }
  void schedule_get() {
    Simulator::Schedule(NanoSeconds(driver_->next_get_gap().count()), [this] {
      if (auto i = pick_joined_peer(driver_->rng()))
        driver_->issue_get(*peers_[*i].stack->dht(), *i, peers_[*i].env->runtime.now());
      schedule_get();
    });
  }
  // Routing-table health at the end: table sizes of live peers, and for a sample of them the
  // share of their k true nearest live peers that their table holds.
  void record_table_health() {
    std::vector<std::pair<dht::DhtId, std::uint32_t>> alive;
    for (std::uint32_t i = 0; i < spec_.peers; ++i)
      if (peers_[i].up && peers_[i].stack->joined()) alive.emplace_back(peers_[i].stack->dht()->id(), i);
    metrics_.count("dht.alive_at_end", static_cast<std::int64_t>(alive.size()));
    Rng rng(spec_.seed ^ 0x6865616c7468ULL);
    const std::size_t k = spec_.dht.config.k;
    for (std::size_t s = 0; s < std::min<std::size_t>(100, alive.size()); ++s) {
      const auto& [self, idx] = alive[rng.below(alive.size())];
      auto& node = *peers_[idx].stack->dht();
      const auto st = node.table().stats();
      metrics_.sample("dht.table.contacts", static_cast<double>(st.contacts));
      metrics_.sample("dht.table.buckets", static_cast<double>(st.buckets));
      std::vector<dht::DhtId> others;
      for (const auto& [id, j] : alive)
        if (j != idx) others.push_back(id);
      const std::size_t n = std::min(k, others.size());
      std::partial_sort(others.begin(), others.begin() + static_cast<std::ptrdiff_t>(n), others.end(),
                        [&](const dht::DhtId& a, const dht::DhtId& b) { return (a ^ self) < (b ^ self); });
      std::size_t held = 0;
      for (std::size_t j = 0; j < n; ++j) held += node.table().contains(others[j]);
      if (n) metrics_.sample("dht.table.neighbour_recall", static_cast<double>(held) / static_cast<double>(n));
    }
  }

  // Rounds run one period apart; the run ends after the last one, or once the target variance
  // is reached if the scenario says so.
  void averaging_round(std::uint32_t t) {
    if (t == spec_.averaging.rounds) {
      avg_driver_->finish(apps());
      Simulator::Stop();
      return;
    }
    if (!avg_driver_->begin_round(t, apps(), directory_)) {
      Simulator::Stop();
      return;
    }
    Simulator::Schedule(NanoSeconds(spec_.averaging.period.count()), [this, t] { averaging_round(t + 1); });
  }

  // Evaluates the trainers every eval_period; the run ends when every trainer is done (or the
  // target loss is reached, if the scenario says so).
  void training_eval() {
    const double elapsed = (Simulator::Now() - NanoSeconds(spec_.training.start.count())).GetSeconds();
    if (elapsed > 0 && train_driver_->evaluate(elapsed, train_apps())) {
      Simulator::Stop();
      return;
    }
    Simulator::Schedule(NanoSeconds(spec_.training.eval_period.count()), [this] { training_eval(); });
  }
  std::vector<TrainingApp*> train_apps() {
    std::vector<TrainingApp*> out(spec_.peers, nullptr);
    for (std::uint32_t i = 0; i < spec_.peers; ++i)
      if (peers_[i].up && peers_[i].stack) out[i] = peers_[i].stack->training();
    return out;
  }

  std::vector<AveragingApp*> apps() {
    std::vector<AveragingApp*> out(spec_.peers, nullptr);
    for (std::uint32_t i = 0; i < spec_.peers; ++i)
      if (peers_[i].up && peers_[i].stack->joined()) out[i] = peers_[i].stack->averaging();
    return out;
  }

  const SwarmSpec& spec_;
  Metrics& metrics_;
  std::unique_ptr<DhtWorkloadDriver> driver_;
  std::unique_ptr<AveragingDriver> avg_driver_;
  std::unique_ptr<TrainingDriver> train_driver_;
  bool training_started_ = false;
  SimNetwork net_;
  std::vector<SimPeer> peers_;
  std::vector<Endpoint> directory_;
  Rng churn_rng_{spec_.seed ^ 0x636875726eULL};
};

}  // namespace

RunInfo run_sim_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  Swarm swarm(spec, metrics);
  return swarm.run(progress);
}

}  // namespace apiary::sim
