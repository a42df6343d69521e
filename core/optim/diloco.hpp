#pragma once
// DiLoCo mode: each peer takes H local optimizer steps with its own inner optimizer,
// then the peers average their pseudo-gradients (start parameters minus end parameters, weighted
// by samples) and every peer applies the same outer step — SGD with (Nesterov) momentum — to the
// start parameters. Communication happens once per H steps instead of every step.
//
// With H = 1, an outer learning rate of 1 and no momentum, the outer step lands on the average of
// the peers' parameters after their local step: per-step parameter averaging.
//
// Roles, as in collaborative training: a client trains and sends its pseudo-gradients but never
// reduces a part nor leads a group (it cannot accept connections); an auxiliary peer trains
// nothing and lends its bandwidth: it reduces parts of each round's all-reduce (assist()). To
// follow the rounds it reads the round every trainer announces in the DHT as it enters an outer
// step (announce_round), and takes their median, so a few peers announcing wrong rounds cannot
// lead it astray.
#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"

namespace apiary::optim {

struct DilocoConfig {
  // Signs its matchmaking declarations (needed where peers authenticate: only owned declarations
  // are followed there).
  std::optional<dht::Identity> identity;
  std::string prefix = "run";
  std::size_t inner_steps = 500;  // H
  double outer_lr = 0.7;
  double outer_momentum = 0.9;
  bool nesterov = true;
  averaging::MatchmakingConfig matchmaking;
  averaging::AllReduceConfig allreduce;
  double bandwidth = 1.0;  // this peer's share in bandwidth-aware all-reduce parts (only ratios matter)
  averaging::MemberKind role = averaging::MemberKind::kFull;
  bool announce_round = false;  // trainers: announce each outer round (needed when auxiliary peers take part)
  Duration announce_ttl = std::chrono::minutes(10);
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
  // global parameters (the same on every peer of the group). Not for an auxiliary peer.
  Task<Result<OuterReport>> outer_step();
  // An auxiliary peer's share of the swarm's current round: reduce a part of its all-reduce.
  // kRejected while the trainers have not reached this peer's next round yet (look again later).
  Task<Result<OuterReport>> assist();
  std::uint64_t round() const { return round_; }

 private:
  std::string rounds_key() const { return cfg_.prefix + ".rounds"; }
  Runtime& rt_;
  dht::DhtNode& dht_;
  DilocoConfig cfg_;
  averaging::TensorSchema schema_;
  std::vector<float> params_, start_, momentum_;
  std::size_t inner_ = 0;
  std::uint64_t samples_ = 0, round_ = 0;
  averaging::Matchmaker matchmaker_;
  averaging::Averager averager_;
};

}  // namespace apiary::optim
