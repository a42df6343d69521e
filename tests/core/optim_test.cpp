// Collaborative training: progress tracking through the DHT.
#include <gtest/gtest.h>

#include <cmath>
#include <functional>

#include "core/optim/progress.hpp"
#include "core/optim/schema.hpp"
#include "tests/support/fake_dht.hpp"

using namespace apiary;
using namespace apiary::optim;
using namespace std::chrono_literals;

namespace {

// The DHT these tests stand on: no maintenance traffic.
dht::DhtConfig quiet_dht(std::size_t k) {
  dht::DhtConfig cfg;
  cfg.k = k;
  cfg.refresh_period = Duration::zero();
  cfg.replicate_period = Duration::zero();
  return cfg;
}

// Makes and starts one task per peer (the peers then run as the fake network advances).
std::vector<Task<void>> start_all(std::size_t n, const std::function<Task<void>(std::size_t)>& make) {
  std::vector<Task<void>> tasks;
  for (std::size_t i = 0; i < n; ++i) {
    tasks.push_back(make(i));
    tasks.back().start();
  }
  return tasks;
}

std::vector<std::shared_ptr<dht::Validator>> signed_records() { return {std::make_shared<dht::SignatureValidator>()}; }

// A progress tracker for each of the swarm's first n peers (identities from seeds 900, 901, ...).
std::vector<std::unique_ptr<ProgressTracker>> trackers_of(test::FakeDhtSwarm& s, std::size_t n, const ProgressConfig& pc) {
  std::vector<std::unique_ptr<ProgressTracker>> out;
  for (std::size_t i = 0; i < n; ++i)
    out.push_back(std::make_unique<ProgressTracker>(s.fake[i].runtime(), *s.nodes[i], dht::Identity::from_seed(900 + i), pc));
  return out;
}

}  // namespace

// A swarm's own keys under its own rules, beside Apiary's: owned entries only under "*:scores",
// 8-byte values under "metrics.*"; malformed rules are refused with the reason.
TEST(Schema, ASwarmsOwnRulesAreCheckedByEveryNode) {
  const auto v = standard_validators({{"*:scores", "owned:16"}, {"metrics.*", "float64"}});
  const auto at = TimePoint(std::chrono::hours(1));
  auto rec = [&](std::string key, std::optional<std::string> subkey, std::size_t size) {
    return dht::Record{std::move(key), std::move(subkey), Bytes(size, 1), at, {}};
  };
  const auto owner = dht::Identity::from_seed(5);
  EXPECT_TRUE(dht::validate(v, rec("game:scores", std::nullopt, 4)).has_value());  // a plain value
  EXPECT_TRUE(dht::validate(v, rec("game:scores", "mallory", 4)).has_value());     // no owner tag
  auto entry = rec("game:scores", owner.owner_tag(), 16);
  owner.sign(entry);
  EXPECT_FALSE(dht::validate(v, entry).has_value()) << *dht::validate(v, entry);
  auto big = rec("game:scores", owner.owner_tag(), 17);
  owner.sign(big);
  EXPECT_TRUE(dht::validate(v, big).has_value());
  EXPECT_FALSE(dht::validate(v, rec("metrics.loss", std::nullopt, 8)).has_value());
  EXPECT_TRUE(dht::validate(v, rec("metrics.loss", std::nullopt, 3)).has_value());
  EXPECT_FALSE(dht::validate(v, rec("other", std::nullopt, 3)).has_value());
  // Apiary's own rules still hold.
  EXPECT_TRUE(dht::validate(v, rec("run:progress", std::nullopt, 8)).has_value());

  for (const SchemaRule& bad : std::vector<SchemaRule>{{"scores", "owned"}, {"*x", "float64"}, {"x*", "owned"}, {"*x", "owned:0"},
                                                      {"*", "owned"}, {"x*", "int32"}, {"x*", "utf8:lots"},
                                                      {"x*", "utf8: 5"}, {"x*", "utf8:+5"}})
    EXPECT_TRUE(check_schema_rule(bad).has_value()) << bad.pattern << " = " << bad.rule;
  EXPECT_THROW(standard_validators({{"x*", "int32"}}), std::invalid_argument);
  EXPECT_THROW(parse_schema_rule("no-equals-sign"), std::invalid_argument);
  EXPECT_EQ(parse_schema_rule("*:scores=owned").rule, "owned");
}

TEST(Progress, AggregatesTheSwarmsEpochSamplesAndEta) {
  const TimePoint now = TimePoint(100s);
  std::vector<PeerProgress> r{
      {3, 40, 10.0, now - 1s, false},
      {3, 30, 20.0, now - 2s, true},
      {2, 500, 50.0, now - 1s, false},  // behind: its samples count for nothing
      {4, 999, 99.0, now - 60s, false},  // stale: ignored, so epoch 4 is not the swarm's
  };
  auto s = aggregate(r, 100, now, 30s);
  EXPECT_EQ(s.epoch, 3u);
  EXPECT_EQ(s.samples, 70u);
  EXPECT_EQ(s.peers, 2u);
  EXPECT_EQ(s.behind, 1u);
  EXPECT_FALSE(s.ready);
  EXPECT_DOUBLE_EQ(s.samples_per_second, 30.0);
  EXPECT_EQ(s.eta, now + 1s);  // 30 samples left at 30 per second
  r[0].samples = 80;
  s = aggregate(r, 100, now, 30s);
  EXPECT_TRUE(s.ready);
  EXPECT_EQ(s.eta, now);
  EXPECT_EQ(aggregate({{1, 0, 0.0, now, false}}, 100, now, 30s).eta, TimePoint::max());
  EXPECT_FALSE(PeerProgress::decode(Bytes{1, 2}).has_value());
}

