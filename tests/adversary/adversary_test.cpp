// Hostile peers, tried in every world (ns-3, live sockets on loopback, the fake transport of the
// unit tests), one test source: each attack is made by a small attacker with its own Rpc that
// speaks the DHT protocol directly, and each test asserts what the defence achieves.
#include <fcntl.h>
#include <gtest/gtest.h>
#include <sys/resource.h>
#include <unistd.h>

#include <algorithm>
#include <filesystem>
#include <iostream>

#include "core/auth/handshake.hpp"
#include "core/dht/node.hpp"
#include "core/moe/experts.hpp"
#include "core/optim/schema.hpp"
#include "tests/conformance/worlds.hpp"

namespace apiary::test {
namespace {

using namespace std::chrono_literals;

dht::Record record(std::string key, std::string value, TimePoint expiration, std::optional<std::string> subkey = std::nullopt) {
  return dht::Record{std::move(key), std::move(subkey), Bytes(value.begin(), value.end()), expiration, {}};
}

template <class W>
class Adversary : public ::testing::Test {
 protected:
  static constexpr std::size_t kHonest = 3;
  void SetUp() override {
    for (std::size_t i = 0; i <= kHonest; ++i) {
      world.add_peer();
      rpc.push_back(std::make_unique<Rpc>(world.runtime(i)));
    }
    dht::DhtConfig cfg;
    cfg.k = 8;
    cfg.refresh_period = Duration::zero();
    cfg.replicate_period = Duration::zero();
    cfg.storage = limits;
    for (std::size_t i = 0; i < kHonest; ++i)
      nodes.push_back(std::make_unique<dht::DhtNode>(world.runtime(i), *rpc[i], dht::Identity::from_seed(100 + i).id(), cfg,
                                                     optim::standard_validators()));
    for (std::size_t i = 1; i < kHonest; ++i) EXPECT_GT(run(nodes[i]->bootstrap({world.endpoint(0)})), 0u);
    EXPECT_GT(run(nodes[0]->bootstrap({world.endpoint(1)})), 0u);
  }
  void TearDown() override {
    scope.destroy_all();
    nodes.clear();
    rpc.clear();
  }
  template <class T>
  T run(Task<T> t, Duration limit = 60s) {
    return run_in(world, scope, std::move(t), limit);
  }
  TimePoint now() { return world.runtime(0).now(); }
  Rpc& attacker() { return *rpc[kHonest]; }
  Endpoint attacker_endpoint() { return world.endpoint(kHonest); }
  // The attacker's store requests to `to`, `per_message` records each, `in_flight` at a time; the
  // outcomes the victim answered, by code.
  std::map<dht::StoreOutcome, std::size_t> flood(Endpoint to, std::vector<dht::Record> records, std::size_t per_message,
                                                 std::size_t in_flight) {
    std::map<dht::StoreOutcome, std::size_t> answered;
    for (std::size_t at = 0; at < records.size();) {
      std::vector<Task<Result<dht::StoreReply>>> calls;
      for (std::size_t m = 0; m < in_flight && at < records.size(); ++m) {
        dht::StoreRequest req{dht::Sender{dht::DhtId::of_key("mallory"), true, false}, {}};
        for (std::size_t j = 0; j < per_message && at < records.size(); ++j) req.records.push_back(std::move(records[at++]));
        calls.push_back(attacker().template call<dht::StoreReply>(to, std::move(req), 30s));
      }
      for (auto& r : run(when_all(std::move(calls)), 120s)) {
        if (!r.ok()) {
          ADD_FAILURE() << "the victim did not answer a store: " << r.error().message;
          continue;
        }
        for (auto o : r->outcomes) ++answered[static_cast<dht::StoreOutcome>(o)];
      }
    }
    return answered;
  }

