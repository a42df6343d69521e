#pragma once
// One small observer per peer: logs, counters, samples and the event trace. Components tag what
// they report ("rpc", "transport", "ping"), so one recorder can serve a whole swarm.
#include <cstdint>
#include <string_view>

namespace apiary {

enum class LogLevel : std::uint8_t { kDebug, kInfo, kWarn, kError };

class Observer {
 public:
  virtual ~Observer() = default;
  virtual void log(LogLevel level, std::string_view component, std::string_view message) = 0;
  // Add to a named counter ("transport.bad_frames").
  virtual void count(std::string_view name, std::int64_t delta = 1) = 0;
  // Record one sample of a named series ("ping.rtt_ns").
  virtual void sample(std::string_view name, double value) = 0;
  // One protocol event for the determinism trace: what happened, at the runtime's current time.
  virtual void trace(std::string_view event, std::uint64_t a = 0, std::uint64_t b = 0) = 0;
};

// Discards everything; for tests and tools that need no metrics.
class NullObserver final : public Observer {
 public:
  void log(LogLevel, std::string_view, std::string_view) override {}
  void count(std::string_view, std::int64_t) override {}
  void sample(std::string_view, double) override {}
  void trace(std::string_view, std::uint64_t, std::uint64_t) override {}
};

}  // namespace apiary
