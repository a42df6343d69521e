#pragma once
// Collaborative training, the per-step mode: many peers train one model, each on its
// own data at its own pace, and take a global optimizer step together whenever the swarm has
// processed the target batch size.
//
// A peer accumulates gradients (summed over its samples) and reports its progress (samples
// toward the current epoch, throughput) through the DHT. step(): wait until the swarm's
// accumulated samples reach the target batch; find the step's group (matchmaking under
// "<run>.step<epoch>", sized by the peers that reported on the epoch); all-reduce the mean
// gradients weighted by sample counts — which gives the mean gradient over the global batch;
// apply the optimizer step; next epoch. With exact averaging this equals one process doing SGD
// on the concatenated global batches.
//
// Options:
//  * delayed parameter updates: accumulating while a step runs counts toward the next step, so
//    a training loop computes on while the averaging of the last step goes on;
//  * local updates: the caller applies its own optimizer after every local batch; global steps
//    then only advance the epoch, and parameters and optimizer state are averaged every
//    `average_state_every` epochs (that averaging may also be used with gradient averaging);
//  * roles: a client member sends its gradients but never reduces nor leads a group; an
//    auxiliary peer trains nothing and lends its bandwidth to the all-reduce (assist());
//  * newcomers (and peers that fell behind) download parameters, optimizer state and the epoch.
#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"
#include "core/averaging/state.hpp"
#include "core/optim/btard.hpp"
#include "core/optim/powersgd.hpp"
#include "core/optim/progress.hpp"

namespace apiary::optim {

struct CollaborativeConfig {
  ProgressConfig progress;
  averaging::MatchmakingConfig matchmaking;
  averaging::AllReduceConfig allreduce;
  averaging::MemberKind role = averaging::MemberKind::kFull;
  double bandwidth = 1.0;  // this peer's share in bandwidth-aware all-reduce parts (only ratios matter)
  double learning_rate = 0.1;  // the built-in SGD
  double momentum = 0.0;       // the built-in SGD's momentum (its buffer is optimizer state)
  bool apply_sgd = true;  // false: leave the step to the caller's optimizer (StepReport::mean_gradient)
  bool local_updates = false;  // the caller steps its optimizer on every local batch; gradients are not averaged
  std::uint32_t average_state_every = 0;  // average parameters and optimizer state every N epochs (0: never)
  std::uint32_t powersgd_rank = 0;  // > 0: gradients go as PowerSGD rank-r pairs, two rounds per step (powersgd.hpp)
  // BTARD's verification of every gradient step (btard.hpp): needs CenteredClip, whole gradients
  // (no PowerSGD) and gradient averaging (no local updates).
  BtardConfig btard;
  bool size_groups_by_progress = true;  // aim for a group of every peer that reported on the epoch
  Duration poll = std::chrono::milliseconds(200);      // progress polling while waiting
  Duration max_wait = std::chrono::seconds(60);        // for the swarm to reach the target
  Duration state_timeout = std::chrono::seconds(30);   // a state download
};

struct StepReport {
  std::uint64_t epoch = 0;          // the step just taken
  std::size_t group = 0;            // peers averaged with (this one included); 0 if none
  std::uint64_t swarm_samples = 0;  // the global batch as progress reported it
  std::uint64_t samples = 0;        // this peer's contribution
  std::vector<float> mean_gradient; // over the global batch (what SGD stepped along); empty with local updates
  averaging::AllReduceReport allreduce;  // the gradient round, its means in mean_gradient (empty with local updates)
  bool state_averaged = false;      // parameters and optimizer state were averaged after the step
  bool resynced = false;  // BTARD: out of sync with the group, this peer downloaded a member's state instead of stepping
  averaging::AllReduceReport state;  // that round (its means: the parameters, then the optimizer state)
  std::uint64_t bytes_sent = 0;     // all-reduce payload bytes this peer sent in the step (both rounds)
  Duration waited{};                // waiting for the swarm to reach the target batch
  Duration averaging{};             // matchmaking and all-reduce
};

class CollaborativeOptimizer {
 public:
  CollaborativeOptimizer(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity,
                         averaging::TensorSchema schema, std::vector<float> initial, CollaborativeConfig config);
  std::vector<float>& parameters() { return params_; }
  std::uint64_t epoch() const { return epoch_; }
  std::string progress_key() const { return progress_.key(); }  // where the swarm's progress reports live
  std::uint64_t local_samples() const { return samples_; }
  double samples_per_second() const { return rate_; }
  bool stepping() const { return in_step_; }
  // Steps that gave up waiting for the swarm's target batch (what they held stays accumulated).
  std::uint64_t wait_timeouts() const { return wait_timeouts_; }
  // The step the swarm claimed to be at when this peer last caught up (0: never): what the
  // reports it fetched said, which a lie about the swarm's progress would inflate.
  std::uint64_t catch_up_target() const { return catch_up_target_; }
  // Within a step: past the wait for the global batch (what is accumulated now is the next step's).
  bool averaging() const { return averaging_; }
  const CollaborativeConfig& config() const { return cfg_; }
  // BTARD's state (bans, counts); null unless it is enabled.
  const Btard* btard() const { return btard_.get(); }
  // BTARD: how validators recompute a member's gradient (the workload knows the model and data).
  void set_recompute(Recompute r);

