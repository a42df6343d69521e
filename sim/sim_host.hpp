#pragma once
// The ns-3 host: the runner's world in simulated time. Peers are nodes of the scalable network
// model (sim/sim_network: one direct channel, per-peer access latency and bandwidth, or a latency
// matrix between sites), each with its own SimRuntime; the host's timers are ns-3 events.
#include <memory>

#include "harness/host.hpp"
#include "harness/runner.hpp"

namespace apiary::sim {

// A fresh ns-3 world for one run (one at a time per process: ns-3's simulator is global).
std::unique_ptr<Host> make_sim_host(const SwarmSpec& spec, Metrics& metrics);

// A scenario's swarm in ns-3: the runner on a SimHost.
RunInfo run_sim_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress = {});

}  // namespace apiary::sim
