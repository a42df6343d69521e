#pragma once
// Collaborative training, the per-step mode (issue 7): many peers train one model, each on its
// own data at its own pace, and take a global optimizer step together whenever the swarm has
// processed the target batch size.
//
// A peer accumulates gradients (summed over its samples). step(): publish progress; wait until
// the swarm's accumulated samples reach the target batch (progress through the DHT); find the
// step's group (matchmaking under "<run>.step<epoch>"); all-reduce the mean gradients weighted by
// sample counts — which gives the mean gradient over the global batch; apply SGD; next epoch.
// With exact averaging this equals one process doing SGD on the concatenated global batches.
#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"
#include "core/averaging/state.hpp"
#include "core/optim/progress.hpp"

namespace apiary::optim {

struct CollaborativeConfig {
  ProgressConfig progress;
  averaging::MatchmakingConfig matchmaking;
  averaging::AllReduceConfig allreduce;
  double learning_rate = 0.1;
  bool apply_sgd = true;  // false: leave the step to the caller's optimizer (StepReport::mean_gradient)
  Duration poll = std::chrono::milliseconds(200);      // progress polling while waiting
  Duration max_wait = std::chrono::seconds(60);        // for the swarm to reach the target
  Duration state_timeout = std::chrono::seconds(30);   // a state download
};

struct StepReport {
  std::uint64_t epoch = 0;          // the step just taken
  std::size_t group = 0;            // peers averaged with (this one included)
  std::uint64_t swarm_samples = 0;  // the global batch as progress reported it
  std::vector<float> mean_gradient; // over the global batch (what SGD stepped along)
  averaging::AllReduceReport allreduce;
};

class CollaborativeOptimizer {
 public:
  CollaborativeOptimizer(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity,
                         averaging::TensorSchema schema, std::vector<float> initial, CollaborativeConfig config);
  std::vector<float>& parameters() { return params_; }
  std::uint64_t epoch() const { return epoch_; }
  std::uint64_t local_samples() const { return samples_; }
  // Adds a gradient summed over `samples` samples. step() takes what was accumulated when it was
  // called; accumulating while it runs is allowed and counts toward the next step (delayed
  // parameter updates).
  void accumulate(std::span<const float> grad_sum, std::uint64_t samples);
  // One global step (see above). A peer that finds the swarm at a later epoch downloads the
  // state first (its pending gradients, computed on old parameters, are dropped). Errors: the
  // swarm did not reach the target in max_wait, no group.
  Task<Result<StepReport>> step();
  // A newcomer: download the parameters and epoch from the freshest peer before contributing.
  Task<Result<std::uint64_t>> join();

 private:
  Runtime& rt_;
  CollaborativeConfig cfg_;
  averaging::TensorSchema schema_;
  std::vector<float> params_, grad_sum_;
  std::uint64_t samples_ = 0, epoch_ = 0;
  ProgressTracker progress_;
  averaging::Matchmaker matchmaker_;
  averaging::Averager averager_;
  averaging::StateSharer state_;
};

}  // namespace apiary::optim