  // Optimizer state beyond the parameters, for state downloads and state averaging: its schema,
  // how to read it and how to replace it. Without hooks, the built-in SGD's momentum buffer is
  // the state (none when momentum is 0).
  void set_optimizer_state(averaging::TensorSchema schema, std::function<std::vector<float>()> get,
                           std::function<void(std::vector<float>)> set);

  // Adds a gradient summed over `samples` samples (with local updates only the count matters:
  // pass an empty span). step() takes what was accumulated when the swarm became ready;
  // accumulating while it averages counts toward the next step (delayed parameter updates).
  void accumulate(std::span<const float> grad_sum, std::uint64_t samples);
  // Publishes this peer's progress (epoch, samples, throughput) and reads the swarm's. While a
  // step runs nothing is published (the samples belong to the next epoch).
  Task<SwarmProgress> report_progress();
  // The swarm's samples toward this epoch now: the last reports, plus what this peer computed
  // since it published, plus what the others computed since at their reported throughput.
  double estimated_samples(const SwarmProgress& swarm) const;
  // When a training loop should call step(): the swarm has (by the estimate) reached the target
  // batch, or (with `early`, for a loop that keeps computing while step() runs) is due to within
  // the matchmaking lead. A step called on an estimate that proves optimistic waits up to
  // max_wait for the reports and then fails with kTimeout, keeping what was accumulated.
  bool step_due(const SwarmProgress& swarm, bool early) const;
  // One global step (see above). A peer that finds the swarm at a later epoch downloads the
  // state first (its pending gradients, computed on old parameters, are dropped) and returns
  // kCancelled. Errors: the swarm did not reach the target in max_wait, no group.
  Task<Result<StepReport>> step();
  // An auxiliary peer's share of one global step: wait for the swarm's target, reduce a part of
  // the step's all-reduce (and of the state averaging when due), move to the next epoch.
  Task<Result<StepReport>> assist();
  // A newcomer: download the parameters, optimizer state and epoch from the freshest peer before
  // contributing; never from a peer ahead of `max_epoch` (the swarm's trusted step, when known).
  Task<Result<std::uint64_t>> join(std::uint64_t max_epoch = UINT64_MAX);
  // The same from one chosen peer (BTARD: a member that fell out of sync with its group).
  Task<Result<std::uint64_t>> join_from(Endpoint peer);

 private:
  Task<Result<SwarmProgress>> wait_for_target(std::uint64_t samples);
  // A group under `key`, sized to the `peers` on the epoch; with `at_least`, of at least that many
  // (and sized to `peers` whether or not groups are sized by progress).
  Task<Result<averaging::Group>> find_group(std::string key, const averaging::TensorSchema& schema, std::size_t peers,
                                            std::size_t at_least = 0);
  // The step's group: as find_group, but under BTARD one of more than half of every trainer that
  // reports progress, or none.
  Task<Result<averaging::Group>> find_step_group(const SwarmProgress& swarm, const averaging::TensorSchema& schema);
  Task<Result<averaging::AllReduceReport>> average_state(std::size_t peers);
  averaging::TensorSchema state_schema() const;
  // Takes a downloaded state: parameters, optimizer state, epoch; what was accumulated is dropped.
  void adopt(averaging::ModelState st);
  averaging::Member self() const;

  Runtime& rt_;
  CollaborativeConfig cfg_;
  averaging::TensorSchema schema_;
  std::vector<float> params_, grad_sum_, momentum_;
  std::uint64_t samples_ = 0, epoch_ = 0, samples_since_state_ = 0, published_ = 0;
  double rate_ = 0;
  std::uint64_t wait_timeouts_ = 0, catch_up_target_ = 0;
  std::optional<TimePoint> last_accumulate_;
  bool in_step_ = false, averaging_ = false;
  averaging::TensorSchema opt_schema_;
  std::unique_ptr<PowerSgd> powersgd_;
  // The step's gradient round: the mean gradient, or PowerSGD's two rounds (`mine` empty: an
  // auxiliary member). Returns the mean (approximate with PowerSGD) and adds to `rep`.
  Task<Result<std::vector<float>>> average_gradients(averaging::Group group, std::vector<float> mine, double weight,
                                                     StepReport& rep);
  std::function<std::vector<float>()> get_opt_;
  std::function<void(std::vector<float>)> set_opt_;
  ProgressTracker progress_;
  averaging::Matchmaker matchmaker_;
  averaging::Averager averager_;
  averaging::StateSharer state_;
  std::unique_ptr<Btard> btard_;
};

}  // namespace apiary::optim
