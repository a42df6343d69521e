// Matchmaking through the DHT and Moshpit rounds, the whole stack on the fake network: DHT
// declarations, leader/follower group assembly, butterfly all-reduce, grid key rotation.
#include <gtest/gtest.h>

#include <cmath>
#include <set>

#include "core/averaging/allreduce.hpp"
#include "core/auth/handshake.hpp"
#include "core/averaging/matchmaking.hpp"
#include "core/averaging/state.hpp"
#include "core/dht/validate.hpp"
#include "tests/support/fake_runtime.hpp"

using namespace apiary;
using namespace apiary::averaging;
using namespace std::chrono_literals;

namespace {

struct AvgPeer {
  std::unique_ptr<auth::AuthenticatedRuntime> auth;
  std::unique_ptr<Rpc> rpc;
  std::unique_ptr<dht::DhtNode> dht;
  std::unique_ptr<Matchmaker> mm;
  std::unique_ptr<Averager> avg;
};

struct Stack {
  // With `authenticated`, every peer proves its key (core/auth) and signs its declarations.
  Stack(std::size_t n, MatchmakingConfig mcfg, bool authenticated = false) : fake(n, 10ms) {
    dht::DhtConfig dcfg;
    dcfg.k = 8;
    dcfg.refresh_period = Duration::zero();
    dcfg.replicate_period = Duration::zero();
    AllReduceConfig acfg;
    acfg.min_part = 1;
    for (std::size_t i = 0; i < n; ++i) {
      AvgPeer p;
      const auto id = dht::Identity::from_seed(i + 7);
      if (authenticated) p.auth = std::make_unique<auth::AuthenticatedRuntime>(fake[i].runtime(), id);
      Runtime& rt = authenticated ? p.auth->runtime : fake[i].runtime();
      p.rpc = std::make_unique<Rpc>(rt);
      p.dht = std::make_unique<dht::DhtNode>(rt, *p.rpc, id.id(), dcfg, std::vector<std::shared_ptr<dht::Validator>>{
                                                                            std::make_shared<dht::SignatureValidator>()});
      p.mm = std::make_unique<Matchmaker>(rt, *p.rpc, *p.dht, mcfg);
      if (authenticated) p.mm->set_identity(id);
      p.avg = std::make_unique<Averager>(rt, *p.rpc, acfg);
      peers.push_back(std::move(p));
    }
    for (std::size_t i = 0; i < n; ++i) {
      std::vector<Endpoint> seeds{fake[i == 0 ? 1 : 0].local()};
      auto t = peers[i].dht->bootstrap(seeds);
      t.start();
      fake.net.run(1min, [&] { return t.done(); });
    }
  }
  ~Stack() {
    for (auto& p : peers) p.rpc->shutdown();
    for (auto& p : peers) {  // in reverse order of construction
      p.avg.reset();
      p.mm.reset();
      p.dht.reset();
      p.rpc.reset();
      p.auth.reset();
    }
    peers.clear();
  }
  test::FakeSwarm fake;
  std::vector<AvgPeer> peers;
};

Task<void> moshpit_peer(Stack& s, std::size_t i, GridPosition pos, std::vector<float>* value,
                        std::vector<std::vector<float>>* history, std::size_t rounds, int* done) {
  const TensorSchema schema{{{3}}};
  for (std::size_t t = 0; t < rounds; ++t) {
    Member self{s.fake[i].local(), MemberKind::kFull, 1.0};
    Result<Group> g = co_await s.peers[i].mm->find_group(pos.key(t), schema, self);
    EXPECT_TRUE(g.ok()) << "peer " << i << " round " << t << ": " << (g.ok() ? "" : g.error().describe());
    if (!g.ok()) break;
    EXPECT_EQ(g->members.size(), 2u);
    const std::vector<float> local = *value;
    Result<AllReduceReport> r = co_await s.peers[i].avg->all_reduce(*g, local, 1.0);
    EXPECT_TRUE(r.ok());
    if (!r.ok()) break;
    *value = r->averaged;
    (*history)[t][i] = (*value)[0];
    pos.update(t, *g->index_of(s.fake[i].local()));
  }
  ++*done;
}

}  // namespace

