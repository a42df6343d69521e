#pragma once
// The swarm-level side of the DHT workload, the same for every backend: it makes the keys and
// values of stores, remembers which stores succeeded, picks keys for gets among those still
// alive, and scores every answer. The backend decides when (Poisson times) and from which peer
// (a random peer that is up and has joined).
#include <cstdint>
#include <string>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "core/scenario/swarm_spec.hpp"

namespace apiary {

class DhtWorkloadDriver {
 public:
  DhtWorkloadDriver(const SwarmSpec& spec, Metrics& metrics, std::uint64_t seed)
      : spec_(spec), metrics_(metrics), rng_(seed) {}

  Duration next_store_gap() { return gap(spec_.dht.store_rate); }
  Duration next_get_gap() { return gap(spec_.dht.get_rate); }
  Rng& rng() { return rng_; }

  void issue_store(dht::DhtNode& node, std::uint32_t peer, TimePoint now);
  // Returns false if no stored key is alive yet (nothing to get).
  bool issue_get(dht::DhtNode& node, std::uint32_t peer, TimePoint now);
  // Operations whose peer left before they finished.
  std::int64_t abandoned() const { return issued_ - completed_; }

 private:
  struct Stored {
    std::string key;
    Bytes value;
    TimePoint expiration;
  };
  Duration gap(double rate) {
    return Duration(static_cast<std::int64_t>(rng_.exponential(1e9 / rate)));
  }
  const SwarmSpec& spec_;
  Metrics& metrics_;
  Rng rng_;
  std::vector<Stored> stored_;
  std::uint64_t next_key_ = 1;
  std::int64_t issued_ = 0, completed_ = 0;
};

}  // namespace apiary
