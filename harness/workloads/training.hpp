#pragma once
// The training workload: collaborative training of one model by every peer, on the runtime
// contract, so the same protocol runs in ns-3 and live.
//
// The model is a real one trained with real math (softmax regression on Fashion-MNIST, in
// core/optim/softmax), while a compute model decides how long each local batch takes: each
// peer has a device speed (samples per second, drawn from the scenario's distribution), and a
// batch of B samples keeps it busy for B / speed seconds. So a simulated run reports both a real
// loss curve and faithful timing: time to a target loss, and per-peer utilisation (time
// computing / time up).
//
// Modes:
//   collaborative  global steps of `target_batch` samples through the DHT (CollaborativeOptimizer):
//                  gradient averaging, or local updates with parameter and optimizer-state
//                  averaging every N epochs; delayed parameter updates keep computing while a
//                  step averages
//   diloco         H local steps of SGD with momentum per peer, then an outer Nesterov step on
//                  the averaged pseudo-gradient (DilocoOptimizer)
// Roles: a client fraction (never reduces, never leads) and an auxiliary fraction (trains
// nothing, helps the all-reduce). Peers that come up after training began download the state
// first.
#include <cstdint>
#include <map>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "core/optim/collaborative.hpp"
#include "core/optim/attack.hpp"
#include "core/optim/diloco.hpp"
#include "harness/models/softmax.hpp"
#include "core/runtime/metrics.hpp"
#include "harness/units.hpp"
#include "harness/workload.hpp"

namespace apiary {

struct TrainingWorkloadSpec final : WorkloadConfig {
  std::string mode = "collaborative";  // collaborative | diloco
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  std::string device = "cpu";  // live trainer processes: where the model and data live (cpu, cuda, cuda:N)
  std::uint64_t train_samples = 0;  // 0: the whole training set
  std::uint64_t eval_samples = 1000;
  std::uint32_t batch_size = 32;      // a local batch
  std::uint64_t target_batch = 1024;  // collaborative: samples per global step
  std::uint32_t steps = 50;           // collaborative: global steps; diloco: outer steps
  double learning_rate = 0.1;         // collaborative SGD, or DiLoCo's inner SGD
  double momentum = 0.0;
  bool delayed_updates = true;
  bool local_updates = false;
  std::uint32_t average_state_every = 0;
  std::uint32_t powersgd_rank = 0;  // collaborative: gradients as PowerSGD rank-r pairs (0: whole)
  std::uint32_t inner_steps = 500;  // diloco: H
  double outer_lr = 0.7;
  double outer_momentum = 0.9;
  Distribution samples_per_second = Distribution::fixed(200);  // the compute model, per peer
  Duration start = std::chrono::seconds(20);       // training begins (after the DHT joins)
  Duration eval_period = std::chrono::seconds(10);
  Duration progress_period = std::chrono::seconds(1);
  double target_loss = 0;  // time to reach it is reported (0: none)
  bool stop_at_target = false;
  double client_fraction = 0;
  double aux_fraction = 0;
  averaging::MatchmakingConfig matchmaking;
  averaging::AllReduceConfig allreduce;
  Duration max_wait{};  // how long a step waits for the target batch (0: 3 progress periods + 1 s)
  // Live runs (LibTorch trainer processes): an MLP of this hidden width, evaluated every
  // `eval_every` global steps, and a single-process baseline of the same model, global batch
  // and number of steps.
  std::uint32_t hidden = 128;
  std::uint32_t eval_every = 20;
  bool baseline = true;
  // Byzantine trainers (core/optim/attack.hpp): the `attack.attackers` trainers of highest index.
  optim::AttackConfig attack;
  // BTARD's verification of every step (core/optim/btard.hpp); each local batch is then drawn
  // from the peer's key, epoch and batch index, so a validator can recompute it. With
  // `btard_false_accusations`, attackers (while attacking) also accuse whoever they validate.
  optim::BtardConfig btard;
  bool btard_false_accusations = false;
};

struct SwarmSpec;

// Each peer's device speed in samples per second, drawn from the scenario's distribution with
// the run's seed: the same in ns-3 and in live runs (where trainers are throttled to it).
std::vector<double> device_speeds(const SwarmSpec& spec);
// Each peer's role: the last aux_fraction of the peers are auxiliary, the client_fraction before
// them clients, the rest (the DHT's seeds among them) full trainers. The same in ns-3 and live.
std::vector<averaging::MemberKind> training_roles(const SwarmSpec& spec);
// Which peers attack (training.attack): the `attackers` trainers of highest index (auxiliary
// peers train nothing). The same in ns-3 and live.
std::vector<bool> training_attackers(const SwarmSpec& spec);

// Data shared by every peer of a run (loaded once), and the swarm-level bookkeeping.
class TrainingDriver;

// One peer's trainer (or auxiliary helper).
class TrainingApp final : public PeerApp {
 public:
  // `bandwidth`: the peer's share in bandwidth-aware all-reduce parts.
  TrainingApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity, const TrainingDriver& driver,
              std::uint32_t index, double bandwidth);
  ~TrainingApp() override;
  // Begins training once the peer has joined the DHT (now if it has); a newcomer first downloads
  // the swarm's state.
  void begin(bool newcomer);
  void joined() override;
  std::span<const float> parameters() const;
  averaging::MemberKind kind() const { return kind_; }
  std::uint64_t epoch() const;
  bool started() const { return started_flag_; }
  bool finished() const { return finished_; }
  double busy_seconds() const { return busy_; }
  double up_seconds() const;
  std::uint64_t samples() const { return samples_; }
  std::uint32_t index() const { return index_; }
  Endpoint endpoint() const { return rt_.transport.local(); }
  const optim::Btard* btard() const { return collab_ ? collab_->btard() : nullptr; }