TEST(Moshpit, GridKeysLeaveOutOneDimensionInTurn) {
  auto p = GridPosition::of_index(5, 2, 3);  // 5 = 101b
  EXPECT_EQ(p.coords, (std::vector<std::uint32_t>{1, 0, 1}));
  EXPECT_EQ(p.key(0), "t0.d0.*.0.1");
  EXPECT_EQ(p.key(1), "t1.d1.1.*.1");
  EXPECT_EQ(p.key(4), "t4.d1.1.*.1");
  p.update(0, 0);
  EXPECT_EQ(p.coords, (std::vector<std::uint32_t>{0, 0, 1}));
}

// A line of a 4x4 grid re-ranks while one of its peers sits the round out. Kept, that peer's
// stale cell is handed to a ranked peer; parked, it is outside the grid until its next ranking
// in that dimension, and only one dimension is ever parked.
TEST(Moshpit, SkippedPeerParksOutsideTheRanksHandedOutWithoutIt) {
  auto cells_after = [](bool park) {
    std::vector<GridPosition> peers;
    for (std::uint64_t x = 0; x < 4; ++x) peers.push_back(GridPosition::of_index(x * 4 + 1, 4, 2));  // (x, 1)
    std::size_t rank = 0;
    for (std::size_t i = 0; i < 4; ++i) {
      if (i == 1) {
        if (park) {
          EXPECT_TRUE(peers[i].park(0));
        }
        continue;
      }
      peers[i].update(0, rank++);  // the three others rank 0, 1, 2 in dimension 0
    }
    std::set<std::vector<std::uint32_t>> cells;
    for (auto& p : peers) cells.insert(p.coords);
    return std::make_pair(cells.size(), peers[1]);
  };
  EXPECT_EQ(cells_after(false).first, 3u) << "kept: the skipped peer shares (1, 1) with the peer ranked 1";
  auto [distinct, skipped] = cells_after(true);
  EXPECT_EQ(distinct, 4u);
  EXPECT_EQ(skipped.coords, (std::vector<std::uint32_t>{5, 1}));
  EXPECT_TRUE(skipped.parked());
  EXPECT_FALSE(skipped.park(2)) << "already parked in dimension 0";
  EXPECT_EQ(skipped.key(1), "t1.d1.5.*") << "meets only peers parked alike";
  EXPECT_TRUE(skipped.park(1));  // skips a round in dimension 1 too: dimension 0 comes back
  EXPECT_EQ(skipped.coords, (std::vector<std::uint32_t>{1, 5}));
  skipped.update(1, 3);  // ranked in dimension 1: back on the grid
  EXPECT_EQ(skipped.coords, (std::vector<std::uint32_t>{1, 3}));
  EXPECT_FALSE(skipped.parked());
}

// 8 peers in groups of 2 on a 2x2x2 grid: the mean is preserved every round and the spread is
// exactly zero after 3 rounds.
TEST(Moshpit, TwoByTwoByTwoGridIsExactAfterThreeRounds) {
  MatchmakingConfig mcfg;
  mcfg.target_group_size = 2;
  mcfg.min_group_size = 2;
  mcfg.budget = 5s;
  Stack s(8, mcfg);
  Rng rng(11);
  std::vector<std::vector<float>> values(8);
  double mean0 = 0;
  for (auto& v : values) {
    v = {static_cast<float>(rng.normal(0, 1)), 1.f, -2.f};
    mean0 += v[0] / 8.0;
  }
  std::vector<std::vector<float>> history(3, std::vector<float>(8));
  int done = 0;
  std::vector<Task<void>> tasks;
  for (std::size_t i = 0; i < 8; ++i) {
    tasks.push_back(moshpit_peer(s, i, GridPosition::of_index(i, 2, 3), &values[i], &history, 3, &done));
    tasks.back().start();
  }
  s.fake.net.run(10min, [&] { return done == 8; });
  ASSERT_EQ(done, 8);
  for (std::size_t t = 0; t < 3; ++t) {
    double mean = 0;
    for (auto x : history[t]) mean += x / 8.0;
    EXPECT_NEAR(mean, mean0, 1e-6) << "round " << t;
    double spread = 0;
    for (auto x : history[t]) spread = std::max(spread, static_cast<double>(std::abs(x - history[t][0])));
    if (t < 2) EXPECT_GT(spread, 0.0) << "round " << t << " should not be exact yet";
    else EXPECT_EQ(spread, 0.0) << "every peer holds the same value after d rounds";
  }
}

