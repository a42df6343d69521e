#pragma once
// Results of one run as an HDF5 file — the format analysis/ reads, shared by the sim and live
// backends. Layout:
//   /                 attributes: scenario (text), scenario_source, seed, backend, version,
//                     wall_seconds, run_seconds, trace_hash (hex), trace_events, created_by
//   /counters/<name>  int64 scalar per counter ("ping.ok", "transport.bad_frames", ...)
//   /series/<name>    float64 array per sampled series ("ping.rtt_ns")
//   /cost/<name>      float64 scalar per host-dependent figure (wall time per message, memory)
#include <map>
#include <string>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"

namespace apiary::results {

void write_h5(const std::string& path, const SwarmSpec& spec, const Metrics& metrics,
              const RunInfo& info);

// Everything under /counters and /series, flattened ("counters/ping.ok" -> {value}); for
// comparisons of two runs.
std::map<std::string, std::vector<double>> read_h5_metrics(const std::string& path);
std::string read_h5_string_attribute(const std::string& path, const std::string& name);

}  // namespace apiary::results
