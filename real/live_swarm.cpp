#include <utility>
#include "real/live_swarm.hpp"

#include <boost/asio.hpp>

#include "real/live_dht.hpp"
#include "real/live_dmoe.hpp"
#include "real/live_training.hpp"
#include "real/live_runtime.hpp"

namespace apiary::real {

namespace asio = boost::asio;

RunInfo run_live_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  if (spec.workload == "dht") return run_live_dht_swarm(spec, metrics, progress);
  if (spec.workload == "training") return run_live_training(spec, metrics, progress);
  if (spec.workload == "dmoe") return run_live_dmoe(spec, metrics, progress);
  const auto wall0 = std::chrono::steady_clock::now();
  asio::io_context io;
  const auto host = Endpoint::parse(spec.live_host + ":1");
  if (!host) throw std::runtime_error("live.host '" + spec.live_host + "' is not an IPv4 address");

  struct LivePeer {
    std::unique_ptr<LiveRuntime> rt;
    std::unique_ptr<PeerEnv> env;
    std::unique_ptr<PeerStack> stack;
    AveragingMemo kept;  // what it holds while it is down
  };
  std::vector<LivePeer> peers(spec.peers);
  std::vector<Endpoint> directory;
  LiveOptions base;
  base.emulated_delay = spec.live_emulated_latency;  // every received message held this long
  for (std::uint32_t i = 0; i < spec.peers; ++i) {
    auto& p = peers[i];
    LiveOptions o = base;
    o.listen = Endpoint{host->ip, static_cast<std::uint16_t>(spec.live_base_port ? spec.live_base_port + i : 0)};
    p.rt = std::make_unique<LiveRuntime>(io, o);
    p.rt->open();
    p.env = std::make_unique<PeerEnv>(*p.rt, metrics, i, Rng(spec.seed).fork(i + 1));
    p.rt->set_observer(p.env->observer);
    directory.push_back(p.rt->local());
  }
  std::unique_ptr<AveragingDriver> avg_driver;
  if (spec.workload == "averaging") avg_driver = std::make_unique<AveragingDriver>(spec, metrics);
  // Churn, as in simulation: a peer that leaves closes its sockets and drops its protocol state
  // (keeping its averaging values and grid cell); one that comes back listens on its old port and
  // joins again through the bootstrap peers.
  auto join = [&](std::uint32_t i) {
    auto& p = peers[i];
    if (p.stack) return;
    p.rt->open();
    p.stack = std::make_unique<PeerStack>(p.env->runtime, spec, directory, i, avg_driver.get());
    p.kept.restore(p.stack->averaging());
    p.env->observer.trace("peer.join", i, 0);
    p.stack->start();
  };
  auto leave = [&](std::uint32_t i) {
    auto& p = peers[i];
    if (!p.stack) return;
    p.env->observer.trace("peer.leave", i, 0);
    p.kept.save(p.stack->averaging());
    p.stack.reset();
    p.rt->close();
  };
  const bool has_dht = spec.workload != "ping";
  const std::vector<bool> starts_down = spec.churn.starts_down(spec.peers);
  for (std::uint32_t i = 0; i < spec.peers; ++i) {
    if (starts_down[i])
      peers[i].rt->close();  // opened above to learn its port; listens once it joins
    else
      join(i);
  }
  std::vector<std::unique_ptr<asio::steady_timer>> churn_timers;
  auto after = [&](Duration d, std::function<void()> fn) {
    auto& t = churn_timers.emplace_back(std::make_unique<asio::steady_timer>(io));
    t->expires_after(d);
    t->async_wait([fn = std::move(fn)](boost::system::error_code ec) {
      if (!ec) fn();
    });
  };
  Rng churn_rng(spec.seed ^ 0x636875726eULL);  // the simulation's churn stream
  if (spec.churn.kind == ChurnSpec::Kind::kTrace) {
    for (const auto& ev : spec.churn.trace)
      after(ev.at, [&, ev] {
        const bool up = static_cast<bool>(peers[ev.peer].stack);
        if (ev.up && !up) {
          join(ev.peer);
          metrics.count("churn.joins", 1);
        } else if (!ev.up && up) {
          leave(ev.peer);
          metrics.count("churn.leaves", 1);
        }
      });
  }
  std::function<void(std::uint32_t)> session;  // lives as long as the timers that call it
  if (spec.churn.kind != ChurnSpec::Kind::kNone && spec.churn.kind != ChurnSpec::Kind::kTrace) {
    session = [&](std::uint32_t i) {
      after(spec.churn.draw_session(churn_rng), [&, i] {
        leave(i);
        metrics.count("churn.leaves", 1);
        after(spec.churn.draw_downtime(churn_rng), [&, i] {
          join(i);
          metrics.count("churn.joins", 1);
          session(i);
        });
      });
    };
    // The bootstrap peers stay up; the others' sessions begin once the swarm has settled.
    const std::uint32_t first = has_dht ? spec.dht.bootstrap_peers : 0;
    after(has_dht ? spec.dht.join_window : Duration::zero(), [&, first] {
      for (std::uint32_t i = first; i < spec.peers; ++i) session(i);
    });
  }

  // Averaging rounds at fixed times, as in simulation; the run ends after the last one.
  asio::steady_timer round_timer(io);
  bool rounds_over = false;
  std::function<void(std::uint32_t)> schedule_round = [&](std::uint32_t t) {
    round_timer.expires_at(std::chrono::steady_clock::now() + (t == 0 ? spec.averaging.start : spec.averaging.period));
    round_timer.async_wait([&, t](boost::system::error_code ec) {
      if (ec) return;
      std::vector<AveragingApp*> apps(spec.peers, nullptr);
      for (std::uint32_t i = 0; i < spec.peers; ++i)
        if (peers[i].stack && peers[i].stack->joined()) apps[i] = peers[i].stack->averaging();
      if (t == spec.averaging.rounds) {
        avg_driver->finish(apps);
        rounds_over = true;
        return;
      }
      if (!avg_driver->begin_round(t, apps, directory)) {
        rounds_over = true;
        return;
      }
      schedule_round(t + 1);
    });
  };
  if (avg_driver) schedule_round(0);

  const auto start = std::chrono::steady_clock::now();
  const auto end = start + spec.duration;
  asio::steady_timer tick(io);
  std::function<void()> arm = [&] {
    tick.expires_after(std::min<Duration>(std::chrono::milliseconds(100), spec.duration / 100 + Duration(1)));
    tick.async_wait([&](boost::system::error_code ec) {
      if (ec) return;
      const auto now = std::chrono::steady_clock::now();
      if (progress)
        progress(std::min(1.0, std::chrono::duration<double>(now - start) /
                                   std::chrono::duration<double>(spec.duration)));
      if (now >= end || rounds_over) {
        io.stop();
        return;
      }
      arm();
    });
  };
  arm();
  io.run();
  churn_timers.clear();
  for (auto& p : peers) p.stack.reset();
  for (auto& p : peers) p.rt->close();

  RunInfo info;
  info.backend = "live";
  info.run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  info.figures["messages"] = static_cast<double>(metrics.counter("transport.messages_sent"));
  if (avg_driver) info.figures["rounds_to_target"] = avg_driver->rounds_to_target();
  return info;
}

}  // namespace apiary::real
