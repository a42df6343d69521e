#pragma once
// DiLoCo mode: each peer takes H local optimizer steps with its own inner optimizer,
// then the peers average their pseudo-gradients (start parameters minus end parameters, weighted
// by samples) and every peer applies the same outer step — SGD with (Nesterov) momentum — to the
// start parameters. Communication happens once per H steps instead of every step.
//
// With H = 1, an outer learning rate of 1 and no momentum, the outer step lands on the average of
// the peers' parameters after their local step: per-step parameter averaging.
#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"

namespace apiary::optim {

struct DilocoConfig {
  std::string prefix = "run";
  std::size_t inner_steps = 500;  // H
  double outer_lr = 0.7;
  double outer_momentum = 0.9;
  bool nesterov = true;
  averaging::MatchmakingConfig matchmaking;
  averaging::AllReduceConfig allreduce;
  double bandwidth = 1.0;  // this peer's share in bandwidth-aware all-reduce parts (only ratios matter)
};

struct OuterReport {
  std::uint64_t round = 0;
  std::size_t group = 0;
  std::uint64_t bytes_sent = 0;  // by this peer in the all-reduce
  std::uint64_t samples = 0;     // this peer's samples since the last outer step
};

class DilocoOptimizer {
 public:
  DilocoOptimizer(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, averaging::TensorSchema schema, std::vector<float> initial,
                  DilocoConfig config);
  // The working parameters: the caller's inner optimizer updates them in place.
  std::vector<float>& parameters() { return params_; }
  // Call after each inner step; true when H inner steps are done and outer_step() is due.
  bool inner_step_done(std::uint64_t samples);
  // Averages the pseudo-gradients and applies the outer step; parameters() then hold the new
  // global parameters (the same on every peer of the group).
  Task<Result<OuterReport>> outer_step();
  std::uint64_t round() const { return round_; }

 private:
  Runtime& rt_;
  DilocoConfig cfg_;
  averaging::TensorSchema schema_;
  std::vector<float> params_, start_, momentum_;
  std::size_t inner_ = 0;
  std::uint64_t samples_ = 0, round_ = 0;
  averaging::Matchmaker matchmaker_;
  averaging::Averager averager_;
};

}  // namespace apiary::optim
