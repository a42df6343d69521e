#pragma once
// The live host: the runner's world on real sockets and the wall clock. Every peer runs in this
// process on one io_context with its own LiveRuntime (TCP on the scenario's host, loopback by
// default); a peer that goes down closes its listener and connections, and one that comes back
// listens on its old port. The host's timers are Asio steady timers; run time starts at run().
#include <memory>

#include "harness/host.hpp"
#include "harness/runner.hpp"

namespace apiary::real {

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

// A scenario's swarm live: the workload's process launcher when the scenario asks for separate
// processes (live.processes), else the runner on a LiveHost in this process.
RunInfo run_live_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress = {});

}  // namespace apiary::real
