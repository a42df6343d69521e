#include <utility>
#include "real/live_host.hpp"

#include <boost/asio.hpp>
#include <chrono>

#include "harness/log.hpp"
#include "real/live_runtime.hpp"

namespace apiary::real {

namespace asio = boost::asio;

class LiveHost final : public Host {
 public:
  LiveHost(const SwarmSpec& spec, Metrics& metrics);
  ~LiveHost() override;
  std::string backend() const override { return "live"; }
  void add_peer(std::uint32_t i, const LinkDraw& link) override;
  PeerEnv& env(std::uint32_t i) override;
  Endpoint endpoint(std::uint32_t i) const override;
  void set_up(std::uint32_t i, bool up) override;
  Duration elapsed() const override;
  void at(Duration t, std::function<void()> fn) override;
  void run(Duration end) override;
  void stop() override;
  void add_figures(RunInfo& info, const Metrics& metrics) override;

 struct Impl;

 private:
  std::unique_ptr<Impl> impl_;
};


struct LiveHost::Impl {
  const SwarmSpec& spec;
  Metrics& metrics;
  asio::io_context io;
  Endpoint host;
  struct Peer {
    std::unique_ptr<LiveRuntime> rt;
    std::unique_ptr<PeerEnv> env;
    bool up = false;
  };
  std::vector<Peer> peers;
  std::chrono::steady_clock::time_point built = std::chrono::steady_clock::now();
  std::optional<LogLevel> log_level = log_level_from_env();
  // Run time 0: the first time anyone asks (the runner's first schedule, once the peers are
  // built and the workload has loaded its data), so set-up does not eat into the run.
  std::optional<std::chrono::steady_clock::time_point> start;
  std::chrono::steady_clock::time_point origin() {
    if (!start) start = std::chrono::steady_clock::now();
    return *start;
  }
  Impl(const SwarmSpec& s, Metrics& m) : spec(s), metrics(m) {
    const auto h = Endpoint::parse(spec.live_host + ":1");
    if (!h) throw std::runtime_error("live.host '" + spec.live_host + "' is not an IPv4 address");
    host = *h;
  }
};

namespace {
void live_log(void* ctx, std::uint32_t peer, LogLevel level, std::string_view component, std::string_view msg) {
  auto* host = static_cast<LiveHost::Impl*>(ctx);
  print_log_line(std::chrono::duration<double>(std::chrono::steady_clock::now() - host->origin()).count(), peer, level,
                 component, msg);
}
}  // namespace

LiveHost::LiveHost(const SwarmSpec& spec, Metrics& metrics) : impl_(std::make_unique<Impl>(spec, metrics)) {}

LiveHost::~LiveHost() {
  for (auto& p : impl_->peers) p.rt->close();
}

void LiveHost::add_peer(std::uint32_t i, const LinkDraw&) {
  // Live, the link is the machine's: latency is the network's (or live.emulated_latency, on every
  // received message) and the drawn bandwidth is only the peer's declared share for load balancing.
  auto& s = *impl_;
  LiveOptions o;
  o.emulated_delay = s.spec.live_emulated_latency;
  o.listen = Endpoint{s.host.ip, static_cast<std::uint16_t>(s.spec.live_base_port ? s.spec.live_base_port + i : 0)};
  auto& p = s.peers.emplace_back();
  p.rt = std::make_unique<LiveRuntime>(s.io, o);
  p.rt->open();  // to learn its port: the peer keeps it across down and up
  p.rt->close();
  p.env = std::make_unique<PeerEnv>(*p.rt, s.metrics, i, Rng(s.spec.seed).fork(i + 1));
  p.rt->set_observer(p.env->observer);
  if (s.log_level) p.env->observer.set_log_sink(&live_log, impl_.get(), *s.log_level);
}

PeerEnv& LiveHost::env(std::uint32_t i) { return *impl_->peers[i].env; }

Endpoint LiveHost::endpoint(std::uint32_t i) const { return impl_->peers[i].rt->local(); }

void LiveHost::set_up(std::uint32_t i, bool up) {
  auto& p = impl_->peers[i];
  if (up == p.up) return;
  if (up)
    p.rt->open();
  else
    p.rt->close();
  p.up = up;
}

Duration LiveHost::elapsed() const {
  return std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - impl_->origin());
}

void LiveHost::at(Duration t, std::function<void()> fn) {
  auto timer = std::make_shared<asio::steady_timer>(impl_->io);
  timer->expires_at(impl_->origin() + t);
  timer->async_wait([timer, fn = std::move(fn)](boost::system::error_code ec) {
    if (!ec) fn();
  });
}

void LiveHost::run(Duration end) {
  auto& s = *impl_;
  asio::steady_timer deadline(s.io);
  deadline.expires_at(s.origin() + end);
  deadline.async_wait([&s](boost::system::error_code ec) {
    if (!ec) s.io.stop();
  });
  s.io.run();
  s.io.restart();
}

void LiveHost::stop() { impl_->io.stop(); }

void LiveHost::add_figures(RunInfo& info, const Metrics&) {
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - impl_->built).count();
}

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
