#pragma once
// What a swarm run needs, read and validated from a Scenario. Both backends (sim/ and real/)
// consume this one struct, so a scenario means the same thing in ns-3 and live.
#include <cstdint>
#include <string>

#include "core/scenario/scenario.hpp"
#include "core/workloads/ping.hpp"

namespace apiary {

struct ChurnSpec {
  enum class Kind { kNone, kExponential, kWeibull };
  Kind kind = Kind::kNone;
  Duration mean_session = std::chrono::minutes(30);  // time up
  Duration mean_downtime = std::chrono::minutes(5);  // time down before rejoining
  double weibull_shape = 0.5;
};

struct SwarmSpec {
  std::string name = "unnamed";
  std::string backend = "sim";  // "sim" or "live"
  std::uint64_t seed = 1;
  std::uint32_t peers = 16;
  Duration duration = std::chrono::seconds(10);
  // Network model (sim): each peer's one-way access latency and access bandwidth; a message from
  // A to B takes serialisation at A's uplink and B's downlink plus latency(A) + latency(B).
  Distribution latency = Distribution::fixed(10e6);      // ns
  Distribution bandwidth = Distribution::fixed(100e6);   // bit/s
  ChurnSpec churn;
  std::string workload = "ping";
  PingConfig ping;
  std::string live_host = "127.0.0.1";
  std::uint16_t live_base_port = 0;  // 0: ephemeral ports
  std::string scenario_text;
  std::string scenario_source;
};

// Reads every key it knows, then rejects unknown ones. Throws ScenarioError.
SwarmSpec parse_swarm_spec(Scenario& s);

}  // namespace apiary

#include <functional>
#include <map>
#include <memory>

#include "core/runtime/rpc.hpp"

namespace apiary {

// What a finished run reports besides its metrics.
struct RunInfo {
  std::string backend;
  double wall_seconds = 0;  // host time the run took
  double run_seconds = 0;   // simulated (sim) or live seconds covered
  std::map<std::string, double> figures;  // cost per message, memory per peer, ...
};

using ProgressFn = std::function<void(double fraction)>;

// One peer's protocol stack for the scenario's workload, on any runtime: the RPC layer and the
// workload app. Both backends build peers through this, so the protocol code is the same.
class PeerStack {
 public:
  PeerStack(Runtime& rt, const SwarmSpec& spec, const std::vector<Endpoint>& directory);
  ~PeerStack();
  void start() { ping_->start(); }
  Rpc& rpc() { return *rpc_; }

 private:
  std::unique_ptr<Rpc> rpc_;
  std::unique_ptr<PingApp> ping_;
};

}  // namespace apiary
