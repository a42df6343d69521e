#include "core/compression/codecs.hpp"

#if defined(__x86_64__) && defined(__GNUC__)
#include <immintrin.h>
#endif

#include <algorithm>
#include <bit>
#include <cmath>
#include <cstring>

namespace apiary::compression {

const char* to_string(Codec c) {
  switch (c) {
    case Codec::kFloat32: return "float32";
    case Codec::kFloat16: return "float16";
    case Codec::kScaledFloat16: return "scaled-float16";
    case Codec::kUniform8: return "uniform8";
    case Codec::kQuantile8: return "quantile8";
    case Codec::kBlockwise8: return "blockwise8";
  }
  return "?";
}

const std::vector<std::string>& codec_names() {
  static const std::vector<std::string> names = [] {
    std::vector<std::string> v;
    for (int c = 0; c <= static_cast<int>(Codec::kBlockwise8); ++c) v.emplace_back(to_string(static_cast<Codec>(c)));
    return v;
  }();
  return names;
}

std::optional<Codec> codec_from_string(std::string_view name) {
  const auto& names = codec_names();
  for (std::size_t c = 0; c < names.size(); ++c)
    if (name == names[c]) return static_cast<Codec>(c);
  return std::nullopt;
}

std::uint16_t float_to_half(float f) {
  std::uint32_t x;
  std::memcpy(&x, &f, 4);
  const std::uint32_t sign = (x >> 16) & 0x8000u;
  const std::uint32_t exp = (x >> 23) & 0xffu;
  std::uint32_t mant = x & 0x7fffffu;
  // inf; a NaN stays a NaN, quiet, with the top of its payload (as the F16C instruction does)
  if (exp == 0xff) return static_cast<std::uint16_t>(sign | 0x7c00u | (mant ? 0x200u | (mant >> 13) : 0));
  const int e = static_cast<int>(exp) - 127 + 15;
  if (e >= 31) return static_cast<std::uint16_t>(sign | 0x7c00u);  // overflow -> inf
  if (e <= 0) {                                                     // subnormal or zero
    if (e < -10) return static_cast<std::uint16_t>(sign);
    mant |= 0x800000u;
    const int shift = 14 - e;
    std::uint32_t h = mant >> shift;
    const std::uint32_t rem = mant & ((1u << shift) - 1), half = 1u << (shift - 1);
    if (rem > half || (rem == half && (h & 1))) ++h;
    return static_cast<std::uint16_t>(sign | h);
  }
  std::uint32_t h = (static_cast<std::uint32_t>(e) << 10) | (mant >> 13);
  const std::uint32_t rem = mant & 0x1fffu;
  if (rem > 0x1000u || (rem == 0x1000u && (h & 1))) ++h;  // may carry into the exponent: correct
  return static_cast<std::uint16_t>(sign | h);
}

float half_to_float(std::uint16_t h) {
  const std::uint32_t sign = (h & 0x8000u) << 16;
  const std::uint32_t exp = (h >> 10) & 0x1fu;
  std::uint32_t mant = h & 0x3ffu;
  std::uint32_t x;
  if (exp == 0) {
    if (mant == 0) {
      x = sign;
    } else {  // subnormal: normalise
      int e = -1;
      do {
        ++e;
        mant <<= 1;
      } while (!(mant & 0x400u));
      x = sign | (static_cast<std::uint32_t>(127 - 15 - e) << 23) | ((mant & 0x3ffu) << 13);
    }
  } else if (exp == 31) {
    x = sign | 0x7f800000u | (mant << 13) | (mant ? 0x400000u : 0);  // a NaN comes out quiet (as F16C)
  } else {
    x = sign | ((exp + 127 - 15) << 23) | (mant << 13);
  }
  float f;
  std::memcpy(&f, &x, 4);
  return f;
}

namespace {

void halves_of_scalar(const float* in, std::size_t n, std::uint8_t* out) {
  for (std::size_t i = 0; i < n; ++i) {
    const std::uint16_t h = float_to_half(in[i]);
    out[2 * i] = static_cast<std::uint8_t>(h);
    out[2 * i + 1] = static_cast<std::uint8_t>(h >> 8);
  }
}

void floats_of_scalar(const std::uint8_t* in, std::size_t n, float* out) {
  for (std::size_t i = 0; i < n; ++i) out[i] = half_to_float(static_cast<std::uint16_t>(in[2 * i] | (in[2 * i + 1] << 8)));
}

#if defined(__x86_64__) && defined(__GNUC__)
// Eight values per instruction where the CPU converts halves itself (F16C, x86 since 2012); the
// results are bit for bit the scalar functions' (round to nearest even; quiet NaNs).
__attribute__((target("avx,f16c"))) void halves_of_f16c(const float* in, std::size_t n, std::uint8_t* out) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const __m128i h = _mm256_cvtps_ph(_mm256_loadu_ps(in + i), _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
    _mm_storeu_si128(reinterpret_cast<__m128i*>(out + 2 * i), h);  // x86 is little-endian: the wire's order
  }
  halves_of_scalar(in + i, n - i, out + 2 * i);
}

__attribute__((target("avx,f16c"))) void floats_of_f16c(const std::uint8_t* in, std::size_t n, float* out) {
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8)
    _mm256_storeu_ps(out + i, _mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i))));
  floats_of_scalar(in + 2 * i, n - i, out + i);
}