TEST(Progress, PeersPublishUnderSignedSubkeysAndEveryoneSeesTheSum) {
  const dht::DhtConfig cfg = quiet_dht(6);
  test::FakeDhtSwarm s(10, cfg, signed_records(), 400);
  s.join_all();
  ProgressConfig pc;
  pc.target_batch = 1000;
  pc.matchmaking_lead = 2s;
  auto trackers = trackers_of(s, 10, pc);
  for (std::size_t i = 0; i < 5; ++i) {
    PeerProgress p{7, 100 * (i + 1), 50.0, {}, false};
    EXPECT_TRUE(s.run(trackers[i]->publish(p)));
  }
  EXPECT_TRUE(s.run(trackers[5]->publish(PeerProgress{6, 300, 50.0, {}, false})));  // a peer behind
  auto seen = s.run(trackers[9]->fetch());
  EXPECT_EQ(seen.epoch, 7u);
  EXPECT_EQ(seen.samples, 100u + 200 + 300 + 400 + 500);
  EXPECT_EQ(seen.peers, 5u);
  EXPECT_EQ(seen.behind, 1u);
  EXPECT_TRUE(seen.ready);
  const TimePoint now = s.fake[9].runtime().now();
  EXPECT_EQ(trackers[9]->matchmaking_time(seen, now), now);
  SwarmProgress later = seen;  // not ready: matchmaking_lead before the ETA, never before now
  later.ready = false;
  later.eta = now + std::chrono::seconds(10);
  EXPECT_EQ(trackers[9]->matchmaking_time(later, now), later.eta - pc.matchmaking_lead);
  later.eta = now;
  EXPECT_EQ(trackers[9]->matchmaking_time(later, now), now);

  // A peer cannot overwrite another's entry: a record under peer 0's owner tag signed by peer 1's
  // key is refused everywhere, so the sum stays as it was.
  dht::Record forged;
  forged.key = trackers[0]->key();
  forged.subkey = dht::Identity::from_seed(900).owner_tag();
  forged.value = PeerProgress{7, 100000, 1.0, s.fake[1].runtime().now(), false}.encode();
  forged.expiration = s.fake[1].runtime().now() + 1min;
  dht::Identity::from_seed(901).sign(forged);
  auto stored = s.run(s.nodes[1]->store(forged));
  EXPECT_EQ(stored.replicas, 0u);
  EXPECT_EQ(s.run(trackers[8]->fetch()).samples, 1500u);
}

TEST(Progress, ALyingReportCanNeitherFreezeNorLeadTheSwarm) {
  EXPECT_EQ(trusted_epoch({18, 18, 1000000}, 18, 1), 18u);   // one liar among three
  EXPECT_EQ(trusted_epoch({18, 19, 18}, 18, 1), 18u);        // a peer one step ahead: believed as E + 1
  EXPECT_EQ(trusted_epoch({50}, 0, 1), 50u);                 // a small swarm: the peer behind catches up
  EXPECT_EQ(trusted_epoch({50, 50, 1000000}, 3, 1), 50u);    // a peer behind, one liar
  EXPECT_EQ(trusted_epoch({}, 7, 1), 7u);
  EXPECT_EQ(trusted_epoch({10, 10}, 40, 1), 40u);            // never below this peer's own
  EXPECT_EQ(trusted_epoch({1000000, 1000000, 5}, 5, 1), 1000000u);  // more liars than tolerated

  const TimePoint now = TimePoint(100s);
  std::vector<PeerProgress> r{
      {3, 40, 10.0, now, false},
      {3, 30, 20.0, now, false},
      {3, 20, 10.0, now, false},
      {3, UINT64_MAX, 1e12, now, false},  // claims everything: counts target_batch, ten times the median rate
      {9, 10, 10.0, now + 1h, false},      // dated in the future: ignored
  };
  auto s = aggregate(r, 100, now, 30s, 4);
  EXPECT_EQ(s.epoch, 3u);
  EXPECT_EQ(s.peers, 4u);
  EXPECT_EQ(s.samples, 190u);
  EXPECT_DOUBLE_EQ(s.samples_per_second, 10.0 + 20.0 + 10.0 + 200.0);  // the median of 10, 10, 20, 1e12: 20
  r.push_back({1000000, 0, 1.0, now, false});
  EXPECT_EQ(aggregate(r, 100, now, 30s, 4).epoch, 3u);  // above max_epoch: ignored
}

TEST(Progress, PoisonedProgressRecordsAreRefusedOrOutvoted) {
  const dht::DhtConfig cfg = quiet_dht(6);
  test::FakeDhtSwarm s(10, cfg, standard_validators(), 400);
  s.join_all();
  ProgressConfig pc;
  pc.target_batch = 1000;
  auto trackers = trackers_of(s, 4, pc);
  for (auto& t : trackers) EXPECT_TRUE(s.run(t->publish(PeerProgress{18, 100, 50.0, {}, false})));
  const TimePoint now = s.fake[9].runtime().now();
  dht::Record squat{trackers[0]->key(), std::nullopt, PeerProgress{1000000, 0, 1.0, now, false}.encode(), now + 23h, {}};
  EXPECT_EQ(s.run(s.nodes[9]->store(squat)).replicas, 0u);  // a plain value: refused by the schema
  dht::Record unsigned_entry = squat;
  unsigned_entry.subkey = "mallory";
  EXPECT_EQ(s.run(s.nodes[9]->store(unsigned_entry)).replicas, 0u);  // not an owner's entry
  dht::Record forever = squat;
  forever.subkey = dht::Identity::from_seed(666).owner_tag();
  forever.expiration = TimePoint::max();
  dht::Identity::from_seed(666).sign(forever);
  auto refused = s.run(s.nodes[9]->store(forever));
  EXPECT_EQ(refused.replicas, 0u);
  EXPECT_NE(refused.why_refused().find("expires too late"), std::string::npos) << refused.why_refused();
  dht::Record sybil = forever;  // a Sybil's own signed report, far ahead
  sybil.expiration = now + 1min;
  dht::Identity::from_seed(666).sign(sybil);
  EXPECT_GT(s.run(s.nodes[9]->store(sybil)).replicas, 0u);
  for (auto& t : trackers) {
    auto seen = s.run(t->fetch());
    EXPECT_EQ(seen.epoch, 18u);
    EXPECT_EQ(seen.samples, 400u);
    EXPECT_EQ(seen.peers, 4u);
  }
}

#include "core/optim/collaborative.hpp"

