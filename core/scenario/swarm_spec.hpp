#pragma once
// What a swarm run needs, read and validated from a Scenario. Both backends (sim/ and real/)
// consume this one struct, so a scenario means the same thing in ns-3 and live.
#include <cstdint>
#include <optional>
#include <string>

#include "core/dht/node.hpp"
#include "core/scenario/scenario.hpp"
#include "core/workloads/averaging_workload.hpp"
#include "core/workloads/training_workload.hpp"
#include "core/workloads/dmoe_workload.hpp"
#include "core/workloads/ping.hpp"

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
  // A session's length (exponential or Weibull of mean mean_session) and a downtime (exponential
  // of mean mean_downtime), drawn from the runner's churn stream.
  Duration draw_session(Rng& rng) const;
  Duration draw_downtime(Rng& rng) const;
  // kTrace: the peers whose first event is "up" start down and join at that time.
  std::vector<bool> starts_down(std::uint32_t peers) const;
};

// The DHT workload: peers join through bootstrap peers; stores and gets of random keys at
// swarm-wide Poisson rates, gets only of keys stored earlier and not yet expired.
struct DhtWorkloadSpec {
  dht::DhtConfig config;
  std::uint32_t bootstrap_peers = 3;        // peers 0..B-1: always up, the seeds
  Duration join_window = std::chrono::seconds(60);  // the others join uniformly over this
  Duration start = std::chrono::seconds(90);        // workload starts after joins settle
  double store_rate = 1.0;                  // per second, whole swarm
  double get_rate = 10.0;                   // per second, whole swarm
  Duration ttl = std::chrono::minutes(30);
  std::uint64_t value_size = 64;
  // Live (separate processes): a client stores `keys` keys, then gets them all, `concurrency`
  // operations at a time; store_rate/get_rate are not used there.
  std::uint32_t keys = 1000;
  std::uint32_t concurrency = 16;
};

// Live DMoE runs (issue 5): expert-server processes and a trainer process (real/live_dmoe).
struct DmoeLiveSpec {
  std::uint32_t servers = 4;
  std::uint32_t grid_side = 4, grid_dims = 2;  // experts spread round-robin over the servers
  std::int64_t dim = 64, hidden = 256;
  std::uint32_t k = 4, k_min = 2;
  std::string routing = "batch";  // batch | sample | switch
  Duration grace = std::chrono::milliseconds(200);   // after the k_min-th answer
  Duration forward_timeout = std::chrono::seconds(5);
  Duration backward_timeout = std::chrono::seconds(5);
  double fail_probability = 0;  // per expert request
  std::string codec = "float32";  // tensors to and from experts, as averaging's codecs
  std::uint32_t steps = 300, batch_size = 64, eval_every = 50;
  std::uint64_t eval_samples = 2000, train_samples = 0;
  double learning_rate = 0.05;
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  bool baseline = true;
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
  std::optional<LatencyMatrix> latency_matrix;  // sim: replaces latency(A) + latency(B)
  ChurnSpec churn;
  std::string workload = "ping";
  PingConfig ping;
  DhtWorkloadSpec dht;
  AveragingWorkloadSpec averaging;
  TrainingWorkloadSpec training;
  DmoeLiveSpec dmoe_live;
  DmoeSimSpec dmoe_sim;
  std::optional<Distribution> hop_delay;  // sim: a random delay per received message
  std::string live_host = "127.0.0.1";
  std::uint16_t live_base_port = 0;  // 0: ephemeral ports
  Duration live_emulated_latency{};  // live: one-way delay added to every received message
  std::vector<NetnsSlot> live_netns;  // live: peer i runs in live_netns[i] (empty: all here)
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
  // `avg_driver` is needed for the averaging workload (initial values, kind and grid position),
  // `train_driver` for the training workload (data, compute model, roles).
  PeerStack(Runtime& rt, const SwarmSpec& spec, const std::vector<Endpoint>& directory,
            std::uint32_t index, const AveragingDriver* avg_driver = nullptr,
            const TrainingDriver* train_driver = nullptr);
  ~PeerStack();
  // ping: starts pinging. dht, averaging: bootstraps from the seeds, then runs maintenance
  // (averaging rounds are started by the driver).
  void start();
  Rpc& rpc() { return *rpc_; }
  dht::DhtNode* dht() { return dht_.get(); }
  AveragingApp* averaging() { return avg_.get(); }
  TrainingApp* training() { return train_.get(); }
  DmoeServerApp* dmoe_server() { return dmoe_server_.get(); }
  // Training: starts the trainer now if the peer has joined the DHT, else once it has. A
  // newcomer downloads the swarm's state first.
  void begin_training(bool newcomer);
  bool joined() const { return joined_; }

 private:
  Runtime& rt_;
  const SwarmSpec& spec_;
  const std::vector<Endpoint>& directory_;
  std::uint32_t index_;
  std::unique_ptr<Rpc> rpc_;
  std::unique_ptr<PingApp> ping_;
  std::unique_ptr<dht::DhtNode> dht_;
  std::unique_ptr<AveragingApp> avg_;
  std::unique_ptr<TrainingApp> train_;
  std::unique_ptr<DmoeServerApp> dmoe_server_;
  std::unique_ptr<DmoeTrainerApp> dmoe_trainer_;
  TaskScope scope_;
  std::optional<bool> pending_training_;  // begin_training before the DHT join: the newcomer flag
  bool joined_ = false;
};

// A peer's DHT identity in a swarm: derived from the seed, so runs are reproducible.
dht::Identity swarm_identity(const SwarmSpec& spec, std::uint32_t index);

}  // namespace apiary
