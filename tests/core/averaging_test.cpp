// Butterfly all-reduce on the recording fake network: exact weighted means for every mix of
// member kinds, fault injection with bounded completion, partitioning and load balancing.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>
#include <numeric>
#include <set>

#include "core/averaging/allreduce.hpp"
#include "tests/support/fake_runtime.hpp"

using namespace apiary;
using namespace apiary::averaging;
using namespace std::chrono_literals;

namespace {

TensorSchema test_schema() {
  // A matrix, a scalar, an empty tensor, a vector, a 3-d block: 15 + 1 + 0 + 7 + 24 = 47 values.
  return TensorSchema{{{3, 5}, {}, {0}, {7}, {2, 3, 4}}};
}

std::vector<float> random_values(Rng& rng, std::size_t n) {
  std::vector<float> v(n);
  for (auto& x : v) x = static_cast<float>(rng.normal(0, 1));
  return v;
}

struct Swarm {
  explicit Swarm(std::size_t n, AllReduceConfig cfg) : fake(n, 5ms) {
    for (std::size_t i = 0; i < n; ++i) {
      rpcs.push_back(std::make_unique<Rpc>(fake[i].runtime()));
      avgs.push_back(std::make_unique<Averager>(fake[i].runtime(), *rpcs.back(), cfg));
    }
  }
  ~Swarm() {
    for (auto& r : rpcs) r->shutdown();
    avgs.clear();
    rpcs.clear();
  }
  test::FakeSwarm fake;
  std::vector<std::unique_ptr<Rpc>> rpcs;
  std::vector<std::unique_ptr<Averager>> avgs;
};

Group make_group(Swarm& s, const std::vector<MemberKind>& kinds, TensorSchema schema, std::uint64_t id = 42) {
  Group g;
  g.id = id;
  g.schema = std::move(schema);
  for (std::size_t i = 0; i < kinds.size(); ++i)
    g.members.push_back(Member{s.fake[i].local(), kinds[i], 1.0 + static_cast<double>(i)});
  return g;
}

// Runs the round on the listed peers; returns each one's result (nullopt if it did not finish).
std::vector<std::optional<Result<AllReduceReport>>> run_round(Swarm& s, const Group& g,
                                                               const std::vector<std::vector<float>>& data,
                                                               const std::vector<double>& weights,
                                                               Duration limit = 10min,
                                                               std::size_t wait_for = SIZE_MAX) {
  std::vector<Task<Result<AllReduceReport>>> tasks;
  for (std::size_t i = 0; i < g.members.size(); ++i) {
    tasks.push_back(s.avgs[i]->all_reduce(g, data[i], weights[i]));
    tasks.back().start();
  }
  s.fake.net.run(limit, [&] {
    for (std::size_t i = 0; i < std::min(wait_for, tasks.size()); ++i)
      if (s.fake[i].up && !tasks[i].done()) return false;
    return true;
  });
  std::vector<std::optional<Result<AllReduceReport>>> out;
  for (auto& t : tasks) {
    if (t.done())
      out.emplace_back(t.result());
    else
      out.emplace_back(std::nullopt);
  }
  return out;
}

std::vector<float> weighted_mean(const std::vector<std::vector<float>>& data, const std::vector<double>& w,
                                 const std::set<std::size_t>& who, std::size_t begin, std::size_t end) {
  std::vector<float> out;
  for (std::size_t k = begin; k < end; ++k) {
    double s = 0, ws = 0;
    for (auto i : who) {
      s += w[i] * data[i][k];
      ws += w[i];
    }
    out.push_back(static_cast<float>(s / ws));
  }
  return out;
}

}  // namespace

