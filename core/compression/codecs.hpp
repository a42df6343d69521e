#pragma once
// Tensor codecs for the wire (groundwork for averaging and DMoE): float32 values in, bytes out.
// Every codec states a bound on its reconstruction error, which the tests hold it to.
//   kFloat32        exact
//   kFloat16        IEEE half, round to nearest even: |err| <= |x| * 2^-11 (normal range)
//   kScaledFloat16  (x - mean) / std in half precision: |err| <= std * 2^-11 * max|z|
//   kUniform8       256 uniform levels over [min, max]: |err| <= (max - min) / 510
//   kQuantile8      256 levels at the data's quantiles, nearest level; error depends on the
//                   data (Gaussian: mean squared error < 1e-3 of the variance)
//   kBlockwise8     blocks of 4096 values, each int8 with its own absmax scale:
//                   |err| <= absmax(block) / 254
// Decoding checks sizes and headers: a truncated or oversized buffer is a DecodeError.
#include <bit>
#include <cstdint>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "core/runtime/payload.hpp"
#include "core/wire/codec.hpp"

namespace apiary::compression {

enum class Codec : std::uint8_t {
  kFloat32 = 0,
  kFloat16 = 1,
  kScaledFloat16 = 2,
  kUniform8 = 3,
  kQuantile8 = 4,
  kBlockwise8 = 5,
};

const char* to_string(Codec c);
// The codec with that name (as to_string writes it), or none.
std::optional<Codec> codec_from_string(std::string_view name);
// Every codec's name, in the enum's order: what a scenario key or an option may say.
const std::vector<std::string>& codec_names();

// Self-describing: the codec and element count are in the encoded bytes.
Bytes encode(std::span<const float> values, Codec codec);
std::vector<float> decode(std::span<const std::uint8_t> bytes, std::size_t max_elements = 1u << 30);
// encode(v * scale): one pass for float32; other codecs scale `v` in place first.
Bytes encode_scaled(std::span<float> v, float scale, Codec codec);
// Decodes into `out`, which must have exactly the encoded element count (else DecodeError).
void decode_into(std::span<const std::uint8_t> bytes, std::span<float> out);
// sum (+)= weight * decode(bytes), in one pass for float32; `assign` overwrites instead of adding.
// Validates like decode_into before touching `sum`.
void accumulate(std::span<const std::uint8_t> bytes, std::span<float> sum, float weight, bool assign);

// The codec's body alone, without the codec byte and element count: for callers that know both
// from elsewhere (averaging pieces, whose layout every member computes). For float32 the body is
// the values' little-endian bytes, so on a little-endian machine a tensor's memory is its body.
std::uint64_t body_size(Codec codec, std::uint64_t n);
Bytes encode_body(std::span<const float> values, Codec codec);
// A codec byte from the wire; DecodeError if it names no codec.
Codec codec_from_byte(std::uint8_t c);
// Decodes a body of exactly body_size(codec, out.size()) bytes (else DecodeError) into `out`.
void decode_body_into(Codec codec, std::span<const std::uint8_t> body, std::span<float> out);
// sum (+)= weight * decode(body), in one pass for float32; validates before touching `sum`.
void accumulate_body(Codec codec, std::span<const std::uint8_t> body, std::span<float> sum, float weight,
                     bool assign);
// True where a float32 body is the floats' own memory (little-endian machines).
inline constexpr bool kFloat32IsNative = std::endian::native == std::endian::little;

std::uint16_t float_to_half(float f);
float half_to_float(std::uint16_t h);
// Many at once: `out` (2 bytes per value, little-endian) / `in` hold in.size() / out.size() halves.
// F16C instructions where the CPU has them, else the functions above; the results are the same.
void floats_to_halves(std::span<const float> in, std::uint8_t* out);
void halves_to_floats(const std::uint8_t* in, std::span<float> out);
// The scalar paths alone (for the test that holds the two equal, and the benchmark).
void floats_to_halves_scalar(std::span<const float> in, std::uint8_t* out);
void halves_to_floats_scalar(const std::uint8_t* in, std::span<float> out);

}  // namespace apiary::compression