// Over authenticated peers a declaration counts only if its owner signed it, and only at the
// endpoint where that owner proves its key. Peer 4 is hostile: it writes an unsigned declaration,
// and a signed one of its own that names peer 0's endpoint, both ranked ahead of everyone (a
// leader of its choosing). Peers 0-3 ignore both and group among themselves.
TEST(Matchmaking, OverAuthenticatedPeersOnlyTheOwnersDeclarationsAreFollowed) {
  MatchmakingConfig mcfg;
  mcfg.target_group_size = 4;
  mcfg.min_group_size = 2;
  mcfg.budget = 4s;
  Stack s(5, mcfg, true);
  const TensorSchema schema{{{4}}};
  const std::string key = mcfg.prefix + ":k";
  const auto evil = dht::Identity::from_seed(4 + 7);
  const TimePoint deadline = s.fake.net.now() + 3s;  // earlier than the honest ones: ranked ahead
  auto lie = [&](std::optional<std::string> subkey, Endpoint at) {
    dht::Record r;
    r.key = key;
    r.subkey = std::move(subkey);
    r.value = Declaration{Member{at, MemberKind::kFull, 1e9}, schema.hash(), deadline}.encode();
    r.expiration = deadline;
    if (r.subkey && r.subkey->find("[owner:") == 0) evil.sign(r);
    auto t = s.peers[4].dht->store(std::move(r));
    t.start();
    s.fake.net.run(1min, [&] { return t.done(); });
    EXPECT_GT(t.result().replicas, 0u);
  };
  lie(s.fake[3].local().to_string(), s.fake[3].local());  // unsigned, under an endpoint subkey
  lie(evil.owner_tag(), s.fake[0].local());                // signed, but names peer 0's endpoint
  std::vector<Task<Result<Group>>> tasks;
  for (std::size_t i = 0; i < 4; ++i) {
    tasks.push_back(s.peers[i].mm->find_group("k", schema, Member{s.fake[i].local(), MemberKind::kFull, 1.0}));
    tasks.back().start();
  }
  s.fake.net.run(1min, [&] { return std::all_of(tasks.begin(), tasks.end(), [](auto& t) { return t.done(); }); });
  std::set<std::uint64_t> ids;
  for (std::size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(tasks[i].done());
    auto r = tasks[i].result();
    ASSERT_TRUE(r.ok()) << r.error().describe();
    for (const auto& m : r->members) EXPECT_NE(m.endpoint, s.fake[4].local());
    ids.insert(r->id);
  }
  EXPECT_LE(ids.size(), 2u);
  EXPECT_GT(s.fake.metrics.counter("avg.unowned_declarations"), 0);
  EXPECT_GT(s.fake.metrics.counter("avg.declarations_unbound"), 0);
  // A matchmaker over authenticated peers without an identity says so.
  Matchmaker blind(s.peers[1].auth->runtime, *s.peers[1].rpc, *s.peers[1].dht, mcfg);
  auto t = blind.find_group("other", schema, Member{s.fake[1].local(), MemberKind::kFull, 1.0});
  t.start();
  s.fake.net.run(1min, [&] { return t.done(); });
  ASSERT_FALSE(t.result().ok());
  EXPECT_EQ(t.result().error().code, ErrorCode::kInvalidArgument);
}