TEST(Partition, RoundTripsEveryShapeIncludingEmptyAndScalar) {
  const std::vector<TensorSchema> schemas = {
      TensorSchema{}, TensorSchema{{{}}}, TensorSchema{{{0}}}, TensorSchema{{{3, 0, 2}, {}}},
      TensorSchema{{{1}, {2, 3}, {5, 1, 4}, {}, {0, 7}}}, test_schema()};
  Rng rng(1);
  for (const auto& schema : schemas) {
    std::vector<Tensor> tensors;
    for (std::size_t i = 0; i < schema.shapes.size(); ++i)
      tensors.push_back(Tensor{schema.shapes[i], random_values(rng, schema.numel(i))});
    auto flat = flatten(schema, tensors);
    ASSERT_TRUE(flat.ok()) << flat.error().describe();
    EXPECT_EQ(flat->size(), schema.total());
    auto back = unflatten(schema, *flat);
    ASSERT_TRUE(back.ok());
    ASSERT_EQ(back->size(), tensors.size());
    for (std::size_t i = 0; i < tensors.size(); ++i) {
      EXPECT_EQ((*back)[i].shape, tensors[i].shape);
      EXPECT_EQ((*back)[i].data, tensors[i].data);
    }
    // Parts and pieces cover the vector exactly, in order, never crossing a tensor.
    for (std::uint64_t piece : {1u, 2u, 5u, 1000u}) {
      std::vector<double> bw{1, 2, 3};
      std::vector<MemberKind> kinds(3, MemberKind::kFull);
      auto sizes = balance_parts(schema.total(), bw, kinds, 0);
      ASSERT_TRUE(sizes.ok());
      std::uint64_t at = 0;
      const auto ts = schema.sizes();
      for (auto sz : *sizes) {
        for (const auto& p : make_pieces(ts, at, at + sz, piece)) {
          EXPECT_EQ(p.begin, at);
          EXPECT_GT(p.size(), 0u);
          EXPECT_LE(p.size(), piece);
          std::uint64_t t0 = 0;
          for (std::uint32_t t = 0; t < p.tensor; ++t) t0 += ts[t];
          EXPECT_GE(p.begin, t0);
          EXPECT_LE(p.end, t0 + ts[p.tensor]);
          at = p.end;
        }
      }
      EXPECT_EQ(at, schema.total());
    }
  }
}

TEST(Partition, WrongShapesAreClearErrors) {
  auto schema = test_schema();
  std::vector<Tensor> tensors;
  for (std::size_t i = 0; i < schema.shapes.size(); ++i)
    tensors.push_back(Tensor{schema.shapes[i], std::vector<float>(schema.numel(i), 1.f)});
  tensors[0].shape = {5, 3};
  auto r = flatten(schema, tensors);
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("tensor 0 has shape [5x3]"), std::string::npos) << r.error().message;
  tensors.pop_back();
  EXPECT_FALSE(flatten(schema, tensors).ok());
  std::vector<float> short_flat(10);
  EXPECT_FALSE(unflatten(schema, short_flat).ok());
}

TEST(LoadBalancing, ProportionalToBandwidthWithMinimumPart) {
  const auto kProp = PartRule::kProportional;
  std::vector<double> bw{100, 300, 600, 50};
  std::vector<MemberKind> kinds{MemberKind::kFull, MemberKind::kFull, MemberKind::kAux, MemberKind::kClient};
  auto s = balance_parts(1000, bw, kinds, 0, kProp);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, (std::vector<std::uint64_t>{100, 300, 600, 0}));
  // The slowest reducer's share (1/10 of 1000) is below min_part=150: it gets none.
  s = balance_parts(1000, bw, kinds, 150, kProp);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ((*s)[0], 0u);
  EXPECT_EQ((*s)[1] + (*s)[2], 1000u);
  EXPECT_EQ((*s)[1], 333u);
  // Tiny tensors go to one reducer.
  s = balance_parts(5, bw, kinds, 1000, kProp);
  ASSERT_TRUE(s.ok());
  EXPECT_EQ(*s, (std::vector<std::uint64_t>{0, 0, 5, 0}));
  // Sizes always add up, with odd remainders.
  std::vector<double> odd{1, 1, 1};
  std::vector<MemberKind> full(3, MemberKind::kFull);
  s = balance_parts(10, odd, full, 0, kProp);
  EXPECT_EQ((*s)[0] + (*s)[1] + (*s)[2], 10u);
  std::vector<MemberKind> clients(3, MemberKind::kClient);
  EXPECT_FALSE(balance_parts(10, odd, clients, 0).ok());
}

namespace {

// The all-reduce's time by the min-max rule's model: member i moves (total - p_i) + (n - 1) p_i
// values at bandwidth b_i (a member with no bandwidth counts as 1e-9, as in hivemind's test).
double minmax_cost(std::uint64_t total, const std::vector<std::uint64_t>& parts, const std::vector<double>& bw) {
  double worst = 0;
  const double n = static_cast<double>(parts.size());
  for (std::size_t i = 0; i < parts.size(); ++i)
    worst = std::max(worst, (static_cast<double>(total - parts[i]) + (n - 1) * static_cast<double>(parts[i])) / std::max(bw[i], 1e-9));
  return worst;
}

std::vector<std::uint64_t> minmax(std::uint64_t total, const std::vector<double>& bw, std::uint64_t min_part = 0) {
  std::vector<MemberKind> kinds(bw.size(), MemberKind::kFull);
  auto s = balance_parts(total, bw, kinds, min_part);
  EXPECT_TRUE(s.ok());
  return s.ok() ? *s : std::vector<std::uint64_t>{};
}

}  // namespace

