#include "core/dht/storage.hpp"

#include <algorithm>

namespace apiary::dht {

namespace {
// Map nodes, the expiry index and the source index: what holding one record costs beyond its bytes.
constexpr std::size_t kRecordOverhead = 256;
}  // namespace

Storage::Storage(StorageLimits limits) : limits_(limits) {}

TimePoint Storage::Slot::latest() const {
  TimePoint t{};
  if (plain) t = std::max(t, plain->record.expiration);
  for (const auto& [k, e] : dict) t = std::max(t, e.record.expiration);
  return t;
}

bool Storage::Slot::holds_owned() const {
  for (const auto& [k, e] : dict)
    if (e.record.owned()) return true;
  return false;
}

std::size_t Storage::charge(const Record& r) {
  return r.key.size() + (r.subkey ? r.subkey->size() : 0) + r.value.size() + r.signature.size() + kRecordOverhead;
}

std::size_t Storage::bytes_of(const Endpoint& source) const {
  auto it = sources_.find(source);
  return it == sources_.end() ? 0 : it->second.bytes;
}

std::size_t Storage::bytes_of_ip(std::uint32_t ip) const {
  auto it = ips_.find(ip);
  return it == ips_.end() ? 0 : it->second.bytes;
}

void Storage::charge_to(const Endpoint& source, const ExpiryKey& key, std::ptrdiff_t bytes) {
  SourceUse& s = sources_[source];
  IpUse& ip = ips_[source.ip];
  ip.sources.erase({s.bytes, source});
  ip_order_.erase({ip.bytes, source.ip});
  s.bytes = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(s.bytes) + bytes);
  ip.bytes = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(ip.bytes) + bytes);
  total_bytes_ = static_cast<std::size_t>(static_cast<std::ptrdiff_t>(total_bytes_) + bytes);
  if (bytes > 0)
    s.held.insert(key);
  else
    s.held.erase(key);
  if (s.held.empty()) {
    sources_.erase(source);
  } else {
    ip.sources.insert({s.bytes, source});
  }
  if (ip.sources.empty())
    ips_.erase(source.ip);
  else
    ip_order_.insert({ip.bytes, source.ip});
}

void Storage::erase_record(const DhtId& id, const std::optional<std::string>& subkey) {
  auto it = slots_.find(id);
  if (it == slots_.end()) return;
  Slot& s = it->second;
  auto release = [&](const Entry& e) {
    const ExpiryKey key{e.record.expiration, id, subkey};
    by_expiry_.erase(key);
    charge_to(e.source, key, -static_cast<std::ptrdiff_t>(e.charged));
  };
  if (!subkey) {
    if (s.plain) release(*s.plain);
    s.plain.reset();
  } else {
    auto d = s.dict.find(*subkey);
    if (d != s.dict.end()) {
      release(d->second);
      s.dict.erase(d);
    }
  }
  if (!s.plain && s.dict.empty()) slots_.erase(it);
}

void Storage::evict_from_source(const Endpoint& source) {
  auto it = sources_.find(source);
  if (it == sources_.end() || it->second.held.empty()) return;
  const auto [t, id, sub] = *it->second.held.begin();
  erase_record(id, sub);
  ++evicted_;
}

void Storage::evict_from_ip(std::uint32_t ip) {
  auto it = ips_.find(ip);
  if (it == ips_.end() || it->second.sources.empty()) return;
  evict_from_source(std::prev(it->second.sources.end())->second);
}

void Storage::purge(TimePoint now) {
  while (!by_expiry_.empty() && std::get<0>(*by_expiry_.begin()) <= now) {
    auto [t, id, sub] = *by_expiry_.begin();
    erase_record(id, sub);
  }
}

Storage::Outcome Storage::store(const Record& r, TimePoint now, const Endpoint& source) {
  if (r.expiration <= now) return Outcome::kExpired;
  if (r.expiration - now > limits_.max_ttl + limits_.clock_slack) return Outcome::kTooLate;
  purge(now);
  const DhtId id = DhtId::of_key(r.key);
  const bool owned = r.owned();
  auto it = slots_.find(id);
  if (it != slots_.end()) {
    Slot& s = it->second;
    if (!r.subkey) {
      if (s.plain && s.plain->record == r) return Outcome::kStored;  // this very record: held
      if (!owned && s.holds_owned()) return Outcome::kShadows;
      if (r.expiration <= s.latest()) return Outcome::kStale;
      // A newer plain value replaces whatever the key held.
      if (s.plain) erase_record(id, std::nullopt);
      while (slots_.count(id) && !slots_[id].dict.empty()) erase_record(id, slots_[id].dict.begin()->first);
    } else {
      // An unowned plain value holds a key against unowned subkeys only.
      if (s.plain && s.plain->record.expiration >= r.expiration && (s.plain->record.owned() || !owned))
        return Outcome::kStale;
      auto d = s.dict.find(*r.subkey);
      if (d != s.dict.end() && d->second.record == r) return Outcome::kStored;  // this very record: held
      if (d != s.dict.end() && d->second.record.expiration >= r.expiration) return Outcome::kStale;
      if (s.plain) erase_record(id, std::nullopt);
      if (slots_.count(id)) erase_record(id, r.subkey);
    }
  }
  Slot& s = slots_[id];
  const std::size_t charged = charge(r);
  Entry e{r, source, charged};
  const ExpiryKey key{r.expiration, id, r.subkey};
  if (r.subkey)
    s.dict[*r.subkey] = std::move(e);
  else
    s.plain = std::move(e);
  by_expiry_.insert(key);
  charge_to(source, key, static_cast<std::ptrdiff_t>(charged));

  // Fair shares: the source's own quota, then its IP address's, then the whole store's.
  while (bytes_of(source) > limits_.source_bytes) evict_from_source(source);
  while (bytes_of_ip(source.ip) > limits_.ip_bytes) evict_from_ip(source.ip);
  while ((by_expiry_.size() > limits_.max_records || total_bytes_ > limits_.max_bytes) && !ip_order_.empty())
    evict_from_ip(std::prev(ip_order_.end())->second);
  const auto held = slots_.find(id);
  if (held == slots_.end()) return Outcome::kNoRoom;
  const Slot& now_held = held->second;
  const bool kept = r.subkey ? now_held.dict.count(*r.subkey) > 0 : now_held.plain.has_value();
  return kept ? Outcome::kStored : Outcome::kNoRoom;
}

std::vector<Record> Storage::get(const DhtId& id, TimePoint now) {
  purge(now);
  std::vector<Record> out;
  auto it = slots_.find(id);
  if (it == slots_.end()) return out;
  if (it->second.plain) out.push_back(it->second.plain->record);
  for (const auto& [k, e] : it->second.dict) out.push_back(e.record);
  return out;
}

std::vector<Record> Storage::all(TimePoint now) {
  std::vector<Record> out;
  for_each(now, [&](const DhtId&, const Record& r) { out.push_back(r); });
  return out;
}

}  // namespace apiary::dht
