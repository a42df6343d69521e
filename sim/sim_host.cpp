#include "sim/sim_host.hpp"

#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <ns3/simulator.h>

#include "harness/log.hpp"
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

void sim_log(void*, std::uint32_t peer, LogLevel level, std::string_view component, std::string_view msg) {
  print_log_line(Simulator::Now().GetSeconds(), peer, level, component, msg);
}

}  // namespace

class SimHost final : public Host {
 public:
  SimHost(const SwarmSpec& spec, Metrics& metrics);
  ~SimHost() override;
  std::string backend() const override { return "sim"; }
  void add_peer(std::uint32_t i, const LinkDraw& link) override;
  PeerEnv& env(std::uint32_t i) override;
  Endpoint endpoint(std::uint32_t i) const override;
  void set_up(std::uint32_t i, bool up) override;
  Duration elapsed() const override;
  void at(Duration t, std::function<void()> fn) override;
  void run(Duration end) override;
  void stop() override;
  void add_figures(RunInfo& info, const Metrics& metrics) override;

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};


struct SimHost::Impl {
  const SwarmSpec& spec;
  Metrics& metrics;
  SimNetwork net;
  std::vector<std::unique_ptr<PeerEnv>> envs;
  std::optional<LogLevel> log_level = log_level_from_env();
  std::uint64_t rss0 = rss_bytes(), rss_built = 0, rss_end = 0;
  double sim_wall = 0;
  std::chrono::steady_clock::time_point wall0 = std::chrono::steady_clock::now();
  Impl(const SwarmSpec& s, Metrics& m) : spec(s), metrics(m) {
    if (spec.latency_matrix) {
      const auto& matrix = *spec.latency_matrix;
      const std::uint32_t base = net.endpoint(0).ip;
      net.channel().SetLatencyFunction([&matrix, base](std::uint32_t from, std::uint32_t to) {
        return NanoSeconds(static_cast<std::int64_t>(matrix.between(from - base, to - base) * 1e6));
      });
    }
  }
};

SimHost::SimHost(const SwarmSpec& spec, Metrics& metrics) : impl_(std::make_unique<Impl>(spec, metrics)) {}

SimHost::~SimHost() = default;

void SimHost::add_peer(std::uint32_t i, const LinkDraw& link) {
  auto& s = *impl_;
  LinkParams params;
  params.latency = NanoSeconds(static_cast<std::int64_t>(link.latency_ns));
  params.up_bps = params.down_bps = link.bandwidth_bps;
  s.net.add_peer(params);
  auto& rt = s.net.runtime(i);
  s.envs.push_back(std::make_unique<PeerEnv>(rt, s.metrics, i, Rng(s.spec.seed).fork(i + 1)));
  rt.set_observer(s.envs.back()->observer);
  if (s.log_level) s.envs.back()->observer.set_log_sink(&sim_log, nullptr, *s.log_level);
  if (s.spec.hop_delay) {
    auto rng = std::make_shared<Rng>(Rng(s.spec.seed ^ 0x686f70ULL).fork(i + 1));  // "hop"
    const Distribution d = *s.spec.hop_delay;
    rt.set_receive_delay([rng, d] { return Duration(static_cast<std::int64_t>(d.sample(*rng))); });
  }
  if (i + 1 == s.spec.peers) s.rss_built = rss_bytes();
}

PeerEnv& SimHost::env(std::uint32_t i) { return *impl_->envs[i]; }

Endpoint SimHost::endpoint(std::uint32_t i) const { return impl_->net.endpoint(i); }

void SimHost::set_up(std::uint32_t i, bool up) { impl_->net.set_up(i, up); }

Duration SimHost::elapsed() const { return Duration(Simulator::Now().GetNanoSeconds()); }

void SimHost::at(Duration t, std::function<void()> fn) {
  const Duration delay = std::max(Duration::zero(), t - elapsed());
  Simulator::Schedule(NanoSeconds(delay.count()), std::move(fn));
}

void SimHost::run(Duration end) {
  Simulator::Stop(NanoSeconds(end.count()));
  const auto w0 = std::chrono::steady_clock::now();
  Simulator::Run();
  impl_->sim_wall = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
  impl_->rss_end = rss_bytes();
}

void SimHost::stop() { Simulator::Stop(); }

void SimHost::add_figures(RunInfo& info, const Metrics& metrics) {
  auto& s = *impl_;
  const auto messages = metrics.counter("transport.messages_sent");
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - s.wall0).count();
  info.figures["sim_wall_seconds"] = s.sim_wall;
  info.figures["us_per_message"] = messages ? s.sim_wall * 1e6 / static_cast<double>(messages) : 0;
  info.figures["speedup_vs_real_time"] = s.sim_wall > 0 ? info.run_seconds / s.sim_wall : 0;
  info.figures["build_bytes_per_peer"] = static_cast<double>(s.rss_built > s.rss0 ? s.rss_built - s.rss0 : 0) / s.spec.peers;
  info.figures["peak_bytes_per_peer"] = static_cast<double>(s.rss_end > s.rss0 ? s.rss_end - s.rss0 : 0) / s.spec.peers;
  info.figures["channel_packets"] = static_cast<double>(s.net.channel().stats().packets);
  info.figures["channel_dropped_down"] = static_cast<double>(s.net.channel().stats().dropped_down);
  info.figures["sidecar_swept"] = static_cast<double>(s.net.sidecar().swept());
}

std::unique_ptr<Host> make_sim_host(const SwarmSpec& spec, Metrics& metrics) {
  return std::make_unique<SimHost>(spec, metrics);
}

RunInfo run_sim_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  SimHost host(spec, metrics);
  return run_on_host(spec, metrics, host, progress);
}

}  // namespace apiary::sim