// hivemind's own load-balancing cases (tests/test_averaging.py): the slowest member finishes no
// later than with the reference partition, and the exact partitions where min_size applies.
TEST(LoadBalancing, MinMaxPassesHivemindsCases) {
  auto no_worse = [](std::uint64_t total, std::vector<double> bw, std::vector<std::uint64_t> ref) {
    const auto parts = minmax(total, bw);
    EXPECT_LE(minmax_cost(total, parts, bw), minmax_cost(total, ref, bw) * (1 + 1e-12)) << total;
  };
  no_worse(60, {0.25, 0.25, 0.25, 0.25}, {15, 15, 15, 15});
  no_worse(1024, {0.3, 0.5, 0.9}, {0, 255, 769});
  no_worse(60, {0.44, 0.33, 0.22}, {42, 18, 0});
  no_worse(60, {0.55, 0.44, 0.40}, {35, 16, 9});
  no_worse(1024 * 1024, {0.3, 0.5, 0.9, 0.6}, {0, 169327, 602629, 276620});
  no_worse(1024 * 1024, {0.0, 0.5, 0.0, 0.6}, {0, 428963, 0, 619613});
  EXPECT_EQ(minmax(60, {0.25, 0.25, 0.25, 0.25}), (std::vector<std::uint64_t>{15, 15, 15, 15}));
  EXPECT_EQ(minmax(60, {0.55, 0.44, 0.40}), (std::vector<std::uint64_t>{35, 16, 9}));
  EXPECT_EQ(minmax(60, {0.55, 0.44, 0.40}, 10), (std::vector<std::uint64_t>{41, 19, 0}));
  EXPECT_EQ(minmax(60, {0.32, 0.55, 0.44}, 10), (std::vector<std::uint64_t>{0, 40, 20}));
  EXPECT_EQ(minmax(2, {0.55, 0.20, 0.44}, 10), (std::vector<std::uint64_t>{1, 0, 1}));
  EXPECT_EQ(minmax(1, {0.55, 0.20, 0.44}, 10), (std::vector<std::uint64_t>{1, 0, 0}));
  EXPECT_EQ(minmax(100, {1, 1}), (std::vector<std::uint64_t>{50, 50}));
  EXPECT_EQ(minmax(100, {1, 1, 1, 1, 1}), (std::vector<std::uint64_t>{20, 20, 20, 20, 20}));
  EXPECT_EQ(minmax(100, {0, 0, 0, 1, 1}), (std::vector<std::uint64_t>{0, 0, 0, 50, 50}));
  std::vector<MemberKind> kinds(3, MemberKind::kFull);
  std::vector<double> none{0, 0, 0};
  EXPECT_FALSE(balance_parts(100, none, kinds, 0).ok());
  // Random groups: sizes add up, never negative, and no worse than proportional parts.
  Rng rng(7);
  for (int trial = 0; trial < 200; ++trial) {
    const std::uint64_t total = 1 + rng.below(std::uint64_t{1} << 30);
    const std::size_t n = 1 + rng.below(255);
    const double scale = 1e-9 + rng.uniform01() * 1e5;
    std::vector<double> bw(n);
    for (auto& b : bw) b = rng.uniform01() * scale + 1e-6;
    const std::uint64_t min_part = rng.below(2) ? 0 : rng.below(total / 10 + 1);
    const auto parts = minmax(total, bw, min_part);
    ASSERT_EQ(parts.size(), n);
    EXPECT_EQ(std::accumulate(parts.begin(), parts.end(), std::uint64_t{0}), total);
    if (min_part == 0) {
      std::vector<MemberKind> full(n, MemberKind::kFull);
      const auto prop = *balance_parts(total, bw, full, 0, PartRule::kProportional);
      // (one element more or less for a member changes its time by at most n / b_min)
      const double slack = 2.0 * static_cast<double>(n) / *std::min_element(bw.begin(), bw.end());
      EXPECT_LE(minmax_cost(total, parts, bw), minmax_cost(total, prop, bw) * (1 + 1e-9) + slack) << trial;
    }
  }
}