namespace {

struct Batch {
  std::vector<std::vector<float>> x;
  std::vector<float> y;
};

// Least squares y ~ w.x + b: the gradient summed over a batch, for parameters [w..., b].
std::vector<float> grad_sum(const std::vector<float>& p, const Batch& b) {
  std::vector<float> g(p.size(), 0.0f);
  for (std::size_t s = 0; s < b.y.size(); ++s) {
    float pred = p.back();
    for (std::size_t k = 0; k + 1 < p.size(); ++k) pred += p[k] * b.x[s][k];
    const float e = pred - b.y[s];
    for (std::size_t k = 0; k + 1 < p.size(); ++k) g[k] += e * b.x[s][k];
    g.back() += e;
  }
  return g;
}

// Per peer, `steps` batches of n(peer) samples with x ~ N(0, 1)^5 and y = f(x).
std::vector<std::vector<Batch>> make_data(std::size_t peers, std::size_t steps, const std::function<std::size_t(std::size_t)>& n,
                                          const std::function<float(const std::vector<float>&)>& f, Rng& rng) {
  std::vector<std::vector<Batch>> data(peers, std::vector<Batch>(steps));
  for (std::size_t peer = 0; peer < peers; ++peer)
    for (auto& b : data[peer])
      for (std::size_t i = 0; i < n(peer); ++i) {
        std::vector<float> x(5);
        for (auto& v : x) v = static_cast<float>(rng.normal(0, 1));
        b.y.push_back(f(x));
        b.x.push_back(std::move(x));
      }
  return data;
}

Task<void> train(optim::CollaborativeOptimizer& opt, const std::vector<Batch>* batches, int* done,
                 std::vector<std::size_t>* groups) {
  for (const auto& b : *batches) {
    const auto g = grad_sum(opt.parameters(), b);
    opt.accumulate(g, b.y.size());
    Result<optim::StepReport> r = co_await opt.step();
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().describe());
    if (!r.ok()) break;
    groups->push_back(r->group);
  }
  ++*done;
}

}  // namespace

// 4 peers with different batch sizes, no failures, exact averaging, plain SGD: the same
// parameters as one process doing SGD on the concatenated global batches, step for step (the
// all-reduce weights each peer's mean gradient by its sample count).
TEST(Collaborative, EqualsSgdOnTheConcatenatedGlobalBatches) {
  const dht::DhtConfig cfg = quiet_dht(6);
  test::FakeDhtSwarm s(4, cfg, signed_records(), 700);
  s.join_all();
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 40;  // peers hold 4, 8, 12 and 16 samples per step
  cc.matchmaking.target_group_size = 4;
  cc.matchmaking.min_group_size = 4;
  cc.matchmaking.budget = 5s;
  cc.allreduce.min_part = 1;
  cc.learning_rate = 0.05;
  const averaging::TensorSchema schema{{{5}, {}}};
  Rng rng(21);
  const std::vector<float> w_true{1.f, -2.f, 0.5f, 3.f, 0.f}, init(6, 0.0f);
  const int steps = 3;
  const auto data = make_data(4, steps, [](std::size_t peer) { return 4 * (peer + 1); }, [&](const std::vector<float>& x) {
    float y = 0.7f;
    for (int k = 0; k < 5; ++k) y += w_true[k] * x[k];
    return y + static_cast<float>(rng.normal(0, 0.1));
  }, rng);
  std::vector<std::unique_ptr<optim::CollaborativeOptimizer>> opts;
  for (std::size_t i = 0; i < 4; ++i)
    opts.push_back(std::make_unique<optim::CollaborativeOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i],
                                                                   dht::Identity::from_seed(800 + i), schema, init, cc));
  int done = 0;
  std::vector<std::vector<std::size_t>> groups(4);
  auto tasks = start_all(4, [&](std::size_t i) { return train(*opts[i], &data[i], &done, &groups[i]); });
  s.fake.net.run(10min, [&] { return done == 4; });
  ASSERT_EQ(done, 4);
  // The reference: one process, the global batch of each step is the four peers' batches.
  std::vector<float> p = init;
  for (int t = 0; t < steps; ++t) {
    std::vector<float> g(6, 0.0f);
    for (int i = 0; i < 4; ++i) {
      const auto gi = grad_sum(p, data[i][t]);
      for (int k = 0; k < 6; ++k) g[k] += gi[k];
    }
    for (int k = 0; k < 6; ++k) p[k] -= 0.05f * g[k] / 40.0f;  // the mean over the global batch
  }
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(groups[i], (std::vector<std::size_t>{4, 4, 4}));
    EXPECT_EQ(opts[i]->epoch(), 3u);
    for (int k = 0; k < 6; ++k) EXPECT_NEAR(opts[i]->parameters()[k], p[k], 1e-5) << "peer " << i << " parameter " << k;
  }
}

#include "core/optim/diloco.hpp"

namespace {

Task<void> diloco_peer(optim::DilocoOptimizer& opt, const std::vector<Batch>* batches, float lr, int* done) {
  for (const auto& b : *batches) {
    const auto g = grad_sum(opt.parameters(), b);
    for (std::size_t k = 0; k < g.size(); ++k) opt.parameters()[k] -= lr * g[k] / static_cast<float>(b.y.size());
    if (opt.inner_step_done(b.y.size())) {
      Result<optim::OuterReport> r = co_await opt.outer_step();
      EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().describe());
      if (!r.ok()) break;
    }
  }
  ++*done;
}

Task<void> averaging_peer(averaging::Averager& avg, Runtime& rt, std::vector<float>* params, const std::vector<Batch>* batches,
                          float lr, std::vector<Endpoint> members, int* done) {
  std::uint64_t round = 0;
  for (const auto& b : *batches) {
    const auto g = grad_sum(*params, b);
    for (std::size_t k = 0; k < g.size(); ++k) (*params)[k] -= lr * g[k] / static_cast<float>(b.y.size());
    averaging::Group group;
    group.id = 5000 + round++;
    group.schema = averaging::TensorSchema{{{5}, {}}};
    for (const auto& e : members) group.members.push_back(averaging::Member{e, averaging::MemberKind::kFull, 1.0});
    Result<averaging::AllReduceReport> r = co_await avg.all_reduce(std::move(group), *params, static_cast<double>(b.y.size()));
    EXPECT_TRUE(r.ok());
    if (!r.ok()) break;
    *params = r->averaged;
  }
  (void)rt;
  ++*done;
}

}  // namespace

