#pragma once
// The DMoE workload: expert servers with a compute model, and trainers
// that route batches through mixture layers with the real protocol code — expert declarations
// and the beam search over the DHT, parallel calls with k_min, a grace period and timeouts,
// failures skipped — while the tensors are size-only payloads (the bytes are modelled, not
// moved) and each server's device takes rows / speed seconds per request, one at a time in
// arrival order.
//
// Modes (Learning@home's comparison):
//   dmoe            every trainer pushes `concurrency` batches at once through `layers` mixture
//                   layers (forward through all, then backward in reverse), each layer's k best
//                   alive experts found through the DHT
//   model-parallel  the model is a chain of `layers` blocks, block l on server l mod S; each
//                   trainer pushes its batches through the chain, one after another
// Throughput: samples whose forward and backward completed, per second.
#include <cstdint>
#include <memory>
#include <string>
#include <vector>

#include "core/dht/node.hpp"
#include "core/moe/experts.hpp"
#include "core/moe/protocol.hpp"
#include "core/runtime/rpc.hpp"
#include "harness/units.hpp"
#include "harness/workload.hpp"

namespace apiary {

struct DmoeSimSpec {
  std::string mode = "dmoe";  // dmoe | model-parallel
  std::uint32_t servers = 4;
  std::uint32_t layers = 4;
  std::uint32_t grid_side = 8, grid_dims = 2;
  std::uint32_t k = 4, k_min = 2;
  std::uint32_t batch_size = 64;
  std::uint32_t hidden = 1024;  // floats per sample on the wire
  std::uint32_t concurrency = 1;
  Distribution forward_speed = Distribution::fixed(2000);   // samples/s per server
  Distribution backward_speed = Distribution::fixed(1000);  // samples/s per server
  Duration timeout = std::chrono::seconds(10);
  Duration grace = std::chrono::milliseconds(200);
  Duration start = std::chrono::seconds(10);  // trainers begin (after the DHT joins)
  double fail_probability = 0;  // a request fails (an error reply)
};

// LibTorch DMoE as separate live processes (live.processes = true): expert-server processes and
// a trainer process that trains a Fashion-MNIST classifier whose middle layer is a mixture.
struct DmoeTorchSpec {
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

struct DmoeWorkloadConfig final : WorkloadConfig {
  DmoeSimSpec sim;      // run by the runner, in ns-3 or live in one process
  DmoeTorchSpec torch;  // live.processes
};

// An expert server: hosts its share of every layer's experts on one device (a compute model).
class DmoeServerApp final : public PeerApp {
 public:
  DmoeServerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const DmoeSimSpec& spec, std::uint32_t index,
                double forward_speed, double backward_speed);
  ~DmoeServerApp() override;
  void joined() override;  // declares its experts (and again before they expire)

 private:
  Task<void> declare_loop();
  Task<void> compute(std::int64_t rows, double speed);  // the device, one request at a time
  Runtime& rt_;
  dht::DhtNode& dht_;
  const DmoeSimSpec& spec_;
  std::uint32_t index_;
  double fwd_, bwd_;
  TimePoint busy_until_{};
  std::vector<moe::ExpertUid> mine_;
  TaskScope scope_;
};

// A trainer: runs batches through the model, forever (the run's duration ends it).
class DmoeTrainerApp final : public PeerApp {
 public:
  DmoeTrainerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const DmoeSimSpec& spec, const std::vector<Endpoint>& directory);
  ~DmoeTrainerApp() override;
  // Starts the workers once the peer has joined the DHT (now if it has).
  void begin();
  void joined() override;

 private:
  void start_workers();
  bool joined_ = false, begun_ = false;
  Task<void> worker();
  Task<bool> dmoe_batch();
  Task<bool> chain_batch();
  Runtime& rt_;
  Rpc& rpc_;
  const DmoeSimSpec& spec_;
  const std::vector<Endpoint>& directory_;
  std::vector<std::unique_ptr<moe::ExpertFinder>> finders_;  // one per layer
  TaskScope calls_;  // expert calls that outlive their batch (answers after the grace period)
  TaskScope scope_;
};

// The layer's experts, dealt round-robin over the servers: (uid, server index).
std::vector<std::pair<moe::ExpertUid, std::uint32_t>> dmoe_experts(const DmoeSimSpec& spec, std::uint32_t layer);

}  // namespace apiary