TEST(Matchmaking, GroupsFormUpToTheTargetSizeAndAgree) {
  MatchmakingConfig mcfg;
  mcfg.target_group_size = 3;
  mcfg.min_group_size = 2;
  mcfg.budget = 4s;
  Stack s(6, mcfg);
  const TensorSchema schema{{{4}}};
  std::vector<std::optional<Result<Group>>> got(6);
  std::vector<Task<Result<Group>>> tasks;
  for (std::size_t i = 0; i < 6; ++i) {
    tasks.push_back(s.peers[i].mm->find_group("k", schema, Member{s.fake[i].local(), MemberKind::kFull, 1.0}));
    tasks.back().start();
  }
  s.fake.net.run(1min, [&] { return std::all_of(tasks.begin(), tasks.end(), [](auto& t) { return t.done(); }); });
  std::map<std::uint64_t, std::vector<std::size_t>> groups, lists;
  for (std::size_t i = 0; i < 6; ++i) {
    ASSERT_TRUE(tasks[i].done());
    auto r = tasks[i].result();
    ASSERT_TRUE(r.ok()) << r.error().describe();
    EXPECT_TRUE(r->index_of(s.fake[i].local()).has_value());
    EXPECT_LE(r->members.size(), 3u);
    EXPECT_GE(r->members.size(), 2u);
    groups[r->id].push_back(i);
    std::vector<std::size_t> listed;
    for (const auto& m : r->members)
      for (std::size_t j = 0; j < 6; ++j)
        if (s.fake[j].local() == m.endpoint) listed.push_back(j);
    std::sort(listed.begin(), listed.end());
    lists[r->id] = listed;
  }
  for (auto& [id, who] : groups) EXPECT_EQ(who, lists[id]) << "members of group " << id;
  // Every member of a group got the same group: the members it lists are the peers holding its id.
  std::size_t covered = 0;
  for (auto& [id, who] : groups) covered += who.size();
  EXPECT_EQ(covered, 6u);
  EXPECT_LE(groups.size(), 3u);
}

TEST(Matchmaking, MismatchedSchemaIsRefusedWithAClearError) {
  MatchmakingConfig mcfg;
  mcfg.target_group_size = 2;
  mcfg.budget = 3s;
  Stack s(4, mcfg);
  auto a = s.peers[0].mm->find_group("k", TensorSchema{{{4}}}, Member{s.fake[0].local(), MemberKind::kFull, 1.0});
  a.start();
  s.fake.net.run(200ms);  // peer 0 declares first: it leads
  auto b = s.peers[1].mm->find_group("k", TensorSchema{{{5}}}, Member{s.fake[1].local(), MemberKind::kFull, 1.0});
  b.start();
  s.fake.net.run(1min, [&] { return a.done() && b.done(); });
  auto rb = b.result();
  ASSERT_FALSE(rb.ok());
  EXPECT_EQ(rb.error().code, ErrorCode::kInvalidArgument);
  EXPECT_NE(rb.error().message.find("schema mismatch"), std::string::npos) << rb.error().message;
  auto ra = a.result();
  ASSERT_FALSE(ra.ok());  // alone below the minimum group size
  EXPECT_EQ(ra.error().code, ErrorCode::kTimeout);
}

