// The Kademlia DHT in core, on the recording fake transport: exact expectations.
#include <gtest/gtest.h>

#include <algorithm>

#include "core/dht/node.hpp"
#include "tests/support/fake_dht.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary::dht {
namespace {

using namespace std::chrono_literals;

std::vector<DhtId> brute_nearest(std::vector<DhtId> ids, const DhtId& target, std::size_t n) {
  std::sort(ids.begin(), ids.end(), [&](const DhtId& a, const DhtId& b) { return (a ^ target) < (b ^ target); });
  ids.resize(std::min(n, ids.size()));
  return ids;
}

TEST(DhtId, XorMetricAndPrefixes) {
  Rng rng(1);
  const DhtId a = DhtId::random(rng), b = DhtId::random(rng);
  EXPECT_EQ((a ^ a), DhtId{});
  EXPECT_EQ((a ^ b), (b ^ a));
  EXPECT_EQ(a.common_prefix(a), 160);
  for (int depth : {0, 1, 7, 8, 13, 100, 160}) {
    const DhtId c = DhtId::random_with_prefix(rng, a, depth);
    EXPECT_GE(c.common_prefix(a), depth);
  }
  EXPECT_EQ(DhtId::of_key("x"), DhtId::of_key("x"));
  EXPECT_NE(DhtId::of_key("x"), DhtId::of_key("y"));
  EXPECT_EQ(DhtId::of_key("").hex().size(), 40u);
}

TEST(RoutingTable, MatchesBruteForceOnTenThousandIds) {
  Rng rng(7);
  const DhtId self = DhtId::random(rng);
  RoutingTable table(self, 20, 5);
  std::vector<DhtId> all;
  for (int i = 0; i < 10000; ++i) {
    all.push_back(DhtId::random(rng));
    table.add(Contact{all.back(), Endpoint{static_cast<std::uint32_t>(i + 1), 1}}, TimePoint{});
  }
  // The k nearest of all 10,000 ids to ourselves are always kept: our own bucket always splits.
  auto mine = table.nearest(self, 20);
  auto expect = brute_nearest(all, self, 20);
  ASSERT_EQ(mine.size(), 20u);
  for (std::size_t i = 0; i < 20; ++i) EXPECT_EQ(mine[i].id, expect[i]) << i;
  // Buckets: never more than k, every contact inside its bucket's range, counts add up.
  std::size_t total = 0;
  for (auto [depth, n] : table.bucket_shape()) {
    EXPECT_LE(n, 20u);
    total += n;
  }
  EXPECT_EQ(total, table.size());
  const auto stats = table.stats();
  EXPECT_EQ(stats.contacts, table.size());
  // With b = 5 (relaxed splitting) a table holds several hundred contacts for 10,000 ids.
  EXPECT_GT(table.size(), 200u);
  // nearest() for any target equals brute force over what the table holds.
  std::vector<DhtId> held;
  for (const auto& c : table.nearest(self, 100000)) held.push_back(c.id);
  EXPECT_EQ(held.size(), table.size());
  for (int t = 0; t < 50; ++t) {
    const DhtId target = DhtId::random(rng);
    for (std::size_t n : {1, 7, 20, 64}) {
      auto got = table.nearest(target, n);
      auto want = brute_nearest(held, target, n);
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t i = 0; i < got.size(); ++i) EXPECT_EQ(got[i].id, want[i]) << n;
      // Without the nearest one: the next n.
      got = table.nearest(target, n, want[0]);
      auto next = brute_nearest(held, target, n + 1);
      ASSERT_EQ(got.size(), n);
      for (std::size_t i = 0; i < n; ++i) EXPECT_EQ(got[i].id, next[i + 1]) << n;
    }
  }
}

// The hand-over's mask answers "is any contact but x nearer to t than we are" as a scan does,
// for targets near us (where the answer is often no) and random ones, each contact excluded.
TEST(RoutingTable, NearerMaskAgreesWithTheScan) {
  Rng rng(11);
  const DhtId self = DhtId::random(rng);
  for (int size : {3, 40, 3000}) {
    RoutingTable table(self, 20, 5);
    std::vector<DhtId> ids;
    for (int i = 0; i < size; ++i) {
      ids.push_back(DhtId::random(rng));
      table.add(Contact{ids.back(), Endpoint{static_cast<std::uint32_t>(i + 1), 1}}, TimePoint{});
    }
    std::vector<DhtId> held;
    for (const auto& c : table.nearest(self, 100000)) held.push_back(c.id);
    int yes = 0, no = 0;
    for (int t = 0; t < 400; ++t) {
      const DhtId target = t % 2 ? DhtId::random(rng) : DhtId::random_with_prefix(rng, self, 4 + t % 20);
      const DhtId exclude = held[static_cast<std::size_t>(t) % held.size()];
      const bool scan = std::any_of(held.begin(), held.end(),
                                    [&](const DhtId& x) { return x != exclude && (x ^ target) < (self ^ target); });
      EXPECT_EQ(RoutingTable::any_in(target, self, table.nearer_mask(exclude)), scan) << size << " " << t;
      (scan ? yes : no)++;
    }
    EXPECT_GT(yes, 0);
    EXPECT_GT(no, 0);
  }
}