  dht::StorageLimits limits{.max_records = 20000, .max_bytes = 8u << 20, .source_bytes = 2u << 20, .ip_bytes = 4u << 20};
  W world;
  std::vector<std::unique_ptr<Rpc>> rpc;
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
  TaskScope scope;
};

TYPED_TEST_SUITE(Adversary, Worlds, WorldNames);

// One client floods a peer: 100,000 tiny records that expire in 23 hours, then 400 of 64 KiB
// (31 MiB offered to a store capped at 8 MiB, 2 MiB per sender). Every honest record stays, the
// store stays within its caps, and an honest store after the flood is accepted.
TYPED_TEST(Adversary, AStorageFloodKeepsEveryHonestRecord) {
  for (int i = 0; i < 100; ++i) {
    auto r = this->run(this->nodes[1 + i % 2]->store(record("honest" + std::to_string(i), "v", this->now() + 10min)));
    EXPECT_EQ(r.replicas, this->kHonest) << i;
  }
  std::vector<dht::Record> tiny;
  for (int i = 0; i < 100000; ++i) tiny.push_back(record("m" + std::to_string(i), "x", this->now() + 23h));
  auto answered = this->flood(this->world.endpoint(0), std::move(tiny), 64, 16);
  std::vector<dht::Record> big;
  for (int i = 0; i < 400; ++i) big.push_back(record("big" + std::to_string(i), std::string(64 * 1024 - 64, 'x'), this->now() + 23h));
  for (auto& [o, n] : this->flood(this->world.endpoint(0), std::move(big), 1, 16)) answered[o] += n;
  // Each was taken and then the sender's own earliest-expiring record went (or, expiring no later
  // than all it held, this one at once: no room).
  EXPECT_EQ(answered[dht::StoreOutcome::kStored] + answered[dht::StoreOutcome::kNoRoom], 100400u);
  EXPECT_GT(answered[dht::StoreOutcome::kStored], 0u);

  dht::Storage& victim = this->nodes[0]->storage();
  for (int i = 0; i < 100; ++i) EXPECT_EQ(victim.get(dht::DhtId::of_key("honest" + std::to_string(i)), this->now()).size(), 1u) << i;
  EXPECT_LE(victim.bytes(), this->limits.max_bytes);
  EXPECT_LE(victim.bytes_of(this->attacker_endpoint()), this->limits.source_bytes);
  EXPECT_GT(victim.evicted(), 90000u);
  for (int i = 0; i < 100; ++i) {
    auto got = this->run(this->nodes[2]->get("honest" + std::to_string(i)));
    EXPECT_TRUE(got.found) << i;
  }
  auto late = this->run(this->nodes[1]->store(record("honest-late", "v", this->now() + 10min)));
  EXPECT_EQ(late.replicas, this->kHonest);
}

// An unowned plain value cannot replace an owner's signed dictionary, however late it expires,
// and nothing is kept past the longest lifetime: the owner's entry stays readable everywhere.
TYPED_TEST(Adversary, AnOwnersDictionaryCannotBeSquatted) {
  const auto owner = dht::Identity::from_seed(7);
  auto entry = record("profile", "owner's", this->now() + 10min, owner.owner_tag());
  owner.sign(entry);
  EXPECT_EQ(this->run(this->nodes[1]->store(entry)).replicas, this->kHonest);
  std::vector<dht::Record> squat{record("profile", "squat", this->now() + 23h), record("profile", "forever", TimePoint::max())};
  for (std::size_t i = 0; i < this->kHonest; ++i) {
    auto answered = this->flood(this->world.endpoint(i), squat, 2, 1);
    EXPECT_EQ(answered[dht::StoreOutcome::kShadows], 1u);
    EXPECT_EQ(answered[dht::StoreOutcome::kTooLate], 1u);
  }
  for (std::size_t i = 0; i < this->kHonest; ++i) {
    auto got = this->run(this->nodes[i]->get("profile", 3));
    ASSERT_EQ(got.records.size(), 1u);
    EXPECT_EQ(got.records[0].subkey, owner.owner_tag());
  }
  // The owner's next entry is taken (the squat left nothing in its way).
  auto next = record("profile", "owner's, later", this->now() + 20min, owner.owner_tag());
  owner.sign(next);
  EXPECT_EQ(this->run(this->nodes[2]->store(next)).replicas, this->kHonest);
}

// An attacker that answers for 20 made-up ids placed next to a key (pings that name them, find
// replies that list them, stores it says it took) neither inflates the replica count nor hides the
// key: a lookup believes only replies from the id it asked (one endpoint cannot answer as twenty
// ids), and a store counts a peer once however many ids it goes by.
TYPED_TEST(Adversary, MadeUpIdsNeitherInflateReplicasNorHideAKey) {
  const std::string key = "target";
  const dht::DhtId target = dht::DhtId::of_key(key);
  std::vector<dht::Contact> fakes;
  for (int i = 0; i < 20; ++i) {
    dht::DhtId id = target;
    id.b[dht::DhtId::kBytes - 1] ^= static_cast<std::uint8_t>(i + 1);  // as near the key as ids get
    fakes.push_back(dht::Contact{id, this->attacker_endpoint()});
  }
  Rpc& evil = this->attacker();
  evil.serve<dht::FindRequest, dht::FindReply>([fakes](const Endpoint&, dht::FindRequest req) -> Task<Result<dht::FindReply>> {
    dht::FindReply reply{fakes[0].id, {}};
    for (std::size_t i = 0; i < req.keys.size(); ++i) reply.entries.push_back({{}, fakes});
    co_return reply;
  });
  evil.serve<dht::StoreRequest, dht::StoreReply>([fakes](const Endpoint&, dht::StoreRequest req) -> Task<Result<dht::StoreReply>> {
    co_return dht::StoreReply{fakes[0].id, std::vector<std::uint8_t>(req.records.size(), 0)};
  });
  evil.serve<dht::PingRequest, dht::PingReply>([fakes](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
    co_return dht::PingReply{fakes[0].id};
  });
  for (std::size_t i = 0; i < this->kHonest; ++i)
    for (const auto& f : fakes) {
      auto pong = this->run(evil.call<dht::PingReply>(this->world.endpoint(i), dht::PingRequest{dht::Sender{f.id, false, false}}, 5s));
      EXPECT_TRUE(pong.ok());
    }
  auto stored = this->run(this->nodes[1]->store(record(key, "v", this->now() + 10min)));
  EXPECT_GE(stored.replicas, 1u);
  EXPECT_LE(stored.replicas, this->kHonest + 1);  // three honest peers and the attacker, at most
  for (std::size_t i = 0; i < this->kHonest; ++i) {
    auto got = this->run(this->nodes[i]->get(key));
    ASSERT_TRUE(got.found) << "the key is censored at peer " << i;
    EXPECT_EQ(got.records[0].value, Bytes{'v'});
  }
}

// Peers in world W behind authenticated transports (core/auth, the default of every runner): their
// stacks, torn down in order, and tasks run to completion in the world's time.
template <class W>
class AuthenticatedSwarm : public ::testing::Test {
 protected:
  void TearDown() override {
    scope.destroy_all();
    nodes.clear();
    for (auto& r : rpc) r->shutdown();
    rpc.clear();
    secured.clear();
  }
  template <class T>
  T run(Task<T> t, Duration limit = 60s) {
    return run_in(world, scope, std::move(t), limit);
  }
  TimePoint now() { return world.runtime(0).now(); }

