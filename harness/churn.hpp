#pragma once
// Churn, written once for every way a swarm runs: the runner's peers in ns-3 or live, and live
// swarms of separate processes (where "down" is SIGKILL and "up" a fresh process). Given when
// things happen (the world's own timer) and what up and down mean, it applies the scenario's
// churn: a trace's events, or sessions (exponential or Weibull) and downtimes (exponential) drawn
// from the run's churn stream. The first `spared` peers (a DHT's seeds) never leave a session
// churn, and sessions begin at `sessions_from` (once the swarm has formed).
#include <cstdint>
#include <functional>
#include <optional>

#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"

namespace apiary {

class ChurnDriver {
 public:
  struct Hooks {
    std::function<void(Duration, std::function<void()>)> at;  // run `fn` at run time t
    std::function<Duration()> elapsed;                          // run time now
    std::function<bool(std::uint32_t)> is_up;
    std::function<void(std::uint32_t)> up, down;
  };
  ChurnDriver(const SwarmSpec& spec, Metrics& metrics, Hooks hooks);
  // Schedules the churn of peers [0, churned) (all by default; a trace's events for others are
  // ignored); counts churn.leaves and churn.joins as they happen.
  void begin(std::uint32_t spared, Duration sessions_from, std::optional<std::uint32_t> churned = std::nullopt);

 private:
  void session(std::uint32_t i);
  const SwarmSpec& spec_;
  Metrics& metrics_;
  Hooks hooks_;
  Rng rng_;
};

}  // namespace apiary
