#include "core/dht/routing_table.hpp"

#include <algorithm>

namespace apiary::dht {

RoutingTable::RoutingTable(DhtId self, std::size_t k, int depth_modulo, std::size_t per_ip, std::size_t per_subnet,
                           Duration ping_after)
    : self_(self),
      k_(k),
      depth_modulo_(depth_modulo),
      per_ip_(per_ip),
      per_subnet_(per_subnet),
      ping_after_s_(std::chrono::duration_cast<std::chrono::seconds>(ping_after).count()) {
  buckets_.push_back(Bucket{});
}

std::size_t RoutingTable::bucket_of(const DhtId& id) const {
  for (std::size_t i = 0; i < buckets_.size(); ++i)
    if (buckets_[i].covers(id)) return i;
  return buckets_.size() - 1;  // unreachable: buckets cover the space
}

bool RoutingTable::can_split(const Bucket& b) const {
  if (b.depth >= DhtId::kBits) return false;
  return b.covers(self_) || (depth_modulo_ > 1 && b.depth % depth_modulo_ != 0);
}

void RoutingTable::split(std::size_t index) {
  Bucket old = std::move(buckets_[index]);
  Bucket lo, hi;
  lo.depth = hi.depth = old.depth + 1;
  // Deterministic prefixes: old prefix bits, then 0 (lo) or 1 (hi), then zeros.
  lo.prefix = old.prefix;
  for (int i = old.depth; i < DhtId::kBits; ++i) {
    const auto byte = static_cast<std::size_t>(i / 8);
    lo.prefix.b[byte] = static_cast<std::uint8_t>(lo.prefix.b[byte] & ~(0x80 >> (i % 8)));
  }
  hi.prefix = lo.prefix;
  hi.prefix.b[static_cast<std::size_t>(old.depth / 8)] |= static_cast<std::uint8_t>(0x80 >> (old.depth % 8));
  lo.last_lookup = hi.last_lookup = old.last_lookup;
  for (auto& e : old.nodes) (e.contact.id.bit(old.depth) ? hi : lo).nodes.push_back(e);
  for (auto& e : old.replacements) (e.contact.id.bit(old.depth) ? hi : lo).replacements.push_back(e);
  // Refill from replacements where the split left room.
  for (Bucket* b : {&lo, &hi}) {
    while (b->nodes.size() < k_ && !b->replacements.empty()) {
      b->nodes.push_back(b->replacements.back());
      b->replacements.pop_back();
    }
  }
  buckets_[index] = std::move(lo);
  buckets_.insert(buckets_.begin() + static_cast<std::ptrdiff_t>(index) + 1, std::move(hi));
}

RoutingTable::AddResult RoutingTable::add(const Contact& c, TimePoint now) {
  if (c.id == self_) return {Added::kSelf, std::nullopt};
  const std::int32_t now_s = seconds(now);
  for (;;) {
    const std::size_t i = bucket_of(c.id);
    Bucket& b = buckets_[i];
    auto it = std::find_if(b.nodes.begin(), b.nodes.end(),
                           [&](const Entry& e) { return e.contact.id == c.id; });
    if (it != b.nodes.end()) {
      // An id stays at the endpoint it was met at until it leaves (fails its pings): a contact
      // heard from elsewhere (a relay that passed the id's handshake through, a second process
      // with the same key) does not move it. A peer that restarts on a new port is found there
      // once its old endpoint has stopped answering.
      if (it->contact.endpoint != c.endpoint) return {Added::kRefused, std::nullopt};
      Entry e = *it;  // now the most recently seen: last in the bucket's order
      e.seen_s = now_s;
      b.nodes.erase(it);
      b.nodes.push_back(e);
      return {Added::kUpdated, std::nullopt};
    }
    if (endpoint_taken(c.endpoint, c.id)) return {Added::kRefused, std::nullopt};
    if (b.nodes.size() >= k_ && can_split(b)) {
      split(i);
      continue;
    }
    if (!c.endpoint.shared_local()) {
      const auto same_ip = [&](const Entry& e) { return e.contact.endpoint.ip == c.endpoint.ip; };
      const auto same_subnet = [&](const Entry& e) { return e.contact.endpoint.ip >> 8 == c.endpoint.ip >> 8; };
      if (per_ip_ > 0 && static_cast<std::size_t>(std::count_if(b.nodes.begin(), b.nodes.end(), same_ip)) >= per_ip_)
        return {Added::kRefused, std::nullopt};
      if (per_subnet_ > 0 && static_cast<std::size_t>(std::count_if(b.nodes.begin(), b.nodes.end(), same_subnet)) >= per_subnet_)
        return {Added::kRefused, std::nullopt};
    }
    // Out of the replacement list if it waited there: it goes into the bucket or back in as the freshest.
    auto r = std::find_if(b.replacements.begin(), b.replacements.end(),
                          [&](const Entry& e) { return e.contact.id == c.id; });
    if (r != b.replacements.end()) b.replacements.erase(r);
    if (b.nodes.size() < k_) {
      b.nodes.push_back(Entry{c, now_s});
      return {Added::kAdded, std::nullopt};
    }
    b.replacements.push_back(Entry{c, now_s});
    if (b.replacements.size() > k_) b.replacements.erase(b.replacements.begin());
    const Entry& lru = b.nodes.front();
    if (now_s - std::int64_t{lru.seen_s} < ping_after_s_) return {Added::kFull, std::nullopt};  // heard lately: trusted
    return {Added::kFull, lru.contact};
  }
}

bool RoutingTable::remove(const DhtId& id) {
  Bucket& b = buckets_[bucket_of(id)];
  auto it = std::find_if(b.nodes.begin(), b.nodes.end(), [&](const Entry& e) { return e.contact.id == id; });
  if (it == b.nodes.end()) {
    auto r = std::find_if(b.replacements.begin(), b.replacements.end(),
                          [&](const Entry& e) { return e.contact.id == id; });
    if (r == b.replacements.end()) return false;
    b.replacements.erase(r);
    return true;
  }
  b.nodes.erase(it);
  // The freshest replacement whose endpoint no other contact holds.
  for (auto r = b.replacements.rbegin(); r != b.replacements.rend(); ++r) {
    if (endpoint_taken(r->contact.endpoint, r->contact.id)) continue;
    b.nodes.push_back(*r);
    b.replacements.erase(std::next(r).base());
    break;
  }
  return true;
}

bool RoutingTable::endpoint_taken(const Endpoint& endpoint, const DhtId& id) const {
  for (const auto& b : buckets_)
    for (const auto& e : b.nodes)
      if (e.contact.endpoint == endpoint && e.contact.id != id) return true;
  return false;
}

bool RoutingTable::contains(const DhtId& id) const { return find(id).has_value(); }

std::optional<Contact> RoutingTable::find(const DhtId& id) const {
  const Bucket& b = buckets_[bucket_of(id)];
  for (const auto& e : b.nodes)
    if (e.contact.id == id) return e.contact;
  return std::nullopt;
}


// Buckets are the leaves of a binary prefix tree, in id order: the buckets under one node of the
// tree, at depth d, are a run of the vector, split where bit d of their prefixes turns to 1. Every
// id under the child that agrees with the target at bit d is nearer to the target than every id
// under the other child. So the tree is walked nearer child first, whole buckets are taken, and
// the walk stops once n contacts are in hand: the rest are all farther. A lookup for a key
// usually reads one to three buckets.
void RoutingTable::take_nearest(const DhtId& target, std::size_t lo, std::size_t hi, int depth, std::size_t n,
                                const std::optional<DhtId>& exclude, std::vector<std::pair<Dist3, const Contact*>>& taken) const {
  while (lo < hi && taken.size() < n) {
    if (hi - lo == 1) {
      for (const auto& e : buckets_[lo].nodes)
        if (!exclude || e.contact.id != *exclude) {
          const auto w = (e.contact.id ^ target).words();
          taken.emplace_back(Dist3{w[0], w[1], w[2]}, &e.contact);
        }
      return;
    }
    const auto first_one = std::partition_point(buckets_.begin() + static_cast<std::ptrdiff_t>(lo),
                                                buckets_.begin() + static_cast<std::ptrdiff_t>(hi),
                                                [&](const Bucket& b) { return !b.prefix.bit(depth); });
    const auto mid = static_cast<std::size_t>(first_one - buckets_.begin());
    if (mid != lo && mid != hi) {
      const bool one = target.bit(depth);
      take_nearest(target, one ? mid : lo, one ? hi : mid, depth + 1, n, exclude, taken);
      (one ? hi : lo) = mid;  // then the farther child
    }
    ++depth;
  }
}

std::vector<Contact> RoutingTable::nearest(const DhtId& target, std::size_t n,
                                           const std::optional<DhtId>& exclude) const {
  thread_local std::vector<std::pair<Dist3, const Contact*>> taken;
  taken.clear();
  take_nearest(target, 0, buckets_.size(), 0, n, exclude, taken);
  const std::size_t m = std::min(n, taken.size());
  auto by_dist = [](const auto& a, const auto& b) { return a.first < b.first; };
  std::partial_sort(taken.begin(), taken.begin() + static_cast<std::ptrdiff_t>(m), taken.end(), by_dist);
  std::vector<Contact> out;
  out.reserve(m);
  for (std::size_t i = 0; i < m; ++i) out.push_back(*taken[i].second);
  return out;
}

bool RoutingTable::knows_nearer(const DhtId& target, std::size_t n) const {
  if (n == 0) return true;
  const DhtId bound = self_ ^ target;
  std::size_t seen = 0;
  for (const auto& b : buckets_)
    for (const auto& e : b.nodes)
      if ((e.contact.id ^ target) < bound && ++seen >= n) return true;
  return false;
}

DhtId RoutingTable::nearer_mask(const DhtId& exclude) const {
  DhtId mask;
  for (const auto& b : buckets_)
    for (const auto& e : b.nodes) {
      if (e.contact.id == exclude) continue;
      const int j = e.contact.id.common_prefix(self_);
      if (j < DhtId::kBits) mask.b[static_cast<std::size_t>(j / 8)] |= static_cast<std::uint8_t>(0x80u >> (j % 8));
    }
  return mask;
}

std::vector<DhtId> RoutingTable::stale_bucket_targets(TimePoint before, Rng& rng) const {
  std::vector<DhtId> out;
  for (const auto& b : buckets_)
    if (b.last_lookup < before) out.push_back(DhtId::random_with_prefix(rng, b.prefix, b.depth));
  return out;
}

std::vector<DhtId> RoutingTable::far_bucket_targets(std::size_t n, Rng& rng) const {
  std::vector<const Bucket*> order;
  for (const auto& b : buckets_) order.push_back(&b);
  std::stable_sort(order.begin(), order.end(), [](const Bucket* a, const Bucket* b) { return a->depth < b->depth; });
  std::vector<DhtId> out;
  for (std::size_t i = 0; i < order.size() && out.size() < n; ++i)
    if (!order[i]->covers(self_)) out.push_back(DhtId::random_with_prefix(rng, order[i]->prefix, order[i]->depth));
  return out;
}

void RoutingTable::touch_bucket(const DhtId& target, TimePoint now) {
  buckets_[bucket_of(target)].last_lookup = now;
}

std::size_t RoutingTable::size() const {
  std::size_t n = 0;
  for (const auto& b : buckets_) n += b.nodes.size();
  return n;
}

RoutingStats RoutingTable::stats() const {
  RoutingStats s;
  s.buckets = buckets_.size();
  for (const auto& b : buckets_) {
    s.contacts += b.nodes.size();
    s.replacements += b.replacements.size();
    s.full_buckets += b.nodes.size() >= k_;
  }
  return s;
}

std::vector<std::pair<int, std::size_t>> RoutingTable::bucket_shape() const {
  std::vector<std::pair<int, std::size_t>> out;
  for (const auto& b : buckets_) out.emplace_back(b.depth, b.nodes.size());
  return out;
}

}  // namespace apiary::dht