// sum (+)= weight * halves, one pass: what accumulate_body does for float16 (the same mul, then add).
__attribute__((target("avx,f16c"))) void accumulate_halves_f16c(const std::uint8_t* in, std::size_t n, float* sum, float weight,
                                                                bool assign) {
  const __m256 w = _mm256_set1_ps(weight);
  std::size_t i = 0;
  for (; i + 8 <= n; i += 8) {
    __m256 x = _mm256_mul_ps(_mm256_cvtph_ps(_mm_loadu_si128(reinterpret_cast<const __m128i*>(in + 2 * i))), w);
    if (!assign) x = _mm256_add_ps(_mm256_loadu_ps(sum + i), x);
    _mm256_storeu_ps(sum + i, x);
  }
  for (; i < n; ++i) {
    const float x = weight * half_to_float(static_cast<std::uint16_t>(in[2 * i] | (in[2 * i + 1] << 8)));
    sum[i] = assign ? x : sum[i] + x;
  }
}

bool have_f16c() {
  static const bool yes = __builtin_cpu_supports("avx") && __builtin_cpu_supports("f16c");
  return yes;
}
#endif

}  // namespace

void floats_to_halves(std::span<const float> in, std::uint8_t* out) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (have_f16c()) return halves_of_f16c(in.data(), in.size(), out);
#endif
  halves_of_scalar(in.data(), in.size(), out);
}

void halves_to_floats(const std::uint8_t* in, std::span<float> out) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (have_f16c()) return floats_of_f16c(in, out.size(), out.data());
#endif
  floats_of_scalar(in, out.size(), out.data());
}

void floats_to_halves_scalar(std::span<const float> in, std::uint8_t* out) { halves_of_scalar(in.data(), in.size(), out); }
void halves_to_floats_scalar(const std::uint8_t* in, std::span<float> out) { floats_of_scalar(in, out.size(), out.data()); }

namespace {
constexpr std::size_t kBlock = 4096;
}

namespace {

// Appends n bytes to `out` and returns where they start.
std::uint8_t* grow(Bytes& out, std::size_t n) {
  const std::size_t at = out.size();
  out.resize(at + n);
  return out.data() + at;
}

void put_f32(Bytes& out, float x) { wire::Writer(out).f32(x); }

void put_floats(std::uint8_t* p, std::span<const float> v) {
  if constexpr (std::endian::native == std::endian::little) {
    if (!v.empty()) std::memcpy(p, v.data(), v.size() * 4);
  } else {
    for (float x : v) {
      std::uint32_t u;
      std::memcpy(&u, &x, 4);
      for (int i = 0; i < 4; ++i) *p++ = static_cast<std::uint8_t>(u >> (8 * i));
    }
  }
}

void get_floats(const std::uint8_t* p, std::span<float> out) {
  if constexpr (std::endian::native == std::endian::little) {
    if (!out.empty()) std::memcpy(out.data(), p, out.size() * 4);
  } else {
    for (auto& x : out) {
      std::uint32_t u = 0;
      for (int i = 0; i < 4; ++i) u |= std::uint32_t{*p++} << (8 * i);
      std::memcpy(&x, &u, 4);
    }
  }
}


}  // namespace

