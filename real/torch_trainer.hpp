#pragma once
// A live collaborative trainer as its own process: an MLP on Fashion-MNIST in LibTorch,
// trained with TorchCollaborative over real sockets, joining the swarm's DHT through a seed
// peer. It writes what happens as JSON lines (one object per line, flushed at once, so a
// trainer that is killed leaves its record): "start", "joined" (newcomers: the epoch and
// parameters it downloaded), "step" (epoch, samples in the global batch, group size, seconds),
// "eval" (test accuracy and loss every few epochs) and "final".
//
// The baseline is the same model, the same initialisation and optimizer, trained in one process
// for the same number of steps with the same global batch size.
#include <cstdint>
#include <string>
#include <vector>

namespace apiary::real {

struct TrainerOptions {
  std::string join;  // the seed DHT peer, IPV4:PORT
  std::uint32_t index = 0;
  bool newcomer = false;        // download the swarm's state before contributing
  std::string role = "full";    // full, client (never reduces nor leads), aux (trains nothing, helps average)
  std::uint64_t seed = 1;       // model initialisation (the same for every trainer) and data order
  std::uint32_t steps = 100;
  std::uint64_t target_batch = 256;
  std::uint32_t batch_size = 32;
  std::uint32_t hidden = 128;
  double learning_rate = 0.05;
  double momentum = 0.9;
  std::uint64_t train_samples = 0;  // 0: all 60,000
  std::uint64_t eval_samples = 2000;
  std::uint32_t eval_every = 20;    // epochs
  double delay_ms = 0;              // emulated one-way latency on every received message
  double samples_per_second = 0;    // the device's speed: a batch takes at least B / speed (0: as fast as it runs)
  std::uint32_t budget_ms = 3000;   // matchmaking budget
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  std::string out;                  // JSON lines
  std::string ready_file;           // "<endpoint>\n" once listening
  double max_seconds = 600;         // give up after this long
};

// Returns the exit code: 0 when the trainer reached `steps` epochs.
int run_trainer(const TrainerOptions& options);
int run_baseline(const TrainerOptions& options);

}  // namespace apiary::real

namespace apiary::real {

// Live DMoE: expert servers and a trainer as processes. The classifier is
// Linear(784, dim) -> ReLU -> mixture of FFN experts (dim -> hidden -> dim, on a grid) ->
// Linear(dim, 10). Servers host experts and declare them in the DHT; the trainer's mixture layer
// finds them by beam search and calls them (k best, k_min, timeouts), the experts training on
// their servers from the gradients it sends. The baseline is the same classifier with the same
// experts, gate and routing in one process.
struct DmoeOptions {
  std::string join;                     // the seed DHT peer
  std::vector<std::string> uids;        // expert-server: the experts it hosts
  std::vector<std::uint32_t> grid{4, 4};
  std::int64_t dim = 64, hidden = 256;
  std::size_t k = 4, k_min = 2;
  std::string routing = "batch";  // batch | sample | switch
  double timeout_after_k_min_ms = 200, forward_timeout_ms = 5000, backward_timeout_ms = 5000;
  double fail_probability = 0;    // expert-server: per request
  std::string codec = "float32";  // dmoe-trainer: the wire codec of expert calls
  double delay_ms = 0;            // emulated one-way latency on every received message
  std::uint64_t seed = 1;
  std::uint32_t steps = 300, batch_size = 64, eval_every = 50;
  std::uint64_t eval_samples = 2000, train_samples = 0;
  double learning_rate = 0.05;
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  std::string out, ready_file;
  double max_seconds = 900;
};

int run_expert_server(const DmoeOptions& o);  // until SIGTERM
int run_dmoe_trainer(const DmoeOptions& o);
int run_dmoe_baseline(const DmoeOptions& o);

}  // namespace apiary::real
