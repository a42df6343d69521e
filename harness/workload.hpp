#pragma once
// Workloads: what a swarm does in a run. Each workload is a registered unit that owns its part of
// the scenario (its keys, their validation and defaults), what every peer runs (a PeerApp), the
// swarm-level side (a Workload: rounds, operations, evaluation), its metrics and its summary
// lines. The runner (harness/runner.hpp) and the hosts know no workload by name: a new workload
// is a new file that registers itself, nothing else changes.
#include <cstdint>
#include <cstdio>
#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "core/runtime/metrics.hpp"

namespace apiary {

class Scenario;
struct SwarmSpec;
struct RunInfo;
class PeerStack;
class Runner;

using ProgressFn = std::function<void(double fraction)>;

// A workload's own settings, parsed from the scenario by its type. Each workload derives its own.
struct WorkloadConfig {
  virtual ~WorkloadConfig() = default;
  // Peers 0..n-1 must accept connections (servers others call first): never behind NAT.
  virtual std::uint32_t must_accept() const { return 0; }
};

// What one peer runs on top of its RPC layer (and DHT node, if the workload uses one). Made when
// the peer comes up, destroyed when it goes down.
class PeerApp {
 public:
  virtual ~PeerApp() = default;
  // The peer is up (its transport listens); called before the DHT join begins.
  virtual void start() {}
  // The peer has joined the DHT (at once after start() for workloads that use none).
  virtual void joined() {}
  // False when this peer needs no DHT join although its workload has a DHT (averaging in static
  // groups handed out by the driver): it counts as joined at once.
  virtual bool joins_dht() const { return true; }
};

// The swarm-level side of one run, the same in every world.
class Workload {
 public:
  virtual ~Workload() = default;
  // Peer `peer.index()`'s app. The stack's RPC layer and DHT node exist; the peer is not started.
  virtual std::unique_ptr<PeerApp> make_app(PeerStack& peer) = 0;
  // Once the first peers are up, at run time 0: schedules the workload's operations.
  virtual void begin(Runner& runner) { (void)runner; }
  // A peer came up (also the first time) / is about to go down (its app still exists).
  virtual void peer_up(Runner& runner, std::uint32_t i) { (void)runner, (void)i; }
  virtual void peer_down(Runner& runner, std::uint32_t i) { (void)runner, (void)i; }
  // The run has ended (the peers that are up still are): final metrics and figures.
  virtual void finish(Runner& runner, RunInfo& info) { (void)runner, (void)info; }
};

// A whole run done some other way than by the runner: live swarms of separate processes
// (`live.processes = true`), registered by the live host for the workloads it can launch.
struct ProcessLauncher {
  std::function<RunInfo(const SwarmSpec&, Metrics&, const ProgressFn&)> run;
  // Whether it applies churn to its processes (killed with SIGKILL, started again); a scenario
  // with churn for a launcher without is refused when it is read.
  bool churn = false;
  // Whether it can place its peers in network namespaces (live.netns).
  bool netns = false;
};

struct WorkloadType {
  std::string name;  // workload.kind
  std::string description;
  bool uses_dht = true;  // peers join a DHT (bootstrap peers, join window, [dht] keys)
  // Reads the workload's keys from the scenario, with file:line:key errors; `spec` holds the
  // common part (peers, duration, backend, dht, ...) already.
  std::function<std::shared_ptr<const WorkloadConfig>(Scenario&, const SwarmSpec&)> parse;
  // The swarm side of one run.
  std::function<std::unique_ptr<Workload>(const SwarmSpec&, Metrics&)> make;
  // Summary lines for a person, from the run's metrics and figures (after the common header).
  std::function<void(std::FILE*, const Metrics&, const RunInfo&)> summarize;
};

class WorkloadRegistry {
 public:
  // Registers a type (at static initialisation); a second type of the same name is an error.
  static void add(WorkloadType type);
  // Registers how the live host runs `workload` as separate processes.
  static void add_launcher(const std::string& workload, ProcessLauncher launcher);
  // nullptr if unknown.
  static const WorkloadType* find(const std::string& name);
  static const ProcessLauncher* launcher(const std::string& name);
  static std::vector<std::string> names();
};

// `static RegisterWorkload r{WorkloadType{...}};` in the workload's own file.
struct RegisterWorkload {
  explicit RegisterWorkload(WorkloadType type) { WorkloadRegistry::add(std::move(type)); }
};

}  // namespace apiary
