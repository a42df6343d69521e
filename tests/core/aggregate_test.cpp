// CenteredClip: closed-form cases, outliers, weights, the exact mean when nothing is clipped.
#include <gtest/gtest.h>

#include <cmath>
#include <stdexcept>
#include <vector>

#include "core/averaging/aggregate.hpp"
#include "core/runtime/rng.hpp"

namespace apiary::averaging {
namespace {

AggregationConfig clip(double tau, std::uint32_t iterations = 200, double stop = 1e-12) {
  return AggregationConfig{AggregationRule::kCenteredClip, tau, iterations, stop};
}

TEST(CenteredClip, NothingFartherThanTauGivesTheExactWeightedMean) {
  Rng rng(3);
  const std::size_t n = 7, m = 50;
  std::vector<float> rows(n * m);
  for (auto& x : rows) x = static_cast<float>(rng.uniform(-0.01, 0.01));
  std::vector<double> w{1, 2, 3, 4, 5, 6, 7};
  std::vector<float> out(m);
  const auto st = centered_clip(rows, w, out, clip(10.0, 20, 1e-6));
  EXPECT_EQ(st.clipped, 0u);
  EXPECT_LE(st.iterations, 2u);  // the first step lands on the mean, the second is zero
  for (std::size_t k = 0; k < m; ++k) {
    double s = 0, ws = 0;
    for (std::size_t i = 0; i < n; ++i) {
      s += w[i] * rows[i * m + k];
      ws += w[i];
    }
    EXPECT_NEAR(out[k], s / ws, 1e-7) << k;
  }
}

TEST(CenteredClip, OneFarValueConvergesToTheFixedPoint) {
  // 0, 0, 100 with equal weights and tau = 1: beyond the first step the far value always pulls
  // by tau, so the fixed point solves 2 (0 - v) + 1 = 0: v = 0.5. The plain mean would be 33.3.
  std::vector<float> rows{0, 0, 100};
  std::vector<double> w{1, 1, 1};
  std::vector<float> out(1);
  const auto st = centered_clip(rows, w, out, clip(1.0));
  EXPECT_NEAR(out[0], 0.5, 1e-6);
  EXPECT_EQ(st.clipped, 1u);
  EXPECT_LT(st.last_step, 1e-9);
}

TEST(CenteredClip, AnOutlierMovesTheResultByTauOverTheHonestWeight) {
  // Nine equal honest vectors c and one attacker at c + 1e6 u (|u| = 1): the fixed point is
  // c + tau u / 9, whatever the attacker's magnitude.
  const std::size_t n = 10, m = 16;
  Rng rng(11);
  std::vector<float> c(m), u(m);
  double norm = 0;
  for (std::size_t k = 0; k < m; ++k) {
    c[k] = static_cast<float>(rng.uniform(-1, 1));
    u[k] = static_cast<float>(rng.uniform(-1, 1));
    norm += double(u[k]) * u[k];
  }
  for (auto& x : u) x = static_cast<float>(x / std::sqrt(norm));
  for (double magnitude : {1e3, 1e6}) {
    std::vector<float> rows;
    for (std::size_t i = 0; i + 1 < n; ++i) rows.insert(rows.end(), c.begin(), c.end());
    for (std::size_t k = 0; k < m; ++k) rows.push_back(static_cast<float>(c[k] + magnitude * u[k]));
    std::vector<double> w(n, 1.0);
    std::vector<float> out(m);
    const double tau = 0.5;
    centered_clip(rows, w, out, clip(tau));
    for (std::size_t k = 0; k < m; ++k) EXPECT_NEAR(out[k], c[k] + tau * u[k] / 9, 1e-4) << magnitude << " " << k;
  }
}

TEST(CenteredClip, WeightsCountAndAZeroWeightCountsForNothing) {
  // 0 (weight 3) and 10 (weight 1), tau = 100: the weighted mean 2.5. A third contribution of
  // weight 0 far away changes nothing, not even the starting median.
  std::vector<float> rows{0, 10, 1e9f};
  std::vector<double> w{3, 1, 0};
  std::vector<float> out(1);
  centered_clip(rows, w, out, clip(100.0));
  EXPECT_NEAR(out[0], 2.5, 1e-6);
}

// Two of five members far away (a flipped gradient) but holding most of the weight (they claim, or
// have, many samples): weighted, they drag the result to themselves; counted once each (BTARD's
// setting) the three honest members hold it within tau of their value.
TEST(CenteredClip, EqualWeightsKeepAHeavyMinorityFromDraggingTheResult) {
  const std::vector<float> rows{1, 1, 1, -1000, -1000};  // one coordinate per member
  const std::vector<double> w{10, 10, 10, 1000, 1000};
  std::vector<float> out(1);
  auto cfg = clip(0.1, 2000, 1e-9);
  centered_clip(rows, w, out, cfg);
  EXPECT_LT(out[0], 0.0f) << "weighted, the heavy pair wins";
  cfg.equal_weights = true;
  centered_clip(rows, w, out, cfg);
  EXPECT_NEAR(out[0], 1.0, 0.1 * 2.0 / 3.0 + 1e-6);  // honest value, moved at most 2/3 tau by the two
  const std::vector<double> zero_counts_nothing{1, 1, 1, 0, 0};
  centered_clip(rows, zero_counts_nothing, out, cfg);
  EXPECT_NEAR(out[0], 1.0, 1e-6);
}

TEST(CenteredClip, EveryCoordinateStaysWithinTheContributionsRange) {
  Rng rng(5);
  const std::size_t n = 5, m = 200;
  std::vector<float> rows(n * m);
  for (auto& x : rows) x = static_cast<float>(rng.uniform(-1, 1) * (rng.uniform(0, 1) < 0.1 ? 1e4 : 1));
  std::vector<double> w{1, 0.5, 2, 1, 3};
  std::vector<float> out(m);
  centered_clip(rows, w, out, clip(0.3, 20, 1e-6));
  for (std::size_t k = 0; k < m; ++k) {
    float lo = rows[k], hi = rows[k];
    for (std::size_t i = 1; i < n; ++i) {
      lo = std::min(lo, rows[i * m + k]);
      hi = std::max(hi, rows[i * m + k]);
    }
    EXPECT_GE(out[k], lo) << k;
    EXPECT_LE(out[k], hi) << k;
  }
}

TEST(CenteredClip, StopsAtTheIterationCapOrTheStepTolerance) {
  std::vector<float> rows{0, 0, 100};
  std::vector<double> w{1, 1, 1};
  std::vector<float> out(1);
  EXPECT_EQ(centered_clip(rows, w, out, clip(1.0, 1)).iterations, 1u);
  EXPECT_NEAR(out[0], 1.0 / 3, 1e-6);  // the median 0, then one step of tau / 3
  const auto st = centered_clip(rows, w, out, clip(1.0, 1000, 1e-3));
  EXPECT_LT(st.iterations, 20u);
  EXPECT_LE(st.last_step, 1e-3);
}

TEST(CenteredClip, BadInputIsAClearError) {
  std::vector<float> out(2), rows{1, 2, 3, 4};
  std::vector<double> w{1, 1};
  EXPECT_THROW(centered_clip(rows, std::vector<double>{1, 1, 1}, out, clip(1)), std::invalid_argument);
  EXPECT_THROW(centered_clip(rows, std::vector<double>{0, 0}, out, clip(1)), std::invalid_argument);
  EXPECT_THROW(centered_clip(rows, std::vector<double>{1, NAN}, out, clip(1)), std::invalid_argument);
  EXPECT_THROW(centered_clip(rows, std::vector<double>{1, -1}, out, clip(1)), std::invalid_argument);
  EXPECT_THROW(centered_clip(rows, w, out, clip(0)), std::invalid_argument);
  EXPECT_THROW(centered_clip(rows, std::vector<double>{}, out, clip(1)), std::invalid_argument);
  EXPECT_NO_THROW(centered_clip(rows, w, out, clip(1)));
}

}  // namespace
}  // namespace apiary::averaging