// DiLoCo with H = 1 and an outer SGD step of learning rate 1 (no momentum) equals per-step
// parameter averaging (weighted by samples), and with H = 3 it communicates 3x less.
TEST(Diloco, WithOneInnerStepEqualsPerStepParameterAveraging) {
  const dht::DhtConfig cfg = quiet_dht(6);
  Rng rng(33);
  const auto data = make_data(4, 3, [](std::size_t peer) { return 3 + peer; }, [](const std::vector<float>& x) {
    float y = 0;
    for (float v : x) y += v;
    return y;
  }, rng);
  const averaging::TensorSchema schema{{{5}, {}}};
  const std::vector<float> init{0.1f, 0.2f, 0.3f, 0.4f, 0.5f, 0.6f};
  const float lr = 0.1f;
  auto run_diloco = [&](std::size_t h, std::vector<std::vector<float>>& out, std::uint64_t& bytes) {
    test::FakeDhtSwarm s(4, cfg, {}, 1000 + h);
    s.join_all();
    optim::DilocoConfig dc;
    dc.inner_steps = h;
    dc.outer_lr = 1.0;
    dc.outer_momentum = 0.0;
    dc.nesterov = false;
    dc.matchmaking.target_group_size = dc.matchmaking.min_group_size = 4;
    dc.matchmaking.budget = 5s;
    dc.allreduce.min_part = 1;
    std::vector<std::unique_ptr<optim::DilocoOptimizer>> opts;
    for (std::size_t i = 0; i < 4; ++i)
      opts.push_back(std::make_unique<optim::DilocoOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i], schema, init, dc));
    int done = 0;
    auto tasks = start_all(4, [&](std::size_t i) { return diloco_peer(*opts[i], &data[i], lr, &done); });
    s.fake.net.run(10min, [&] { return done == 4; });
    ASSERT_EQ(done, 4);
    bytes = 0;
    for (auto& o : opts) out.push_back(o->parameters());
    for (std::size_t i = 0; i < 4; ++i)  // every byte the peers sent (all-reduce and matchmaking)
      for (const auto& [to, m] : s.fake[i].sent) bytes += m.wire_size();
  };
  std::vector<std::vector<float>> diloco1, diloco3;
  std::uint64_t bytes1 = 0, bytes3 = 0;
  run_diloco(1, diloco1, bytes1);
  run_diloco(3, diloco3, bytes3);

  // The reference: each peer one local SGD step, then a sample-weighted average of the parameters.
  test::FakeSwarm f(4);
  std::vector<std::unique_ptr<Rpc>> rpcs;
  std::vector<std::unique_ptr<averaging::Averager>> avgs;
  averaging::AllReduceConfig ac;
  ac.min_part = 1;
  std::vector<Endpoint> members;
  for (std::size_t i = 0; i < 4; ++i) {
    rpcs.push_back(std::make_unique<Rpc>(f[i].runtime()));
    avgs.push_back(std::make_unique<averaging::Averager>(f[i].runtime(), *rpcs.back(), ac));
    members.push_back(f[i].local());
  }
  std::vector<std::vector<float>> ref(4, init);
  int done = 0;
  auto tasks = start_all(4, [&](std::size_t i) { return averaging_peer(*avgs[i], f[i].runtime(), &ref[i], &data[i], lr, members, &done); });
  f.net.run(10min, [&] { return done == 4; });
  ASSERT_EQ(done, 4);
  for (auto& r : rpcs) r->shutdown();
  for (std::size_t i = 0; i < 4; ++i)
    for (std::size_t k = 0; k < 6; ++k) EXPECT_NEAR(diloco1[i][k], ref[i][k], 1e-5) << "peer " << i << " parameter " << k;
  // Three inner steps per outer step: one all-reduce instead of three (plus matchmaking traffic).
  EXPECT_LT(static_cast<double>(bytes3), 0.6 * static_cast<double>(bytes1));
  for (std::size_t i = 1; i < 4; ++i) EXPECT_EQ(diloco3[i], diloco3[0]) << "every peer holds the same global parameters";
}

// A peer that joins after step k holds the swarm's parameters and epoch before it contributes.
TEST(Collaborative, ANewcomerHoldsTheSwarmsParametersAndEpochFirst) {
  const dht::DhtConfig cfg = quiet_dht(6);
  test::FakeDhtSwarm s(4, cfg, signed_records(), 1200);
  s.join_all();
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 24;
  cc.matchmaking.target_group_size = cc.matchmaking.min_group_size = 3;
  cc.matchmaking.budget = 5s;
  cc.allreduce.min_part = 1;
  const averaging::TensorSchema schema{{{5}, {}}};
  Rng rng(44);
  const auto data = make_data(3, 2, [](std::size_t) { return 8; }, [](const std::vector<float>& x) { return x[0] - x[1]; }, rng);
  std::vector<std::unique_ptr<optim::CollaborativeOptimizer>> opts;
  for (std::size_t i = 0; i < 4; ++i)
    opts.push_back(std::make_unique<optim::CollaborativeOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i],
                                                                   dht::Identity::from_seed(1300 + i), schema,
                                                                   std::vector<float>(6, i == 3 ? 9.0f : 0.0f), cc));
  int done = 0;
  std::vector<std::vector<std::size_t>> groups(3);
  auto tasks = start_all(3, [&](std::size_t i) { return train(*opts[i], &data[i], &done, &groups[i]); });
  s.fake.net.run(10min, [&] { return done == 3; });
  ASSERT_EQ(done, 3);
  ASSERT_EQ(opts[0]->epoch(), 2u);
  auto joined = s.run(opts[3]->join());
  ASSERT_TRUE(joined.ok()) << joined.error().describe();
  EXPECT_EQ(*joined, 2u);
  EXPECT_EQ(opts[3]->epoch(), 2u);
  EXPECT_EQ(opts[3]->parameters(), opts[0]->parameters());
  EXPECT_NE(opts[3]->parameters(), std::vector<float>(6, 9.0f));
}