// Every mix of full, client and auxiliary members among 4 peers (with at least one sender and one
// reducer), weighted and unweighted: every sender gets the exact weighted mean.
TEST(AllReduce, EveryMixOfMemberKindsGetsTheExactWeightedMean) {
  const auto schema = test_schema();
  int mixes = 0;
  for (int code = 0; code < 81; ++code) {
    std::vector<MemberKind> kinds;
    for (int i = 0, c = code; i < 4; ++i, c /= 3) kinds.push_back(static_cast<MemberKind>(c % 3));
    const bool any_sender = std::any_of(kinds.begin(), kinds.end(), [](auto k) { return sends(k); });
    const bool any_reducer = std::any_of(kinds.begin(), kinds.end(), [](auto k) { return reduces(k); });
    if (!any_sender || !any_reducer) continue;
    for (bool weighted : {false, true}) {
      ++mixes;
      AllReduceConfig cfg;
      cfg.piece_elements = 4;
      cfg.window = 2;
      cfg.min_part = 1;
      Swarm s(4, cfg);
      Rng rng(static_cast<std::uint64_t>(code * 2 + weighted));
      std::vector<std::vector<float>> data(4);
      std::vector<double> w(4, 1.0);
      std::set<std::size_t> senders;
      for (std::size_t i = 0; i < 4; ++i) {
        if (sends(kinds[i])) {
          data[i] = random_values(rng, schema.total());
          senders.insert(i);
        }
        if (weighted) w[i] = 1.0 + static_cast<double>(rng.below(100));
      }
      auto g = make_group(s, kinds, schema);
      auto res = run_round(s, g, data, w);
      const auto want = weighted_mean(data, w, senders, 0, schema.total());
      for (std::size_t i = 0; i < 4; ++i) {
        ASSERT_TRUE(res[i].has_value()) << "mix " << code << " peer " << i;
        ASSERT_TRUE(res[i]->ok()) << res[i]->error().describe();
        auto& rep = res[i]->value();
        EXPECT_TRUE(rep.failed_reducers.empty());
        EXPECT_TRUE(rep.excluded_senders.empty());
        if (!sends(kinds[i])) {
          EXPECT_TRUE(rep.averaged.empty());
          continue;
        }
        ASSERT_EQ(rep.averaged.size(), want.size());
        for (std::size_t k = 0; k < want.size(); ++k)
          ASSERT_NEAR(rep.averaged[k], want[k], 1e-6) << "mix " << code << " peer " << i << " value " << k;
        EXPECT_EQ(rep.pieces_kept, 0u);
      }
      for (auto& a : s.avgs) EXPECT_EQ(a->rounds(), 0u) << "round state lingers";
    }
  }
  EXPECT_EQ(mixes, 2 * (81 - 2));  // all-client has no reducer, all-aux no sender
}

// A sender keeps `window` pieces outstanding to each remote reducer unless max_in_flight_bytes
// over all of them is less, and never fewer than two; the capped rounds still give the exact mean.
TEST(AllReduce, MaxInFlightCapsThePiecesASenderKeepsOutstanding) {
  const auto schema = TensorSchema{{{4000}}};  // 5 parts of 800 values, 8 pieces of 100 each
  struct Case {
    std::uint64_t cap;
    compression::Codec codec;
    std::size_t lanes;
  };
  // 4 remote reducers; a float32 piece is 400 bytes, a float16 one 200.
  for (const Case c : {Case{0, compression::Codec::kFloat32, 8}, Case{4800, compression::Codec::kFloat32, 3},
                       Case{4799, compression::Codec::kFloat32, 2}, Case{1, compression::Codec::kFloat32, 2},
                       Case{4800, compression::Codec::kFloat16, 6}, Case{1 << 20, compression::Codec::kFloat32, 8}}) {
    SCOPED_TRACE("cap " + std::to_string(c.cap) + " " + compression::to_string(c.codec));
    AllReduceConfig cfg;
    cfg.piece_elements = 100;
    cfg.window = 8;
    cfg.min_part = 1;
    cfg.max_in_flight_bytes = c.cap;
    cfg.codec.codec = c.codec;
    Swarm s(5, cfg);
    auto g = make_group(s, std::vector<MemberKind>(5, MemberKind::kFull), schema);
    for (auto& m : g.members) m.bandwidth = 1.0;  // equal parts
    auto layout = make_layout(g, cfg);
    ASSERT_TRUE(layout.ok());
    ASSERT_EQ(layout->pieces[1].size(), 8u);
    EXPECT_EQ(lanes_per_reducer(g, *layout, cfg, 0), c.lanes);
    Rng rng(7);
    std::vector<std::vector<float>> data;
    for (int i = 0; i < 5; ++i) data.push_back(random_values(rng, schema.total()));
    // Before any reply can come back (the fake network delivers after 5 ms), peer 0 has sent the
    // pieces its lanes may keep outstanding: `lanes` to each of the 4 other reducers.
    auto first = s.avgs[0]->all_reduce(g, data[0], 1.0);
    first.start();
    std::size_t pieces_sent = 0;
    for (const auto& [to, m] : s.fake[0].sent) pieces_sent += m.payload.size() > 0;
    EXPECT_EQ(pieces_sent, 4 * c.lanes);
    std::vector<Task<Result<AllReduceReport>>> rest;
    for (std::size_t i = 1; i < 5; ++i) {
      rest.push_back(s.avgs[i]->all_reduce(g, data[i], 1.0));
      rest.back().start();
    }
    s.fake.net.run(1min, [&] {
      return first.done() && std::all_of(rest.begin(), rest.end(), [](auto& t) { return t.done(); });
    });
    const auto want = weighted_mean(data, std::vector<double>(5, 1.0), {0, 1, 2, 3, 4}, 0, schema.total());
    ASSERT_TRUE(first.done());
    auto r = first.result();
    ASSERT_TRUE(r.ok()) << r.error().describe();
    EXPECT_EQ(r->pieces_kept, 0u);
    const double tol = c.codec == compression::Codec::kFloat32 ? 1e-6 : 5e-3;
    for (std::size_t k = 0; k < want.size(); ++k) ASSERT_NEAR(r->averaged[k], want[k], tol) << "value " << k;
  }
}

