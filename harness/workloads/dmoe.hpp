#pragma once
// The DMoE workload: expert servers with a compute model, and trainers that route batches
// through mixture layers with the real protocol code — core's expert server with its batching,
// core's mixture router (expert declarations and the beam search over the DHT, batch, per-sample
// or switch routing, parallel calls with k_min, a grace period and timeouts, failures skipped,
// the parallel backward) — while the tensors are size-only payloads (the bytes are modelled, not
// moved), the gate's scores are drawn at random, and each server's device takes rows / speed
// seconds per batch, one batch at a time in arrival order.
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
#include <set>
#include <string>
#include <vector>

#include "core/dht/node.hpp"
#include "core/moe/experts.hpp"
#include "core/moe/mixture.hpp"
#include "core/moe/protocol.hpp"
#include "core/moe/server.hpp"
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
  moe::Routing routing = moe::Routing::kBatch;  // batch | sample | switch (the gate's scores are drawn at random)
  std::uint32_t batch_size = 64;
  std::uint32_t hidden = 1024;  // floats per sample on the wire
  std::uint32_t concurrency = 1;
  Distribution forward_speed = Distribution::fixed(2000);   // samples/s per server
  Distribution backward_speed = Distribution::fixed(1000);  // samples/s per server
  Duration timeout = std::chrono::seconds(10);
  Duration grace = std::chrono::milliseconds(200);
  Duration start = std::chrono::seconds(10);  // trainers begin (after the DHT joins)
  double fail_probability = 0;  // a request fails (an error reply)
  moe::ServerOptions server;    // batching at the expert servers
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
  moe::ServerOptions server;    // batching at the expert servers
  std::string codec = "float32";  // tensors to and from experts, as averaging's codecs
  std::uint32_t steps = 300, batch_size = 64, eval_every = 50;
  std::uint64_t eval_samples = 2000, train_samples = 0;
  double learning_rate = 0.05;
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  std::string device = "cpu";  // the expert servers' and the trainer's device (cpu, cuda, cuda:N)
  bool baseline = true;
};

struct DmoeWorkloadConfig final : WorkloadConfig {
  DmoeSimSpec sim;      // run by the runner, in ns-3 or live in one process
  DmoeTorchSpec torch;  // live.processes
  std::uint32_t must_accept() const override { return sim.servers; }  // the expert servers
};

// An expert server: hosts its share of every layer's experts on one device. It serves the
// expert protocol through core/moe/server.hpp (batching included), with a device model as the
// backend: rows / speed seconds per batch, size-only answers of the modelled sizes.
class DmoeServerApp final : public PeerApp {
 public:
  // `identity`: the key the peer proves, which signs its declarations.
  DmoeServerApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, const dht::Identity& identity, const DmoeSimSpec& spec,
                std::uint32_t index, double forward_speed, double backward_speed);
  ~DmoeServerApp() override;
  void joined() override;  // declares its experts (and again before they expire)

 private:
  // The experts' math, modelled: every answer is a size-only tensor of the input's shape.
  class SizedExperts final : public moe::ExpertBackend {
   public:
    SizedExperts(std::set<std::string> uids, std::uint32_t hidden) : uids_(std::move(uids)), hidden_(hidden) {}
    std::optional<moe::ExpertInfo> info(const std::string& uid) override;
    Task<void> run(const std::string& uid, bool backward, std::vector<moe::ExpertJob*> jobs) override;

   private:
    std::set<std::string> uids_;
    std::uint32_t hidden_;
  };
  Task<void> declare_loop();
  Runtime& rt_;
  dht::DhtNode& dht_;
  const dht::Identity& identity_;
  std::vector<moe::ExpertUid> mine_;
  SizedExperts experts_;
  moe::TimedBackend device_;
  moe::ExpertServer server_;
  TaskScope scope_;
};

// A trainer: runs batches through the model, forever (the run's duration ends it). Its mixture
// layers are core/moe/mixture.hpp's router, the same as the LibTorch remote mixture's.
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
  moe::GateScores draw_scores();
  Runtime& rt_;
  const DmoeSimSpec& spec_;
  const std::vector<Endpoint>& directory_;
  std::vector<std::unique_ptr<moe::MixtureRouter>> layers_;
  TaskScope scope_;
};

// The layer's experts, dealt round-robin over the servers: (uid, server index).
std::vector<std::pair<moe::ExpertUid, std::uint32_t>> dmoe_experts(const DmoeSimSpec& spec, std::uint32_t layer);

}  // namespace apiary
