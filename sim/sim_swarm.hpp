#pragma once
// Runs a scenario's swarm in ns-3: builds the network, starts every peer's protocol stack,
// applies churn, advances simulated time to the scenario's duration.
#include "core/runtime/metrics.hpp"
#include "core/scenario/swarm_spec.hpp"

namespace apiary::sim {

RunInfo run_sim_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress = {});

}  // namespace apiary::sim