TEST(AllReduce, BadInputIsRefusedWithClearErrors) {
  AllReduceConfig cfg;
  Swarm s(2, cfg);
  auto g = make_group(s, {MemberKind::kFull, MemberKind::kFull}, test_schema());
  auto t = s.avgs[0]->all_reduce(g, std::vector<float>(3), 1.0);
  t.start();
  ASSERT_TRUE(t.done());
  auto r = t.result();
  ASSERT_FALSE(r.ok());
  EXPECT_NE(r.error().message.find("schema"), std::string::npos);
  auto t2 = s.avgs[0]->all_reduce(g, std::vector<float>(47), std::nan(""));
  t2.start();
  ASSERT_FALSE(t2.result().ok());
  Group other = g;
  other.members.pop_back();
  other.members[0].endpoint = s.fake[1].local();
  auto t3 = s.avgs[0]->all_reduce(other, std::vector<float>(47), 1.0);
  t3.start();
  ASSERT_FALSE(t3.result().ok());
}

namespace {

// Fault injection with 5 peers; peer 4 misbehaves. For each healthy peer and each reducer's part,
// every piece must hold the weighted mean of the senders `expected(reducer, piece)` says
// delivered it; where the reducer failed, a piece may instead keep the peer's own values.
struct FaultCase {
  const char* name;
  MemberKind kind4 = MemberKind::kFull;
  std::function<void(Swarm&, AllReduceConfig&)> setup;
  std::function<std::set<std::size_t>(std::size_t reducer, std::size_t piece)> expected;
  bool reducer4_fails = false;
};

// Small pieces and short timeouts, for the fault cases.
AllReduceConfig fault_case_config() {
  AllReduceConfig cfg;
  cfg.piece_elements = 4;
  cfg.window = 2;
  cfg.min_part = 1;
  cfg.sender_timeout = 2s;
  cfg.reducer_timeout = 6s;
  return cfg;
}

// Peer i of the swarm starts again with its own configuration (a faulty one).
void reconfigure(Swarm& s, std::size_t i, const AllReduceConfig& cfg) {
  s.rpcs[i]->shutdown();
  s.avgs[i].reset();
  s.rpcs[i] = std::make_unique<Rpc>(s.fake[i].runtime());
  s.avgs[i] = std::make_unique<Averager>(s.fake[i].runtime(), *s.rpcs[i], cfg);
}

void run_fault_case(const FaultCase& fc) {
  SCOPED_TRACE(fc.name);
  const auto schema = TensorSchema{{{40}, {3}, {}, {37}}};  // 81 values
  const AllReduceConfig cfg = fault_case_config();
  AllReduceConfig faulty = cfg;
  // The swarm is built with the healthy config; peer 4 gets the faulty one.
  Swarm s(5, cfg);
  fc.setup(s, faulty);
  reconfigure(s, 4, faulty);
  std::vector<MemberKind> kinds(5, MemberKind::kFull);
  kinds[4] = fc.kind4;
  auto g = make_group(s, kinds, schema);
  for (auto& m : g.members) m.bandwidth = 1;  // equal parts: 81 / 5 -> 17,16,16,16,16
  Rng rng(9);
  std::vector<std::vector<float>> data(5);
  std::vector<double> w{1, 2, 3, 4, 5};
  for (std::size_t i = 0; i < 5; ++i)
    if (sends(kinds[i])) data[i] = random_values(rng, schema.total());
  const TimePoint t0 = s.fake.net.now();
  auto res = run_round(s, g, data, w, 5min, 4);  // the healthy peers
  const Duration took = s.fake.net.now() - t0;
  // Bounded by the timeouts: reducer_timeout + (5 pieces in the largest part + 1) x sender_timeout.
  EXPECT_LE(took, 18s) << "healthy peers must finish in bounded time";
  EXPECT_EQ(s.fake.metrics.counter("invariant.avg.round_over_timeout"), 0);

  std::vector<double> bw(5, 1);
  auto sizes = balance_parts(schema.total(), bw, kinds, 1).value();
  for (std::size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(res[i].has_value()) << "peer " << i << " did not finish";
    ASSERT_TRUE(res[i]->ok()) << res[i]->error().describe();
    const auto& rep = res[i]->value();
    std::uint64_t at = 0;
    for (std::size_t j = 0; j < 5; ++j) {
      auto pieces = make_pieces(schema.sizes(), at, at + sizes[j], cfg.piece_elements);
      for (std::size_t p = 0; p < pieces.size(); ++p) {
        const auto who = fc.expected(j, p);
        const auto want = weighted_mean(data, w, who, pieces[p].begin, pieces[p].end);
        bool mean_ok = true, own_ok = true;
        for (std::size_t k = 0; k < want.size(); ++k) {
          mean_ok &= std::abs(rep.averaged[pieces[p].begin + k] - want[k]) <= 1e-6;
          own_ok &= rep.averaged[pieces[p].begin + k] == data[i][pieces[p].begin + k];
        }
        if (j == 4 && fc.reducer4_fails)
          EXPECT_TRUE(mean_ok || own_ok) << "peer " << i << " part " << j << " piece " << p;
        else
          EXPECT_TRUE(mean_ok) << "peer " << i << " part " << j << " piece " << p;
      }
      at += sizes[j];
    }
    if (fc.reducer4_fails) {
      EXPECT_EQ(rep.failed_reducers, std::vector<Endpoint>{s.fake[4].local()}) << "peer " << i;
    } else {
      EXPECT_TRUE(rep.failed_reducers.empty()) << "peer " << i;
    }
  }
  // The healthy peers that reduce agree on their parts exactly (the same bytes went to everyone).
  for (std::size_t i = 1; i < 4; ++i)
    for (std::size_t k = 0; k < sizes[0] + sizes[1] + sizes[2] + sizes[3]; ++k)
      ASSERT_EQ(res[i]->value().averaged[k], res[0]->value().averaged[k]);
}

std::set<std::size_t> all5() { return {0, 1, 2, 3, 4}; }
std::set<std::size_t> first4() { return {0, 1, 2, 3}; }

}  // namespace

