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
    tamper_aggregate(a, grad);  // the same arithmetic
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

void tamper_aggregate(const AttackConfig& a, std::span<float> mean) {
  const float f = static_cast<float>(-a.scale);
  for (auto& x : mean) x *= f;
}

const std::vector<std::string>& attack_names() {
  static const std::vector<std::string> names{"none", "sign_flip", "random_direction", "label_flip", "delayed", "wrong_aggregate",
                                                "break_commitment", "progress_poison"};
  return names;
}

std::string to_string(AttackKind k) { return attack_names()[static_cast<std::size_t>(k)]; }

AttackKind attack_from_string(const std::string& name) {
  const auto& names = attack_names();
  for (std::size_t k = 0; k < names.size(); ++k)
    if (name == names[k]) return static_cast<AttackKind>(k);
  throw std::invalid_argument("unknown attack '" + name + "'");
}

}  // namespace apiary::optim