namespace {

// Appends the codec's body for `v` to `out`. Each codec writes its small header through the wire
// Writer and its bulk values straight into the output buffer (one pass, no per-byte growth).
void append_body(Bytes& out, std::span<const float> v, Codec codec) {
  const std::size_t n = v.size();
  switch (codec) {
    case Codec::kFloat32:
      if constexpr (kFloat32IsNative) {  // no zero-fill before the copy
        const auto* b = reinterpret_cast<const std::uint8_t*>(v.data());
        out.insert(out.end(), b, b + 4 * n);
      } else {
        put_floats(grow(out, 4 * n), v);
      }
      break;
    case Codec::kFloat16:
      floats_to_halves(v, grow(out, 2 * n));
      break;
    case Codec::kScaledFloat16: {
      double mean = 0, var = 0;
      for (float x : v) mean += x;
      mean = v.empty() ? 0 : mean / static_cast<double>(n);
      for (float x : v) var += (x - mean) * (x - mean);
      const double sd = v.empty() ? 1 : std::max(1e-30, std::sqrt(var / static_cast<double>(n)));
      put_f32(out, static_cast<float>(mean));
      put_f32(out, static_cast<float>(sd));
      std::vector<float> z(n);
      for (std::size_t i = 0; i < n; ++i) z[i] = static_cast<float>((v[i] - mean) / sd);
      floats_to_halves(z, grow(out, 2 * n));
      break;
    }
    case Codec::kUniform8: {
      const float lo = v.empty() ? 0 : *std::min_element(v.begin(), v.end());
      const float hi = v.empty() ? 0 : *std::max_element(v.begin(), v.end());
      put_f32(out, lo);
      put_f32(out, hi);
      // Levels lo + k (hi - lo) / 255; the nearest, in float arithmetic the compiler vectorises.
      const float inv = hi > lo ? static_cast<float>(255.0 / (static_cast<double>(hi) - lo)) : 0.0f;
      std::uint8_t* p = grow(out, n);
      for (std::size_t i = 0; i < n; ++i) {
        float q = (v[i] - lo) * inv;
        q = q > 0.0f ? q : 0.0f;  // (a NaN goes to level 0)
        q = q < 255.0f ? q : 255.0f;
        p[i] = static_cast<std::uint8_t>(static_cast<int>(q + 0.5f));  // exact for q in [0, 255]: round half up
      }
      break;
    }
    case Codec::kQuantile8: {
      std::vector<float> sorted(v.begin(), v.end());
      std::sort(sorted.begin(), sorted.end());
      std::vector<float> levels(256, 0.0f);
      for (std::size_t i = 0; i < 256 && !sorted.empty(); ++i)
        levels[i] = sorted[std::min(sorted.size() - 1, (2 * i + 1) * sorted.size() / 512)];
      for (float l : levels) put_f32(out, l);
      std::uint8_t* p = grow(out, n);
      for (std::size_t k = 0; k < n; ++k) {
        const float x = v[k];
        auto it = std::lower_bound(levels.begin(), levels.end(), x);
        std::size_t i = static_cast<std::size_t>(it - levels.begin());
        if (i == 256 || (i > 0 && x - levels[i - 1] <= levels[i] - x)) --i;
        p[k] = static_cast<std::uint8_t>(i);
      }
      break;
    }
    case Codec::kBlockwise8:
      for (std::size_t b = 0; b < n; b += kBlock) {
        const std::size_t m = std::min(kBlock, n - b);
        float absmax = 0;
        for (std::size_t i = 0; i < m; ++i) absmax = std::max(absmax, std::fabs(v[b + i]));
        put_f32(out, absmax);
        const float scale = absmax > 0 ? 127.0f / absmax : 0.0f;
        std::uint8_t* p = grow(out, m);
        for (std::size_t i = 0; i < m; ++i) {
          float q = v[b + i] * scale;
          q = q > -127.0f ? q : -127.0f;  // (a NaN goes to -127)
          q = q < 127.0f ? q : 127.0f;
          // Half away from zero, as lround (exact for |q| <= 127).
          const int r = q >= 0.0f ? static_cast<int>(q + 0.5f) : -static_cast<int>(0.5f - q);
          p[i] = static_cast<std::uint8_t>(static_cast<std::int8_t>(r));
        }
      }
      break;
  }
}

void put_prefix(Bytes& out, Codec codec, std::size_t n) {
  wire::Writer w(out);
  w.u8(static_cast<std::uint8_t>(codec));
  w.varint(n);
}

// Reads the codec byte and element count; checks the count against `n`.
Codec read_prefix(wire::Reader& r, std::size_t n) {
  const Codec c = codec_from_byte(r.u8());
  const auto got = static_cast<std::size_t>(r.varint());
  if (got != n)
    throw wire::DecodeError("tensor has " + std::to_string(got) + " elements, expected " + std::to_string(n));
  return c;
}

}  // namespace

