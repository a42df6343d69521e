#pragma once
// A node's local store. Rules (as hivemind's): a record is accepted only if it expires later than
// what the store holds for the same (key, subkey) — the latest expiration wins; an expired
// record is gone; a plain value and a dictionary under one key compete by expiration (a plain
// value replaces a dictionary that expires earlier, and a subkey is refused while a plain value
// that expires no earlier holds the key). Full stores evict the earliest-expiring record.
#include <map>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/dht/record.hpp"

namespace apiary::dht {

class Storage {
 public:
  enum class Outcome { kStored, kStale, kExpired };
  explicit Storage(std::size_t max_records = 100000) : max_records_(max_records) {}

  Outcome store(const Record& r, TimePoint now);
  // Every live record under `id`: one plain value, or the dictionary's entries (subkey order).
  std::vector<Record> get(const DhtId& id, TimePoint now);
  std::size_t size() const { return by_expiry_.size(); }
  std::uint64_t evicted() const { return evicted_; }
  // Live records, for replication (id order).
  std::vector<Record> all(TimePoint now);
  void purge(TimePoint now);
  // Visits live records without copying them (id order).
  template <class F>
  void for_each(TimePoint now, F f) {
    purge(now);
    for (const auto& [id, s] : slots_) {
      if (s.plain) f(id, *s.plain);
      for (const auto& [k, r] : s.dict) f(id, r);
    }
  }

 private:
  struct Slot {
    std::optional<Record> plain;
    std::map<std::string, Record> dict;
    TimePoint latest() const;
  };
  using ExpiryKey = std::tuple<TimePoint, DhtId, std::optional<std::string>>;
  void erase_record(const DhtId& id, const std::optional<std::string>& subkey);

  std::size_t max_records_;
  std::map<DhtId, Slot> slots_;
  std::set<ExpiryKey> by_expiry_;
  std::uint64_t evicted_ = 0;
};

}  // namespace apiary::dht