TEST(AllReduceFaults, PeerDeadBeforeTheRound) {
  run_fault_case({"dead before", MemberKind::kFull,
                  [](Swarm& s, AllReduceConfig&) { s.fake[4].up = false; },
                  [](std::size_t, std::size_t) { return first4(); }, true});
}

TEST(AllReduceFaults, SenderStallsMidStream) {
  run_fault_case({"stalls sending", MemberKind::kClient,
                  [](Swarm&, AllReduceConfig& c) { c.faults.send_limit = 2; },
                  [](std::size_t, std::size_t p) { return p < 2 ? all5() : first4(); }, false});
}

TEST(AllReduceFaults, SenderFailsMidStream) {
  run_fault_case({"fails sending", MemberKind::kClient,
                  [](Swarm& s, AllReduceConfig& c) {
                    c.faults.send_limit = 2;
                    c.faults.on_send_limit = [&s] { s.fake[4].up = false; };
                  },
                  [](std::size_t, std::size_t p) { return p < 2 ? all5() : first4(); }, false});
}

TEST(AllReduceFaults, ReducerStallsMidPart) {
  run_fault_case({"stalls reducing", MemberKind::kAux,
                  [](Swarm&, AllReduceConfig& c) { c.faults.reduce_limit = 1; },
                  [](std::size_t, std::size_t) { return first4(); }, true});
}