TEST(RoutingTable, BucketCountsEqualBruteForceWithStrictSplitting) {
  // With b = 1 only the bucket holding our own id splits, so the bucket at depth d holds the
  // first k ids that share exactly d leading bits with us: countable by brute force.
  Rng rng(11);
  const DhtId self = DhtId::random(rng);
  RoutingTable table(self, 20, 1);
  std::vector<int> sharing(DhtId::kBits + 1, 0);
  for (int i = 0; i < 10000; ++i) {
    const DhtId id = DhtId::random(rng);
    table.add(Contact{id, Endpoint{static_cast<std::uint32_t>(i + 1), 1}}, TimePoint{});
    ++sharing[static_cast<std::size_t>(id.common_prefix(self))];
  }
  const auto shape = table.bucket_shape();
  ASSERT_GE(shape.size(), 2u);
  int deepest = 0;
  for (auto [depth, n] : shape) deepest = std::max(deepest, depth);
  for (auto [depth, n] : shape) {
    if (depth == deepest) {
      // The two deepest buckets: ours and its sibling; together they hold every id sharing at
      // least deepest-1 bits, at most k each.
      EXPECT_LE(n, 20u);
      continue;
    }
    // A bucket at depth d+1 that does not cover us holds ids sharing exactly d bits.
    EXPECT_EQ(n, static_cast<std::size_t>(std::min(20, sharing[static_cast<std::size_t>(depth - 1)])))
        << "bucket at depth " << depth;
  }
  // Ours holds every id sharing at least `deepest` bits (it would have split otherwise); its
  // sibling the first k sharing exactly deepest-1.
  std::size_t ours = 0;
  for (int d = deepest; d <= DhtId::kBits; ++d) ours += static_cast<std::size_t>(sharing[static_cast<std::size_t>(d)]);
  EXPECT_LE(ours, 20u);
  std::size_t deep_held = 0;
  for (auto [depth, n] : shape)
    if (depth == deepest) deep_held += n;
  EXPECT_EQ(deep_held, ours + std::min<std::size_t>(20, static_cast<std::size_t>(sharing[static_cast<std::size_t>(deepest - 1)])));
}

TEST(RoutingTable, FullBucketNamesLeastRecentlySeenAndRemovePromotesReplacement) {
  Rng rng(3);
  DhtId self{};
  self.b[0] = 0x00;
  RoutingTable table(self, 2, 1);  // depth_modulo 1: only the bucket with self splits
  // Three ids far from self (first bit 1) land in one bucket that cannot split.
  std::vector<DhtId> far;
  for (int i = 0; i < 3; ++i) {
    DhtId id = DhtId::random(rng);
    id.b[0] |= 0x80;
    far.push_back(id);
  }
  EXPECT_EQ(table.add({far[0], {1, 1}}, TimePoint(1s)).kind, RoutingTable::Added::kAdded);
  EXPECT_EQ(table.add({far[1], {2, 1}}, TimePoint(2s)).kind, RoutingTable::Added::kAdded);
  auto r = table.add({far[2], {3, 1}}, TimePoint(3s));
  EXPECT_EQ(r.kind, RoutingTable::Added::kFull);
  ASSERT_TRUE(r.ping_first);
  EXPECT_EQ(r.ping_first->id, far[0]);  // least recently seen
  EXPECT_FALSE(table.contains(far[2]));
  EXPECT_TRUE(table.remove(far[0]));  // it failed its ping
  EXPECT_TRUE(table.contains(far[2]));
  EXPECT_EQ(table.add({far[1], {2, 1}}, TimePoint(4s)).kind, RoutingTable::Added::kUpdated);
  EXPECT_EQ(table.add({self, {9, 9}}, TimePoint(4s)).kind, RoutingTable::Added::kSelf);
}

// With ping_after, a full bucket names its least-recently-seen contact for a ping only once that
// contact has not been heard from for that long; until then the newcomer waits as a replacement.
TEST(RoutingTable, AContactHeardLatelyIsNotPinged) {
  Rng rng(3);
  DhtId self{};
  RoutingTable table(self, 2, 1, 0, 0, 15min);
  std::vector<DhtId> far;
  for (int i = 0; i < 4; ++i) {
    DhtId id = DhtId::random(rng);
    id.b[0] |= 0x80;
    far.push_back(id);
  }
  table.add({far[0], {1, 1}}, TimePoint(1s));
  table.add({far[1], {2, 1}}, TimePoint(2s));
  auto r = table.add({far[2], {3, 1}}, TimePoint(10min));
  EXPECT_EQ(r.kind, RoutingTable::Added::kFull);
  EXPECT_FALSE(r.ping_first);  // far[0] was heard 9 min 59 s ago
  EXPECT_FALSE(table.contains(far[2]));
  EXPECT_EQ(table.add({far[0], {1, 1}}, TimePoint(12min)).kind, RoutingTable::Added::kUpdated);  // heard again
  r = table.add({far[3], {4, 1}}, TimePoint(15min + 2s));
  ASSERT_TRUE(r.ping_first);  // far[1], now least recently seen, was heard 15 min ago
  EXPECT_EQ(r.ping_first->id, far[1]);
  EXPECT_TRUE(table.remove(far[1]));  // it failed its ping: the freshest replacement comes in
  EXPECT_TRUE(table.contains(far[3]));
}

TEST(RoutingTable, OneEndpointHoldsOneId) {
  Rng rng(3);
  const DhtId self = DhtId::random(rng);
  RoutingTable table(self, 20, 5);
  const Endpoint mallory{Endpoint::ipv4(10, 6, 6, 6), 666};
  const DhtId first = DhtId::random(rng);
  EXPECT_EQ(table.add({first, mallory}, TimePoint(1s)).kind, RoutingTable::Added::kAdded);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(table.add({DhtId::random(rng), mallory}, TimePoint(2s)).kind, RoutingTable::Added::kRefused);
  EXPECT_EQ(table.size(), 1u);
  const DhtId honest = DhtId::random(rng);
  EXPECT_EQ(table.add({honest, {Endpoint::ipv4(10, 0, 0, 1), 1}}, TimePoint(3s)).kind, RoutingTable::Added::kAdded);
  EXPECT_EQ(table.add({honest, mallory}, TimePoint(4s)).kind, RoutingTable::Added::kRefused);  // nor move onto a held endpoint
  EXPECT_EQ(table.find(honest)->endpoint, (Endpoint{Endpoint::ipv4(10, 0, 0, 1), 1}));
  // Nor does it move to a free endpoint while it is in the table (a relay of its handshake).
  const Endpoint relay{Endpoint::ipv4(10, 7, 7, 7), 777};
  EXPECT_EQ(table.add({honest, relay}, TimePoint(4s)).kind, RoutingTable::Added::kRefused);
  EXPECT_EQ(table.find(honest)->endpoint, (Endpoint{Endpoint::ipv4(10, 0, 0, 1), 1}));
  // Once the first leaves, the endpoint may hold another id (a peer restarted with a new identity).
  EXPECT_TRUE(table.remove(first));
  EXPECT_EQ(table.add({DhtId::random(rng), mallory}, TimePoint(5s)).kind, RoutingTable::Added::kAdded);
}

