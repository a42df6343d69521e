#include "core/workloads/dht_workload.hpp"

namespace apiary {

void DhtWorkloadDriver::issue_store(dht::DhtNode& node, std::uint32_t peer, TimePoint now) {
  const std::uint64_t n = next_key_++;
  dht::Record r;
  r.key = "key-" + std::to_string(spec_.seed) + "-" + std::to_string(n);
  r.value.resize(spec_.dht.value_size);
  for (std::size_t i = 0; i < r.value.size(); ++i) r.value[i] = static_cast<std::uint8_t>(n * 31 + i);
  r.expiration = now + spec_.dht.ttl;
  ++issued_;
  metrics_.count("dht.store.issued", 1);
  metrics_.trace(to_ns(now), peer, "dht.store", n, 0);
  Stored s{r.key, r.value, r.expiration};
  node.spawn_store(std::move(r), [this, s = std::move(s)](const dht::StoreResult& res) {
    ++completed_;
    metrics_.sample("dht.store.replicas", static_cast<double>(res.replicas));
    metrics_.sample("dht.store.latency_ns", static_cast<double>(res.latency.count()));
    if (res.replicas > 0) {
      metrics_.count("dht.store.ok", 1);
      stored_.push_back(s);
    } else {
      metrics_.count("dht.store.failed", 1);
    }
  });
}

bool DhtWorkloadDriver::issue_get(dht::DhtNode& node, std::uint32_t peer, TimePoint now) {
  // Forget expired keys, then pick a live one (with a margin so it is live when the get lands).
  const TimePoint margin = now + std::chrono::seconds(30);
  std::erase_if(stored_, [&](const Stored& s) { return s.expiration <= margin; });
  if (stored_.empty()) return false;
  const Stored& s = stored_[rng_.below(stored_.size())];
  ++issued_;
  metrics_.count("dht.get.issued", 1);
  metrics_.trace(to_ns(now), peer, "dht.get", 0, 0);
  node.spawn_get(s.key, [this, expect = s.value](const dht::GetResult& res) {
    ++completed_;
    const bool ok = res.found && !res.records.empty() && res.records[0].value == expect;
    metrics_.count(ok ? "dht.get.ok" : "dht.get.failed", 1);
    if (ok) {
      metrics_.sample("dht.get.latency_ns", static_cast<double>(res.latency.count()));
      metrics_.sample("dht.get.hops", static_cast<double>(res.hops));
    }
  });
  return true;
}

}  // namespace apiary
