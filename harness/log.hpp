#pragma once
// Peers' logs on stderr, for both hosts: APIARY_LOG=debug|info|warn|error prints every peer's log
// lines at that level and above, stamped with run time and peer index.
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <string_view>

#include "core/runtime/observer.hpp"

namespace apiary {

inline std::optional<LogLevel> log_level_from_env() {
  const char* v = std::getenv("APIARY_LOG");
  if (!v) return std::nullopt;
  const std::string s(v);
  if (s == "debug") return LogLevel::kDebug;
  if (s == "info") return LogLevel::kInfo;
  if (s == "warn") return LogLevel::kWarn;
  if (s == "error") return LogLevel::kError;
  return std::nullopt;
}

// `seconds` is the run time of the line.
inline void print_log_line(double seconds, std::uint32_t peer, LogLevel level, std::string_view component,
                           std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "%12.6f peer %u [%s] %.*s: %.*s\n", seconds, peer, names[static_cast<int>(level)],
               static_cast<int>(component.size()), component.data(), static_cast<int>(msg.size()), msg.data());
}

}  // namespace apiary