TEST(RoutingTable, ABucketHoldsFewContactsOfOneAddress) {
  Rng rng(5);
  const DhtId self = DhtId::random(rng);
  RoutingTable table(self, 20, 5, 2);
  const std::uint32_t host = Endpoint::ipv4(10, 6, 6, 6);
  // Ids that all fall in one bucket (the far half of the space, which never splits here).
  std::size_t added = 0;
  for (std::uint16_t port = 1; port <= 40; ++port) {
    DhtId id = DhtId::random(rng);
    id.b[0] = static_cast<std::uint8_t>((self.b[0] ^ 0x80) & 0x80) | (id.b[0] & 0x7f);
    added += table.add({id, {host, port}}, TimePoint(1s)).kind == RoutingTable::Added::kAdded;
  }
  EXPECT_EQ(added, 2u);
  // Loopback, where every peer of a one-machine swarm lives, is exempt.
  std::size_t local = 0;
  for (std::uint16_t port = 1; port <= 10; ++port) {
    DhtId id = DhtId::random(rng);
    id.b[0] = static_cast<std::uint8_t>((self.b[0] ^ 0x80) & 0x80) | (id.b[0] & 0x7f);
    local += table.add({id, {Endpoint::ipv4(127, 0, 0, 1), port}}, TimePoint(1s)).kind == RoutingTable::Added::kAdded;
  }
  EXPECT_EQ(local, 10u);
}

TEST(RoutingTable, ABucketHoldsFewContactsOfOneSubnet) {
  Rng rng(6);
  const DhtId self = DhtId::random(rng);
  RoutingTable table(self, 20, 5, 2, 3);
  auto far = [&] {  // an id in the far half of the space (a bucket that never splits here)
    DhtId id = DhtId::random(rng);
    id.b[0] = static_cast<std::uint8_t>((self.b[0] ^ 0x80) & 0x80) | (id.b[0] & 0x7f);
    return id;
  };
  std::size_t rented = 0, elsewhere = 0;
  for (std::uint8_t host = 1; host <= 40; ++host)  // 40 addresses of one /24
    rented += table.add({far(), {Endpoint::ipv4(203, 0, 113, host), 7000}}, TimePoint(1s)).kind == RoutingTable::Added::kAdded;
  for (std::uint8_t net = 1; net <= 10; ++net)  // one address in each of 10 others
    elsewhere += table.add({far(), {Endpoint::ipv4(198, 51, net, 9), 7000}}, TimePoint(1s)).kind == RoutingTable::Added::kAdded;
  EXPECT_EQ(rented, 3u);
  EXPECT_EQ(elsewhere, 10u);
}

Record rec(std::string key, std::string value, TimePoint exp, std::optional<std::string> sub = std::nullopt) {
  return Record{std::move(key), std::move(sub), Bytes(value.begin(), value.end()), exp, {}};
}

TEST(Storage, LatestExpirationWinsAndExpiredIsGone) {
  Storage s;
  const TimePoint now(100s);
  EXPECT_EQ(s.store(rec("k", "v1", TimePoint(200s)), now), Storage::Outcome::kStored);
  EXPECT_EQ(s.store(rec("k", "old", TimePoint(150s)), now), Storage::Outcome::kStale);
  EXPECT_EQ(s.store(rec("k", "same", TimePoint(200s)), now), Storage::Outcome::kStale);
  EXPECT_EQ(s.store(rec("k", "v2", TimePoint(300s)), now), Storage::Outcome::kStored);
  EXPECT_EQ(s.store(rec("k", "dead", TimePoint(50s)), now), Storage::Outcome::kExpired);
  auto got = s.get(DhtId::of_key("k"), now);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(got[0].value, Bytes({'v', '2'}));
  EXPECT_TRUE(s.get(DhtId::of_key("k"), TimePoint(300s)).empty());  // expired at its time
  EXPECT_EQ(s.size(), 0u);
}

TEST(Storage, SubkeysMergeWithTheirOwnExpirations) {
  Storage s;
  const TimePoint now(0s);
  s.store(rec("d", "a", TimePoint(10s), "x"), now);
  s.store(rec("d", "b", TimePoint(20s), "y"), now);
  EXPECT_EQ(s.store(rec("d", "a-old", TimePoint(5s), "x"), now), Storage::Outcome::kStale);
  auto got = s.get(DhtId::of_key("d"), TimePoint(1s));
  ASSERT_EQ(got.size(), 2u);
  EXPECT_EQ(*got[0].subkey, "x");
  EXPECT_EQ(*got[1].subkey, "y");
  got = s.get(DhtId::of_key("d"), TimePoint(15s));  // x expired, y lives on
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(*got[0].subkey, "y");
  // A plain value that expires later replaces the dictionary; one that expires earlier does not.
  EXPECT_EQ(s.store(rec("d", "plain", TimePoint(18s)), TimePoint(15s)), Storage::Outcome::kStale);
  EXPECT_EQ(s.store(rec("d", "plain", TimePoint(30s)), TimePoint(15s)), Storage::Outcome::kStored);
  // And a subkey is refused while that plain value holds the key with a later expiration.
  EXPECT_EQ(s.store(rec("d", "z", TimePoint(25s), "z"), TimePoint(15s)), Storage::Outcome::kStale);
  EXPECT_EQ(s.get(DhtId::of_key("d"), TimePoint(15s)).size(), 1u);
}

