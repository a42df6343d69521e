#include <gtest/gtest.h>

#include <cmath>

#include "core/compression/codecs.hpp"
#include "core/runtime/rng.hpp"

namespace apiary::compression {
namespace {

std::vector<float> sample(std::size_t n, std::uint64_t seed, float scale = 1.0f) {
  Rng rng(seed);
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal(0.3, scale));
  return v;
}

TEST(Half, ExactOnRepresentableValuesAndRoundsToNearestEven) {
  for (float f : {0.0f, -0.0f, 1.0f, -2.5f, 65504.0f, 6.103515625e-05f, 5.960464477539063e-08f})
    EXPECT_EQ(half_to_float(float_to_half(f)), f) << f;
  EXPECT_TRUE(std::isinf(half_to_float(float_to_half(1e6f))));
  EXPECT_TRUE(std::isnan(half_to_float(float_to_half(NAN))));
  // 1 + 2^-11 is halfway between 1 and the next half (1 + 2^-10): ties to even (1).
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 0x1p-11f)), 1.0f);
  EXPECT_EQ(half_to_float(float_to_half(1.0f + 0x1.8p-11f)), 1.0f + 0x1p-10f);
}

TEST(Codecs, EachRoundTripsWithinItsStatedBound) {
  const auto v = sample(10000, 1, 2.0f);
  float lo = v[0], hi = v[0], absmax = 0;
  double mean = 0, var = 0;
  for (float x : v) {
    lo = std::min(lo, x);
    hi = std::max(hi, x);
    absmax = std::max(absmax, std::fabs(x));
    mean += x;
  }
  mean /= static_cast<double>(v.size());
  for (float x : v) var += (x - mean) * (x - mean);
  const double sd = std::sqrt(var / static_cast<double>(v.size()));
  for (Codec c : {Codec::kFloat32, Codec::kFloat16, Codec::kScaledFloat16, Codec::kUniform8,
                  Codec::kQuantile8, Codec::kBlockwise8}) {
    const Bytes b = encode(v, c);
    const auto d = decode(b);
    ASSERT_EQ(d.size(), v.size()) << to_string(c);
    double worst = 0, mse = 0;
    for (std::size_t i = 0; i < v.size(); ++i) {
      const double e = std::fabs(static_cast<double>(d[i]) - v[i]);
      worst = std::max(worst, e);
      mse += e * e;
      double bound = 0;
      switch (c) {
        case Codec::kFloat32: bound = 0; break;
        case Codec::kFloat16: bound = std::fabs(v[i]) * 0x1p-11 + 1e-7; break;
        case Codec::kScaledFloat16: bound = sd * 0x1p-11 * (std::fabs(v[i] - mean) / sd + 1) + 1e-6; break;
        case Codec::kUniform8: bound = (hi - lo) / 510.0 * 1.0001; break;
        case Codec::kQuantile8: bound = 1e9; break;  // data-dependent; checked by MSE below
        case Codec::kBlockwise8: bound = absmax / 254.0 * 1.0001; break;
      }
      ASSERT_LE(e, bound) << to_string(c) << " at " << i;
    }
    mse /= static_cast<double>(v.size());
    if (c == Codec::kQuantile8) {
      EXPECT_LT(mse, 1e-3 * sd * sd) << "quantile8 mean squared error, relative to the variance";
    }
    const std::size_t bytes_per = c == Codec::kFloat32 ? 4 : (c == Codec::kFloat16 || c == Codec::kScaledFloat16) ? 2 : 1;
    EXPECT_LE(b.size(), v.size() * bytes_per + 1100) << to_string(c);  // headers are small
  }
}

TEST(Codecs, EmptyAndScalarAndConstantTensors) {
  for (Codec c : {Codec::kFloat32, Codec::kFloat16, Codec::kScaledFloat16, Codec::kUniform8,
                  Codec::kQuantile8, Codec::kBlockwise8}) {
    EXPECT_TRUE(decode(encode(std::vector<float>{}, c)).empty()) << to_string(c);
    auto one = decode(encode(std::vector<float>{1.5f}, c));
    ASSERT_EQ(one.size(), 1u);
    EXPECT_NEAR(one[0], 1.5f, 0.02f) << to_string(c);
    auto flat = decode(encode(std::vector<float>(100, -3.0f), c));
    for (float x : flat) EXPECT_NEAR(x, -3.0f, 0.03f) << to_string(c);
  }
}

TEST(Codecs, BadBytesAreDecodeErrors) {
  const auto v = sample(1000, 2);
  for (Codec c : {Codec::kFloat32, Codec::kFloat16, Codec::kUniform8, Codec::kBlockwise8}) {
    Bytes b = encode(v, c);
    Bytes cut(b.begin(), b.end() - 3);
    EXPECT_THROW(decode(cut), wire::DecodeError) << to_string(c);
    Bytes extra = b;
    extra.push_back(0);
    EXPECT_THROW(decode(extra), wire::DecodeError) << to_string(c);
  }
  EXPECT_THROW(decode(Bytes{9, 0}), wire::DecodeError);  // unknown codec
  wire::Writer w;
  w.u8(0);
  w.varint(1ull << 40);  // claims a trillion floats in a few bytes
  EXPECT_THROW(decode(w.take()), wire::DecodeError);
}

}  // namespace
}  // namespace apiary::compression