// A peer killed during the averaging of step 0: the others finish that step with the gradients
// that were delivered, and the next step without it, in bounded time.
TEST(Collaborative, APeerKilledDuringAveragingCostsOnlyItsContribution) {
  dht::DhtConfig cfg = quiet_dht(6);
  cfg.rpc_timeout = 500ms;
  test::FakeDhtSwarm s(4, cfg, signed_records(), 1400);
  s.join_all();
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 24;
  cc.progress.stale = 5s;
  cc.matchmaking.target_group_size = 4;
  cc.matchmaking.min_group_size = 3;
  cc.matchmaking.budget = 3s;
  cc.allreduce.min_part = 1;
  cc.allreduce.sender_timeout = 1s;
  cc.allreduce.reducer_timeout = 2s;
  const averaging::TensorSchema schema{{{5}, {}}};
  Rng rng(55);
  const auto data = make_data(4, 2, [](std::size_t) { return 8; }, [](const std::vector<float>& x) { return 2 * x[2]; }, rng);
  std::vector<std::unique_ptr<optim::CollaborativeOptimizer>> opts;
  for (std::size_t i = 0; i < 4; ++i) {
    auto c = cc;
    if (i == 3) {  // dies as it starts sending its gradients
      c.allreduce.faults.send_limit = 0;
      c.allreduce.faults.on_send_limit = [&s] { s.fake[3].up = false; };
    }
    opts.push_back(std::make_unique<optim::CollaborativeOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i],
                                                                   dht::Identity::from_seed(1500 + i), schema,
                                                                   std::vector<float>(6, 0.0f), c));
  }
  int done = 0;
  std::vector<std::vector<std::size_t>> groups(4);
  auto tasks = start_all(4, [&](std::size_t i) { return train(*opts[i], &data[i], &done, &groups[i]); });
  const TimePoint t0 = s.fake.net.now();
  s.fake.net.run(10min, [&] { return done >= 3 && opts[0]->epoch() == 2 && opts[1]->epoch() == 2 && opts[2]->epoch() == 2; });
  EXPECT_LT(s.fake.net.now() - t0, 2min);
  for (std::size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(opts[i]->epoch(), 2u) << "peer " << i;
    ASSERT_EQ(groups[i].size(), 2u) << "peer " << i;
    EXPECT_EQ(groups[i][0], 4u);  // step 0 began with the peer that died
    EXPECT_EQ(groups[i][1], 3u);  // step 1 without it
    for (float v : opts[i]->parameters()) EXPECT_TRUE(std::isfinite(v));
  }
  EXPECT_EQ(opts[3]->epoch(), 0u);
}

// Delayed parameter updates: the training loop keeps accumulating while a step's averaging runs;
// those samples are not lost, they count toward the next step.
TEST(Collaborative, AccumulatingDuringAStepCountsTowardTheNext) {
  const dht::DhtConfig cfg = quiet_dht(4);
  test::FakeDhtSwarm s(2, cfg, signed_records(), 1600);
  s.join_all();
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 8;
  cc.matchmaking.target_group_size = cc.matchmaking.min_group_size = 2;
  cc.allreduce.min_part = 1;
  const averaging::TensorSchema schema{{{2}}};
  std::vector<std::unique_ptr<optim::CollaborativeOptimizer>> opts;
  for (std::size_t i = 0; i < 2; ++i)
    opts.push_back(std::make_unique<optim::CollaborativeOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i],
                                                                   dht::Identity::from_seed(1700 + i), schema,
                                                                   std::vector<float>{1.f, 1.f}, cc));
  const std::vector<float> g{4.f, 8.f};
  std::vector<Task<Result<optim::StepReport>>> steps;
  for (auto& o : opts) {
    o->accumulate(g, 4);
    steps.push_back(o->step());
    steps.back().start();
  }
  // Once the swarm reached the target, the step averages (matchmaking takes simulated time)
  // while the loop computes on.
  s.fake.net.run(1min, [&] { return opts[0]->averaging(); });
  ASSERT_TRUE(opts[0]->averaging());
  ASSERT_FALSE(steps[0].done());
  opts[0]->accumulate(g, 3);
  s.fake.net.run(1min, [&] { return steps[0].done() && steps[1].done(); });
  ASSERT_TRUE(steps[0].result().ok());
  EXPECT_EQ(opts[0]->epoch(), 1u);
  EXPECT_EQ(opts[0]->local_samples(), 3u) << "samples accumulated during the step belong to the next one";
  EXPECT_EQ(opts[1]->local_samples(), 0u);
  // The step itself used only what was there before it began: mean gradient (1, 2), lr 0.1.
  EXPECT_NEAR(opts[0]->parameters()[0], 1.f - 0.1f * 1.f, 1e-6);
  EXPECT_NEAR(opts[0]->parameters()[1], 1.f - 0.1f * 2.f, 1e-6);
}

namespace {

Task<void> assist_steps(optim::CollaborativeOptimizer& opt, int steps, int* done, std::vector<std::size_t>* groups) {
  for (int t = 0; t < steps; ++t) {
    Result<optim::StepReport> r = co_await opt.assist();
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().describe());
    if (!r.ok()) break;
    groups->push_back(r->group);
  }
  ++*done;
}

}  // namespace

// Roles: two full peers, a client (sends its gradients, never reduces nor leads) and an
// auxiliary peer (trains nothing, reduces a part). Every step's group holds all four, and the
// trainers still match SGD on the concatenated global batches of the three that train.
TEST(Collaborative, ClientAndAuxiliaryPeersTakePart) {
  const dht::DhtConfig cfg = quiet_dht(6);
  test::FakeDhtSwarm s(4, cfg, signed_records(), 1800);
  s.join_all();
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 24;  // 4 + 8 + 12
  cc.matchmaking.target_group_size = 8;  // sized down to the peers that report progress
  cc.matchmaking.min_group_size = 4;
  cc.matchmaking.budget = 5s;
  cc.allreduce.min_part = 1;
  cc.learning_rate = 0.05;
  const averaging::TensorSchema schema{{{5}, {}}};
  Rng rng(66);
  const int steps = 3;
  const auto data = make_data(3, steps, [](std::size_t peer) { return 4 * (peer + 1); },
                              [](const std::vector<float>& x) { return 2 * x[0] - x[3] + 1; }, rng);
  const std::vector<float> init(6, 0.0f);
  std::vector<std::unique_ptr<optim::CollaborativeOptimizer>> opts;
  const averaging::MemberKind roles[] = {averaging::MemberKind::kFull, averaging::MemberKind::kFull,
                                         averaging::MemberKind::kClient, averaging::MemberKind::kAux};
  for (std::size_t i = 0; i < 4; ++i) {
    auto c = cc;
    c.role = roles[i];
    opts.push_back(std::make_unique<optim::CollaborativeOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i],
                                                                   dht::Identity::from_seed(1900 + i), schema, init, c));
  }
  int done = 0;
  std::vector<std::vector<std::size_t>> groups(4);
  std::vector<Task<void>> tasks;
  for (std::size_t i = 0; i < 3; ++i) tasks.push_back(train(*opts[i], &data[i], &done, &groups[i]));
  tasks.push_back(assist_steps(*opts[3], steps, &done, &groups[3]));
  for (auto& t : tasks) t.start();
  s.fake.net.run(10min, [&] { return done == 4; });
  ASSERT_EQ(done, 4);
  EXPECT_THROW(opts[3]->accumulate(std::vector<float>(6, 0.0f), 1), std::logic_error);
  std::vector<float> p = init;
  for (int t = 0; t < steps; ++t) {
    std::vector<float> g(6, 0.0f);
    for (int i = 0; i < 3; ++i) {
      const auto gi = grad_sum(p, data[i][t]);
      for (int k = 0; k < 6; ++k) g[k] += gi[k];
    }
    for (int k = 0; k < 6; ++k) p[k] -= 0.05f * g[k] / 24.0f;
  }
  for (std::size_t i = 0; i < 4; ++i) {
    EXPECT_EQ(groups[i], (std::vector<std::size_t>{4, 4, 4})) << "peer " << i;
    EXPECT_EQ(opts[i]->epoch(), 3u) << "peer " << i;
  }
  for (std::size_t i = 0; i < 3; ++i)
    for (int k = 0; k < 6; ++k) EXPECT_NEAR(opts[i]->parameters()[k], p[k], 1e-5) << "peer " << i << " parameter " << k;
}

