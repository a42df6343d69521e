#pragma once
// The common part of a run, read and validated from a Scenario: the swarm (peers, duration,
// seed), its network, churn, DHT and live settings. The workload's own part is parsed by its
// registered type (harness/workload.hpp) into `config`. Both worlds read this one struct, so a
// scenario means the same thing in ns-3 and live.
#include <cstdint>
#include <map>
#include <memory>
#include <stdexcept>
#include <vector>
#include <optional>
#include <string>

#include "core/runtime/faults.hpp"
#include "core/dht/node.hpp"
#include "harness/scenario.hpp"
#include "harness/workload.hpp"

namespace apiary {

// One line of a churn trace: at `at`, peer `peer` goes down or comes back up.
struct ChurnEvent {
  Duration at{};
  std::uint32_t peer = 0;
  bool up = false;
};

// Reads a churn trace: one event per line, "TIME PEER up|down" (TIME with a unit, e.g. 90s),
// '#' starts a comment. Throws ScenarioError naming the file and line of a bad entry.
std::vector<ChurnEvent> read_churn_trace(const std::string& path, std::uint32_t peers);

// A latency matrix: one-way latencies between sites, in milliseconds. Plain text, one row per
// line, whitespace-separated numbers, '#' starts a comment; square, entries >= 0. Peer i sits at
// site i mod M. Throws ScenarioError naming the file and line of a bad entry.
struct LatencyMatrix {
  std::vector<std::vector<double>> ms;  // ms[from][to]
  std::string path;
  std::size_t sites() const { return ms.size(); }
  double between(std::uint32_t a, std::uint32_t b) const { return ms[a % ms.size()][b % ms.size()]; }
};
LatencyMatrix read_latency_matrix(const std::string& path);

// Where live peers run when they each get a network namespace (`live.netns`): one line per peer,
// "NAMESPACE IPV4" (the namespace as `ip netns add` named it, the peer's address in it), '#'
// starts a comment. Throws ScenarioError naming the file and line of a bad entry.
struct NetnsSlot {
  std::string netns;
  std::string address;
};
std::vector<NetnsSlot> read_netns_map(const std::string& path);

struct ChurnSpec {
  enum class Kind { kNone, kExponential, kWeibull, kTrace };
  std::vector<ChurnEvent> trace;  // kTrace: sorted by time
  Kind kind = Kind::kNone;
  Duration mean_session = std::chrono::minutes(30);  // time up
  Duration mean_downtime = std::chrono::minutes(5);  // time down before rejoining
  double weibull_shape = 0.5;
  // Live processes: a peer that comes back keeps its identity (its key file), so it is the same
  // peer to the others; false gives it a new one.
  bool keep_identity = true;
  // Peers run by the runner (ns-3, or live in one process): a peer that comes back has what it
  // held when it went down, its DHT records and contacts (a process that restarts from disk);
  // false: it restarts empty (a crash that lost its state).
  bool keep_state = false;
  // A session's length (exponential or Weibull of mean mean_session) and a downtime (exponential
  // of mean mean_downtime), drawn from the runner's churn stream.
  Duration draw_session(Rng& rng) const;
  Duration draw_downtime(Rng& rng) const;
  // kTrace: the peers whose first event is "up" start down and join at that time.
  std::vector<bool> starts_down(std::uint32_t peers) const;
};

// How peers prove who they are (core/auth): on by default in both worlds.
struct AuthSpec {
  bool on = true;             // network.authenticate
  std::string swarm_secret;   // network.swarm_secret: only peers that know it join
  unsigned id_work_bits = 0;  // network.id_work_bits: every id's cost (dht::id_work), checked at the handshake
  // network.proof_cost: simulated time each of a handshake's three proof steps takes (ns-3; live
  // pays the real cost): a handshake costs 135 us of host time on this machine (two Ed25519
  // signatures, two verifications; BM_AuthHandshake, docs/results.md), a third of it per step.
  Duration proof_cost = std::chrono::microseconds(45);
  // network.proofs = "modelled" (ns-3 only): handshake proofs are keyed hashes that stand for the
  // Ed25519 signatures (AuthConfig::modelled_proofs), for runs of very many peers.
  bool modelled_proofs = false;
};

// The DHT every workload but ping runs on: its protocol settings, the seeds, and how peers join.
struct DhtSpec {
  dht::DhtConfig config;
  // [dht.schema]: rules for the swarm's own keys, beside Apiary's (core/optim/schema.hpp).
  std::vector<std::pair<std::string, std::string>> schema;
  std::uint32_t bootstrap_peers = 3;                // peers 0..B-1: always up, the seeds
  Duration join_window = std::chrono::seconds(60);  // the others join uniformly over this
};

// Faults of the network, simulated by ns-3 (a live run refuses them: the machine's network is
// what it is). A window starts at `at`, lasts `duration`, and comes back every `every` (if set)
// until the run ends; each time it strikes a fresh seeded choice of `fraction` of the peers.
struct FaultWindow {
  Duration at{}, duration{}, every{};
  double fraction = 0;
  Duration extra_latency{};     // latency_spike: added to the struck peers' one-way latency
  double bandwidth_factor = 1;  // bandwidth_drop: their access bandwidth times this
  // Whether time t falls in an occurrence of the window widened by `before` and `after`.
  bool covers(Duration t, Duration before, Duration after) const {
    for (Duration start = at;; start += every) {
      if (t >= start - before && t <= start + duration + after) return true;
      if (every == Duration::zero() || start > t) return false;
    }
  }
};
struct NetworkFaults {
  // Packet loss on every link, as TCP sees it: a lost packet is resent after rto_min, doubling
  // each time it is lost again, and later packets between the same pair wait behind it.
  double loss = 0;
  Duration rto_min = std::chrono::milliseconds(200);
  std::optional<FaultWindow> partition;  // the struck peers and the others cannot reach each other
  std::optional<FaultWindow> latency_spike;
  std::optional<FaultWindow> bandwidth_drop;
  std::optional<FaultWindow> stall;  // the struck peers freeze: they handle nothing until it ends
  // Peers behind NAT (a seeded share, never a DHT seed): they accept nothing they did not ask
  // for within `nat_mapping`, so they run as clients (DHT client mode, averaging and training
  // clients, no experts).
  double nat = 0;
  Duration nat_mapping = std::chrono::minutes(5);
  bool any() const { return loss > 0 || partition || latency_spike || bandwidth_drop || stall || nat > 0; }
};

struct SwarmSpec {
  std::string name = "unnamed";
  std::string backend = "sim";  // "sim" or "live"
  std::uint64_t seed = 1;
  std::uint32_t peers = 16;
  Duration duration = std::chrono::seconds(10);
  // Each peer's one-way access latency and access bandwidth, drawn once per run in both worlds.
  // ns-3 models them: a message from A to B takes serialisation at A's uplink and B's downlink
  // plus latency(A) + latency(B). Live, the bandwidth is the peer's declared share for load
  // balancing, and latency comes from the machine's network (or live.emulated_latency).
  Distribution latency = Distribution::fixed(10e6);      // ns
  Distribution bandwidth = Distribution::fixed(100e6);   // bit/s
  std::optional<LatencyMatrix> latency_matrix;  // sim: replaces latency(A) + latency(B)
  // network.stack (sim): "full", ns-3's node, IPv4 and UDP objects per peer; "lean", none of them,
  // the same link model (sim/sim_network.hpp).
  bool lean_stack = false;
  // network.event_queue (sim): ns-3's pending events filed in time "buckets" (the default), in a
  // binary "heap", or in ns-3's default "map"; all three run events in one order (one trace).
  std::string event_queue = "buckets";
  NetworkFaults faults;                          // sim only
  AuthSpec auth;
  FaultPlan inject;  // seeded faults injected into the protocols' RPC (both worlds, in-process peers)
  ChurnSpec churn;
  std::optional<Distribution> hop_delay;  // sim: a random delay per received message
  // The workload: its registered name, whether its peers run a DHT, its own settings.
  std::string workload = "ping";
  bool uses_dht = false;
  std::shared_ptr<const WorkloadConfig> config;
  DhtSpec dht;
  std::string live_host = "127.0.0.1";
  std::uint16_t live_base_port = 0;  // 0: ephemeral ports
  Duration live_emulated_latency{};  // live: one-way delay added to every received message
  bool live_processes = false;       // live: a swarm of separate processes (the workload's launcher)
  std::vector<NetnsSlot> live_netns;  // live processes: peer i runs in live_netns[i] (empty: all here)
  std::uint32_t live_peers_per_process = 1;  // live DHT processes: peers one `apiary peer` process hosts
  std::string scenario_text;
  std::string scenario_source;

  // Whether peer i is behind NAT (network.nat): a draw of its own per peer, never a seed.
  bool behind_nat(std::uint32_t i) const;
  // The workload's settings as its own type; throws std::logic_error on a mismatch.
  template <class T>
  const T& workload_config() const {
    const auto* c = dynamic_cast<const T*>(config.get());
    if (!c) throw std::logic_error("scenario '" + name + "': workload '" + workload + "' has no settings of this type");
    return *c;
  }
};

// What a finished run reports besides its metrics.
struct RunInfo {
  std::string backend;
  double wall_seconds = 0;  // host time the run took
  double run_seconds = 0;   // simulated (sim) or live seconds covered
  std::map<std::string, double> figures;  // cost per message, memory per peer, ...
};

// A path in a scenario is relative to the scenario file.
std::string path_beside(const Scenario& s, const std::string& path);

// Reads every key it knows, then rejects unknown ones. Throws ScenarioError.
SwarmSpec parse_swarm_spec(Scenario& s);

// A peer's DHT identity in a swarm: derived from the seed, so runs are reproducible and a peer
// that comes back under churn is the same peer.
dht::Identity swarm_identity(const SwarmSpec& spec, std::uint32_t index);

}  // namespace apiary
