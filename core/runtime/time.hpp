#pragma once
// Time in Apiary is integer nanoseconds since the start of the run. The run's clock is supplied
// by the runtime (ns-3's simulator time or a steady clock); core never reads the OS clock.
#include <chrono>
#include <cstdint>
#include <string>

namespace apiary {

using Duration = std::chrono::nanoseconds;

// Tag for the run's epoch: a TimePoint can't be mixed with an OS clock's time_point by accident.
struct RunEpoch {
  using duration = Duration;
  using rep = Duration::rep;
  using period = Duration::period;
  using time_point = std::chrono::time_point<RunEpoch, Duration>;
  static constexpr bool is_steady = true;
};
using TimePoint = RunEpoch::time_point;

constexpr std::int64_t to_ns(Duration d) { return d.count(); }
constexpr std::int64_t to_ns(TimePoint t) { return t.time_since_epoch().count(); }
constexpr double to_seconds(Duration d) { return static_cast<double>(d.count()) * 1e-9; }
constexpr TimePoint time_from_ns(std::int64_t ns) { return TimePoint(Duration(ns)); }

// "1.5s", "20ms", "300us" — for logs and error messages.
std::string format_duration(Duration d);

}  // namespace apiary