  W world;
  std::vector<dht::Identity> ids;
  std::vector<std::unique_ptr<auth::AuthenticatedRuntime>> secured;
  std::vector<std::unique_ptr<Rpc>> rpc;
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
  TaskScope scope;
};
// The base's members, named in a fixture that derives from it (a dependent base hides them).
#define APIARY_SWARM_MEMBERS                           \
  using AuthenticatedSwarm<W>::world;                  \
  using AuthenticatedSwarm<W>::ids;                    \
  using AuthenticatedSwarm<W>::secured;                \
  using AuthenticatedSwarm<W>::rpc;                    \
  using AuthenticatedSwarm<W>::nodes;                  \
  using AuthenticatedSwarm<W>::run;                    \
  using AuthenticatedSwarm<W>::now

// The same swarm with authenticated peers: each peer's transport proves its key, and a DHT id
// must be the hash of the key its sender proved.
template <class W>
class AuthenticatedAdversary : public AuthenticatedSwarm<W> {
 protected:
  APIARY_SWARM_MEMBERS;
  static constexpr std::size_t kHonest = 3;
  void SetUp() override {
    for (std::size_t i = 0; i <= kHonest; ++i) {
      world.add_peer();
      ids.push_back(dht::Identity::from_seed(100 + i));
    }
  }
  // Every peer's stack; honest peers (and, with `attacker_knows`, the attacker) share `secret`.
  void start(const std::string& secret = "", bool attacker_knows = true) {
    for (std::size_t i = 0; i <= kHonest; ++i) {
      auth::AuthConfig c;
      if (i < kHonest || attacker_knows) c.swarm_secret = secret;
      secured.push_back(std::make_unique<auth::AuthenticatedRuntime>(world.runtime(i), ids[i], c));
      rpc.push_back(std::make_unique<Rpc>(secured[i]->runtime));
    }
    dht::DhtConfig cfg;
    cfg.k = 8;
    cfg.refresh_period = Duration::zero();
    cfg.replicate_period = Duration::zero();
    for (std::size_t i = 0; i < kHonest; ++i)
      nodes.push_back(std::make_unique<dht::DhtNode>(secured[i]->runtime, *rpc[i], ids[i].id(), cfg, optim::standard_validators()));
    for (std::size_t i = 1; i < kHonest; ++i) EXPECT_GT(run(nodes[i]->bootstrap({world.endpoint(0)})), 0u);
    EXPECT_GT(run(nodes[0]->bootstrap({world.endpoint(1)})), 0u);
  }
  Rpc& attacker() { return *rpc[kHonest]; }
  bool knows(std::size_t i, const dht::DhtId& id) {
    for (const auto& c : nodes[i]->table().nearest(id, 1000))
      if (c.id == id) return true;
    return false;
  }

};

TYPED_TEST_SUITE(AuthenticatedAdversary, Worlds, WorldNames);

// The attacker proves its own key, then names 20 made-up ids next to a key in its pings and
// answers as one of them: every such request is refused (dht.unbound_ids), no honest table takes
// a made-up id, a lookup takes no reply from an id its sender did not prove, and the key is found
// everywhere. The attacker, under its own id, is an ordinary peer.
TYPED_TEST(AuthenticatedAdversary, AnIdThatIsNotTheHashOfAProvenKeyIsRefused) {
  this->start();
  const std::string key = "target";
  const dht::DhtId target = dht::DhtId::of_key(key);
  std::vector<dht::DhtId> fakes;
  for (int i = 0; i < 20; ++i) {
    dht::DhtId id = target;
    id.b[dht::DhtId::kBytes - 1] ^= static_cast<std::uint8_t>(i + 1);
    fakes.push_back(id);
  }
  Rpc& evil = this->attacker();
  std::vector<dht::Contact> listed;
  for (const auto& f : fakes) listed.push_back(dht::Contact{f, this->world.endpoint(this->kHonest)});
  evil.serve<dht::FindRequest, dht::FindReply>([listed](const Endpoint&, dht::FindRequest req) -> Task<Result<dht::FindReply>> {
    dht::FindReply reply{listed[0].id, {}};
    for (std::size_t i = 0; i < req.keys.size(); ++i) reply.entries.push_back({{}, listed});
    co_return reply;
  });
  evil.serve<dht::PingRequest, dht::PingReply>([fakes](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
    co_return dht::PingReply{fakes[0]};
  });
  std::size_t refused = 0;
  for (std::size_t i = 0; i < this->kHonest; ++i)
    for (const auto& f : fakes) {
      auto pong = this->run(evil.call<dht::PingReply>(this->world.endpoint(i), dht::PingRequest{dht::Sender{f, false, false}}, 5s));
      refused += !pong.ok();
    }
  EXPECT_EQ(refused, 3u * 20u);
  EXPECT_EQ(this->world.metrics.counter("dht.unbound_ids"), 60);
  // Under its own id it is heard (a ping that names the key it proved).
  const dht::Sender itself{this->ids[this->kHonest].id(), false, false};
  auto own = this->run(evil.call<dht::PingReply>(this->world.endpoint(0), dht::PingRequest{itself}, 5s));
  EXPECT_TRUE(own.ok());
  for (std::size_t i = 0; i < this->kHonest; ++i)
    for (const auto& f : fakes) EXPECT_FALSE(this->knows(i, f)) << "peer " << i << " took a made-up id";
  auto stored = this->run(this->nodes[1]->store(record(key, "v", this->now() + 10min)));
  EXPECT_GE(stored.replicas, 2u);
  EXPECT_LE(stored.replicas, this->kHonest);  // the attacker answers as a made-up id: never a replica
  for (std::size_t i = 0; i < this->kHonest; ++i) {
    auto got = this->run(this->nodes[i]->get(key));
    ASSERT_TRUE(got.found) << "the key is censored at peer " << i;
    EXPECT_EQ(got.records[0].value, Bytes{'v'});
  }
}

// Expert declarations over authenticated peers. The attacker stores, under the dictionary where an
// honest server declared expert ffn.1, an unsigned entry for the same expert naming itself, and a
// signed entry of its own that names another honest peer's endpoint, both expiring later. The
// honest server's signed entry stays; a reader ignores the unsigned one and drops the signed one
// whose endpoint proves another key than its owner's (were it followed, no answer from there would
// count as the expert's).
TYPED_TEST(AuthenticatedAdversary, ExpertDeclarationsAreTheirOwnersOnly) {
  this->start();
  const auto attacker_at = this->world.endpoint(this->kHonest);
  const moe::ExpertUid uid{"ffn", {1}};
  EXPECT_EQ(this->run(moe::declare_experts(*this->nodes[1], {uid}, this->world.endpoint(1), this->now() + 10min, &this->ids[1])), 2u);

  Bytes mine, victims;
  wire::Writer(mine).u32(attacker_at.ip), wire::Writer(mine).u16(attacker_at.port);
  wire::Writer(victims).u32(this->world.endpoint(2).ip), wire::Writer(victims).u16(this->world.endpoint(2).port);
  dht::Record squat{"ffn.", std::string("1"), mine, this->now() + 20min, {}};
  dht::Record misbound{"ffn.", "1" + this->ids[this->kHonest].owner_tag(), victims, this->now() + 20min, {}};
  this->ids[this->kHonest].sign(misbound);
  dht::StoreRequest req{dht::Sender{this->ids[this->kHonest].id(), true, false}, {squat, misbound}};
  for (std::size_t i = 0; i < this->kHonest; ++i) {
    auto r = this->run(this->attacker().template call<dht::StoreReply>(this->world.endpoint(i), req, 5s));
    ASSERT_TRUE(r.ok()) << r.error().describe();
  }

  auto& reader_rt = this->secured[0]->runtime;
  moe::ExpertFinder finder(reader_rt, *this->nodes[0], "ffn", {2});
  // The reader knows peers 1 and 2 (they proved their keys when it joined): the misbound entry is
  // dropped, the unsigned one ignored, the honest server's taken.
  ASSERT_TRUE(this->secured[0]->transport.peer_key(this->world.endpoint(2)).has_value());
  auto found = this->run(finder.find_best({{0.0f, 1.0f}}, 4));
  EXPECT_GT(this->world.metrics.counter("moe.unowned_declarations"), 0);
  EXPECT_GT(this->world.metrics.counter("moe.declarations_unbound"), 0);
  ASSERT_EQ(found.size(), 1u);  // one server per expert
  EXPECT_EQ(found[0].uid, "ffn.1");
  EXPECT_EQ(found[0].server, this->world.endpoint(1));
  ASSERT_TRUE(found[0].owner.has_value());
  EXPECT_EQ(*found[0].owner, this->ids[1].public_key);
  EXPECT_TRUE(moe::answered_by_owner(reader_rt, found[0]));
  // Had it followed the attacker's entry, an answer from there would not count as the expert's.
  const moe::FoundExpert lie{"ffn.1", this->world.endpoint(2), 0, this->ids[this->kHonest].public_key};
  EXPECT_FALSE(moe::answered_by_owner(reader_rt, lie));
  EXPECT_EQ(this->world.metrics.counter("moe.unbound_experts"), 1);
}

// A swarm with a secret: a peer that does not know it is refused at the handshake. It reaches no
// honest peer's handlers, enters no routing table, and the honest peers store and find as before.
TYPED_TEST(AuthenticatedAdversary, AStrangerWithoutTheSwarmSecretGetsNothing) {
  this->start("our hive's secret", false);
  Rpc& stranger = this->attacker();
  const auto served = this->world.metrics.counter("dht.served.ping");
  for (std::size_t i = 0; i < this->kHonest; ++i) {
    auto pong = this->run(stranger.call<dht::PingReply>(this->world.endpoint(i),
                                                         dht::PingRequest{dht::Sender{this->ids[this->kHonest].id(), false, false}}, 5s));
    ASSERT_FALSE(pong.ok());
    EXPECT_EQ(pong.error().code, ErrorCode::kRejected) << pong.error().describe();
  }
  EXPECT_GE(this->world.metrics.counter("auth.refused.secret"), 3);
  EXPECT_EQ(this->world.metrics.counter("dht.served.ping"), served);  // no handler ran for it
  for (std::size_t i = 0; i < this->kHonest; ++i) EXPECT_FALSE(this->knows(i, this->ids[this->kHonest].id()));
  auto stored = this->run(this->nodes[2]->store(record("k", "v", this->now() + 10min)));
  EXPECT_EQ(stored.replicas, this->kHonest);
  for (std::size_t i = 0; i < this->kHonest; ++i) EXPECT_TRUE(this->run(this->nodes[i]->get("k")).found);
}

// Sybils aimed at one key. Under authentication an id is the hash of a key its peer proves, so the
// attacker grinds keys until their ids share their first 10 bits with the key's (about a thousand
// derivations each: far nearer the key than any of the 24 honest peers), and runs them all from
// one host, each on a port of its own. Each Sybil is an ordinary peer to the others: it answers
// pings as itself, introduces itself to honest peers, answers every lookup with the Sybils
// nearest the key, and says it stored whatever it is sent, keeping nothing. Without limits per
// address the key's nearest places are all Sybils and the key is censored; with them (the
// default: two peers of one address per bucket and per lookup) every honest get finds the key.
template <class W>
class SybilAttack : public AuthenticatedSwarm<W> {
 protected:
  APIARY_SWARM_MEMBERS;
  std::size_t honest = 24;
  static constexpr int kPrefix = 10;
  static constexpr const char* kKey = "the key under attack";

