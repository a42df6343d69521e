#include <utility>
#include "real/live_swarm.hpp"

#include <boost/asio.hpp>

#include "real/live_dht.hpp"
#include "real/live_runtime.hpp"

namespace apiary::real {

namespace asio = boost::asio;

RunInfo run_live_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  if (spec.workload == "dht") return run_live_dht_swarm(spec, metrics, progress);
  const auto wall0 = std::chrono::steady_clock::now();
  asio::io_context io;
  const auto host = Endpoint::parse(spec.live_host + ":1");
  if (!host) throw std::runtime_error("live.host '" + spec.live_host + "' is not an IPv4 address");

  struct LivePeer {
    std::unique_ptr<LiveRuntime> rt;
    std::unique_ptr<PeerEnv> env;
    std::unique_ptr<PeerStack> stack;
  };
  std::vector<LivePeer> peers(spec.peers);
  std::vector<Endpoint> directory;
  LiveOptions base;
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
  for (auto& p : peers) {
    p.stack = std::make_unique<PeerStack>(p.env->runtime, spec, directory, static_cast<std::uint32_t>(&p - peers.data()));
    p.stack->start();
  }

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
      if (now >= end) {
        io.stop();
        return;
      }
      arm();
    });
  };
  arm();
  io.run();
  for (auto& p : peers) p.stack.reset();
  for (auto& p : peers) p.rt->close();

  RunInfo info;
  info.backend = "live";
  info.run_seconds = to_seconds(spec.duration);
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  info.figures["messages"] = static_cast<double>(metrics.counter("transport.messages_sent"));
  return info;
}

}  // namespace apiary::real
