// DMoE expert declarations and the search for the best alive experts, on a fake-network DHT.
#include <gtest/gtest.h>

#include <algorithm>
#include <set>

#include "core/dht/validate.hpp"
#include "core/moe/experts.hpp"
#include "core/moe/quorum.hpp"
#include "tests/support/fake_dht.hpp"

using namespace apiary;
using namespace apiary::moe;
using namespace std::chrono_literals;

namespace {

// 8-contact buckets, no maintenance: enough for routing tests.
struct Dht : test::FakeDhtSwarm {
  explicit Dht(std::size_t n) : FakeDhtSwarm(n, config(), {}, 50) { join_all(false); }
  static dht::DhtConfig config() {
    dht::DhtConfig cfg;
    cfg.k = 8;
    cfg.refresh_period = Duration::zero();
    cfg.replicate_period = Duration::zero();
    return cfg;
  }
};

std::vector<FoundExpert> brute_force(const std::map<std::string, std::pair<ExpertUid, Endpoint>>& alive,
                                     const std::vector<std::vector<float>>& scores, std::size_t k) {
  std::vector<FoundExpert> all;
  for (const auto& [s, ue] : alive) {
    double score = 0;
    for (std::size_t d = 0; d < ue.first.coords.size(); ++d) score += scores[d][ue.first.coords[d]];
    all.push_back(FoundExpert{s, ue.second, score});
  }
  std::sort(all.begin(), all.end(), [](const FoundExpert& a, const FoundExpert& b) {
    return a.score != b.score ? a.score > b.score : a.uid < b.uid;
  });
  if (all.size() > k) all.resize(k);
  return all;
}

}  // namespace

TEST(ExpertUid, ParsesFormatsAndRejects) {
  auto u = ExpertUid::parse("ffn.3.17", {4, 32});
  ASSERT_TRUE(u);
  EXPECT_EQ(u->prefix, "ffn");
  EXPECT_EQ(u->coords, (std::vector<std::uint32_t>{3, 17}));
  EXPECT_EQ(u->str(), "ffn.3.17");
  EXPECT_EQ(u->prefix_at(0), "ffn.");
  EXPECT_EQ(u->prefix_at(1), "ffn.3.");
  std::string why;
  EXPECT_FALSE(ExpertUid::parse("ffn.4.1", {4, 32}, &why));
  EXPECT_EQ(why, "expert uid 'ffn.4.1': coordinate 4 outside dimension 0 of size 4");
  EXPECT_FALSE(ExpertUid::parse("ffn.x", {}, &why));
  EXPECT_FALSE(ExpertUid::parse("ffn.3.", {}, &why));
  EXPECT_FALSE(ExpertUid::parse(".3", {}, &why));
  EXPECT_FALSE(ExpertUid::parse("ffn", {}, &why));
  EXPECT_FALSE(ExpertUid::parse("ffn.1", {4, 4}, &why));
}

TEST(ExpertFinder, KnownScoresGiveAKnownRanking) {
  Dht d(6);
  std::vector<ExpertUid> uids{{"ffn", {0, 0}}, {"ffn", {1, 2}}, {"ffn", {2, 1}}};
  EXPECT_EQ(d.run(declare_experts(*d.nodes[1], uids, d.fake[1].local(), d.fake.net.now() + 1h)), 3u + 3u + 3u - 0u);
  ExpertFinder f(d.fake[4].runtime(), *d.nodes[4], "ffn", {3, 3});
  std::vector<std::vector<float>> scores{{0.1f, 0.5f, 0.9f}, {0.3f, 0.2f, 0.7f}};
  auto best = d.run(f.find_best(scores, 3));
  ASSERT_EQ(best.size(), 3u);
  EXPECT_EQ(best[0].uid, "ffn.1.2");  // 0.5 + 0.7
  EXPECT_EQ(best[1].uid, "ffn.2.1");  // 0.9 + 0.2
  EXPECT_EQ(best[2].uid, "ffn.0.0");  // 0.1 + 0.3
  EXPECT_EQ(best[0].server, d.fake[1].local());
  EXPECT_NEAR(best[0].score, 1.2, 1e-6);
  EXPECT_THROW(d.run(f.find_best({{1, 2, 3}}, 1)), std::invalid_argument);
}