  // The attacker's identities, ground once for all worlds (2^10 derivations each).
  static const std::vector<dht::Identity>& sybil_identities(std::size_t n) {
    static std::vector<dht::Identity> ids;
    while (ids.size() < n)
      ids.push_back(dht::Identity::ground_near(dht::DhtId::of_key(kKey), kPrefix, (ids.size() + 1) << 40));
    return ids;
  }

  // `honest` peers (each on an address of its own) and `sybils` Sybils on one more; k = `k`.
  void start(std::size_t sybils, bool defended, std::size_t honest_peers = 24, std::size_t k = 8, std::size_t hosts = 1) {
    honest = honest_peers;
    if constexpr (std::is_same_v<W, LiveWorld>) world.own_addresses = true;
    for (std::size_t i = 0; i < honest; ++i) {
      world.add_peer();
      ids.push_back(dht::Identity::from_seed(100 + i));
    }
    // The Sybils, dealt out round robin over `hosts` machines of the attacker's.
    std::vector<std::size_t> machines;
    for (std::size_t h = 0; h < hosts; ++h) machines.push_back(world.add_peer());
    for (std::size_t s = hosts; s < sybils; ++s) world.add_peer_beside(machines[s % hosts]);  // Sybil s is peer honest + s
    const auto& evil = sybil_identities(sybils);
    ids.insert(ids.end(), evil.begin(), evil.begin() + static_cast<std::ptrdiff_t>(sybils));
    for (std::size_t i = 0; i < ids.size(); ++i) {
      secured.push_back(std::make_unique<auth::AuthenticatedRuntime>(world.runtime(i), ids[i], auth::AuthConfig{}));
      rpc.push_back(std::make_unique<Rpc>(secured[i]->runtime));
    }
    dht::DhtConfig cfg;
    cfg.k = k;
    cfg.refresh_period = Duration::zero();
    cfg.replicate_period = Duration::zero();
    if (!defended) cfg.bucket_ip_limit = cfg.lookup_ip_limit = 0;
    for (std::size_t i = 0; i < honest; ++i)
      nodes.push_back(std::make_unique<dht::DhtNode>(secured[i]->runtime, *rpc[i], ids[i].id(), cfg, optim::standard_validators()));
    for (std::size_t i = 1; i < honest; ++i) EXPECT_GT(run(nodes[i]->bootstrap({world.endpoint(0)})), 0u);
    EXPECT_GT(run(nodes[0]->bootstrap({world.endpoint(1)})), 0u);

    std::vector<dht::Contact> all;
    for (std::size_t s = 0; s < sybils; ++s) all.push_back(dht::Contact{ids[honest + s].id(), world.endpoint(honest + s)});
    for (std::size_t s = 0; s < sybils; ++s) {
      Rpc& r = *rpc[honest + s];
      const dht::DhtId me = ids[honest + s].id();
      r.serve<dht::PingRequest, dht::PingReply>([me](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
        co_return dht::PingReply{me};
      });
      r.serve<dht::FindRequest, dht::FindReply>([me, all](const Endpoint&, dht::FindRequest req) -> Task<Result<dht::FindReply>> {
        dht::FindReply reply{me, {}};
        for (const auto& key : req.keys) {
          auto nearest = all;
          std::sort(nearest.begin(), nearest.end(), [&](const auto& a, const auto& b) { return dht::closer(key, a.id, b.id); });
          nearest.resize(std::min<std::size_t>(nearest.size(), 20));
          reply.entries.push_back({{}, std::move(nearest)});
        }
        co_return reply;
      });
      r.serve<dht::StoreRequest, dht::StoreReply>([me](const Endpoint&, dht::StoreRequest req) -> Task<Result<dht::StoreReply>> {
        co_return dht::StoreReply{me, std::vector<std::uint8_t>(req.records.size(), static_cast<std::uint8_t>(dht::StoreOutcome::kStored))};
      });
    }
    // Each Sybil introduces itself to six honest peers (pings, as a joining peer does).
    std::vector<Task<Result<dht::PingReply>>> hellos;
    for (std::size_t s = 0; s < sybils; ++s)
      for (std::size_t j = 0; j < 6; ++j) {
        const dht::PingRequest ping{dht::Sender{ids[honest + s].id(), false, false}};
        hellos.push_back(rpc[honest + s]->template call<dht::PingReply>(world.endpoint((s + j) % honest), ping, 10s));
      }
    std::size_t heard = 0;
    for (auto& r : run(when_all(std::move(hellos)), 120s)) heard += r.ok();
    EXPECT_EQ(heard, sybils * 6);
  }
  // An honest peer stores the key; the first `getters` honest peers (all by default) then get it.
  // Returns how many found it.
  std::size_t found_by_honest_peers(std::size_t getters = SIZE_MAX) {
    auto stored = run(nodes[1]->store(record(kKey, "v", now() + 10min)));
    EXPECT_GT(stored.replicas, 0u);
    std::size_t found = 0;
    for (std::size_t i = 0; i < std::min(honest, getters); ++i) {
      auto got = run(nodes[i]->get(kKey));
      found += got.found && !got.records.empty() && got.records[0].value == Bytes{'v'};
    }
    return found;
  }

};

#undef APIARY_SWARM_MEMBERS

TYPED_TEST_SUITE(SybilAttack, Worlds, WorldNames);

TYPED_TEST(SybilAttack, WithoutLimitsPerAddressTwentySybilsCensorAKey) {
  this->start(20, false);
  const std::size_t found = this->found_by_honest_peers();
  std::cout << "[ sybil    ] 20 Sybils on one host, no limits per address: " << found << "/" << this->honest << " gets found the key\n";
  EXPECT_LE(found, this->honest / 4);  // the attack is real: most honest gets fail
}

TYPED_TEST(SybilAttack, TwentySybilsOnOneHostHideNothing) {
  this->start(20, true);
  const std::size_t found = this->found_by_honest_peers();
  std::cout << "[ sybil    ] 20 Sybils on one host: " << found << "/" << this->honest << " gets found the key\n";
  EXPECT_EQ(found, this->honest);
  EXPECT_GT(this->world.metrics.counter("dht.candidates_refused.address_limit"), 0);
}

TYPED_TEST(SybilAttack, TwoHundredSybilsOnOneHostHideNothing) {
  this->start(200, true);
  const std::size_t found = this->found_by_honest_peers();
  std::cout << "[ sybil    ] 200 Sybils on one host: " << found << "/" << this->honest << " gets found the key\n";
  EXPECT_EQ(found, this->honest);
}

// Where the limit ends: each address holds at most two of a key's k nearest places (k = 8 here),
// so Sybils on three hosts leave two places to honest peers, and on four they take them all.
TYPED_TEST(SybilAttack, TwoHundredSybilsOnThreeHostsHideNothing) {
  this->start(200, true, 24, 8, 3);
  const std::size_t found = this->found_by_honest_peers();
  std::cout << "[ sybil    ] 200 Sybils on 3 hosts: " << found << "/" << this->honest << " gets found the key\n";
  EXPECT_EQ(found, this->honest);
}

TYPED_TEST(SybilAttack, TwoHundredSybilsOnKOverTwoHostsCensorAKey) {
  this->start(200, true, 24, 8, 4);
  const std::size_t found = this->found_by_honest_peers();
  std::cout << "[ sybil    ] 200 Sybils on 4 hosts (k = 8): " << found << "/" << this->honest << " gets found the key\n";
  EXPECT_LE(found, this->honest / 4);
}

// The same at scale: 200 honest peers with the default k = 20, and 200 Sybils next to the key on
// one host. Every honest peer gets the key once: at least 99% of the 200 gets must find it (and,
// without the limits per address, at most a quarter do).
TYPED_TEST(SybilAttack, WithoutLimitsPerAddressTwoHundredSybilsCensorAKeyAmongTwoHundredPeers) {
  this->start(200, false, 200, 20);
  // 100 getters: each lookup here walks dozens of Sybils, and live every contact is a socket at
  // both ends in this one process (200 getters came near its descriptor limit).
  const std::size_t found = this->found_by_honest_peers(100);
  std::cout << "[ sybil    ] 200 Sybils on one host, 200 honest peers, k = 20, no limits per address: " << found
            << "/100 gets found the key\n";
  EXPECT_LE(found, 25u);
}

TYPED_TEST(SybilAttack, TwoHundredSybilsAmongTwoHundredPeersHideNothing) {
  this->start(200, true, 200, 20);
  const std::size_t found = this->found_by_honest_peers();
  std::cout << "[ sybil    ] 200 Sybils on one host, 200 honest peers, k = 20: " << found << "/" << this->honest
            << " gets found the key\n";
  EXPECT_GE(found * 100, this->honest * 99);
}

}  // namespace
}  // namespace apiary::test