TEST(AllReduceFaults, ReducerFailsMidPart) {
  run_fault_case({"fails reducing", MemberKind::kAux,
                  [](Swarm& s, AllReduceConfig& c) {
                    c.faults.reduce_limit = 1;
                    c.faults.on_reduce_limit = [&s] { s.fake[4].up = false; };
                  },
                  [](std::size_t, std::size_t) { return first4(); }, true});
}

TEST(AllReduceFaults, FullPeerStallsBothWays) {
  run_fault_case({"stalls sending and reducing", MemberKind::kFull,
                  [](Swarm&, AllReduceConfig& c) {
                    c.faults.send_limit = 1;
                    c.faults.reduce_limit = 2;
                  },
                  [](std::size_t j, std::size_t p) { return j == 4 || p < 1 ? all5() : first4(); }, true});
}

TEST(AllReduceFaults, ALateReducerCannotHoldTheRoundPastItsDeadline) {
  // Peer 4 reduces honestly but answers every request 5.9 s late, just inside reducer_timeout, and
  // never leaves anyone out. Each sender's lanes to it make 10 requests in turn: about 59 s without
  // the round's deadline, reducer_timeout + 21 x sender_timeout = 48 s with it.
  const auto schema = TensorSchema{{{400}}};
  const AllReduceConfig cfg = fault_case_config();
  Swarm s(5, cfg);
  AllReduceConfig late = cfg;
  late.faults.answer_delay = 5900ms;
  late.sender_timeout = 1h;
  reconfigure(s, 4, late);
  auto g = make_group(s, std::vector<MemberKind>(5, MemberKind::kFull), schema);
  for (auto& m : g.members) m.bandwidth = 1;  // 80 values, 20 pieces, per part
  Rng rng(4);
  std::vector<std::vector<float>> data;
  for (int i = 0; i < 5; ++i) data.push_back(random_values(rng, schema.total()));
  const std::vector<double> w{1, 2, 3, 4, 5};
  const TimePoint t0 = s.fake.net.now();
  auto res = run_round(s, g, data, w, 5min, 4);
  EXPECT_LE(s.fake.net.now() - t0, 48100ms);
  EXPECT_EQ(s.fake.metrics.counter("invariant.avg.round_over_timeout"), 0);
  for (std::size_t i = 0; i < 4; ++i) {
    ASSERT_TRUE(res[i].has_value() && res[i]->ok()) << "peer " << i;
    const auto& rep = res[i]->value();
    EXPECT_EQ(rep.failed_reducers, std::vector<Endpoint>{s.fake[4].local()}) << "peer " << i;
    EXPECT_GT(rep.pieces_kept, 0u);
    const auto want = weighted_mean(data, w, all5(), 0, 320);  // parts 0-3: every member's mean
    for (std::size_t k = 0; k < want.size(); ++k) ASSERT_NEAR(rep.averaged[k], want[k], 1e-6) << "peer " << i << " value " << k;
    const auto mean4 = weighted_mean(data, w, all5(), 320, 400);  // part 4: the mean, then my own values
    std::size_t averaged = 0;
    for (std::size_t k = 0; k < mean4.size(); ++k) {
      const float v = rep.averaged[320 + k];
      if (std::abs(v - mean4[k]) <= 1e-6) {
        ++averaged;
      } else {
        ASSERT_EQ(v, data[i][320 + k]) << "peer " << i << " value " << 320 + k;
      }
    }
    EXPECT_GT(averaged, 0u) << "peer " << i;
  }
}

TEST(AllReduceFaults, MemberCancels) {
  // Peer 4 leaves 7.5 ms in: its first window of pieces (0 and 1 of every part) was delivered.
  run_fault_case({"cancels", MemberKind::kFull,
                  [](Swarm& s, AllReduceConfig&) {
                    s.fake[4].schedule(7500us, [&s] { s.avgs[4]->cancel(42); });
                  },
                  [](std::size_t, std::size_t p) { return p < 2 ? all5() : first4(); }, true});
}

