#include "core/runtime/metrics.hpp"

#include <algorithm>
#include <cmath>
#include <numeric>

namespace apiary {
namespace {
inline void fnv(std::uint64_t& h, const void* data, std::size_t n) {
  const auto* p = static_cast<const std::uint8_t*>(data);
  for (std::size_t i = 0; i < n; ++i) {
    h ^= p[i];
    h *= 0x100000001b3ULL;
  }
}
}  // namespace

void Metrics::trace(std::int64_t t, std::uint32_t peer, std::string_view ev, std::uint64_t a,
                    std::uint64_t b) {
  fnv(trace_hash_, &t, sizeof t);
  fnv(trace_hash_, &peer, sizeof peer);
  fnv(trace_hash_, ev.data(), ev.size());
  fnv(trace_hash_, &a, sizeof a);
  fnv(trace_hash_, &b, sizeof b);
  ++trace_events_;
  if (trace_prefix_.size() < trace_prefix_limit_)
    trace_prefix_.push_back(TraceEvent{t, peer, std::string(ev), a, b});
}

double Metrics::quantile(std::string_view name, double q) const {
  auto it = series_.find(name);
  if (it == series_.end() || it->second.empty()) return 0.0;
  std::vector<double> v = it->second;
  const auto rank = static_cast<std::size_t>(
      std::clamp(std::ceil(q * static_cast<double>(v.size())) - 1.0, 0.0,
                 static_cast<double>(v.size() - 1)));
  std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(rank), v.end());
  return v[rank];
}

double Metrics::mean(std::string_view name) const {
  auto it = series_.find(name);
  if (it == series_.end() || it->second.empty()) return 0.0;
  return std::accumulate(it->second.begin(), it->second.end(), 0.0) /
         static_cast<double>(it->second.size());
}

}  // namespace apiary
