#pragma once
// The ns-3 host: the runner's world in simulated time. Peers are nodes of the scalable network
// model (sim/sim_network: one direct channel, per-peer access latency and bandwidth, or a latency
// matrix between sites), each with its own SimRuntime; the host's timers are ns-3 events.
#include <memory>

#include "harness/host.hpp"
#include "harness/runner.hpp"

namespace apiary::sim {

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

// A scenario's swarm in ns-3: the runner on a SimHost.
RunInfo run_sim_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress = {});

}  // namespace apiary::sim