Codec codec_from_byte(std::uint8_t c) {
  if (c > static_cast<std::uint8_t>(Codec::kBlockwise8)) throw wire::DecodeError("unknown tensor codec " + std::to_string(c));
  return static_cast<Codec>(c);
}

std::uint64_t body_size(Codec codec, std::uint64_t n) {
  switch (codec) {
    case Codec::kFloat32: return 4ull * n;
    case Codec::kFloat16: return 2ull * n;
    case Codec::kScaledFloat16: return 8 + 2ull * n;
    case Codec::kUniform8: return 8 + n;
    case Codec::kQuantile8: return 4 * 256 + n;
    case Codec::kBlockwise8: return n + 4 * ((n + kBlock - 1) / kBlock);
  }
  return 0;
}

Bytes encode_body(std::span<const float> values, Codec codec) {
  Bytes out;
  out.reserve(static_cast<std::size_t>(body_size(codec, values.size())));
  append_body(out, values, codec);
  return out;
}

Bytes encode(std::span<const float> v, Codec codec) {
  Bytes out;
  out.reserve(16 + static_cast<std::size_t>(body_size(codec, v.size())));
  put_prefix(out, codec, v.size());
  append_body(out, v, codec);
  return out;
}

void decode_body_into(Codec codec, std::span<const std::uint8_t> body, std::span<float> out) {
  const std::size_t n = out.size();
  // The exact size is checked before anything is written, so a bad buffer leaves `out` untouched.
  const std::uint64_t want = body_size(codec, n);
  if (body.size() != want)
    throw wire::DecodeError("tensor of " + std::to_string(n) + " elements in " + to_string(codec) + " needs " +
                            std::to_string(want) + " bytes, got " + std::to_string(body.size()));
  wire::Reader r(body);
  switch (codec) {
    case Codec::kFloat32:
      get_floats(r.raw(4 * n).data(), out);
      break;
    case Codec::kFloat16:
      halves_to_floats(r.raw(2 * n).data(), out);
      break;
    case Codec::kScaledFloat16: {
      const float mean = r.f32(), sd = r.f32();
      halves_to_floats(r.raw(2 * n).data(), out);
      for (std::size_t i = 0; i < n; ++i) out[i] = mean + sd * out[i];
      break;
    }
    case Codec::kUniform8: {
      const float lo = r.f32(), hi = r.f32();
      const float step = hi > lo ? static_cast<float>((static_cast<double>(hi) - lo) / 255.0) : 0.0f;
      const std::uint8_t* p = r.raw(n).data();
      for (std::size_t i = 0; i < n; ++i) out[i] = lo + step * static_cast<float>(p[i]);
      break;
    }
    case Codec::kQuantile8: {
      float levels[256];
      for (auto& l : levels) l = r.f32();
      const std::uint8_t* p = r.raw(n).data();
      for (std::size_t i = 0; i < n; ++i) out[i] = levels[p[i]];
      break;
    }
    case Codec::kBlockwise8:
      for (std::size_t b = 0; b < n; b += kBlock) {
        const float absmax = r.f32();
        const std::size_t m = std::min(kBlock, n - b);
        const std::uint8_t* p = r.raw(m).data();
        for (std::size_t i = 0; i < m; ++i) out[b + i] = static_cast<float>(static_cast<std::int8_t>(p[i])) * absmax / 127.0f;
      }
      break;
  }
  r.expect_end();
}

