#include <gtest/gtest.h>

#include <bit>
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

// The bulk conversions (F16C on this CPU, when it has it) give the scalar functions' bits exactly:
// every half, and floats of every kind (normal, subnormal, overflowing, ties, NaN payloads), at
// lengths that are not multiples of the vector width.
TEST(Half, BulkConversionsEqualTheScalarOnesBitForBit) {
  std::vector<std::uint8_t> halves(2 * 65536);
  for (std::uint32_t h = 0; h < 65536; ++h) {
    halves[2 * h] = static_cast<std::uint8_t>(h);
    halves[2 * h + 1] = static_cast<std::uint8_t>(h >> 8);
  }
  std::vector<float> a(65536), b(65536);
  halves_to_floats(halves.data(), a);
  halves_to_floats_scalar(halves.data(), b);
  for (std::size_t i = 0; i < a.size(); ++i) ASSERT_EQ(std::bit_cast<std::uint32_t>(a[i]), std::bit_cast<std::uint32_t>(b[i])) << i;

  Rng rng(11);
  std::vector<float> f;
  for (int i = 0; i < 200003; ++i) f.push_back(std::bit_cast<float>(static_cast<std::uint32_t>(rng.next())));
  for (float x : {0.0f, -0.0f, 65504.0f, 65519.99f, 65520.0f, 1e-8f, 2.98e-8f, 1.0f + 0x1p-11f, INFINITY, -INFINITY, NAN})
    f.push_back(x);
  for (std::uint32_t payload : {1u, 0x1fffu, 0x2000u, 0x200000u, 0x3fffffu}) {
    f.push_back(std::bit_cast<float>(0x7f800000u | payload));  // signalling and quiet NaNs
    f.push_back(std::bit_cast<float>(0xff800000u | payload));
  }
  std::vector<std::uint8_t> x(2 * f.size()), y(2 * f.size());
  floats_to_halves(f, x.data());
  floats_to_halves_scalar(f, y.data());
  for (std::size_t i = 0; i < f.size(); ++i)
    ASSERT_EQ(x[2 * i] | (x[2 * i + 1] << 8), y[2 * i] | (y[2 * i + 1] << 8)) << std::hex << std::bit_cast<std::uint32_t>(f[i]);
}

// float16's one-pass accumulate (decode, scale and add without a temporary) gives exactly what
// decoding and then adding gives, for assign and add, at a length that is not a multiple of 8.
TEST(Half, AccumulateInOnePassEqualsDecodeThenAdd) {
  const auto v = sample(1003, 5, 3.0f);
  const Bytes body = encode_body(v, Codec::kFloat16);
  std::vector<float> decoded(v.size());
  decode_body_into(Codec::kFloat16, body, decoded);
  for (bool assign : {true, false}) {
    std::vector<float> sum = sample(v.size(), 6), want = sum;
    accumulate_body(Codec::kFloat16, body, sum, 0.37f, assign);
    for (std::size_t i = 0; i < v.size(); ++i) want[i] = assign ? 0.37f * decoded[i] : want[i] + 0.37f * decoded[i];
    for (std::size_t i = 0; i < v.size(); ++i) ASSERT_EQ(sum[i], want[i]) << i << (assign ? " assign" : " add");
  }
  std::vector<float> short_sum(v.size() - 1);
  EXPECT_THROW(accumulate_body(Codec::kFloat16, body, short_sum, 1.0f, false), wire::DecodeError);
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