TEST(Storage, FullStoreEvictsEarliestExpiring) {
  Storage s(3);
  const TimePoint now(0s);
  s.store(rec("a", "1", TimePoint(40s)), now);
  s.store(rec("b", "1", TimePoint(10s)), now);
  s.store(rec("c", "1", TimePoint(30s)), now);
  s.store(rec("d", "1", TimePoint(20s)), now);
  EXPECT_EQ(s.size(), 3u);
  EXPECT_EQ(s.evicted(), 1u);
  EXPECT_TRUE(s.get(DhtId::of_key("b"), now).empty());
  EXPECT_FALSE(s.get(DhtId::of_key("d"), now).empty());
}

TEST(Storage, NothingIsKeptLongerThanMaxTtl) {
  Storage s(StorageLimits{.max_ttl = 1h, .clock_slack = 1min});
  const TimePoint now(100s);
  EXPECT_EQ(s.store(rec("k", "v", now + 1h), now), Storage::Outcome::kStored);
  EXPECT_EQ(s.store(rec("k", "v", now + 1h + 2min), now), Storage::Outcome::kTooLate);
  EXPECT_EQ(s.store(rec("squat", "v", TimePoint::max()), now), Storage::Outcome::kTooLate);
  EXPECT_TRUE(s.get(DhtId::of_key("squat"), now).empty());
}

TEST(Storage, AnUnownedPlainValueNeverHidesAnOwnersSubkeys) {
  Storage s;
  const TimePoint now(0s);
  const std::string owner = Identity::from_seed(1).owner_tag();
  // (Storage trusts the validators that ran before it: an owner tag means a checked signature.)
  ASSERT_EQ(s.store(rec("run:progress", "mine", TimePoint(60s), owner), now), Storage::Outcome::kStored);
  EXPECT_EQ(s.store(rec("run:progress", "squat", TimePoint(20h)), now), Storage::Outcome::kShadows);
  auto got = s.get(DhtId::of_key("run:progress"), now);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(*got[0].subkey, owner);
  // Squatted first: the owner's entry replaces the unowned plain value, however late it expires.
  ASSERT_EQ(s.store(rec("other:progress", "squat", TimePoint(20h)), now), Storage::Outcome::kStored);
  EXPECT_EQ(s.store(rec("other:progress", "unowned", TimePoint(60s), "x"), now), Storage::Outcome::kStale);
  EXPECT_EQ(s.store(rec("other:progress", "mine", TimePoint(60s), owner), now), Storage::Outcome::kStored);
  got = s.get(DhtId::of_key("other:progress"), now);
  ASSERT_EQ(got.size(), 1u);
  EXPECT_EQ(*got[0].subkey, owner);
}

TEST(Storage, OneSourcesFloodEvictsOnlyItsOwnRecords) {
  const StorageLimits lim{.max_records = 2000, .max_bytes = 4u << 20, .source_bytes = 1u << 20, .ip_bytes = 2u << 20};
  Storage s(lim);
  const TimePoint now(0s);
  const Endpoint alice{Endpoint::ipv4(10, 0, 0, 1), 7000}, bob{Endpoint::ipv4(10, 0, 0, 2), 7000};
  for (int i = 0; i < 200; ++i) {
    ASSERT_EQ(s.store(rec("a" + std::to_string(i), "honest", TimePoint(60s)), now, alice), Storage::Outcome::kStored);
    ASSERT_EQ(s.store(rec("b" + std::to_string(i), "honest", TimePoint(60s)), now, bob), Storage::Outcome::kStored);
  }
  // 100,000 tiny far-future records from one port, then 6,000 of 64 KiB from 1,000 ports of one host.
  const Endpoint mallory{Endpoint::ipv4(10, 6, 6, 6), 666};
  for (int i = 0; i < 100000; ++i) s.store(rec("m" + std::to_string(i), "x", TimePoint(23h)), now, mallory);
  const std::string big(64 * 1024, 'x');
  for (int i = 0; i < 6000; ++i)
    s.store(rec("big" + std::to_string(i), big, TimePoint(23h)), now, Endpoint{mallory.ip, static_cast<std::uint16_t>(1000 + i % 1000)});
  for (int i = 0; i < 200; ++i) {
    EXPECT_EQ(s.get(DhtId::of_key("a" + std::to_string(i)), now).size(), 1u) << i;
    EXPECT_EQ(s.get(DhtId::of_key("b" + std::to_string(i)), now).size(), 1u) << i;
  }
  EXPECT_LE(s.size(), lim.max_records);
  EXPECT_LE(s.bytes(), lim.max_bytes);
  EXPECT_LE(s.bytes_of(mallory), lim.source_bytes);
  EXPECT_LE(s.bytes_of_ip(mallory.ip), lim.ip_bytes);
  EXPECT_GT(s.evicted(), 100000u);
  // The honest sources are still served: a new honest record has room.
  EXPECT_EQ(s.store(rec("a-late", "honest", TimePoint(60s)), now, alice), Storage::Outcome::kStored);
}

TEST(Storage, AFullStoreTakesFromTheLargestHost) {
  Storage s(StorageLimits{.max_records = 100});
  const TimePoint now(0s);
  const Endpoint small{Endpoint::ipv4(10, 0, 0, 1), 1}, large{Endpoint::ipv4(10, 0, 0, 2), 1};
  for (int i = 0; i < 20; ++i) s.store(rec("s" + std::to_string(i), "v", TimePoint(10s)), now, small);
  for (int i = 0; i < 100; ++i) s.store(rec("l" + std::to_string(i), "v", TimePoint(20h)), now, large);
  EXPECT_EQ(s.size(), 100u);
  for (int i = 0; i < 20; ++i) EXPECT_EQ(s.get(DhtId::of_key("s" + std::to_string(i)), now).size(), 1u);
  // The host over its share loses its earliest-expiring record, so a record of its own can find no room.
  EXPECT_EQ(s.store(rec("l-early", "v", TimePoint(5s)), now, large), Storage::Outcome::kNoRoom);
}

