#pragma once
// How a reducer combines the contributions to a piece of its part: the weighted mean, or
// CenteredClip (Karimireddy, He and Jaggi, ICML 2021), the robust rule of BTARD (Gorbunov,
// Borzunov, Diskin and Ryabinin, ICML 2022).
//
// CenteredClip starts from the coordinate-wise median v of the contributions x_i (weights w_i),
// then repeats
//     v <- v + sum_i w_i min(1, tau / |x_i - v|) (x_i - v) / sum_i w_i
// until a step's L2 norm is at most `stop_step` or `iterations` steps were taken (the paper's
// stopping rule: the fixed point has been reached to within a tolerance). Each v is a convex
// combination of the previous v and the x_i, so every coordinate of the result lies within the
// contributions' range. When every contribution lies within tau of the median and of the
// weighted mean, the first step lands on the mean and the second is zero: the rule then gives
// the exact mean. In each step a contribution moves the centre by at most tau x its weight share,
// whatever it sends.
//
// The norm is taken over one piece (AllReduceConfig::piece_elements values), as the authors'
// code clips each chunk a reducer accumulates; a piece as large as the part clips whole parts.
#include <cstdint>
#include <span>
#include <string>

namespace apiary::averaging {

enum class AggregationRule { kMean, kCenteredClip };

struct AggregationConfig {
  AggregationRule rule = AggregationRule::kMean;
  double tau = 1.0;                // CenteredClip's radius (L2, over a piece)
  std::uint32_t iterations = 20;   // at most this many steps
  double stop_step = 1e-6;         // stop once a step's L2 norm is at most this
  // Every contribution with a positive weight counts once. A weight is its sender's claim (its
  // samples): with weights, a few Byzantine members that claim, or really have, many samples can
  // hold most of the weight and drag the result anywhere; counted once each, they move it at most
  // as far as their share of the members allows (BTARD's setting).
  bool equal_weights = false;
};

struct ClipStats {
  std::uint32_t iterations = 0;  // steps taken
  std::uint32_t clipped = 0;     // contributions farther than tau from the result's last centre
  double last_step = 0;          // L2 norm of the last step
};

// `rows` holds n contributions of m values each, row after row; `weights` their n weights (>= 0,
// finite, with a positive sum). Writes the result into `out` (m values). Throws
// std::invalid_argument on mismatched sizes, a bad weight or a bad configuration.
ClipStats centered_clip(std::span<const float> rows, std::span<const double> weights, std::span<float> out,
                        const AggregationConfig& cfg);

std::string to_string(AggregationRule rule);

}  // namespace apiary::averaging