namespace {

// A caller-side optimizer: SGD with momentum applied after every local batch (local updates).
struct LocalSgd {
  std::vector<float> momentum;
  void apply(std::vector<float>& p, const std::vector<float>& grad_sum, std::size_t n) {
    momentum.resize(p.size(), 0.0f);
    for (std::size_t k = 0; k < p.size(); ++k) {
      momentum[k] = 0.9f * momentum[k] + grad_sum[k] / static_cast<float>(n);
      p[k] -= 0.05f * momentum[k];
    }
  }
};

Task<void> train_local(optim::CollaborativeOptimizer& opt, LocalSgd* sgd, const std::vector<Batch>* batches,
                       std::vector<std::pair<std::vector<float>, std::vector<float>>>* before, int* done) {
  for (const auto& b : *batches) {
    sgd->apply(opt.parameters(), grad_sum(opt.parameters(), b), b.y.size());
    opt.accumulate({}, b.y.size());
    before->emplace_back(opt.parameters(), sgd->momentum);
    Result<optim::StepReport> r = co_await opt.step();
    EXPECT_TRUE(r.ok()) << (r.ok() ? "" : r.error().describe());
    if (!r.ok()) break;
    EXPECT_TRUE(r->mean_gradient.empty());
    EXPECT_EQ(r->state_averaged, opt.epoch() % 2 == 0);
  }
  ++*done;
}

}  // namespace

// Local updates, with parameters and optimizer state averaged every 2 epochs: after an averaging
// epoch every peer holds the sample-weighted mean of the peers' parameters and momentum buffers
// (weights: samples since the last averaging); in between they drift apart. A newcomer downloads
// the optimizer state along with the parameters.
TEST(Collaborative, AveragesParametersAndOptimizerStateEveryNEpochs) {
  const dht::DhtConfig cfg = quiet_dht(6);
  test::FakeDhtSwarm s(4, cfg, signed_records(), 2000);
  s.join_all();
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 15;  // 3 + 5 + 7
  cc.matchmaking.target_group_size = cc.matchmaking.min_group_size = 3;
  cc.matchmaking.budget = 5s;
  cc.allreduce.min_part = 1;
  cc.local_updates = true;
  cc.average_state_every = 2;
  const averaging::TensorSchema schema{{{5}, {}}};
  Rng rng(77);
  const int steps = 4;
  const auto data = make_data(3, steps, [](std::size_t peer) { return 3 + 2 * peer; },
                              [](const std::vector<float>& x) { return x[1] + 0.5f; }, rng);
  std::vector<std::unique_ptr<optim::CollaborativeOptimizer>> opts;
  std::vector<LocalSgd> sgds(4);
  for (std::size_t i = 0; i < 4; ++i) {
    opts.push_back(std::make_unique<optim::CollaborativeOptimizer>(s.fake[i].runtime(), *s.rpcs[i], *s.nodes[i],
                                                                   dht::Identity::from_seed(2100 + i), schema,
                                                                   std::vector<float>(6, 0.0f), cc));
    LocalSgd* sgd = &sgds[i];
    sgd->momentum.assign(6, i == 3 ? 7.0f : 0.0f);
    opts[i]->set_optimizer_state(schema, [sgd] { return sgd->momentum; },
                                 [sgd](std::vector<float> m) { sgd->momentum = std::move(m); });
  }
  int done = 0;
  std::vector<std::vector<std::pair<std::vector<float>, std::vector<float>>>> before(3);
  std::vector<Task<void>> tasks;
  for (std::size_t i = 0; i < 3; ++i) tasks.push_back(train_local(*opts[i], &sgds[i], &data[i], &before[i], &done));
  for (auto& t : tasks) t.start();
  s.fake.net.run(10min, [&] { return done == 3; });
  ASSERT_EQ(done, 3);
  // After epoch 4 (the second averaging): the weighted mean of the values before it, weights =
  // each peer's samples over epochs 3 and 4.
  for (int k = 0; k < 6; ++k) {
    double p = 0, m = 0, w = 0;
    for (std::size_t i = 0; i < 3; ++i) {
      const double wi = 2.0 * (3 + 2 * i);
      p += wi * before[i][3].first[k];
      m += wi * before[i][3].second[k];
      w += wi;
    }
    for (std::size_t i = 0; i < 3; ++i) {
      EXPECT_NEAR(opts[i]->parameters()[k], p / w, 1e-5) << "peer " << i;
      EXPECT_NEAR(sgds[i].momentum[k], m / w, 1e-5) << "peer " << i;
    }
  }
  EXPECT_NE(before[0][2].first, before[1][2].first) << "local updates drift apart between averagings";
  auto joined = s.run(opts[3]->join());
  ASSERT_TRUE(joined.ok()) << joined.error().describe();
  EXPECT_EQ(*joined, 4u);
  EXPECT_EQ(opts[3]->parameters(), opts[0]->parameters());
  EXPECT_EQ(sgds[3].momentum, sgds[0].momentum);
}