TEST(Validation, SignaturesProtectOwnersRecords) {
  const Identity alice = Identity::from_seed(1), mallory = Identity::from_seed(2);
  SignatureValidator v;
  Record r = rec("profile" + alice.owner_tag(), "hello", TimePoint(10s));
  EXPECT_TRUE(v.check(r).has_value());  // unsigned
  alice.sign(r);
  EXPECT_FALSE(v.check(r).has_value());
  Record forged = r;
  forged.value = Bytes{'e', 'v', 'i', 'l'};
  EXPECT_TRUE(v.check(forged).has_value());  // signature no longer matches
  Record by_mallory = rec("profile" + alice.owner_tag(), "mine now", TimePoint(20s));
  mallory.sign(by_mallory);
  EXPECT_TRUE(v.check(by_mallory).has_value());
  // Subkey ownership: anyone may add their own subkey under a shared key, nobody another's.
  Record sub = rec("peers", "alice's", TimePoint(10s), alice.owner_tag());
  alice.sign(sub);
  EXPECT_FALSE(v.check(sub).has_value());
  Record steal = rec("peers", "not alice", TimePoint(30s), alice.owner_tag());
  mallory.sign(steal);
  EXPECT_TRUE(v.check(steal).has_value());
  Record plain = rec("anything", "goes", TimePoint(10s));
  EXPECT_FALSE(v.check(plain).has_value());
  Record bad_tag = rec("x[owner:zz]", "v", TimePoint(10s));
  EXPECT_EQ(*v.check(bad_tag), "malformed [owner:...] tag");
}

// A verified signature is remembered: the same record again costs no verification, while a record
// that differs in any signed byte (value, expiration) or carries a bad signature is verified and
// refused every time.
TEST(Validation, VerifiedSignaturesAreRememberedNotTrustedBlindly) {
  const Identity alice = Identity::from_seed(1);
  SignatureValidator v(2);
  Record r = rec("profile" + alice.owner_tag(), "hello", TimePoint(10s));
  alice.sign(r);
  for (int i = 0; i < 5; ++i) EXPECT_FALSE(v.check(r).has_value());
  EXPECT_EQ(v.verifications(), 1u);
  Record later = r;
  later.expiration = TimePoint(20s);  // signed bytes changed, signature not
  for (int i = 0; i < 3; ++i) EXPECT_TRUE(v.check(later).has_value());
  EXPECT_EQ(v.verifications(), 4u) << "a failed verification is never remembered";
  Record other = rec("profile" + alice.owner_tag(), "a", TimePoint(10s)), third = rec("profile" + alice.owner_tag(), "b", TimePoint(10s));
  alice.sign(other);
  alice.sign(third);
  EXPECT_FALSE(v.check(other).has_value());
  EXPECT_FALSE(v.check(third).has_value());  // remembers 2: the first is forgotten
  EXPECT_FALSE(v.check(r).has_value());
  EXPECT_EQ(v.verifications(), 7u);
  SignatureValidator none(0);
  for (int i = 0; i < 3; ++i) EXPECT_FALSE(none.check(r).has_value());
  EXPECT_EQ(none.verifications(), 3u);
}

TEST(Validation, SchemaTypesValues) {
  SchemaValidator v;
  v.require("step.", SchemaValidator::Type::kInt64);
  v.require("name.", SchemaValidator::Type::kUtf8, 16);
  EXPECT_FALSE(v.check(rec("step.1", "12345678", TimePoint(1s))));
  EXPECT_TRUE(v.check(rec("step.1", "123", TimePoint(1s))));
  EXPECT_FALSE(v.check(rec("name.a", "héllo", TimePoint(1s))));
  EXPECT_TRUE(v.check(rec("name.a", std::string("\xff\xfe"), TimePoint(1s))));
  EXPECT_TRUE(v.check(rec("name.a", std::string(17, 'a'), TimePoint(1s))));
  EXPECT_FALSE(v.check(rec("other", std::string("\xff"), TimePoint(1s))));
}

TEST(Validation, OwnedKeysTakeOnlyOwnersEntries) {
  SchemaValidator v;
  v.require_owned(":progress", 8, [](std::span<const std::uint8_t> b) -> std::optional<std::string> {
    if (b.empty()) return "empty";
    return std::nullopt;
  });
  const std::string owner = Identity::from_seed(1).owner_tag();
  EXPECT_FALSE(v.check(rec("run:progress", "ok", TimePoint(1s), owner)).has_value());
  EXPECT_TRUE(v.check(rec("run:progress", "ok", TimePoint(1s))).has_value());         // a plain value
  EXPECT_TRUE(v.check(rec("run:progress", "ok", TimePoint(1s), "x")).has_value());    // not an owner
  EXPECT_TRUE(v.check(rec("run:progress", "ok", TimePoint(1s), "x" + owner)).has_value());
  EXPECT_TRUE(v.check(rec("run:progress", "123456789", TimePoint(1s), owner)).has_value());  // too large
  EXPECT_TRUE(v.check(rec("run:progress", "", TimePoint(1s), owner)).has_value());           // its check
  EXPECT_FALSE(v.check(rec("run:progress-not", "", TimePoint(1s))).has_value());  // another key
}

using DhtSwarm = test::FakeDhtSwarm;

DhtConfig small_k() {
  DhtConfig c;
  c.k = 5;
  c.alpha = 3;
  return c;
}

