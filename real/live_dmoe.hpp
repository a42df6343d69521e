#pragma once
// Live DMoE with LibTorch processes: `apiary run` on a scenario with backend "live",
// live.processes = true and workload "dmoe"
// starts a seed DHT peer, `dmoe.servers` expert-server processes (`apiary-train expert-server`,
// the grid's experts spread round-robin, each request failing with dmoe.fail_probability) and a
// trainer process (`apiary-train dmoe-trainer`) whose classifier's middle layer is the remote
// mixture; every process holds received messages for live.emulated_latency. Afterwards the same
// classifier with local experts trains in one process (the baseline). Accuracy over steps, the
// final accuracies, expert failures and re-searches go into the run's metrics.
#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"

namespace apiary::real {

RunInfo run_live_dmoe(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress);

}  // namespace apiary::real