namespace apiary::test {
namespace {

// The live transport's resource manager, against raw sockets on loopback.
class LiveLimits : public ::testing::Test {
 protected:
  void SetUp() override {
    real::LiveOptions o;
    o.max_connections = 64;
    o.max_connections_per_ip = 48;  // every socket here is from 127.0.0.1: this limit is met first
    o.handshake_timeout = 300ms;
    o.evict_idle_after = 100ms;
    o.max_unfinished_total = 8u << 20;
    o.limits.max_unfinished_bytes = 6u << 20;
    victim = std::make_unique<real::LiveRuntime>(io, o);
    victim->open();
    client = std::make_unique<real::LiveRuntime>(io, real::LiveOptions{});
    client->open();
    victim_env = std::make_unique<PeerEnv>(*victim, metrics, 0, Rng(1));
    client_env = std::make_unique<PeerEnv>(*client, metrics, 1, Rng(2));
    victim->set_observer(victim_env->observer);
    client->set_observer(client_env->observer);
    server = std::make_unique<Rpc>(victim_env->runtime);
    caller = std::make_unique<Rpc>(client_env->runtime);
    server->serve<dht::PingRequest, dht::PingReply>([](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
      co_return dht::PingReply{dht::DhtId::of_key("victim")};
    });
  }
  void TearDown() override {
    scope.destroy_all();
    caller.reset();
    server.reset();
    sockets.clear();
    client->close();
    victim->close();
  }
  // Runs the loop until done() or `limit` of wall time (a safety net; the loop never sleeps).
  bool run_until(const std::function<bool()>& done, Duration limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    io.restart();
    while (!done() && std::chrono::steady_clock::now() < end) io.run_one_for(std::chrono::milliseconds(5));
    return done();
  }
  // One honest call; true if it was answered.
  bool ping() {
    std::optional<bool> ok;
    scope.spawn([](Rpc& rpc, Endpoint to, std::optional<bool>& out) -> Task<void> {
      auto r = co_await rpc.call<dht::PingReply>(to, dht::PingRequest{dht::Sender{dht::DhtId::of_key("client"), true, false}}, 5s);
      out = r.ok();
    }(*caller, victim->local(), ok));
    run_until([&] { return ok.has_value(); }, 10s);
    return ok.value_or(false);
  }
  boost::asio::ip::tcp::socket& raw_connection() {
    sockets.push_back(std::make_unique<boost::asio::ip::tcp::socket>(io));
    const auto to = victim->local();
    sockets.back()->connect({boost::asio::ip::address_v4(to.ip), to.port});
    return *sockets.back();
  }