// A client member cannot accept connections: it never leads. Declared first (so it would be the
// natural leader), it still ends up following the full peer; two clients alone form no group.
TEST(Matchmaking, AClientNeverLeads) {
  MatchmakingConfig mcfg;
  mcfg.target_group_size = 2;
  mcfg.min_group_size = 2;
  mcfg.budget = 3s;
  Stack s(4, mcfg);
  const TensorSchema schema{{{4}}};
  auto c = s.peers[0].mm->find_group("k", schema, Member{s.fake[0].local(), MemberKind::kClient, 1.0});
  c.start();
  s.fake.net.run(300ms);  // the client declares first: its deadline is the earliest
  auto f = s.peers[1].mm->find_group("k", schema, Member{s.fake[1].local(), MemberKind::kFull, 1.0});
  f.start();
  s.fake.net.run(1min, [&] { return c.done() && f.done(); });
  auto rc = c.result(), rf = f.result();
  ASSERT_TRUE(rc.ok()) << rc.error().describe();
  ASSERT_TRUE(rf.ok()) << rf.error().describe();
  EXPECT_EQ(rc->id, rf->id);
  ASSERT_EQ(rf->members.size(), 2u);
  EXPECT_EQ(rf->members[0].endpoint, s.fake[1].local()) << "the full peer leads";
  EXPECT_EQ(rf->members[1].kind, MemberKind::kClient);

  auto c2 = s.peers[2].mm->find_group("k2", schema, Member{s.fake[2].local(), MemberKind::kClient, 1.0});
  auto c3 = s.peers[3].mm->find_group("k2", schema, Member{s.fake[3].local(), MemberKind::kClient, 1.0});
  c2.start();
  c3.start();
  s.fake.net.run(1min, [&] { return c2.done() && c3.done(); });
  auto r2 = c2.result(), r3 = c3.result();
  EXPECT_FALSE(r2.ok());
  EXPECT_FALSE(r3.ok());
}

TEST(StateDownload, NewcomerGetsTheFreshestStateThroughTheDht) {
  MatchmakingConfig mcfg;
  Stack s(5, mcfg);
  const TensorSchema schema{{{2, 3}, {}}};
  std::vector<std::unique_ptr<StateSharer>> sharers;
  for (std::size_t i = 0; i < 5; ++i) {
    StateSharer::Provider provider;
    if (i == 1 || i == 2)
      provider = [i, schema] {
        ModelState st;
        st.epoch = i == 2 ? 9 : 4;
        st.schema = schema;
        st.tensors = std::vector<float>(7, static_cast<float>(i));
        st.extra = {1, 2, static_cast<std::uint8_t>(i)};
        return std::optional<ModelState>(st);
      };
    sharers.push_back(std::make_unique<StateSharer>(s.fake[i].runtime(), *s.peers[i].rpc, s.peers[i].dht.get(), "run", provider));
  }
  for (std::size_t i : {1u, 2u}) {
    auto t = sharers[i]->declare(i == 2 ? 9 : 4, 10min);
    t.start();
    s.fake.net.run(1min, [&] { return t.done(); });
  }
  auto d = sharers[4]->download(schema, 5s);
  d.start();
  s.fake.net.run(1min, [&] { return d.done(); });
  auto st = d.result();
  ASSERT_TRUE(st.ok()) << st.error().describe();
  EXPECT_EQ(st->epoch, 9u);
  EXPECT_EQ(st->tensors, std::vector<float>(7, 2.f));
  EXPECT_EQ(st->extra, (Bytes{1, 2, 2}));
  // The freshest provider dies: the newcomer falls back to the next one.
  s.fake[2].up = false;
  auto d2 = sharers[3]->download(schema, 2s);
  d2.start();
  s.fake.net.run(1min, [&] { return d2.done(); });
  auto st2 = d2.result();
  ASSERT_TRUE(st2.ok()) << st2.error().describe();
  EXPECT_EQ(st2->epoch, 4u);
  // A wrong schema is refused with a clear error.
  s.fake[2].up = true;
  auto d3 = sharers[0]->download_from(s.fake[1].local(), TensorSchema{{{7}}}, 2s);
  d3.start();
  s.fake.net.run(1min, [&] { return d3.done(); });
  auto st3 = d3.result();
  ASSERT_FALSE(st3.ok());
  EXPECT_NE(st3.error().message.find("expected [7]"), std::string::npos) << st3.error().message;
}
