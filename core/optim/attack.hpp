#pragma once
// Byzantine trainers, for experiments on robust aggregation (BTARD: Gorbunov, Borzunov, Diskin
// and Ryabinin, ICML 2022). A chosen set of peers replaces what it contributes, from a chosen
// global step on, every step or every k-th:
//  * sign flip: its gradient times -scale (the paper: -1000);
//  * random direction: a uniformly random direction, scale times its honest gradient's norm;
//  * label flip: its gradients are computed on labels y -> classes - 1 - y (the trainer's part);
//  * delayed: its gradients are computed on parameters `delay` global steps old (the trainer's
//    part: it keeps the snapshots);
//  * wrong aggregate: as a reducer it answers with its part's mean times -scale (the all-reduce's
//    part: AllReduceFaults::tamper_result);
//  * break commitment (against BTARD): it commits to its honest gradient, then sends -scale x it
//    (the all-reduce's part: AllReduceFaults::tamper_sent);
//  * progress poison: it trains honestly, and at every attacked step writes progress records that
//    claim the swarm is a million steps ahead: a plain value squatting the progress key, an entry
//    under a subkey that names no owner, one that never expires, and a Sybil's signed report
//    (progress.hpp: poisoned_progress). Undefended, one such record froze a swarm.
// The vector attacks are here so that the ns-3 and the live trainers apply the same ones.
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "core/runtime/rng.hpp"

namespace apiary::optim {

enum class AttackKind {
  kNone,
  kSignFlip,
  kRandomDirection,
  kLabelFlip,
  kDelayed,
  kWrongAggregate,
  kBreakCommitment,
  kProgressPoison,
};

struct AttackConfig {
  AttackKind kind = AttackKind::kNone;
  std::uint32_t attackers = 0;   // how many peers attack (which ones: the workload decides)
  std::uint64_t from_step = 0;   // the first global step attacked
  std::uint32_t every = 1;       // then every k-th step
  double scale = 1000;           // sign flip and wrong aggregate: the factor; random direction: the norm ratio
  std::uint64_t delay = 1000;    // delayed: how many global steps old
};

// Whether an attacker attacks at global step `step`.
bool attacks_at(const AttackConfig& a, std::uint64_t step);

// Sign flip and random direction on a gradient, in place (other kinds leave it as it is).
void tamper_gradient(const AttackConfig& a, std::span<float> grad, Rng& rng);
// Wrong aggregate: a reduced piece becomes -scale x itself, in place.
void tamper_aggregate(const AttackConfig& a, std::span<float> mean);

std::string to_string(AttackKind k);
// Every kind's name, in the enum's order.
const std::vector<std::string>& attack_names();
// "none", "sign_flip", ...; throws std::invalid_argument for another name.
AttackKind attack_from_string(const std::string& name);

}  // namespace apiary::optim
