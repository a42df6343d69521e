#pragma once
// Quantities with units as written in scenario files: "50ms", "30min", "64MiB", "10Mbps",
// "20/s". Each parser returns nullopt with a reason on anything it does not understand.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "core/runtime/rng.hpp"
#include "core/runtime/time.hpp"

namespace apiary {

std::optional<Duration> parse_duration(std::string_view text, std::string* why = nullptr);
std::optional<std::uint64_t> parse_bytes(std::string_view text, std::string* why = nullptr);
std::optional<double> parse_bitrate(std::string_view text, std::string* why = nullptr);  // bit/s
std::optional<double> parse_rate(std::string_view text, std::string* why = nullptr);  // per second

// A random quantity: fixed, uniform(min, max), exponential(mean), normal(mean, stddev) clamped
// at zero, lognormal(median, sigma). Values are in the quantity's base unit (ns, bit/s, bytes).
struct Distribution {
  enum class Kind { kFixed, kUniform, kExponential, kNormal, kLogNormal };
  Kind kind = Kind::kFixed;
  double a = 0, b = 0;
  double sample(Rng& rng) const;
  double mean() const;
  std::string describe() const;
  static Distribution fixed(double v) { return {Kind::kFixed, v, 0}; }
};

}  // namespace apiary
