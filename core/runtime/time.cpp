#include "core/runtime/time.hpp"

#include <cstdio>

namespace apiary {

std::string format_duration(Duration d) {
  const auto ns = d.count();
  const auto abs = ns < 0 ? -ns : ns;
  char buf[64];
  if (abs >= 1'000'000'000)
    std::snprintf(buf, sizeof buf, "%.3gs", static_cast<double>(ns) * 1e-9);
  else if (abs >= 1'000'000)
    std::snprintf(buf, sizeof buf, "%.3gms", static_cast<double>(ns) * 1e-6);
  else if (abs >= 1'000)
    std::snprintf(buf, sizeof buf, "%.3gus", static_cast<double>(ns) * 1e-3);
  else
    std::snprintf(buf, sizeof buf, "%lldns", static_cast<long long>(ns));
  return buf;
}

}  // namespace apiary
