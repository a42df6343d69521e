#pragma once
// A node's local store. Rules (as hivemind's): a record is accepted only if it expires later than
// what the store holds for the same (key, subkey) — the latest expiration wins; an expired
// record is gone; a plain value and a dictionary under one key compete by expiration (a plain
// value replaces a dictionary that expires earlier, and a subkey is refused while a plain value
// that expires no earlier holds the key).
//
// Because any peer may be hostile, three rules come on top:
//  - nothing is kept longer than `max_ttl` (a record that expires later is refused, not clamped:
//    its expiration may be signed);
//  - an owned record (its key or subkey names an owner, so a validator checked its signature) is
//    never replaced or hidden by an unowned one: an unowned plain value is refused under a key
//    whose dictionary holds owned subkeys, and an owned subkey replaces an unowned plain value;
//  - every record is charged to the peer that sent it (its source: an endpoint, and the source's
//    IP address), and space is shared fairly. A source over its quota loses its own
//    earliest-expiring record; an IP address over its quota loses one of its largest source's;
//    a full store (records or bytes) takes from the largest IP address, then from its largest
//    source. One peer (or one host's many ports) flooding a node evicts its own records, not
//    everybody's.
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/dht/record.hpp"
#include "core/runtime/endpoint.hpp"

namespace apiary::dht {

struct StorageLimits {
  std::size_t max_records = 100000;          // records held (dht.max_records)
  std::size_t max_bytes = 64u << 20;         // charged bytes held (dht.max_storage_bytes)
  std::size_t source_bytes = 16u << 20;      // charged bytes one source may hold (dht.source_quota_bytes)
  std::size_t ip_bytes = 32u << 20;          // charged bytes one IP address may hold (dht.ip_quota_bytes)
  Duration max_ttl = std::chrono::hours(24);  // the latest expiration accepted, from now (dht.max_ttl)
  Duration clock_slack = std::chrono::minutes(5);  // peers' clocks differ: max_ttl plus this is allowed
};

class Storage {
 public:
  enum class Outcome {
    kStored,   // held now (or this very record was held already)
    kStale,    // a record that expires no earlier holds the (key, subkey)
    kExpired,  // expired already
    kTooLate,  // expires later than max_ttl from now
    kShadows,  // an unowned plain value under a key whose dictionary holds owned subkeys
    kNoRoom,   // accepted, then evicted at once: its source (or IP, or the store) is full of records that expire later
  };
  explicit Storage(StorageLimits limits = {});
  explicit Storage(std::size_t max_records) : Storage(StorageLimits{.max_records = max_records}) {}

  // `source`: the peer that sent the record (an invalid endpoint: this node itself).
  Outcome store(const Record& r, TimePoint now, const Endpoint& source = {});
  // Every live record under `id`: one plain value, or the dictionary's entries (subkey order).
  std::vector<Record> get(const DhtId& id, TimePoint now);
  std::size_t size() const { return by_expiry_.size(); }
  std::size_t bytes() const { return total_bytes_; }  // charged bytes held
  std::uint64_t evicted() const { return evicted_; }
  // Charged bytes held for one source, and for one IP address.
  std::size_t bytes_of(const Endpoint& source) const;
  std::size_t bytes_of_ip(std::uint32_t ip) const;
  // What a record is charged: its bytes, plus a fixed overhead for the structures that hold it.
  static std::size_t charge(const Record& r);
  const StorageLimits& limits() const { return limits_; }
  // Live records, for replication (id order).
  std::vector<Record> all(TimePoint now);
  void purge(TimePoint now);
  // Visits live records without copying them (id order).
  template <class F>
  void for_each(TimePoint now, F f) {
    purge(now);
    for (const auto& [id, s] : slots_) {
      if (s.plain) f(id, s.plain->record);
      for (const auto& [k, e] : s.dict) f(id, e.record);
    }
  }

 private:
  struct Entry {
    Record record;
    Endpoint source;
    std::size_t charged = 0;
  };
  struct Slot {
    std::optional<Entry> plain;
    std::map<std::string, Entry> dict;
    TimePoint latest() const;
    bool holds_owned() const;
  };
  using ExpiryKey = std::tuple<TimePoint, DhtId, std::optional<std::string>>;
  struct SourceUse {
    std::size_t bytes = 0;
    std::set<ExpiryKey> held;
  };
  struct IpUse {
    std::size_t bytes = 0;
    std::set<std::pair<std::size_t, Endpoint>> sources;  // (bytes, source), largest last
  };

  void erase_record(const DhtId& id, const std::optional<std::string>& subkey);
  void charge_to(const Endpoint& source, const ExpiryKey& key, std::ptrdiff_t bytes);
  void evict_from_source(const Endpoint& source);
  void evict_from_ip(std::uint32_t ip);

  StorageLimits limits_;
  std::map<DhtId, Slot> slots_;
  std::set<ExpiryKey> by_expiry_;
  std::map<Endpoint, SourceUse> sources_;
  std::map<std::uint32_t, IpUse> ips_;
  std::set<std::pair<std::size_t, std::uint32_t>> ip_order_;  // (bytes, ip), largest last
  std::size_t total_bytes_ = 0;
  std::uint64_t evicted_ = 0;
};

}  // namespace apiary::dht
