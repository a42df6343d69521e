#pragma once
// What a world gives the runner: a clock and timers of its own (simulated or wall-clock), and one
// runtime per peer that it can take up and down. The ns-3 host (sim/sim_host) and the live host
// (real/live_host) are thin adapters of this; everything a run does above it is written once,
// in the runner and the workloads.
#include <cstdint>
#include <functional>
#include <string>

#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"

namespace apiary {

// A peer's access link as the runner drew it from the scenario (the same draws in both worlds).
struct LinkDraw {
  double latency_ns = 0;     // one-way access latency
  double bandwidth_bps = 0;  // access bandwidth, both directions
};

class Host {
 public:
  virtual ~Host() = default;
  virtual std::string backend() const = 0;  // "sim" or "live"
  // Builds peer i's runtime on this link (i = 0, 1, ... in order, before run()). It starts down.
  virtual void add_peer(std::uint32_t i, const LinkDraw& link) = 0;
  // Peer i's environment: its runtime view, observer and Rng.
  virtual PeerEnv& env(std::uint32_t i) = 0;
  // Peer i's address, valid from add_peer on (kept across down and up).
  virtual Endpoint endpoint(std::uint32_t i) const = 0;
  // Takes peer i's network up (it listens, receives) or down (its sockets close; what is sent to
  // it is lost).
  virtual void set_up(std::uint32_t i, bool up) = 0;
  // Timers of peer i's runtime still pending (after its stack is gone, each is a callback into
  // code that no longer exists).
  virtual std::size_t pending_timers(std::uint32_t i) const = 0;
  // Whether this world simulates the scenario's network faults itself (ns-3); otherwise the
  // runner applies what it can at each peer's transport (harness/fault_schedule.hpp).
  virtual bool simulates_network_faults() const { return false; }
  // Run time: since run() began.
  virtual Duration elapsed() const = 0;
  // Runs `fn` at run time `t` (now if t has passed). Callbacks at one instant run in the order
  // they were scheduled.
  virtual void at(Duration t, std::function<void()> fn) = 0;
  // Runs the world until run time `end` or until stop().
  virtual void run(Duration end) = 0;
  virtual void stop() = 0;
  // What this world measures of itself: the host time the run took so far (wall_seconds), the
  // cost of a simulated message, ... The harness itself reads no OS clock.
  virtual void add_figures(RunInfo& info, const Metrics& metrics) { (void)info, (void)metrics; }
};

}  // namespace apiary
