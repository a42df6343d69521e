#pragma once
// A swarm-wide metrics store and the per-peer observer that feeds it. Ordered maps only: the
// order in which metrics are written out never depends on hashing. The event trace is folded
// into a running 64-bit FNV-1a hash (time, peer, event, arguments) so a million-event run can
// be compared bit for bit without keeping the events; a bounded prefix is kept for debugging.
#include <cstdint>
#include <map>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "core/runtime/observer.hpp"
#include "core/runtime/faults.hpp"
#include "core/runtime/runtime.hpp"

namespace apiary {

class Metrics {
 public:
  struct TraceEvent {
    std::int64_t time_ns;
    std::uint32_t peer;
    std::string event;
    std::uint64_t a, b;
  };

  void count(std::string_view name, std::int64_t delta) {
    auto it = counters_.find(name);
    if (it == counters_.end()) it = counters_.emplace(std::string(name), 0).first;
    it->second += delta;
  }
  void sample(std::string_view name, double v) {
    auto it = series_.find(name);
    if (it == series_.end()) it = series_.emplace(std::string(name), std::vector<double>{}).first;
    it->second.push_back(v);
  }
  void trace(std::int64_t t, std::uint32_t peer, std::string_view ev, std::uint64_t a,
             std::uint64_t b);

  std::int64_t counter(std::string_view name) const {
    auto it = counters_.find(name);
    return it == counters_.end() ? 0 : it->second;
  }
  const std::map<std::string, std::int64_t, std::less<>>& counters() const { return counters_; }
  const std::map<std::string, std::vector<double>, std::less<>>& series() const { return series_; }
  std::uint64_t trace_hash() const { return trace_hash_; }
  std::uint64_t trace_events() const { return trace_events_; }
  const std::vector<TraceEvent>& trace_prefix() const { return trace_prefix_; }
  void set_trace_prefix_limit(std::size_t n) { trace_prefix_limit_ = n; }

  // Quantile q in [0,1] of a series (nearest rank); 0 if the series is empty.
  double quantile(std::string_view series, double q) const;
  double mean(std::string_view series) const;

 private:
  std::map<std::string, std::int64_t, std::less<>> counters_;
  std::map<std::string, std::vector<double>, std::less<>> series_;
  std::uint64_t trace_hash_ = 0xcbf29ce484222325ULL;
  std::uint64_t trace_events_ = 0;
  std::vector<TraceEvent> trace_prefix_;
  std::size_t trace_prefix_limit_ = 0;
};

// The Observer a peer gets: forwards to the swarm's Metrics, stamping time and peer index.
// Logs below `min_level` are dropped; the rest go to `sink` if set.
class PeerObserver final : public Observer {
 public:
  using LogSink = void (*)(void* ctx, std::uint32_t peer, LogLevel, std::string_view component,
                           std::string_view message);
  PeerObserver(Metrics& m, const Clock& clock, std::uint32_t peer) : m_(m), clock_(clock), peer_(peer) {}
  void set_log_sink(LogSink sink, void* ctx, LogLevel min_level) {
    sink_ = sink;
    sink_ctx_ = ctx;
    min_level_ = min_level;
  }
  void log(LogLevel level, std::string_view component, std::string_view message) override {
    if (sink_ && level >= min_level_) sink_(sink_ctx_, peer_, level, component, message);
  }
  void count(std::string_view name, std::int64_t delta) override { m_.count(name, delta); }
  void sample(std::string_view name, double value) override { m_.sample(name, value); }
  void trace(std::string_view event, std::uint64_t a, std::uint64_t b) override {
    m_.trace(to_ns(clock_.now()), peer_, event, a, b);
  }

 private:
  Metrics& m_;
  const Clock& clock_;
  std::uint32_t peer_;
  LogSink sink_ = nullptr;
  void* sink_ctx_ = nullptr;
  LogLevel min_level_ = LogLevel::kWarn;
};

// One peer's runtime over a backend object that is its Clock, Timers and Transport at once (the
// sim and live runtimes): the observer feeding the swarm's Metrics, the peer's own Rng, and the
// Runtime view protocols take. Not movable (the Runtime refers to its siblings): hold by pointer.
struct PeerEnv {
  template <class Backend>
  PeerEnv(Backend& backend, Metrics& metrics, std::uint32_t index, Rng peer_rng)
      : observer(metrics, backend, index),
        rng(peer_rng),
        runtime{backend, backend, backend, rng, observer} {}
  PeerEnv(const PeerEnv&) = delete;
  PeerEnv& operator=(const PeerEnv&) = delete;
  // Turns on fault injection at this peer, from its own seeded stream.
  void inject(const FaultPlan& plan, Rng stream) {
    faults = std::make_unique<FaultInjector>(plan, stream, observer);
    runtime.faults = faults.get();
  }
  PeerObserver observer;
  Rng rng;
  Runtime runtime;
  std::unique_ptr<FaultInjector> faults;
};

}  // namespace apiary
