#pragma once
// Live collaborative training with LibTorch trainer processes: `apiary run` on a scenario with
// backend "live", live.processes = true and workload "training" starts a seed DHT peer (`apiary peer`) and one `apiary-train trainer`
// process per trainer on loopback, applies the scenario's churn trace to them (a "down" event
// kills the trainer's process with SIGKILL, an "up" event starts a fresh process that downloads
// the swarm's state first; a trainer whose first event is "up" starts down), waits for the run
// to end, then runs the single-process baseline and gathers everything into the run's metrics:
// steps, global batch sizes, group sizes, accuracy over time, final accuracy against the
// baseline's. No LibTorch here: the trainers are separate processes.
#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"
#include "real/child_options.hpp"

namespace apiary::real {

// The options every trainer process of the scenario's swarm shares (its index, role, attack and
// endpoints are set per process): the same training.* keys the ns-3 trainers read.
TrainerOptions trainer_options(const SwarmSpec& spec);

RunInfo run_live_training(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress);

}  // namespace apiary::real