#include "core/optim/powersgd.hpp"

namespace {

// Runs one PowerSGD step among peers by hand: each peer's rounds are weighted means, as the
// all-reduce gives them.
std::vector<std::vector<float>> powersgd_step(std::vector<optim::PowerSgd>& peers, const std::vector<std::vector<float>>& grads,
                                              const std::vector<double>& w) {
  auto mean = [&](const std::vector<std::vector<float>>& xs) {
    std::vector<float> out(xs[0].size(), 0.0f);
    double total = 0;
    for (double x : w) total += x;
    for (std::size_t i = 0; i < xs.size(); ++i)
      for (std::size_t k = 0; k < out.size(); ++k) out[k] += static_cast<float>(w[i] / total) * xs[i][k];
    return out;
  };
  std::vector<std::vector<float>> a, b, out;
  for (std::size_t i = 0; i < peers.size(); ++i) a.push_back(peers[i].begin(grads[i]));
  const auto ma = mean(a);
  for (auto& p : peers) b.push_back(p.middle(ma));
  const auto mb = mean(b);
  for (auto& p : peers) out.push_back(p.finish(mb));
  return out;
}

}  // namespace

TEST(PowerSgd, ARankOneMeanComesThroughExactlyAndOnlyPairsAreSent) {
  // A 6x10 weight and a bias of 4: the weight goes as a 6x1 P and a 10x1 Q (16 values, not 60),
  // the bias whole. Every peer's weight gradient is u v_i^T, so the weighted mean has rank 1.
  const averaging::TensorSchema schema{{{6, 10}, {4}}};
  std::vector<optim::PowerSgd> peers(3, optim::PowerSgd(schema, 1, 42));
  EXPECT_EQ(peers[0].compressed_tensors(), 1u);
  EXPECT_EQ(peers[0].first_schema(), (averaging::TensorSchema{{{6, 1}, {4}}}));
  EXPECT_EQ(peers[0].second_schema(), (averaging::TensorSchema{{{10, 1}}}));
  Rng rng(5);
  std::vector<float> u(6);
  for (auto& x : u) x = static_cast<float>(rng.normal());
  const std::vector<double> w{1, 2, 5};
  for (int step = 0; step < 3; ++step) {
    std::vector<std::vector<float>> grads(3);
    std::vector<float> want(64, 0.0f);
    for (std::size_t i = 0; i < 3; ++i) {
      std::vector<float> v(10);
      for (auto& x : v) x = static_cast<float>(rng.normal());
      for (std::size_t r = 0; r < 6; ++r)
        for (std::size_t c = 0; c < 10; ++c) grads[i].push_back(u[r] * v[c]);
      for (int k = 0; k < 4; ++k) grads[i].push_back(static_cast<float>(rng.normal()));
      for (std::size_t k = 0; k < 64; ++k) want[k] += static_cast<float>(w[i] / 8) * grads[i][k];
    }
    const auto out = powersgd_step(peers, grads, w);
    for (std::size_t i = 0; i < 3; ++i) {
      EXPECT_EQ(out[i], out[0]) << "every peer steps alike";
      for (std::size_t k = 0; k < 64; ++k) EXPECT_NEAR(out[i][k], want[k], 1e-4) << "step " << step << " value " << k;
    }
  }
}

TEST(PowerSgd, ErrorFeedbackDeliversWhatRankOneLeavesOut) {
  // A constant full-rank 8x8 gradient sent at rank 1: each step delivers a rank-1 piece, and
  // the error carried forward makes the delivered steps average out to the gradient.
  const averaging::TensorSchema schema{{{8, 8}}};
  std::vector<optim::PowerSgd> peer(1, optim::PowerSgd(schema, 1, 7));
  Rng rng(3);
  std::vector<float> g(64);
  double gnorm = 0;
  for (auto& x : g) {
    x = static_cast<float>(rng.normal());
    gnorm += double(x) * x;
  }
  gnorm = std::sqrt(gnorm);
  std::vector<double> sum(64, 0.0);
  const int steps = 400;
  double first_off = 0;
  for (int t = 0; t < steps; ++t) {
    const auto out = powersgd_step(peer, {g}, {1.0})[0];
    for (std::size_t k = 0; k < 64; ++k) sum[k] += out[k];
    if (t == 0)
      for (std::size_t k = 0; k < 64; ++k) first_off += (out[k] - g[k]) * (out[k] - g[k]);
  }
  double off = 0;
  for (std::size_t k = 0; k < 64; ++k) off += (sum[k] / steps - g[k]) * (sum[k] / steps - g[k]);
  EXPECT_GT(std::sqrt(first_off), 0.3 * gnorm);  // one step alone is far from the gradient
  EXPECT_LT(std::sqrt(off), 0.05 * gnorm);       // the average of many is close
}

TEST(PowerSgd, TensorsTooSmallToGainGoWhole) {
  const averaging::TensorSchema schema{{{2, 2}, {3}}};  // (2 + 2) x 1 is not below 2 x 2
  std::vector<optim::PowerSgd> peers(2, optim::PowerSgd(schema, 1, 1));
  EXPECT_EQ(peers[0].compressed_tensors(), 0u);
  EXPECT_EQ(peers[0].first_schema(), schema);
  const std::vector<std::vector<float>> grads{{1, 2, 3, 4, 5, 6, 7}, {3, 2, 1, 0, -1, -2, -3}};
  const auto out = powersgd_step(peers, grads, {1, 1});
  EXPECT_EQ(out[0], (std::vector<float>{2, 2, 2, 2, 2, 2, 2}));
  EXPECT_THROW(optim::PowerSgd(schema, 0, 1), std::invalid_argument);
  EXPECT_THROW(peers[0].begin(std::vector<float>(3)), std::invalid_argument);
}

// ---- BTARD's messages ---------------------------------------------------------------------

#include <sodium.h>

#include "core/optim/btard.hpp"