// Three disjoint lookup paths (S/Kademlia): stores and gets work as with one, and within one
// lookup no peer is asked by two paths (each is asked at most once), though paths run together.
TEST(DhtSwarm, DisjointPathsAskNoPeerTwiceAndFindEverything) {
  DhtConfig cfg;
  cfg.k = 8;
  cfg.disjoint_paths = 3;
  cfg.refresh_period = Duration::zero();
  cfg.replicate_period = Duration::zero();
  test::FakeDhtSwarm s(40, cfg);
  s.join_all();
  for (int i = 0; i < 20; ++i) {
    auto st = s.run(s.nodes[static_cast<std::size_t>(i)]->store(rec("key" + std::to_string(i), "v", s.fake.net.now() + 1h)));
    EXPECT_GE(st.replicas, 6u) << i;
    auto got = s.run(s.nodes[static_cast<std::size_t>(i + 7)]->get("key" + std::to_string(i)));
    EXPECT_TRUE(got.found) << i;
  }
  s.fake[0].sent.clear();
  auto miss = s.run(s.nodes[0]->get("nobody stored this"));  // runs every path to its end
  EXPECT_FALSE(miss.found);
  std::map<Endpoint, int> finds;
  for (const auto& [to, m] : s.fake[0].sent) {
    wire::Reader r(m.header);
    if (r.u8() != 1) continue;  // a request
    r.varint();                 // its id
    if (r.varint() == FindRequest::kMethod) ++finds[to];
  }
  int total = 0;
  for (const auto& [to, n] : finds) {
    EXPECT_EQ(n, 1) << to.to_string() << " was asked by two paths";
    total += n;
  }
  EXPECT_GE(total, 9);  // three paths, each to its own k nearest
}

TEST(DhtSwarm, LookupsFindTheExactNearestPeers) {
  DhtSwarm s(20, small_k());
  s.join_all();
  Rng rng(5);
  for (int t = 0; t < 20; ++t) {
    const DhtId target = DhtId::random(rng);
    auto& from = *s.nodes[static_cast<std::size_t>(t) % 20];
    std::vector<DhtId> targets{target};
    auto res = s.run(from.lookup(targets, false));
    std::vector<DhtId> others;
    for (auto& id : s.ids())
      if (id != from.id()) others.push_back(id);
    auto want = brute_nearest(others, target, 5);
    auto& got = res[target].nearest;
    ASSERT_EQ(got.size(), 5u);
    for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(got[i].id, want[i]) << "target " << t << " rank " << i;
  }
}

// A client holds nothing of others', but still republishes what it published itself: after every
// holder lost the record, the client's replication puts it back on the nearest peers. (Found by
// a fault campaign: a client's record stored while a partition cut it off stayed on the wrong
// side; clients ran no replication at all.)
TEST(DhtSwarm, AClientRepublishesWhatItPublished) {
  DhtConfig cfg = small_k();
  cfg.replicate_period = 1min;
  DhtSwarm s(12, cfg);
  DhtConfig client = cfg;
  client.client_mode = true;
  s.nodes[11].reset();
  s.rpcs[11] = std::make_unique<Rpc>(s.fake[11].runtime());
  s.nodes[11] = std::make_unique<DhtNode>(s.fake[11].runtime(), *s.rpcs[11], Identity::from_seed(111).id(), client);
  s.join_all();
  const auto stored = s.run(s.nodes[11]->store(rec("k", "v", s.fake.net.now() + 30min)));
  ASSERT_GT(stored.replicas, 0u);
  EXPECT_TRUE(s.nodes[11]->storage().get(DhtId::of_key("k"), s.fake.net.now()).empty()) << "a client holds nothing";
  for (std::size_t i = 0; i < 11; ++i) s.nodes[i]->storage() = Storage{};
  EXPECT_FALSE(s.run(s.nodes[3]->get("k")).found);
  s.nodes[11]->start_maintenance();
  s.fake.net.run(90s);
  EXPECT_TRUE(s.run(s.nodes[3]->get("k")).found);
}

TEST(DhtSwarm, ManyKeysInOneTraversal) {
  DhtSwarm s(20, small_k());
  s.join_all();
  Rng rng(6);
  std::vector<DhtId> targets;
  for (int i = 0; i < 10; ++i) targets.push_back(DhtId::random(rng));
  auto res = s.run(s.nodes[3]->lookup(targets, false));
  std::vector<DhtId> others;
  for (auto& id : s.ids())
    if (id != s.nodes[3]->id()) others.push_back(id);
  for (const auto& t : targets) {
    auto want = brute_nearest(others, t, 5);
    ASSERT_EQ(res[t].nearest.size(), 5u);
    for (std::size_t i = 0; i < 5; ++i) EXPECT_EQ(res[t].nearest[i].id, want[i]);
  }
  // One traversal asks each peer at most once for all the keys it is a candidate for.
  EXPECT_LE(res[targets[0]].queried, 19);
}