// 1,000 experts on a 16x16x16 grid, declared by five servers, some of them expired: the search
// returns exactly the exhaustive top-k over the alive ones, reading far fewer prefixes.
// With `signed_by_servers`, every server signs its declarations (an entry per server under each
// coordinate it serves below): still each expert once, the same ranking.
void beam_search_equals_exhaustive(bool signed_by_servers) {
  Dht d(20);
  Rng rng(17);
  const std::vector<std::uint32_t> grid{16, 16, 16};
  std::set<std::vector<std::uint32_t>> cells;
  while (cells.size() < 1200)
    cells.insert({static_cast<std::uint32_t>(rng.below(16)), static_cast<std::uint32_t>(rng.below(16)),
                  static_cast<std::uint32_t>(rng.below(16))});
  std::map<std::string, std::pair<ExpertUid, Endpoint>> alive;
  std::vector<std::vector<ExpertUid>> per_server(6);
  std::size_t i = 0;
  for (const auto& c : cells) {
    ExpertUid u{"ffn", c};
    const std::size_t server = i < 1000 ? i % 5 : 5;  // server 5's 200 experts will expire
    per_server[server].push_back(u);
    if (server < 5) alive[u.str()] = {u, d.fake[server].local()};
    ++i;
  }
  for (std::size_t s = 0; s < 6; ++s) {
    const auto owner = dht::Identity::from_seed(500 + s);
    d.run(declare_experts(*d.nodes[s], per_server[s], d.fake[s].local(), d.fake.net.now() + (s < 5 ? 1h : 30s),
                          signed_by_servers ? &owner : nullptr));
  }
  d.fake.net.run(1min);  // server 5's declarations expire
  ExpertFinder f(d.fake[12].runtime(), *d.nodes[12], "ffn", grid);
  for (int trial = 0; trial < 6; ++trial) {
    std::vector<std::vector<float>> scores(3, std::vector<float>(16));
    for (auto& row : scores)
      for (auto& x : row) x = static_cast<float>(rng.normal(0, 1));
    for (std::size_t k : {1u, 4u, 16u}) {
      const auto before = f.traversals();
      auto got = d.run(f.find_best(scores, k));
      auto want = brute_force(alive, scores, k);
      ASSERT_EQ(got.size(), want.size());
      for (std::size_t j = 0; j < want.size(); ++j) {
        EXPECT_EQ(got[j].uid, want[j].uid) << "trial " << trial << " k " << k << " rank " << j;
        EXPECT_EQ(got[j].server, want[j].server);
        EXPECT_NEAR(got[j].score, want[j].score, 1e-5);
      }
      EXPECT_LT(f.traversals() - before, 40u) << "an exhaustive scan reads 1 + 16 + 256 prefixes";
    }
  }
}

TEST(ExpertFinder, BeamSearchEqualsExhaustiveTopKOverAliveExperts) { beam_search_equals_exhaustive(false); }
TEST(ExpertFinder, BeamSearchEqualsExhaustiveTopKOverSignedDeclarations) { beam_search_equals_exhaustive(true); }

// The mixture's wait rule: all at once; done when all finished, at the timeout, or once min(k_min,
// n) answered and the grace period has passed.
namespace {

struct QuorumCase {
  std::vector<int> reply_ms;  // per call: when it answers (negative: an error then; 0: never)
  std::size_t k_min;
  int grace_ms, timeout_ms;
};

std::pair<std::vector<std::optional<Result<int>>>, Duration> run_quorum(const QuorumCase& c) {
  test::FakeSwarm s(1);
  Runtime& rt = s[0].runtime();
  TaskScope scope;
  std::function<Task<Result<int>>(std::size_t)> call = [&rt, c](std::size_t j) -> Task<Result<int>> {
    const int ms = c.reply_ms[j];
    co_await sleep_on(rt.timers, std::chrono::milliseconds(ms == 0 ? 1000000 : std::abs(ms)));
    if (ms < 0) co_return Error{ErrorCode::kRemote, "expert failed"};
    co_return static_cast<int>(j);
  };
  std::function<bool(std::size_t, const Result<int>&)> accept = [](std::size_t, const Result<int>& r) { return r.ok(); };
  const TimePoint t0 = rt.now();
  auto t = moe::call_quorum<int>(rt, scope, c.reply_ms.size(), std::move(call), std::move(accept),
                                 moe::QuorumRule{c.k_min, std::chrono::milliseconds(c.grace_ms), std::chrono::milliseconds(c.timeout_ms)});
  t.start();
  s.net.run(1min, [&] { return t.done(); });
  EXPECT_TRUE(t.done());
  return {t.result(), rt.now() - t0};
}

}  // namespace

TEST(Quorum, WaitsForKMinThenTheGracePeriod) {
  // Answers at 10, 20, 30 ms and one never: k_min = 2 is met at 20 ms, the grace of 5 ms ends at 25.
  auto [r, took] = run_quorum({{10, 20, 30, 0}, 2, 5, 1000});
  EXPECT_EQ(took, 25ms);
  EXPECT_TRUE(r[0] && r[0]->ok());
  EXPECT_TRUE(r[1] && r[1]->ok());
  EXPECT_FALSE(r[2]);
  EXPECT_FALSE(r[3]);
}

TEST(Quorum, ErrorsDoNotCountAndTheTimeoutBounds) {
  // Two errors and one answer: k_min = 2 is never met; the call ends at the 50 ms timeout.
  auto [r, took] = run_quorum({{-5, -6, 10, 0}, 2, 5, 50});
  EXPECT_EQ(took, 50ms);
  EXPECT_TRUE(r[0] && !r[0]->ok());
  EXPECT_TRUE(r[2] && r[2]->ok());
  EXPECT_FALSE(r[3]);
}

TEST(Quorum, EndsAsSoonAsEveryCallFinished) {
  auto [r, took] = run_quorum({{3, 7, 4}, 1, 100, 1000});
  EXPECT_EQ(took, 7ms);
  for (const auto& x : r) EXPECT_TRUE(x && x->ok());
}
