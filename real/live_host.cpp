#include <utility>
#include "real/live_host.hpp"

#include <boost/asio.hpp>
#include <chrono>

#include "harness/log.hpp"
#include "real/asio_timer.hpp"
#include "real/live_runtime.hpp"

namespace apiary::real {

namespace asio = boost::asio;

// The runner's world on real sockets and the wall clock: every peer in this process on one
// io_context, each with its own LiveRuntime; Asio steady timers as the runner's timers.
class LiveHost final : public Host {
 public:
  LiveHost(const SwarmSpec& spec, Metrics& metrics) : spec_(spec), metrics_(metrics) {
    const auto h = Endpoint::parse(spec_.live_host + ":1");
    if (!h) throw std::runtime_error("live.host '" + spec_.live_host + "' is not an IPv4 address");
    host_ = *h;
  }
  ~LiveHost() override {
    for (auto& p : peers_) p.rt->close();
  }
  std::string backend() const override { return "live"; }

  // Live, the link is the machine's: latency is the network's (or live.emulated_latency, held on
  // every received message), and the drawn bandwidth is only the peer's declared share for load
  // balancing, which the runner hands to the peer's stack.
  void add_peer(std::uint32_t i, const LinkDraw&) override {
    LiveOptions o;
    o.emulated_delay = spec_.live_emulated_latency;
    o.listen = Endpoint{host_.ip, static_cast<std::uint16_t>(spec_.live_base_port ? spec_.live_base_port + i : 0)};
    auto& p = peers_.emplace_back();
    p.rt = std::make_unique<LiveRuntime>(io_, o);
    // Opened now to learn its port, which the peer keeps across down and up; and left open until
    // the peer first goes down: closed and reopened later, the port could meanwhile be taken as
    // the local port of some other process's connection. (Nobody sends to a peer that has not
    // joined: its endpoint is known to no one yet.)
    p.rt->open();
    p.env = std::make_unique<PeerEnv>(*p.rt, metrics_, i, Rng(spec_.seed).fork(i + 1));
    p.rt->set_observer(p.env->observer);
    if (log_level_) p.env->observer.set_log_sink(&LiveHost::log, this, *log_level_);
  }

  PeerEnv& env(std::uint32_t i) override { return *peers_[i].env; }
  Endpoint endpoint(std::uint32_t i) const override { return peers_[i].rt->local(); }

  std::size_t pending_timers(std::uint32_t i) const override { return peers_[i].rt->pending_timers(); }

  void set_up(std::uint32_t i, bool up) override {
    auto& p = peers_[i];
    if (up == p.up) return;
    if (up)
      p.rt->open();
    else
      p.rt->close();
    p.up = up;
  }

  Duration elapsed() const override { return std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - origin()); }

  void at(Duration t, std::function<void()> fn) override {
    run_at(io_, origin() + t, std::move(fn));
  }

  void run(Duration end) override {
    asio::steady_timer deadline(io_, origin() + end);
    deadline.async_wait([this](boost::system::error_code ec) {
      if (!ec) io_.stop();
    });
    io_.run();
    io_.restart();
  }

  void stop() override { io_.stop(); }

  void add_figures(RunInfo& info, const Metrics&) override {
    info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - built_).count();
  }

 private:
  struct Peer {
    std::unique_ptr<LiveRuntime> rt;
    std::unique_ptr<PeerEnv> env;
    bool up = false;
  };
  static void log(void* self, std::uint32_t peer, LogLevel level, std::string_view component, std::string_view msg) {
    const auto* host = static_cast<const LiveHost*>(self);
    print_log_line(to_seconds(host->elapsed()), peer, level, component, msg);
  }
  // Run time 0: the first time anyone asks (the runner's first schedule, once the peers are
  // built and the workload has loaded its data), so set-up does not eat into the run.
  std::chrono::steady_clock::time_point origin() const {
    if (!start_) start_ = std::chrono::steady_clock::now();
    return *start_;
  }

  const SwarmSpec& spec_;
  Metrics& metrics_;
  asio::io_context io_;
  Endpoint host_;
  std::vector<Peer> peers_;
  std::chrono::steady_clock::time_point built_ = std::chrono::steady_clock::now();
  std::optional<LogLevel> log_level_ = log_level_from_env();
  mutable std::optional<std::chrono::steady_clock::time_point> start_;
};

std::unique_ptr<Host> make_live_host(const SwarmSpec& spec, Metrics& metrics) {
  return std::make_unique<LiveHost>(spec, metrics);
}

RunInfo run_live_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  if (spec.live_processes) {
    const ProcessLauncher* launch = WorkloadRegistry::launcher(spec.workload);
    if (!launch) throw std::runtime_error("the " + spec.workload + " workload has no live process swarm");
    return launch->run(spec, metrics, progress);
  }
  LiveHost host(spec, metrics);
  return run_on_host(spec, metrics, host, progress);
}

}  // namespace apiary::real
