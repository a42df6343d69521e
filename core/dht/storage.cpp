#include "core/dht/storage.hpp"

namespace apiary::dht {

TimePoint Storage::Slot::latest() const {
  TimePoint t{};
  if (plain) t = std::max(t, plain->expiration);
  for (const auto& [k, r] : dict) t = std::max(t, r.expiration);
  return t;
}

void Storage::erase_record(const DhtId& id, const std::optional<std::string>& subkey) {
  auto it = slots_.find(id);
  if (it == slots_.end()) return;
  Slot& s = it->second;
  if (!subkey) {
    if (s.plain) by_expiry_.erase({s.plain->expiration, id, std::nullopt});
    s.plain.reset();
  } else {
    auto d = s.dict.find(*subkey);
    if (d != s.dict.end()) {
      by_expiry_.erase({d->second.expiration, id, *subkey});
      s.dict.erase(d);
    }
  }
  if (!s.plain && s.dict.empty()) slots_.erase(it);
}

void Storage::purge(TimePoint now) {
  while (!by_expiry_.empty() && std::get<0>(*by_expiry_.begin()) <= now) {
    auto [t, id, sub] = *by_expiry_.begin();
    erase_record(id, sub);
  }
}

Storage::Outcome Storage::store(const Record& r, TimePoint now) {
  if (r.expiration <= now) return Outcome::kExpired;
  purge(now);
  const DhtId id = DhtId::of_key(r.key);
  auto it = slots_.find(id);
  if (it != slots_.end()) {
    Slot& s = it->second;
    if (!r.subkey) {
      if (s.plain && *s.plain == r) return Outcome::kStored;  // this very record: held
      if (r.expiration <= s.latest()) return Outcome::kStale;
      // A newer plain value replaces whatever the key held.
      if (s.plain) erase_record(id, std::nullopt);
      while (slots_.count(id) && !slots_[id].dict.empty())
        erase_record(id, slots_[id].dict.begin()->first);
    } else {
      if (s.plain && s.plain->expiration >= r.expiration) return Outcome::kStale;
      auto d = s.dict.find(*r.subkey);
      if (d != s.dict.end() && d->second == r) return Outcome::kStored;  // this very record: held
      if (d != s.dict.end() && d->second.expiration >= r.expiration) return Outcome::kStale;
      if (s.plain) erase_record(id, std::nullopt);
      if (slots_.count(id)) erase_record(id, r.subkey);
    }
  }
  Slot& s = slots_[id];
  if (r.subkey)
    s.dict[*r.subkey] = r;
  else
    s.plain = r;
  by_expiry_.insert({r.expiration, id, r.subkey});
  while (by_expiry_.size() > max_records_) {
    auto [t, eid, sub] = *by_expiry_.begin();
    erase_record(eid, sub);
    ++evicted_;
  }
  return slots_.count(id) ? Outcome::kStored : Outcome::kStale;  // evicted at once if earliest
}

std::vector<Record> Storage::get(const DhtId& id, TimePoint now) {
  purge(now);
  std::vector<Record> out;
  auto it = slots_.find(id);
  if (it == slots_.end()) return out;
  if (it->second.plain) out.push_back(*it->second.plain);
  for (const auto& [k, r] : it->second.dict) out.push_back(r);
  return out;
}

std::vector<Record> Storage::all(TimePoint now) {
  purge(now);
  std::vector<Record> out;
  for (const auto& [id, s] : slots_) {
    if (s.plain) out.push_back(*s.plain);
    for (const auto& [k, r] : s.dict) out.push_back(r);
  }
  return out;
}

}  // namespace apiary::dht
