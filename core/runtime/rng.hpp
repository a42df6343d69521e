#pragma once
// One seeded generator per peer: xoshiro256** seeded through splitmix64. The distributions are
// written here rather than taken from <random>, whose distributions differ between standard
// libraries; a scenario and seed must give the same trace everywhere.
#include <cstdint>

namespace apiary {

class Rng {
 public:
  explicit Rng(std::uint64_t seed = 0);
  std::uint64_t next();
  // Uniform in [0, n); n > 0. Unbiased (Lemire's method).
  std::uint64_t below(std::uint64_t n);
  double uniform01();  // [0, 1)
  double uniform(double lo, double hi) { return lo + (hi - lo) * uniform01(); }
  double exponential(double mean);
  double normal(double mean = 0.0, double stddev = 1.0);
  double weibull(double shape, double scale);
  // A child generator whose stream does not overlap this one's in practice.
  Rng fork(std::uint64_t stream);

 private:
  std::uint64_t s_[4];
};

}  // namespace apiary