namespace {

// One member of a 3-member BTARD step (whose commitment went out) and what the others send it.
struct BtardMember {
  test::FakeSwarm swarm{3};
  Rpc rpc{swarm[0].runtime()};
  dht::DhtNode dht{swarm[0].runtime(), rpc, dht::DhtId::of_key("m0"), dht::DhtConfig{}, {}};
  averaging::AllReduceConfig allreduce;
  std::unique_ptr<Btard> btard;
  averaging::Group group;
  BtardMember() {
    allreduce.aggregation.rule = averaging::AggregationRule::kCenteredClip;
    allreduce.min_part = 16;
    btard = std::make_unique<Btard>(swarm[0].runtime(), rpc, dht, dht::Identity::from_seed(1), "t", BtardConfig{}, allreduce);
    group.id = 5;
    for (int i = 0; i < 3; ++i) group.members.push_back({swarm[i].local()});
    group.schema = averaging::TensorSchema{{{48}}};
    const std::vector<float> mine(48, 1.0f), params(48, 0.0f);
    Task<std::optional<Error>> t = btard->commit(group, 0, mine, 32, params);
    t.start();
    swarm.net.run(10s, [] { return false; });
  }
  ~BtardMember() { rpc.shutdown(); }
  // A commitment from member `from` to 3 pieces, signed by `signer` (or its own key).
  Bytes commitment(std::uint64_t seed, std::uint64_t pieces, const dht::Identity* signer = nullptr) {
    const auto key = dht::Identity::from_seed(seed);
    Bytes b;
    wire::Writer w(b);
    w.u64(group.id);
    w.varint(0);
    w.raw(key.public_key);
    w.f64(32);
    w.raw(std::vector<std::uint8_t>(32, 1));  // the seed share's hash
    // The hash of the parameters it computed on: the member's own (48 zeros).
    const std::vector<float> params(48, 0.0f);
    std::array<std::uint8_t, 32> h{};
    crypto_generichash(h.data(), h.size(), reinterpret_cast<const std::uint8_t*>(params.data()), 4 * params.size(), nullptr, 0);
    w.raw(h);
    w.varint(pieces);
    for (std::uint64_t i = 0; i < pieces; ++i) w.raw(std::vector<std::uint8_t>(32, 2));
    const auto sig = (signer ? *signer : key).sign_bytes(b);
    w.raw(sig);
    return b;
  }
  void send(std::size_t from, std::uint32_t method, Bytes body) {
    Rpc sender(swarm[from].runtime());
    sender.notify(swarm[0].local(), method, std::move(body));
    swarm.net.run(1s, [] { return false; });
  }
  std::string admit(std::size_t sender) {
    const std::vector<std::uint8_t> piece(64, 0);
    return allreduce.admit_piece(group.id, sender, 0, piece, 32);
  }
};

}  // namespace

// A commitment signed by another key than the one it names, one for the wrong number of pieces
// and a truncated one are each refused and counted; the sender has no commitment, so its pieces
// are refused with that reason. A well-formed one is taken (its piece then fails on its hash).
TEST(Btard, MalformedCommitmentsAreRefusedAndCounted) {
  BtardMember m;
  const auto other = dht::Identity::from_seed(99);
  m.send(1, 220, m.commitment(2, 3, &other));
  EXPECT_EQ(m.swarm.metrics.counter("btard.bad_messages"), 1);
  Bytes wrong_count = m.commitment(2, 7);
  m.send(1, 220, wrong_count);
  EXPECT_EQ(m.swarm.metrics.counter("btard.bad_messages"), 2);
  Bytes cut = m.commitment(2, 3);
  cut.resize(cut.size() - 10);
  m.send(1, 220, cut);
  EXPECT_EQ(m.swarm.metrics.counter("btard.bad_messages"), 3);
  EXPECT_EQ(m.admit(1), "no commitment from the sender");
  m.send(2, 220, m.commitment(3, 3));
  EXPECT_EQ(m.swarm.metrics.counter("btard.bad_messages"), 3);
  EXPECT_EQ(m.admit(2), "piece differs from its commitment");
  EXPECT_EQ(m.swarm.metrics.counter("btard.refused_pieces"), 2);
}

// Check values for more pieces than any step has, and garbage, never crash: each is counted.
TEST(Btard, OversizedAndGarbledMessagesAreCounted) {
  BtardMember m;
  m.send(2, 220, m.commitment(3, 3));
  Bytes huge;
  wire::Writer w(huge);
  w.u64(m.group.id);
  w.raw(std::vector<std::uint8_t>(32, 0));
  w.varint(std::uint64_t{1} << 40);  // claims 2^40 check values
  m.send(2, 222, huge);
  m.send(2, 221, Bytes{1, 2, 3});  // shorter than a group id
  Bytes accuse;
  wire::Writer a(accuse);
  a.u64(m.group.id);
  a.varint(2);  // accuses itself
  m.send(2, 223, accuse);
  EXPECT_EQ(m.swarm.metrics.counter("btard.bad_messages"), 3);
  EXPECT_EQ(m.btard->stats().accusations, 0u);
}

// Accused itself, a member runs the check every other member runs, on its own gradient: where its
// recomputation confirms the gradient it committed to, it bans the accuser (so a false accuser is
// banned by every member that could judge, the accused included); where it does not, it bans
// nobody.
TEST(Btard, AnAccusedMemberJudgesItsAccuserOnItsOwnGradient) {
  for (const bool confirmed : {true, false}) {
    SCOPED_TRACE(confirmed ? "recomputation confirms" : "recomputation differs");
    BtardMember m;
    m.btard->set_recompute([confirmed](Contribution c) -> Task<std::optional<std::vector<float>>> {
      EXPECT_EQ(c.parameters, std::vector<float>(48, 0.0f));
      co_return std::vector<float>(48, confirmed ? 1.0f : 5.0f);  // the member committed to 48 ones
    });
    m.send(1, 220, m.commitment(2, 3));
    Bytes accuse;
    wire::Writer a(accuse);
    a.u64(m.group.id);
    a.varint(0);  // member 1 accuses member 0, the one under test
    m.send(1, 223, accuse);
    EXPECT_EQ(m.btard->stats().accusations, 1u);
    EXPECT_EQ(m.swarm.metrics.counter("btard.gradients_unanswered"), 0);  // nothing was fetched
    if (confirmed) {
      ASSERT_EQ(m.btard->bans().size(), 1u);
      EXPECT_EQ(m.btard->bans()[0].endpoint, m.swarm[1].local());
      EXPECT_NE(m.btard->bans()[0].reason.find("accused member 0"), std::string::npos) << m.btard->bans()[0].reason;
    } else {
      EXPECT_TRUE(m.btard->bans().empty());
    }
  }
}