  boost::asio::io_context io;
  Metrics metrics;
  std::unique_ptr<real::LiveRuntime> victim, client;
  std::unique_ptr<PeerEnv> victim_env, client_env;
  std::unique_ptr<Rpc> server, caller;
  std::vector<std::unique_ptr<boost::asio::ip::tcp::socket>> sockets;
  TaskScope scope;
};

// 200 connections that never send a byte, against a node that takes 64: the idle ones make room
// for newcomers, those that never name themselves are closed after the handshake timeout, and an
// honest client is served all along.
TEST_F(LiveLimits, IdleConnectionsCannotLockClientsOut) {
  ASSERT_TRUE(ping());
  for (int i = 0; i < 200; ++i) raw_connection();
  run_until([&] { return false; }, 50ms);  // the victim accepts them
  EXPECT_LE(victim->connections(), 64u);
  int answered = 0;
  for (int i = 0; i < 20; ++i) answered += ping() ? 1 : 0;
  EXPECT_EQ(answered, 20);
  EXPECT_GT(metrics.counter("transport.evicted_connections") + metrics.counter("transport.rejected_connections.per_ip"), 0);
  // A client that connects only now, from the attacker's own address (one host, one NAT): the
  // address's idle connections make room for it.
  run_until([&] { return false; }, 150ms);  // the silent ones have been idle longer than evict_idle_after
  real::LiveRuntime late(io, real::LiveOptions{});
  late.open();
  PeerEnv late_env(late, metrics, 5, Rng(6));
  Rpc late_rpc(late_env.runtime);
  std::optional<bool> ok;
  scope.spawn([](Rpc& rpc, Endpoint to, std::optional<bool>& out) -> Task<void> {
    auto r = co_await rpc.call<dht::PingReply>(to, dht::PingRequest{dht::Sender{dht::DhtId::of_key("late"), true, false}}, 5s);
    out = r.ok();
  }(late_rpc, victim->local(), ok));
  ASSERT_TRUE(run_until([&] { return ok.has_value(); }, 10s));
  EXPECT_TRUE(*ok) << "a new client from the attacker's address was locked out";
  EXPECT_GT(metrics.counter("transport.evicted_connections"), 0);
  scope.destroy_all();
  late.close();
  EXPECT_TRUE(run_until([&] { return metrics.counter("transport.handshake_timeouts") > 0; }, 3s));
  EXPECT_TRUE(run_until([&] { return victim->connections() <= 2; }, 3s)) << victim->connections();
  EXPECT_TRUE(ping());
}

// A peer that begins many large messages and finishes none: its connection is closed once what
// it makes the node buffer passes the limit, and the node keeps serving.
TEST_F(LiveLimits, UnfinishedMessagesCannotHoldUnboundedMemory) {
  auto& s = raw_connection();
  boost::asio::write(s, boost::asio::buffer(wire::encode_hello(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 9})));
  const Bytes chunk(64 * 1024, 7);
  boost::system::error_code ec;
  for (std::uint32_t stream = 1; stream <= 32 && !ec; ++stream) {
    // A 1 GiB message whose header is 4 bytes; 64 KiB of it, then nothing more.
    Bytes frame = wire::encode_begin_prefix(stream, 4, 1ull << 30, static_cast<std::uint32_t>(chunk.size()));
    frame.insert(frame.end(), {0, 0, 0, 0});
    frame.insert(frame.end(), chunk.begin(), chunk.end());
    boost::asio::write(s, boost::asio::buffer(frame), ec);
    run_until([&] { return false; }, 5ms);
  }
  EXPECT_TRUE(run_until([&] { return metrics.counter("transport.bad_frames") + metrics.counter("transport.unfinished_shed") > 0; }, 3s));
  EXPECT_TRUE(ping());
}

// A HELLO that names another host's endpoint (an honest peer on 127.0.0.2, named from
// 127.0.0.1): the victim knows the sender by the address it really has, and what it then sends to
// the honest peer goes to the honest peer, not down the attacker's connection.
// On one host every peer has the same address, so a HELLO naming another local peer's port cannot
// be told from the peer's own. The transport never sends to a peer on its host back over a
// connection that peer opened, only over one dialled to its port: the claim gets the attacker
// nothing, and the victim's call is answered by the honest peer.
TEST_F(LiveLimits, AHelloForALocalPeersPortDeliversNothingToTheAttacker) {
  real::LiveRuntime honest(io, real::LiveOptions{});
  honest.open();
  PeerEnv honest_env(honest, metrics, 2, Rng(3));
  auth::AuthenticatedRuntime honest_auth(honest_env.runtime, dht::Identity::from_seed(2));
  Rpc honest_rpc(honest_auth.runtime);
  honest_rpc.serve<dht::PingRequest, dht::PingReply>([](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
    co_return dht::PingReply{dht::DhtId::of_key("honest")};
  });
  auth::AuthenticatedRuntime victim_auth(victim_env->runtime, dht::Identity::from_seed(1));
  Rpc victim_rpc(victim_auth.runtime);
  auto& s = raw_connection();
  boost::asio::write(s, boost::asio::buffer(wire::encode_hello(honest.local())));  // 127.0.0.1, the honest port
  run_until([] { return false; }, 50ms);
  std::optional<Result<dht::PingReply>> got;
  scope.spawn([](Rpc& rpc, Endpoint to, std::optional<Result<dht::PingReply>>& out) -> Task<void> {
    out = co_await rpc.call<dht::PingReply>(to, dht::PingRequest{dht::Sender{dht::DhtId::of_key("victim"), true, false}}, 5s);
  }(victim_rpc, honest.local(), got));
  ASSERT_TRUE(run_until([&] { return got.has_value(); }, 10s));
  ASSERT_TRUE(got->ok()) << got->error().describe();
  EXPECT_EQ((*got)->id, dht::DhtId::of_key("honest"));
  run_until([] { return false; }, 50ms);
  EXPECT_EQ(s.available(), 0u) << "the attacker received what was meant for the peer it named";
  scope.destroy_all();
  victim_rpc.shutdown();
  honest_rpc.shutdown();
  honest.close();
}

// A transport that keeps what it is asked to send (to forge a peer's message byte for byte).
class Keeper final : public Transport {
 public:
  Endpoint local() const override { return {}; }
  void set_handler(TransportHandler* h) override { handler_ = h; }
  TransportHandler* handler() const override { return handler_; }
  void send(const Endpoint&, Message m) override { sent.push_back(std::move(m)); }
  std::vector<Message> sent;