TEST(DhtSwarm, StoreReplicatesToTheKNearestAndGetFindsIt) {
  DhtSwarm s(20, small_k());
  s.join_all();
  const TimePoint exp = s.fake.net.now() + 10min;
  auto stored = s.run(s.nodes[2]->store(rec("the-key", "the-value", exp)));
  const DhtId key = DhtId::of_key("the-key");
  // Holders are exactly the 5 nearest of the other peers, plus the storer if it is nearer
  // than the fifth of those.
  std::vector<DhtId> others;
  for (auto& id : s.ids())
    if (id != s.nodes[2]->id()) others.push_back(id);
  auto nearest = brute_nearest(others, key, 5);
  std::set<DhtId> expect(nearest.begin(), nearest.end());
  if ((s.nodes[2]->id() ^ key) < (nearest.back() ^ key)) expect.insert(s.nodes[2]->id());
  std::set<DhtId> holders;
  for (auto& n : s.nodes)
    if (!n->storage().get(key, s.fake.net.now()).empty()) holders.insert(n->id());
  EXPECT_EQ(holders, expect);
  EXPECT_EQ(stored.replicas, expect.size());
  EXPECT_EQ(stored.stale + stored.refused + stored.unreachable, 0u);
  // The same record again: every holder holds it (counted); an older one: refused as stale, by
  // every holder, and never counted as stored.
  auto again = s.run(s.nodes[2]->store(rec("the-key", "the-value", exp)));
  EXPECT_EQ(again.replicas, expect.size());
  auto older = s.run(s.nodes[2]->store(rec("the-key", "older", exp - 1min)));
  EXPECT_EQ(older.replicas, 0u);
  EXPECT_EQ(older.stale, expect.size());

  for (std::size_t i : {0u, 7u, 19u}) {
    auto got = s.run(s.nodes[i]->get("the-key"));
    ASSERT_TRUE(got.found) << i;
    EXPECT_EQ(got.records[0].value, Bytes({'t', 'h', 'e', '-', 'v', 'a', 'l', 'u', 'e'}));
  }
  auto missing = s.run(s.nodes[5]->get("no-such-key"));
  EXPECT_FALSE(missing.found);
  // After expiration the value is gone everywhere.
  s.fake.net.run(11min);
  EXPECT_FALSE(s.run(s.nodes[7]->get("the-key")).found);
}

// A store's lookup hands small records along its FINDs: the k nearest hold the record as with
// STOREs afterwards, the storer sends (almost) no STORE, fewer requests in all, and outcomes
// (stale) are counted as a STORE's are. Records over the size limit go the old way.
TEST(DhtSwarm, StoresTravelAlongTheLookupAndCountTheSame) {
  auto requests = [](test::FakePeer& p) {
    std::map<std::uint64_t, int> by_method;
    for (const auto& [to, m] : p.sent) {
      wire::Reader r(m.header);
      if (r.u8() != 1) continue;  // a request
      r.varint();                 // its id
      ++by_method[r.varint()];
    }
    return by_method;
  };
  DhtConfig along = small_k(), separate = small_k();
  along.k = separate.k = 8;
  along.refresh_period = separate.refresh_period = Duration::zero();
  along.replicate_period = separate.replicate_period = Duration::zero();
  along.bucket_ip_limit = separate.bucket_ip_limit = 0;
  along.store_along_max_bytes = 1024;
  separate.store_along_max_bytes = 0;
  std::map<std::string, std::map<std::uint64_t, int>> sent;
  for (const auto& [name, cfg] : {std::pair{"along", along}, std::pair{"separate", separate}}) {
    DhtSwarm s(150, cfg);
    s.join_all();
    auto& storer = *s.nodes[7];
    s.fake[7].sent.clear();
    const TimePoint exp = s.fake.net.now() + 10min;
    std::vector<std::size_t> replicas;
    for (int i = 0; i < 20; ++i)
      replicas.push_back(s.run(storer.store(rec("key" + std::to_string(i), "v", exp))).replicas);
    sent[name] = requests(s.fake[7]);
    for (int i = 0; i < 20; ++i) {
      const std::string key = "key" + std::to_string(i);
      // The 8 nearest of the others all hold it (and the storer, if it is among them).
      std::vector<DhtId> others;
      for (auto& id : s.ids())
        if (id != storer.id()) others.push_back(id);
      const auto nearest = brute_nearest(others, DhtId::of_key(key), 8);
      std::size_t held = 0;
      for (auto& n : s.nodes)
        if (std::count(nearest.begin(), nearest.end(), n->id()) && !n->storage().get(DhtId::of_key(key), s.fake.net.now()).empty())
          ++held;
      EXPECT_EQ(held, 8u) << name << " " << key;
      EXPECT_GE(replicas[static_cast<std::size_t>(i)], 8u) << name << " " << key;
      EXPECT_TRUE(s.run(s.nodes[100]->get(key)).found) << name << " " << key;
    }
    // An older record: refused as stale by the holders, whichever way it went.
    auto older = s.run(storer.store(rec("key3", "older", exp - 1min)));
    EXPECT_EQ(older.replicas, 0u) << name;
    EXPECT_GE(older.stale, 8u) << name;
    // A record over the limit goes by STOREs after the lookup.
    s.fake[7].sent.clear();
    Record big = rec("big", std::string(2000, 'x'), exp);
    EXPECT_GE(s.run(storer.store(big)).replicas, 8u) << name;
    EXPECT_GE(requests(s.fake[7])[StoreRequest::kMethod], 8) << name;
  }
  const int store_along = sent["along"][StoreRequest::kMethod], store_separate = sent["separate"][StoreRequest::kMethod];
  const int find_along = sent["along"][FindRequest::kMethod], find_separate = sent["separate"][FindRequest::kMethod];
  EXPECT_EQ(store_separate, 20 * 8);
  EXPECT_LE(store_along, 20);  // a STORE only to a final-nearest peer the lookup did not hand it to
  EXPECT_LT(find_along + store_along, (find_separate + store_separate) * 7 / 10)
      << "along: " << find_along << " finds, " << store_along << " stores; separate: " << find_separate << " finds, "
      << store_separate << " stores";
}

