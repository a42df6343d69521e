#pragma once
// The DHT workload: peers join through the bootstrap peers; stores and gets of random keys at
// swarm-wide Poisson rates, from random peers that are up and joined, gets only of keys stored
// earlier and not yet expired. The driver below is its swarm-level side: it makes the keys and
// values of stores, remembers which stores succeeded, picks keys for gets among those still
// alive, and scores every answer.
#include <cstdint>
#include <string>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"

namespace apiary {

struct DhtWorkloadConfig final : WorkloadConfig {
  Duration start = std::chrono::seconds(90);  // operations begin after joins settle
  double store_rate = 1.0;                    // per second, whole swarm
  double get_rate = 10.0;                     // per second, whole swarm
  Duration ttl = std::chrono::minutes(30);
  std::uint64_t value_size = 64;
  // Live swarms of processes: a client stores `keys` keys, then gets them all, `concurrency`
  // operations at a time; store_rate/get_rate are not used there.
  std::uint32_t keys = 1000;
  std::uint32_t concurrency = 16;
  // How many holders a get waits for: 1 returns at the first valid copy; dht.k waits until the
  // key's k nearest peers have all answered (a completed search, as OpenDHT's blocking get).
  std::uint32_t get_holders = 1;
};

class DhtWorkloadDriver {
 public:
  DhtWorkloadDriver(const SwarmSpec& spec, Metrics& metrics, std::uint64_t seed)
      : spec_(spec), cfg_(spec.workload_config<DhtWorkloadConfig>()), metrics_(metrics), rng_(seed) {}

  Duration next_store_gap() { return gap(cfg_.store_rate); }
  Duration next_get_gap() { return gap(cfg_.get_rate); }
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
  void check_get_failure(double asked_s);
  Duration gap(double rate) {
    return Duration(static_cast<std::int64_t>(rng_.exponential(1e9 / rate)));
  }
  const SwarmSpec& spec_;
  const DhtWorkloadConfig& cfg_;
  Metrics& metrics_;
  Rng rng_;
  std::vector<Stored> stored_;
  std::uint64_t next_key_ = 1;
  std::int64_t issued_ = 0, completed_ = 0;
};

}  // namespace apiary
