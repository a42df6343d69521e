#include "core/optim/attack.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>

namespace apiary::optim {

bool attacks_at(const AttackConfig& a, std::uint64_t step) {
  return a.kind != AttackKind::kNone && step >= a.from_step && (step - a.from_step) % std::max<std::uint32_t>(a.every, 1) == 0;
}

void tamper_gradient(const AttackConfig& a, std::span<float> grad, Rng& rng) {
  if (a.kind == AttackKind::kSignFlip) {
    const float f = static_cast<float>(-a.scale);
    for (auto& g : grad) g *= f;
  } else if (a.kind == AttackKind::kRandomDirection) {
    double honest = 0, drawn = 0;
    for (float g : grad) honest += double(g) * g;
    for (auto& g : grad) {
      g = static_cast<float>(rng.normal());
      drawn += double(g) * g;
    }
    const double f = drawn > 0 ? a.scale * std::sqrt(honest) / std::sqrt(drawn) : 0;
    for (auto& g : grad) g = static_cast<float>(g * f);
  }
}

namespace {
constexpr const char* kNames[] = {"none", "sign_flip", "random_direction", "label_flip", "delayed", "wrong_aggregate"};
}

std::string to_string(AttackKind k) { return kNames[static_cast<int>(k)]; }

AttackKind attack_from_string(const std::string& name) {
  for (int k = 0; k < 6; ++k)
    if (name == kNames[k]) return static_cast<AttackKind>(k);
  throw std::invalid_argument("unknown attack '" + name + "'");
}

}  // namespace apiary::optim