TEST(AllReduce, CenteredClipIsTheMeanWhenNothingIsClippedAndBoundsAnOutlier) {
  const auto schema = TensorSchema{{{80}}};  // equal bandwidths: one piece of 16 values per part
  AllReduceConfig cfg;
  cfg.piece_elements = 16;
  cfg.min_part = 1;
  cfg.aggregation.rule = AggregationRule::kCenteredClip;
  cfg.aggregation.tau = 1.0;
  const std::vector<double> w{1, 2, 3, 4, 5};
  Rng rng(21);
  std::vector<std::vector<float>> data(5);
  for (auto& d : data)
    for (std::size_t k = 0; k < schema.total(); ++k) d.push_back(static_cast<float>(rng.uniform(-0.01, 0.01)));
  auto round = [&](const AllReduceConfig& c) {
    Swarm s(5, c);
    auto g = make_group(s, std::vector<MemberKind>(5, MemberKind::kFull), schema);
    for (auto& m : g.members) m.bandwidth = 1;
    return run_round(s, g, data, w);
  };
  {  // Everyone close together: nobody is clipped and the result is the weighted mean.
    auto res = round(cfg);
    const auto want = weighted_mean(data, w, all5(), 0, schema.total());
    for (std::size_t i = 0; i < 5; ++i) {
      ASSERT_TRUE(res[i] && res[i]->ok()) << i;
      EXPECT_EQ(res[i]->value().clipped, 0u);
      for (std::size_t k = 0; k < want.size(); ++k) EXPECT_NEAR(res[i]->value().averaged[k], want[k], 1e-7) << i << " " << k;
    }
  }
  // Peer 4 (weight 5 of 15) sends its values + 1e6: each reducer clips it, and every piece of the
  // result lies tau x 5 / 10 from the other four's weighted mean (they are within tau of it, so
  // the fixed point solves 10 (mean - v) + 5 tau u = 0), where the plain mean moves by 3.3e5.
  data[4] = data[0];
  for (auto& x : data[4]) x += 1e6f;
  for (auto rule : {AggregationRule::kCenteredClip, AggregationRule::kMean}) {
    AllReduceConfig c = cfg;
    c.aggregation.rule = rule;
    auto res = round(c);
    const auto honest = weighted_mean(data, w, first4(), 0, schema.total());
    for (std::size_t i = 0; i < 4; ++i) {
      ASSERT_TRUE(res[i] && res[i]->ok()) << i;
      const auto& got = res[i]->value().averaged;
      EXPECT_EQ(got, res[0]->value().averaged) << "members agree";
      for (std::size_t p = 0; p < 5; ++p) {
        double d2 = 0;
        for (std::size_t k = 16 * p; k < 16 * (p + 1); ++k) d2 += (got[k] - honest[k]) * (got[k] - honest[k]);
        if (rule == AggregationRule::kCenteredClip)
          EXPECT_NEAR(std::sqrt(d2), 0.5, 1e-3) << "peer " << i << " piece " << p;
        else
          EXPECT_GT(std::sqrt(d2), 1e5) << "peer " << i << " piece " << p;
      }
      EXPECT_EQ(res[i]->value().clipped, rule == AggregationRule::kCenteredClip ? 1u : 0u) << "one piece per part, peer 4 clipped";
    }
  }
}

TEST(AllReduce, CompressedRoundsStayWithinTheCodecBoundAndAgreeExactly) {
  const auto schema = TensorSchema{{{5000}, {10}}};
  AllReduceConfig cfg;
  cfg.piece_elements = 1024;
  cfg.min_part = 1;
  cfg.codec = CodecPolicy{compression::Codec::kFloat16, 100};  // the 10-value tensor stays float32
  Swarm s(4, cfg);
  Rng rng(3);
  std::vector<std::vector<float>> data(4);
  std::vector<double> w(4, 1.0);
  for (auto& d : data) d = random_values(rng, schema.total());
  auto g = make_group(s, std::vector<MemberKind>(4, MemberKind::kFull), schema);
  auto res = run_round(s, g, data, w);
  const auto want = weighted_mean(data, w, {0, 1, 2, 3}, 0, schema.total());
  std::uint64_t sent = 0;
  for (std::size_t i = 0; i < 4; ++i) {
    const auto& rep = res[i]->value();
    for (std::size_t k = 0; k < want.size(); ++k) {
      // Inputs and the mean are each rounded to half: |err| <= 2 * 2^-11 * max|x| (max|x| < 6).
      const double bound = k < 5000 ? 2 * std::ldexp(6.0, -11) : 1e-6;
      ASSERT_NEAR(rep.averaged[k], want[k], bound);
      ASSERT_EQ(rep.averaged[k], res[0]->value().averaged[k]);
    }
    sent += rep.bytes_sent;
  }
  // Half precision: about 2 bytes per value each way instead of 4.
  EXPECT_LT(static_cast<double>(sent), 0.6 * 4.0 * 2 * 3.0 / 4.0 * 5010 * 4);
}