 private:
  std::uint64_t seen_epoch_ = 0;  // the highest epoch this peer has been at (an invariant's memory)
  Task<void> collaborative_loop(bool newcomer);
  Task<void> diloco_loop();
  Task<void> assist_loop();
  Task<void> run_step();
  Task<void> refresh_progress();
  Task<void> compute_batch(std::vector<float>& grad);
  void record_step(const Result<optim::StepReport>& r);
  bool attacking() const;
  // BTARD: the rows of local batch `b` of `epoch` for the peer with `key`, and a recomputation.
  std::vector<std::size_t> seeded_rows(const optim::Key& key, std::uint64_t epoch, std::uint64_t b) const;
  Task<std::optional<std::vector<float>>> recompute(optim::Contribution c);
  std::span<const float> delayed_parameters();

  Runtime& rt_;
  dht::DhtNode& dht_;
  const TrainingDriver& driver_;
  const TrainingWorkloadSpec& spec_;
  std::uint32_t index_;
  averaging::MemberKind kind_;
  double speed_;
  Rng data_rng_;
  bool attacker_ = false;
  Rng attack_rng_;
  optim::Key key_{};  // this peer's public key
  std::map<std::uint64_t, std::vector<float>> snapshots_;  // delayed attack: parameters by global step
  std::optional<std::uint64_t> poisoned_epoch_;  // progress poison: the last step it wrote its records at
  std::unique_ptr<optim::CollaborativeOptimizer> collab_;
  std::unique_ptr<optim::DilocoOptimizer> diloco_;
  std::vector<float> local_momentum_;  // DiLoCo's inner SGD
  optim::SwarmProgress swarm_;
  bool refreshing_ = false;
  TimePoint last_refresh_{};
  bool joined_ = false;
  std::optional<bool> pending_;  // begin() before the DHT join: the newcomer flag
  bool finished_ = false;
  bool started_flag_ = false;
  TimePoint started_{}, finished_at_{};
  double busy_ = 0;
  std::uint64_t samples_ = 0;
  TaskScope scope_;
};

class TrainingDriver {
 public:
  // Loads the dataset (throws data::DataError naming the file if it is missing).
  TrainingDriver(const SwarmSpec& spec, Metrics& metrics);
  const TrainingWorkloadSpec& spec() const { return tr_; }
  const SwarmSpec& swarm() const { return spec_; }
  const optim::SoftmaxRegression& model() const { return model_; }
  const optim::Examples& train() const { return train_; }
  // The training set with every label y replaced by classes - 1 - y (the label-flip attack).
  const optim::Examples& train_flipped() const { return flipped_; }
  bool attacker(std::uint32_t peer) const { return attackers_[peer]; }
  const std::vector<float>& initial() const { return initial_; }
  Metrics& metrics() const { return metrics_; }
  averaging::MemberKind kind_of(std::uint32_t peer) const;
  double speed_of(std::uint32_t peer) const { return speeds_[peer]; }
  // Test loss and accuracy of the trainers that are up (`apps[i]` null when down), at `elapsed`
  // since training began. Returns true when the run should stop (target reached and
  // stop_at_target, or every trainer finished).
  bool evaluate(double elapsed, const std::vector<TrainingApp*>& apps);
  // Per-peer utilisation and the run's figures.
  void finish(double elapsed, const std::vector<TrainingApp*>& apps, std::map<std::string, double>& figures);
  // Invariant: the peers that got a state-averaging round's means in full hold the same
  // parameters after it (within the codec's bound); counted as invariant.train.state_disagrees.
  void check_state(std::uint64_t epoch, std::uint64_t group, std::span<const float> params) const;
  // BTARD: who banned whom (honest peers' bans of honest peers count as invariant.btard.honest_banned).
  void btard_figures(const std::vector<TrainingApp*>& apps, std::map<std::string, double>& figures) const;

 private:
  const SwarmSpec& spec_;
  const TrainingWorkloadSpec& tr_;
  Metrics& metrics_;
  optim::SoftmaxRegression model_;
  optim::Examples train_, test_, flipped_;
  std::vector<float> initial_;
  std::vector<double> speeds_;
  std::vector<averaging::MemberKind> kinds_;
  std::vector<bool> attackers_;
  double time_to_target_ = -1;
  mutable std::map<std::pair<std::uint64_t, std::uint64_t>, std::vector<float>> state_seen_;  // (epoch, group): the first peer's
};

}  // namespace apiary
