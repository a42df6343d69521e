#pragma once
// Runs a scenario's swarm live: N peers in this process on one io_context, each with its own
// LiveRuntime (real TCP sockets on the scenario's host, loopback by default), for the scenario's
// duration of wall-clock time.
#include "core/runtime/metrics.hpp"
#include "core/scenario/swarm_spec.hpp"

namespace apiary::real {

RunInfo run_live_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress = {});

}  // namespace apiary::real