 private:
  TransportHandler* handler_ = nullptr;
};

// Two authenticated peers and a process that sits between them: it connects to each naming the
// other's endpoint, from the other's address (where it runs), and pipes bytes both ways, to be the
// path between them (to read what they send each other, and to speak for either). Each peer sends
// only over connections dialled to the other (on one host always; across hosts with
// LiveOptions::dial_back, tried here with the peers on 127.0.0.1 and 127.0.0.2), so the relay
// carries nothing; and a request it then sends under one peer's endpoint is held and dropped,
// since that peer proves itself on its own connection.
void relay_between_two_peers(bool across_hosts) {
  boost::asio::io_context io;
  Metrics metrics;
  real::LiveOptions at_a, at_b;
  at_a.dial_back = at_b.dial_back = across_hosts;
  if (across_hosts) at_b.listen = Endpoint{Endpoint::ipv4(127, 0, 0, 2), 0};
  real::LiveRuntime a(io, at_a), b(io, at_b);
  a.open();
  b.open();
  PeerEnv a_env(a, metrics, 0, Rng(1)), b_env(b, metrics, 1, Rng(2));
  a.set_observer(a_env.observer);
  b.set_observer(b_env.observer);
  const auto a_id = dht::Identity::from_seed(1), b_id = dht::Identity::from_seed(2);
  auth::AuthenticatedRuntime a_auth(a_env.runtime, a_id), b_auth(b_env.runtime, b_id);
  Rpc a_rpc(a_auth.runtime), b_rpc(b_auth.runtime);
  int a_served = 0, b_served = 0;
  a_rpc.serve<dht::PingRequest, dht::PingReply>([&](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
    ++a_served;
    co_return dht::PingReply{a_id.id()};
  });
  b_rpc.serve<dht::PingRequest, dht::PingReply>([&](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
    ++b_served;
    co_return dht::PingReply{b_id.id()};
  });
  auto run_until = [&](const std::function<bool()>& done, Duration limit) {
    const auto end = std::chrono::steady_clock::now() + limit;
    io.restart();
    while (!done() && std::chrono::steady_clock::now() < end) io.run_one_for(std::chrono::milliseconds(5));
    return done();
  };

  // The relay: to A naming B from B's address, to B naming A from A's (both believed); then bytes
  // both ways.
  namespace ip = boost::asio::ip;
  ip::tcp::socket to_a(io), to_b(io);
  to_a.open(ip::tcp::v4());
  to_a.bind({ip::address_v4(b.local().ip), 0});
  to_a.connect({ip::address_v4(a.local().ip), a.local().port});
  to_b.open(ip::tcp::v4());
  to_b.bind({ip::address_v4(a.local().ip), 0});
  to_b.connect({ip::address_v4(b.local().ip), b.local().port});
  boost::asio::write(to_a, boost::asio::buffer(wire::encode_hello(b.local())));
  boost::asio::write(to_b, boost::asio::buffer(wire::encode_hello(a.local())));
  std::size_t relayed = 0;
  std::function<void(ip::tcp::socket&, ip::tcp::socket&, std::shared_ptr<std::array<std::uint8_t, 4096>>)> pump =
      [&](ip::tcp::socket& from, ip::tcp::socket& to, std::shared_ptr<std::array<std::uint8_t, 4096>> buf) {
        from.async_read_some(boost::asio::buffer(*buf), [&, buf](boost::system::error_code ec, std::size_t n) {
          if (ec) return;
          relayed += n;
          boost::asio::write(to, boost::asio::buffer(buf->data(), n), ec);
          pump(from, to, buf);
        });
      };
  pump(to_a, to_b, std::make_shared<std::array<std::uint8_t, 4096>>());
  pump(to_b, to_a, std::make_shared<std::array<std::uint8_t, 4096>>());
  run_until([] { return false; }, 50ms);

  TaskScope scope;
  std::optional<Result<dht::PingReply>> a_got, b_got;
  auto call = [](Rpc& rpc, Endpoint to, std::optional<Result<dht::PingReply>>& out) -> Task<void> {
    out = co_await rpc.call<dht::PingReply>(to, dht::PingRequest{dht::Sender{dht::DhtId::of_key("x"), true, false}}, 5s);
  };
  scope.spawn(call(a_rpc, b.local(), a_got));
  scope.spawn(call(b_rpc, a.local(), b_got));
  ASSERT_TRUE(run_until([&] { return a_got && b_got; }, 10s));
  ASSERT_TRUE(a_got->ok() && b_got->ok());
  EXPECT_EQ((*a_got)->id, b_id.id());
  EXPECT_EQ((*b_got)->id, a_id.id());
  EXPECT_EQ(relayed, 0u) << "a peer sent over the relay";
  EXPECT_EQ(a_served, 1);
  EXPECT_EQ(b_served, 1);

  // The relay speaks for B: the ping request B's Rpc would send, framed, down its connection to A.
  Keeper keeper;
  Runtime forge_rt{b_env.runtime.clock, b_env.runtime.timers, keeper, b_env.runtime.rng, b_env.runtime.observer};
  Rpc forger(forge_rt);
  forger.notify(a.local(), dht::PingRequest{dht::Sender{b_id.id(), false, false}});
  ASSERT_EQ(keeper.sent.size(), 1u);
  const Bytes& header = keeper.sent[0].header;
  Bytes frame = wire::encode_begin_prefix(7, static_cast<std::uint32_t>(header.size()), 0, 0);
  frame.insert(frame.end(), header.begin(), header.end());
  for (int i = 0; i < 3; ++i) boost::asio::write(to_a, boost::asio::buffer(frame));
  EXPECT_TRUE(run_until([&] { return metrics.counter("auth.other_link_drops") >= 3; }, 5s));
  EXPECT_EQ(a_served, 1) << "A took the relay's request as B's";
  EXPECT_GE(metrics.counter("auth.rechecks"), 1);
  // A and B still talk.
  a_got.reset();
  scope.spawn(call(a_rpc, b.local(), a_got));
  ASSERT_TRUE(run_until([&] { return a_got.has_value(); }, 10s));
  EXPECT_TRUE(a_got->ok());
  EXPECT_EQ(relayed, 0u);
  scope.destroy_all();
  forger.shutdown();
  a_rpc.shutdown();
  b_rpc.shutdown();
  boost::system::error_code ignored;
  to_a.close(ignored);
  to_b.close(ignored);
  a.close();
  b.close();
}

TEST(LiveRelay, APeerOnTheSameHostCannotRelayBetweenTwoPeers) { relay_between_two_peers(false); }
TEST(LiveRelay, WithDialBackAProcessOnAPeersAddressCannotRelayEither) { relay_between_two_peers(true); }

TEST_F(LiveLimits, AHelloForAnotherHostsEndpointTakesNothingOver) {
  real::LiveOptions at2;
  at2.listen = Endpoint{Endpoint::ipv4(127, 0, 0, 2), 0};
  real::LiveRuntime honest(io, at2);
  honest.open();
  PeerEnv honest_env(honest, metrics, 2, Rng(3));
  Rpc honest_rpc(honest_env.runtime);
  honest_rpc.serve<dht::PingRequest, dht::PingReply>([](const Endpoint&, dht::PingRequest) -> Task<Result<dht::PingReply>> {
    co_return dht::PingReply{dht::DhtId::of_key("honest")};
  });
  auto& s = raw_connection();
  boost::asio::write(s, boost::asio::buffer(wire::encode_hello(honest.local())));
  EXPECT_TRUE(run_until([&] { return metrics.counter("transport.hello_address_mismatch") > 0; }, 2s));
  std::optional<Result<dht::PingReply>> got;
  scope.spawn([](Rpc& rpc, Endpoint to, std::optional<Result<dht::PingReply>>& out) -> Task<void> {
    out = co_await rpc.call<dht::PingReply>(to, dht::PingRequest{dht::Sender{dht::DhtId::of_key("victim"), true, false}}, 2s);
  }(*server, honest.local(), got));
  ASSERT_TRUE(run_until([&] { return got.has_value(); }, 5s));
  ASSERT_TRUE(got->ok()) << got->error().message;
  EXPECT_EQ((*got)->id, dht::DhtId::of_key("honest"));
  EXPECT_EQ(s.available(), 0u) << "the attacker received what was meant for the peer it named";
  scope.destroy_all();
  honest.close();
}

// A node out of file descriptors: every accept fails. It retries after a back-off that doubles
// (not at once, which would spin a core), and accepts again once descriptors are free.
TEST_F(LiveLimits, AcceptErrorsBackOffInsteadOfSpinning) {
  rlimit old{};
  ASSERT_EQ(getrlimit(RLIMIT_NOFILE, &old), 0);
  // Take every descriptor under a limit just above those in use, then free one: the attacker's
  // socket takes it, so the victim's accept finds none.
  rlimit tight = old;
  tight.rlim_cur = 0;
  for (const auto& e : std::filesystem::directory_iterator("/proc/self/fd"))
    tight.rlim_cur = std::max<rlim_t>(tight.rlim_cur, std::stoul(e.path().filename().string()) + 1);
  tight.rlim_cur += 1;
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &tight), 0);
  std::vector<int> fillers;
  for (int fd; (fd = ::open("/dev/null", O_RDONLY)) >= 0;) fillers.push_back(fd);
  ASSERT_FALSE(fillers.empty());
  ::close(fillers.back());
  fillers.pop_back();
  raw_connection();
  run_until([&] { return false; }, 300ms);
  const auto errors = metrics.counter("transport.accept_errors");
  for (int fd : fillers) ::close(fd);
  ASSERT_EQ(setrlimit(RLIMIT_NOFILE, &old), 0);
  EXPECT_GE(errors, 1);
  EXPECT_LE(errors, 12) << "retried at once instead of backing off";
  EXPECT_TRUE(run_until([&] { return victim->connections() >= 1; }, 3s)) << "never accepted again";
  EXPECT_TRUE(ping());
}

}  // namespace
}  // namespace apiary::test
