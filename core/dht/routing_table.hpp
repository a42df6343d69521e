#pragma once
// Kademlia routing table: k-buckets over the 160-bit id space that split when they cover the
// node's own id (or, as in relaxed Kademlia, while their depth is not a multiple of b), with
// least-recently-seen order and a replacement list per bucket. A full bucket never evicts on its
// own: add() names the least-recently-seen contact to ping when it has not been heard from for
// `ping_after` (0: always, as in the Kademlia paper; BitTorrent's mainline DHT trusts a contact
// heard within 15 minutes), and only if that ping fails does the owner call remove(), which
// promotes the freshest replacement.
// One endpoint holds one id, and one id one endpoint: a contact whose endpoint the table already
// knows under another id, or whose id it knows at another endpoint, is refused (kRefused) until
// that one leaves. A peer that answers from one address for many made-up
// ids (to crowd the ids next to a key it wants to censor) gets one place, not a bucket; and a
// bucket holds at most `per_ip` contacts of one IP address (0: no limit; 127.0.0.1, where every
// peer of a one-machine swarm lives, is exempt), so neither does one host with many ports.
#include <cstddef>
#include <optional>
#include <vector>

#include "core/dht/id.hpp"
#include "core/runtime/endpoint.hpp"
#include "core/runtime/time.hpp"

namespace apiary::dht {

struct Contact {
  DhtId id;
  Endpoint endpoint;
  bool operator==(const Contact&) const = default;
};

struct RoutingStats {
  std::size_t buckets = 0;
  std::size_t contacts = 0;
  std::size_t replacements = 0;
  std::size_t full_buckets = 0;
};

class RoutingTable {
 public:
  enum class Added { kAdded, kUpdated, kFull, kSelf, kRefused };
  struct AddResult {
    Added kind;
    std::optional<Contact> ping_first;  // kFull: the least-recently-seen contact to check, if not heard lately
  };

  // per_ip / per_subnet: at most that many contacts of one IPv4 address / one /24 per bucket (0:
  // any; 127.0.0.1 exempt), so that one host, or one rented range, cannot fill a bucket.
  RoutingTable(DhtId self, std::size_t k = 20, int depth_modulo = 5, std::size_t per_ip = 0, std::size_t per_subnet = 0,
               Duration ping_after = Duration::zero());

  // A contact was seen (it sent us a request or answered one).
  AddResult add(const Contact& c, TimePoint now);
  // A contact failed; it leaves, and the freshest replacement takes its place.
  bool remove(const DhtId& id);
  bool contains(const DhtId& id) const;
  // Contacts in the bucket that covers id.
  std::size_t bucket_size(const DhtId& id) const { return buckets_[bucket_of(id)].nodes.size(); }
  // Whether some contact other than `exclude` is nearer to a target t than we are, asked of many
  // targets: a contact x is nearer to t than we are exactly when t differs from our id at the
  // first bit where x does (bit common_prefix(x, self)). The mask has that bit set for every
  // contact but `exclude`, so the answer is any_in(t, self, mask), ((t ^ self) & mask) != 0: one
  // pass over the table, then a few word operations per target.
  DhtId nearer_mask(const DhtId& exclude) const;
  // Whether the table holds at least n contacts nearer to `target` than we are.
  bool knows_nearer(const DhtId& target, std::size_t n) const;
  static bool any_in(const DhtId& target, const DhtId& self, const DhtId& mask) {
    for (std::size_t i = 0; i < DhtId::kBytes; ++i)
      if ((target.b[i] ^ self.b[i]) & mask.b[i]) return true;
    return false;
  }
  std::optional<Contact> find(const DhtId& id) const;
  // The n known contacts nearest to target, nearest first (excluding `exclude` if given).
  std::vector<Contact> nearest(const DhtId& target, std::size_t n,
                               const std::optional<DhtId>& exclude = std::nullopt) const;
  // Buckets not refreshed (no lookup into their range) since `before`: a random id in each.
  std::vector<DhtId> stale_bucket_targets(TimePoint before, Rng& rng) const;
  void touch_bucket(const DhtId& target, TimePoint now);
  // A random id in each of the n largest buckets (those farthest from us).
  std::vector<DhtId> far_bucket_targets(std::size_t n, Rng& rng) const;

  std::size_t size() const;
  RoutingStats stats() const;
  const DhtId& self() const { return self_; }
  std::size_t k() const { return k_; }
  // Per bucket: (depth, contacts) in id order; for tests and health metrics.
  std::vector<std::pair<int, std::size_t>> bucket_shape() const;

 private:
  struct Entry {  // 32 bytes: a table of a few hundred contacts per peer, a million peers
    Contact contact;
    std::int32_t seen_s = 0;  // when last heard from, in whole seconds of the run's clock
  };
  static std::int32_t seconds(TimePoint t) {
    return static_cast<std::int32_t>(std::chrono::duration_cast<std::chrono::seconds>(t.time_since_epoch()).count());
  }
  struct Bucket {
    DhtId prefix;
    int depth = 0;
    std::vector<Entry> nodes;         // least recently seen first
    std::vector<Entry> replacements;  // most recent last
    TimePoint last_lookup{};
    bool covers(const DhtId& id) const { return prefix.common_prefix(id) >= depth; }
  };
  // An XOR distance as three native integers, compared lexicographically: much cheaper than
  // comparing 20-byte arrays in the hot path of every lookup and every find reply.
  struct Dist3 {
    std::uint64_t hi, mid, lo;
    bool operator<(const Dist3& o) const { return hi != o.hi ? hi < o.hi : mid != o.mid ? mid < o.mid : lo < o.lo; }
  };
  void take_nearest(const DhtId& target, std::size_t lo, std::size_t hi, int depth, std::size_t n,
                    const std::optional<DhtId>& exclude, std::vector<std::pair<Dist3, const Contact*>>& taken) const;
  std::size_t bucket_of(const DhtId& id) const;
  // Whether a contact other than `id` holds `endpoint` (a scan: tables hold a few hundred contacts).
  bool endpoint_taken(const Endpoint& endpoint, const DhtId& id) const;
  bool can_split(const Bucket& b) const;
  void split(std::size_t index);

  DhtId self_;
  std::size_t k_;
  int depth_modulo_;
  std::size_t per_ip_;
  std::size_t per_subnet_;
  std::int64_t ping_after_s_;
  std::vector<Bucket> buckets_;  // ordered by prefix; together they cover the whole space
};

}  // namespace apiary::dht
