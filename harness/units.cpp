#include "harness/units.hpp"

#include <charconv>
#include <cmath>
#include <utility>
#include <vector>

namespace apiary {
namespace {

struct Split {
  double number;
  std::string_view unit;
};

std::optional<Split> split_number(std::string_view text, std::string* why) {
  while (!text.empty() && text.front() == ' ') text.remove_prefix(1);
  while (!text.empty() && text.back() == ' ') text.remove_suffix(1);
  double v = 0;
  auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), v);
  if (ec != std::errc{} || end == text.data()) {
    if (why) *why = "'" + std::string(text) + "' does not start with a number";
    return std::nullopt;
  }
  if (!std::isfinite(v) || v < 0) {
    if (why) *why = "'" + std::string(text) + "' must be a finite non-negative number";
    return std::nullopt;
  }
  std::string_view unit(end, static_cast<std::size_t>(text.data() + text.size() - end));
  while (!unit.empty() && unit.front() == ' ') unit.remove_prefix(1);
  return Split{v, unit};
}

std::optional<double> with_units(std::string_view text, std::string* why,
                                 const std::vector<std::pair<std::string_view, double>>& units,
                                 const char* kind) {
  auto s = split_number(text, why);
  if (!s) return std::nullopt;
  for (const auto& [name, factor] : units)
    if (s->unit == name) return s->number * factor;
  if (why) {
    std::string list;
    for (const auto& [name, f] : units) list += (list.empty() ? "" : ", ") + std::string(name);
    *why = "'" + std::string(text) + "' needs a " + kind + " unit (" + list + ")";
  }
  return std::nullopt;
}

}  // namespace

std::optional<Duration> parse_duration(std::string_view text, std::string* why) {
  static const std::vector<std::pair<std::string_view, double>> units = {
      {"ns", 1}, {"us", 1e3}, {"ms", 1e6}, {"s", 1e9}, {"min", 60e9}, {"h", 3600e9}, {"d", 86400e9}};
  auto v = with_units(text, why, units, "time");
  if (!v) return std::nullopt;
  if (*v > 9.2e18) {
    if (why) *why = "'" + std::string(text) + "' is too long";
    return std::nullopt;
  }
  return Duration(static_cast<std::int64_t>(std::llround(*v)));
}

std::optional<std::uint64_t> parse_bytes(std::string_view text, std::string* why) {
  static const std::vector<std::pair<std::string_view, double>> units = {
      {"B", 1},          {"KB", 1e3},          {"MB", 1e6},          {"GB", 1e9},
      {"KiB", 1024.0},   {"MiB", 1048576.0},   {"GiB", 1073741824.0}};
  auto v = with_units(text, why, units, "size");
  if (!v) return std::nullopt;
  if (*v > 1.8e19) {
    if (why) *why = "'" + std::string(text) + "' is too large";
    return std::nullopt;
  }
  return static_cast<std::uint64_t>(std::llround(*v));
}

std::optional<double> parse_bitrate(std::string_view text, std::string* why) {
  static const std::vector<std::pair<std::string_view, double>> units = {
      {"bps", 1}, {"Kbps", 1e3}, {"Mbps", 1e6}, {"Gbps", 1e9}};
  return with_units(text, why, units, "bit-rate");
}

std::optional<double> parse_rate(std::string_view text, std::string* why) {
  static const std::vector<std::pair<std::string_view, double>> units = {
      {"/s", 1}, {"/min", 1.0 / 60}, {"/h", 1.0 / 3600}};
  return with_units(text, why, units, "rate");
}

double Distribution::sample(Rng& rng) const {
  switch (kind) {
    case Kind::kFixed: return a;
    case Kind::kUniform: return rng.uniform(a, b);
    case Kind::kExponential: return rng.exponential(a);
    case Kind::kNormal: return std::max(0.0, rng.normal(a, b));
    case Kind::kLogNormal: return a * std::exp(b * rng.normal());
  }
  return a;
}

double Distribution::mean() const {
  switch (kind) {
    case Kind::kFixed: return a;
    case Kind::kUniform: return (a + b) / 2;
    case Kind::kExponential: return a;
    case Kind::kNormal: return a;
    case Kind::kLogNormal: return a * std::exp(b * b / 2);
  }
  return a;
}

std::string Distribution::describe() const {
  switch (kind) {
    case Kind::kFixed: return std::to_string(a);
    case Kind::kUniform: return "uniform(" + std::to_string(a) + ", " + std::to_string(b) + ")";
    case Kind::kExponential: return "exponential(" + std::to_string(a) + ")";
    case Kind::kNormal: return "normal(" + std::to_string(a) + ", " + std::to_string(b) + ")";
    case Kind::kLogNormal: return "lognormal(" + std::to_string(a) + ", " + std::to_string(b) + ")";
  }
  return "?";
}

}  // namespace apiary