void decode_into(std::span<const std::uint8_t> bytes, std::span<float> out) {
  wire::Reader r(bytes);
  const Codec c = read_prefix(r, out.size());
  decode_body_into(c, r.rest(), out);
}

Bytes encode_scaled(std::span<float> v, float scale, Codec codec) {
  if (codec != Codec::kFloat32 || !kFloat32IsNative) {
    for (auto& x : v) x *= scale;
    return encode(v, codec);
  }
  Bytes out;
  put_prefix(out, codec, v.size());
  const std::size_t at = out.size();
  out.reserve(at + 4 * v.size());
  out.resize(at + 4 * v.size());  // (zero-fill; cheaper than a second pass over v)
  std::uint8_t* p = out.data() + at;
  for (std::size_t i = 0; i < v.size(); ++i) {
    const float x = v[i] * scale;
    std::memcpy(p + 4 * i, &x, 4);
  }
  return out;
}

void accumulate_body(Codec codec, std::span<const std::uint8_t> body, std::span<float> sum, float weight,
                     bool assign) {
#if defined(__x86_64__) && defined(__GNUC__)
  if (codec == Codec::kFloat16 && have_f16c()) {  // decode and add in one pass, no temporary
    if (body.size() != 2ull * sum.size())
      throw wire::DecodeError("tensor of " + std::to_string(sum.size()) + " elements in float16 needs " +
                              std::to_string(2ull * sum.size()) + " bytes, got " + std::to_string(body.size()));
    accumulate_halves_f16c(body.data(), sum.size(), sum.data(), weight, assign);
    return;
  }
#endif
  if (codec != Codec::kFloat32 || !kFloat32IsNative) {
    std::vector<float> tmp(sum.size());
    decode_body_into(codec, body, tmp);
    if (assign)
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] = weight * tmp[i];
    else
      for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += weight * tmp[i];
    return;
  }
  // float32: check the size as decode_body_into does, then one fused pass over the bytes.
  const std::size_t n = sum.size();
  if (body.size() != 4ull * n)
    throw wire::DecodeError("tensor of " + std::to_string(n) + " elements in float32 needs " + std::to_string(4ull * n) +
                            " bytes, got " + std::to_string(body.size()));
  const std::uint8_t* p = body.data();
  float* out = sum.data();
  if (assign) {
    for (std::size_t i = 0; i < n; ++i) {
      float x;
      std::memcpy(&x, p + 4 * i, 4);
      out[i] = weight * x;
    }
  } else {
    for (std::size_t i = 0; i < n; ++i) {
      float x;
      std::memcpy(&x, p + 4 * i, 4);
      out[i] += weight * x;
    }
  }
}

void accumulate(std::span<const std::uint8_t> bytes, std::span<float> sum, float weight, bool assign) {
  wire::Reader r(bytes);
  const Codec c = read_prefix(r, sum.size());
  accumulate_body(c, r.rest(), sum, weight, assign);
}

std::vector<float> decode(std::span<const std::uint8_t> bytes, std::size_t max_elements) {
  wire::Reader r(bytes);
  const auto c = r.u8();
  if (c > static_cast<std::uint8_t>(Codec::kBlockwise8)) throw wire::DecodeError("unknown tensor codec " + std::to_string(c));
  const auto n = static_cast<std::size_t>(r.varint_max(max_elements, "tensor elements"));
  // The element count must fit the bytes present before anything is allocated.
  const std::size_t per = c == 0 ? 4 : (c <= 2 ? 2 : 1);
  if (r.remaining() / per < n) throw wire::DecodeError("tensor of " + std::to_string(n) + " elements truncated");
  std::vector<float> out(n);
  decode_into(bytes, out);
  return out;
}

}  // namespace apiary::compression
