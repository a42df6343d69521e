#pragma once
// The live host: the runner's world on real sockets and the wall clock. Every peer runs in this
// process on one io_context with its own LiveRuntime (TCP on the scenario's host, loopback by
// default); a peer that goes down closes its listener and connections, and one that comes back
// listens on its old port. The host's timers are Asio steady timers; run time starts at run().
#include <memory>

#include "harness/host.hpp"
#include "harness/runner.hpp"

namespace apiary::real {

// A fresh live world for one run: every peer in this process on one io_context.
std::unique_ptr<Host> make_live_host(const SwarmSpec& spec, Metrics& metrics);

// A scenario's swarm live: the workload's process launcher when the scenario asks for separate
// processes (live.processes), else the runner on a LiveHost in this process.
RunInfo run_live_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress = {});

}  // namespace apiary::real
