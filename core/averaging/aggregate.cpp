#include "core/averaging/aggregate.hpp"

#include <algorithm>
#include <cmath>
#include <stdexcept>
#include <vector>

namespace apiary::averaging {

std::string to_string(AggregationRule rule) { return rule == AggregationRule::kMean ? "mean" : "centered_clip"; }

ClipStats centered_clip(std::span<const float> rows, std::span<const double> weights, std::span<float> out,
                        const AggregationConfig& cfg) {
  const std::size_t n = weights.size();
  const std::size_t m = out.size();
  if (n == 0) throw std::invalid_argument("centered_clip: no contributions");
  if (rows.size() != n * m)
    throw std::invalid_argument("centered_clip: " + std::to_string(rows.size()) + " values for " + std::to_string(n) +
                                " contributions of " + std::to_string(m));
  if (!(cfg.tau > 0) || !std::isfinite(cfg.tau)) throw std::invalid_argument("centered_clip: tau must be positive and finite");
  if (!(cfg.stop_step >= 0)) throw std::invalid_argument("centered_clip: stop_step must be >= 0");
  double total = 0;
  for (double w : weights) {
    if (!std::isfinite(w) || w < 0) throw std::invalid_argument("centered_clip: weights must be finite and >= 0");
    total += cfg.equal_weights ? (w > 0 ? 1.0 : 0.0) : w;
  }
  if (!(total > 0)) throw std::invalid_argument("centered_clip: the weights sum to 0");

  // The starting point: the coordinate-wise median of the contributions with a positive weight
  // (the mean of the two middle values for an even count).
  std::vector<double> v(m);
  std::vector<float> column;
  column.reserve(n);
  for (std::size_t k = 0; k < m; ++k) {
    column.clear();
    for (std::size_t i = 0; i < n; ++i)
      if (weights[i] > 0) column.push_back(rows[i * m + k]);
    const std::size_t h = column.size() / 2;
    std::nth_element(column.begin(), column.begin() + static_cast<std::ptrdiff_t>(h), column.end());
    double med = column[h];
    if (column.size() % 2 == 0) med = (med + *std::max_element(column.begin(), column.begin() + static_cast<std::ptrdiff_t>(h))) / 2;
    v[k] = med;
  }

  ClipStats st;
  std::vector<double> coeff(n), step(m);
  for (std::uint32_t it = 0; it < cfg.iterations; ++it) {
    st.clipped = 0;
    for (std::size_t i = 0; i < n; ++i) {
      coeff[i] = 0;
      if (weights[i] == 0) continue;
      double d2 = 0;
      for (std::size_t k = 0; k < m; ++k) {
        const double d = rows[i * m + k] - v[k];
        d2 += d * d;
      }
      const double d = std::sqrt(d2);
      double scale = 1;
      if (d > cfg.tau) {
        scale = cfg.tau / d;
        ++st.clipped;
      }
      coeff[i] = (cfg.equal_weights ? 1.0 : weights[i]) * scale / total;
    }
    std::fill(step.begin(), step.end(), 0.0);
    for (std::size_t i = 0; i < n; ++i) {
      if (coeff[i] == 0) continue;
      const float* x = rows.data() + i * m;
      for (std::size_t k = 0; k < m; ++k) step[k] += coeff[i] * (x[k] - v[k]);
    }
    double s2 = 0;
    for (std::size_t k = 0; k < m; ++k) {
      v[k] += step[k];
      s2 += step[k] * step[k];
    }
    st.iterations = it + 1;
    st.last_step = std::sqrt(s2);
    if (st.last_step <= cfg.stop_step) break;
  }
  for (std::size_t k = 0; k < m; ++k) out[k] = static_cast<float>(v[k]);
  return st;
}

}  // namespace apiary::averaging