TEST(DhtSwarm, DictionaryReadsReachTheNearestHoldersAndAreNotCached) {
  // A dictionary's 5 nearest peers hold every entry; each other peer holds a partial snapshot (as
  // peers at the edge of the writers' nearest sets do). Readers start from tables without the
  // nearest peers, so the first holders they meet are partial: a read from 3 holders must still
  // reach the nearest and merge every entry. A second dictionary only the nearest hold: reading
  // it from 3 holders caches the merged view nowhere.
  DhtSwarm s(20, small_k());
  s.join_all();
  const TimePoint exp = s.fake.net.now() + 10min;
  const DhtId key = DhtId::of_key("dict"), key2 = DhtId::of_key("dict2");
  auto nearest = brute_nearest(s.ids(), key, 5), nearest2 = brute_nearest(s.ids(), key2, 5);
  const std::set<DhtId> near(nearest.begin(), nearest.end()), near2(nearest2.begin(), nearest2.end());
  for (auto& n : s.nodes) {
    n->storage().store(rec("dict", "A", exp, "a"), s.fake.net.now());
    if (near.count(n->id())) n->storage().store(rec("dict", "B", exp, "b"), s.fake.net.now());
    if (near2.count(n->id())) n->storage().store(rec("dict2", "C", exp, "c"), s.fake.net.now());
  }
  int readers = 0;
  for (std::size_t i = 0; i < s.nodes.size(); ++i) {
    auto& reader = *s.nodes[i];
    if (near.count(reader.id())) continue;
    for (const auto& id : nearest) reader.table().remove(id);
    auto got = s.run(reader.get("dict", 3));
    std::set<std::string> subkeys;
    for (auto& r : got.records) subkeys.insert(*r.subkey);
    EXPECT_EQ(subkeys, (std::set<std::string>{"a", "b"})) << "reader " << i;
    ++readers;
    if (near2.count(reader.id())) continue;
    for (const auto& id : nearest2) reader.table().remove(id);
    auto got2 = s.run(reader.get("dict2", 3));
    EXPECT_EQ(got2.records.size(), 1u) << "reader " << i;
  }
  EXPECT_EQ(readers, 15);
  s.fake.net.run(1s);
  // No read sent a cached copy anywhere. (Counted at the sender: the peers' storage may still
  // change, as peers that learn a contact anew hand it the records it should hold.)
  EXPECT_EQ(s.fake.metrics.counter("dht.cache_stores"), 0);
  for (auto& n : s.nodes) {
    if (near.count(n->id())) {
      EXPECT_EQ(n->storage().get(key, s.fake.net.now()).size(), 2u);
    }
    if (near2.count(n->id())) {
      EXPECT_EQ(n->storage().get(key2, s.fake.net.now()).size(), 1u);
    }
  }
}

TEST(DhtSwarm, ForgedAndUnsignedOwnerRecordsAreRejectedEverywhere) {
  std::vector<std::shared_ptr<Validator>> v{std::make_shared<SignatureValidator>()};
  DhtSwarm s(12, small_k(), v);
  s.join_all();
  const Identity alice = Identity::from_seed(1), mallory = Identity::from_seed(2);
  const TimePoint exp = s.fake.net.now() + 10min;
  Record good = rec("model" + alice.owner_tag(), "v1", exp);
  alice.sign(good);
  EXPECT_GE(s.run(s.nodes[1]->store(good)).replicas, 5u);
  Record forged = rec("model" + alice.owner_tag(), "v2", exp + 1min);
  mallory.sign(forged);
  EXPECT_EQ(s.run(s.nodes[4]->store(forged)).replicas, 0u);
  Record unsigned_rec = rec("model" + alice.owner_tag(), "v3", exp + 2min);
  EXPECT_EQ(s.run(s.nodes[4]->store(unsigned_rec)).replicas, 0u);
  EXPECT_GT(s.fake.metrics.counter("dht.store_rejected"), 0);
  auto got = s.run(s.nodes[9]->get("model" + alice.owner_tag()));
  ASSERT_TRUE(got.found);
  EXPECT_EQ(got.records[0].value, Bytes({'v', '1'}));
}

TEST(DhtSwarm, EdgeCaseKeys) {
  DhtSwarm s(10, small_k());
  s.join_all();
  const TimePoint exp = s.fake.net.now() + 10min;
  for (std::string key : {std::string(""), std::string(1, '\0'), std::string(256, 'k')}) {
    EXPECT_GT(s.run(s.nodes[1]->store(rec(key, "v", exp))).replicas, 0u) << key.size();
    EXPECT_TRUE(s.run(s.nodes[8]->get(key)).found) << key.size();
  }
  // Over the key limit: refused by every peer.
  EXPECT_EQ(s.run(s.nodes[1]->store(rec(std::string(257, 'k'), "v", exp))).replicas, 0u);
}

TEST(DhtSwarm, DetachedNodeFindsOnlyItself) {
  DhtSwarm s(1, small_k());
  std::vector<Endpoint> none;
  EXPECT_EQ(s.run(s.nodes[0]->bootstrap(none)), 0u);
  std::vector<DhtId> t{DhtId::of_key("x")};
  auto res = s.run(s.nodes[0]->lookup(t, false));
  EXPECT_TRUE(res[t[0]].nearest.empty());
  auto st = s.run(s.nodes[0]->store(rec("x", "v", s.fake.net.now() + 1min)));
  EXPECT_EQ(st.replicas, 1u);  // only itself
  EXPECT_TRUE(s.run(s.nodes[0]->get("x")).found);
}

TEST(DhtSwarm, DeadPeersAreBlacklistedAndLeaveTheTable) {
  DhtSwarm s(15, small_k());
  s.join_all();
  for (std::size_t i = 10; i < 15; ++i) s.fake[i].up = false;
  Rng rng(9);
  for (int t = 0; t < 5; ++t) {
    std::vector<DhtId> target{DhtId::random(rng)};
    auto res = s.run(s.nodes[0]->lookup(target, false));
    for (const auto& c : res[target[0]].nearest)
      for (std::size_t i = 10; i < 15; ++i) EXPECT_NE(c.id, s.nodes[i]->id());
  }
  EXPECT_GT(s.fake.metrics.counter("dht.peer_failures"), 0);
  for (std::size_t i = 10; i < 15; ++i) EXPECT_FALSE(s.nodes[0]->table().contains(s.nodes[i]->id()));
}

}  // namespace
}  // namespace apiary::dht
