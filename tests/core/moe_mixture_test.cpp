// The expert server (batching, checks, the device model) and the mixture router (batch, per-sample
// and switch routing, the wait rule, searching again, the parallel backward) of core/moe, on a
// fake-network DHT with experts whose math is known: expert e multiplies by its scale.
#include <gtest/gtest.h>

#include <cstring>
#include <map>
#include <set>

#include "core/moe/mixture.hpp"
#include "core/moe/server.hpp"
#include "tests/support/fake_dht.hpp"

using namespace apiary;
using namespace apiary::moe;
using namespace std::chrono_literals;

namespace {

Payload floats(const std::vector<float>& v) {
  Bytes b(v.size() * 4);
  if (!b.empty()) std::memcpy(b.data(), v.data(), b.size());
  return Payload::bytes(std::move(b));
}

std::vector<float> floats_of(const Payload& p) {
  std::vector<float> v(p.size() / 4);
  if (p.has_data()) std::memcpy(v.data(), p.data().data(), v.size() * 4);
  return v;
}

// Experts of width `dim` that multiply by their scale, forward and backward; each batch is
// recorded. With wrong_shape it answers one column too many; uid "throw..." throws.
class ScaleExperts final : public ExpertBackend {
 public:
  explicit ScaleExperts(std::int64_t dim) : dim_(dim) {}
  std::map<std::string, float> scale;
  bool wrong_shape = false;
  struct Batch {
    std::string uid;
    bool backward;
    std::size_t requests;
    std::int64_t rows;
  };
  std::vector<Batch> batches;
  std::optional<ExpertInfo> info(const std::string& uid) override {
    if (!scale.count(uid)) return std::nullopt;
    return ExpertInfo{dim_, dim_, false, "scale"};
  }
  Task<void> run(const std::string& uid, bool backward, std::vector<ExpertJob*> jobs) override {
    std::int64_t rows = 0;
    for (auto* j : jobs) rows += j->rows();
    batches.push_back(Batch{uid, backward, jobs.size(), rows});
    if (uid.rfind("throw", 0) == 0) throw std::runtime_error("out of memory");
    for (auto* j : jobs) {
      std::vector<float> v = floats_of(backward ? j->output_grads() : j->inputs());
      for (auto& x : v) x *= scale.at(uid);
      TensorShape shape = j->input;
      if (wrong_shape) shape.dims.back() += 1;
      j->reply = TensorReply{shape, floats(v), 0};
    }
    co_return;
  }

 private:
  std::int64_t dim_;
};

// The caller's side with real bytes: the batch's inputs, the answers kept per slot, the input
// gradients summed per sample.
class Rows final : public MixtureTensors {
  std::vector<std::vector<float>> x_;  // (first: gx is sized from it)

 public:
  explicit Rows(std::vector<std::vector<float>> x) : x_(std::move(x)), gx(x_.size(), std::vector<float>(x_[0].size(), 0)) {}
  Body inputs(const std::vector<std::int64_t>& rows) override { return body(rows, x_); }
  bool take_output(std::size_t slot, const std::vector<std::int64_t>& rows, const TensorReply& r) override {
    if (r.shape.dims != std::vector<std::int64_t>{static_cast<std::int64_t>(rows.size()), dim()}) return false;
    outputs[slot] = floats_of(r.payload);
    return true;
  }
  Body output_grads(std::size_t, const std::vector<std::int64_t>& rows) override { return body(rows, std::vector(x_.size(), ones())); }
  bool take_input_grad(std::size_t, const std::vector<std::int64_t>& rows, const TensorReply& r) override {
    if (r.shape.dims != std::vector<std::int64_t>{static_cast<std::int64_t>(rows.size()), dim()}) return false;
    const std::vector<float> v = floats_of(r.payload);
    for (std::size_t i = 0; i < rows.size(); ++i)
      for (std::size_t c = 0; c < x_[0].size(); ++c) gx[static_cast<std::size_t>(rows[i])][c] += v[i * x_[0].size() + c];
    return true;
  }
  std::int64_t dim() const { return static_cast<std::int64_t>(x_[0].size()); }
  std::map<std::size_t, std::vector<float>> outputs;
  std::vector<std::vector<float>> gx;

 private:
  std::vector<float> ones() const { return std::vector<float>(x_[0].size(), 1.0f); }
  Body body(const std::vector<std::int64_t>& rows, const std::vector<std::vector<float>>& of) const {
    std::vector<float> v;
    for (auto r : rows) v.insert(v.end(), of[static_cast<std::size_t>(r)].begin(), of[static_cast<std::size_t>(r)].end());
    return Body{TensorShape{{static_cast<std::int64_t>(rows.size()), dim()}}, floats(v), 0};
  }
};

constexpr std::int64_t kDim = 3;

// Peers 0..5 each serve one expert of a 3x3 grid (cells below, scale i + 1); peer 6 is the client.
struct Swarm : test::FakeDhtSwarm {
  Swarm() : FakeDhtSwarm(7, config(), {}, 900) {
    join_all(false);
    for (std::size_t i = 0; i < 6; ++i) {
      backends.push_back(std::make_unique<ScaleExperts>(kDim));
      const ExpertUid uid{"ffn", cells[i]};
      backends.back()->scale[uid.str()] = static_cast<float>(i + 1);
      servers.push_back(std::make_unique<ExpertServer>(fake[i].runtime(), *rpcs[i], *backends.back()));
      std::vector<ExpertUid> mine{uid};
      run(declare_experts(*nodes[i], mine, fake[i].local(), fake.net.now() + 1h));
      scale_of[uid.str()] = static_cast<float>(i + 1);
      peer_of[uid.str()] = i;
    }
  }
  static dht::DhtConfig config() {
    dht::DhtConfig cfg;
    cfg.k = 8;
    cfg.refresh_period = Duration::zero();
    cfg.replicate_period = Duration::zero();
    cfg.rpc_timeout = 200ms;
    return cfg;
  }
  MixtureRouter router(Routing routing, std::size_t k, std::size_t k_min) {
    MixtureConfig c;
    c.grid = {3, 3};
    c.routing = routing;
    c.k = k;
    c.k_min = k_min;
    c.forward_timeout = c.backward_timeout = 2s;
    c.grace = 50ms;
    return MixtureRouter(fake[6].runtime(), *rpcs[6], *nodes[6], c);
  }
  void kill(const std::string& uid) { fake[peer_of.at(uid)].up = false; }
  std::vector<std::vector<std::uint32_t>> cells{{0, 0}, {0, 2}, {1, 1}, {2, 0}, {2, 2}, {1, 2}};
  std::vector<std::unique_ptr<ScaleExperts>> backends;
  std::vector<std::unique_ptr<ExpertServer>> servers;
  std::map<std::string, float> scale_of;
  std::map<std::string, std::size_t> peer_of;
};

// Scores favouring coordinate `a` in dimension 0 and `b` in dimension 1, per sample.
GateScores scores_for(const std::vector<std::pair<int, int>>& favourites) {
  GateScores g{favourites.size(), {}};
  for (auto [a, b] : favourites)
    for (int d = 0; d < 2; ++d)
      for (int i = 0; i < 3; ++i) g.values.push_back(i == (d == 0 ? a : b) ? 1.0f : -static_cast<float>(i) * 0.1f);
  return g;
}

std::vector<std::vector<float>> inputs(std::size_t batch) {
  std::vector<std::vector<float>> x(batch, std::vector<float>(kDim));
  for (std::size_t b = 0; b < batch; ++b)
    for (std::int64_t c = 0; c < kDim; ++c) x[b][static_cast<std::size_t>(c)] = static_cast<float>(b * 10 + static_cast<std::size_t>(c));
  return x;
}

}  // namespace

TEST(MixtureRouter, BatchRoutingSendsEverySampleToTheBatchsBestAndTheAnswersAreExact) {
  Swarm s;
  auto r = s.router(Routing::kBatch, 2, 2);
  Rows rows(inputs(4));
  auto plan = s.run(r.forward(scores_for({{1, 1}, {1, 1}, {1, 2}, {1, 1}}), rows));
  ASSERT_TRUE(plan.ok()) << plan.error().describe();
  ASSERT_EQ(plan->calls.size(), 2u);
  // The mean scores favour row 1 of the grid, then column 1: ffn.1.1 (2.0 - ...) and ffn.1.2.
  EXPECT_EQ(plan->calls[0].expert.uid, "ffn.1.1");
  EXPECT_EQ(plan->calls[1].expert.uid, "ffn.1.2");
  for (const auto& c : plan->calls) {
    EXPECT_EQ(c.rows, (std::vector<std::int64_t>{0, 1, 2, 3}));
    const auto& out = rows.outputs.at(c.slot);
    ASSERT_EQ(out.size(), 4u * kDim);
    for (std::size_t i = 0; i < out.size(); ++i)
      EXPECT_EQ(out[i], static_cast<float>((i / kDim) * 10 + i % kDim) * s.scale_of.at(c.expert.uid));
  }
  for (const auto& route : plan->routes) EXPECT_EQ(route, (std::vector<std::string>{"ffn.1.1", "ffn.1.2"}));
  // The backward sends the inputs and the output gradients (ones): each expert answers its scale.
  auto ok = s.run(r.backward(*plan, rows));
  EXPECT_EQ(ok, (std::vector<bool>{true, true}));
  for (const auto& g : rows.gx)
    for (float v : g) EXPECT_EQ(v, s.scale_of.at("ffn.1.1") + s.scale_of.at("ffn.1.2"));
  std::size_t backward_batches = 0;
  for (const auto& b : s.backends)
    for (const auto& batch : b->batches) backward_batches += batch.backward ? 1 : 0;
  EXPECT_EQ(backward_batches, 2u);
}

TEST(MixtureRouter, PerSampleRoutingGivesEachExpertItsOwnRows) {
  Swarm s;
  auto r = s.router(Routing::kSample, 1, 1);
  Rows rows(inputs(3));
  auto plan = s.run(r.forward(scores_for({{0, 0}, {2, 2}, {0, 0}}), rows));
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->calls.size(), 2u);
  EXPECT_EQ(plan->calls[0].expert.uid, "ffn.0.0");
  EXPECT_EQ(plan->calls[0].rows, (std::vector<std::int64_t>{0, 2}));
  EXPECT_EQ(plan->calls[1].expert.uid, "ffn.2.2");
  EXPECT_EQ(plan->calls[1].rows, (std::vector<std::int64_t>{1}));
  EXPECT_EQ(rows.outputs.at(plan->calls[1].slot), (std::vector<float>{10 * 5.0f, 11 * 5.0f, 12 * 5.0f}));
  EXPECT_EQ(plan->routes[1], (std::vector<std::string>{"ffn.2.2"}));
}

TEST(MixtureRouter, SwitchRoutingIsOneExpertPerSample) {
  Swarm s;
  auto r = s.router(Routing::kSwitch, 4, 3);
  EXPECT_EQ(r.config().k, 1u);
  EXPECT_EQ(r.config().k_min, 1u);
  Rows rows(inputs(2));
  auto plan = s.run(r.forward(scores_for({{1, 1}, {2, 0}}), rows));
  ASSERT_TRUE(plan.ok());
  for (const auto& route : plan->routes) EXPECT_EQ(route.size(), 1u);
  EXPECT_EQ(plan->routes[0][0], "ffn.1.1");
  EXPECT_EQ(plan->routes[1][0], "ffn.2.0");
}

TEST(MixtureRouter, FailedExpertsAreSkippedAndAllFailedSearchesAgain) {
  Swarm s;
  auto r = s.router(Routing::kBatch, 2, 1);
  Rows rows(inputs(2));
  s.kill("ffn.1.1");
  auto plan = s.run(r.forward(scores_for({{1, 1}, {1, 1}}), rows));
  ASSERT_TRUE(plan.ok());
  ASSERT_EQ(plan->calls.size(), 1u) << "k_min = 1: the other of the two answers";
  EXPECT_EQ(plan->calls[0].expert.uid, "ffn.1.2");
  EXPECT_EQ(plan->rounds, 1u);
  EXPECT_EQ(s.fake.metrics.counter("moe.expert_failures"), 1);
  // Both best experts dead: the second round goes to the next two.
  s.kill("ffn.1.2");
  auto again = s.run(r.forward(scores_for({{1, 1}, {1, 1}}), rows));
  ASSERT_TRUE(again.ok());
  EXPECT_EQ(again->rounds, 2u);
  EXPECT_EQ(s.fake.metrics.counter("moe.researches"), 1);
  for (const auto& c : again->calls) EXPECT_TRUE(c.expert.uid != "ffn.1.1" && c.expert.uid != "ffn.1.2") << c.expert.uid;
  // An answer of the wrong shape counts as a failure too.
  Swarm t;
  t.backends[t.peer_of.at("ffn.1.1")]->wrong_shape = true;
  auto r2 = t.router(Routing::kBatch, 1, 1);
  Rows rows2(inputs(1));
  auto p2 = t.run(r2.forward(scores_for({{1, 1}}), rows2));
  ASSERT_TRUE(p2.ok());
  EXPECT_EQ(p2->rounds, 2u);
  EXPECT_NE(p2->calls[0].expert.uid, "ffn.1.1") << "its answer had the wrong shape";
}

TEST(MixtureRouter, NobodyAnsweringIsAnErrorAndBadScoresAreRefused) {
  Swarm s;
  auto r = s.router(Routing::kBatch, 2, 1);
  for (const auto& [uid, i] : s.peer_of) s.kill(uid);
  Rows rows(inputs(2));
  auto plan = s.run(r.forward(scores_for({{1, 1}, {0, 0}}), rows));
  ASSERT_FALSE(plan.ok());
  EXPECT_NE(plan.error().message.find("fewer than 1 experts answered"), std::string::npos) << plan.error().message;
  GateScores short_scores{2, std::vector<float>(5)};
  auto bad = s.run(r.forward(short_scores, rows));
  ASSERT_FALSE(bad.ok());
  EXPECT_EQ(bad.error().code, ErrorCode::kInvalidArgument);
}

TEST(MixtureRouter, ABackwardThatFailsContributesNoGradient) {
  Swarm s;
  auto r = s.router(Routing::kBatch, 2, 2);
  Rows rows(inputs(2));
  auto plan = s.run(r.forward(scores_for({{1, 1}, {1, 1}}), rows));
  ASSERT_TRUE(plan.ok());
  s.kill(plan->calls[0].expert.uid);
  auto ok = s.run(r.backward(*plan, rows));
  EXPECT_EQ(ok, (std::vector<bool>{false, true}));
  EXPECT_EQ(s.fake.metrics.counter("moe.backward_failures"), 1);
  for (const auto& g : rows.gx)
    for (float v : g) EXPECT_EQ(v, s.scale_of.at(plan->calls[1].expert.uid)) << "only the live expert's gradient";
}

// ---- the server -------------------------------------------------------------------------

namespace {

struct ServerPair : test::FakeSwarm {
  explicit ServerPair(ServerOptions o = {}) : FakeSwarm(5) {
    for (std::size_t i = 0; i < 5; ++i) rpcs.push_back(std::make_unique<Rpc>((*this)[i].runtime()));
    experts.scale["e.0"] = 2;
    experts.scale["throw.0"] = 1;
    server = std::make_unique<ExpertServer>((*this)[0].runtime(), *rpcs[0], experts, o);
  }
  ~ServerPair() {
    server.reset();
    for (auto& r : rpcs) r->shutdown();
  }
  // Client c asks uid to forward `rows` rows (at time now + after).
  Task<Result<TensorReply>> ask(std::size_t c, std::string uid, std::int64_t rows, std::int64_t dim = kDim) {
    ForwardRequest q{uid, TensorShape{{rows, dim}}, 0, floats(std::vector<float>(static_cast<std::size_t>(rows * dim), 1.0f)), 0};
    return rpcs[c]->call<TensorReply>((*this)[0].local(), std::move(q), 10s);
  }
  std::vector<Result<TensorReply>> all(std::vector<Task<Result<TensorReply>>> tasks) {
    auto t = when_all(std::move(tasks));
    t.start();
    net.run(1h, [&] { return t.done(); });
    return t.result();
  }
  ScaleExperts experts{kDim};
  std::vector<std::unique_ptr<Rpc>> rpcs;
  std::unique_ptr<ExpertServer> server;
};

}  // namespace

TEST(ExpertServerCore, RequestsArrivingTogetherAreOneBatchAndMaxBatchSplits) {
  ServerPair p;
  std::vector<Task<Result<TensorReply>>> t;
  for (std::size_t c = 1; c <= 4; ++c) t.push_back(p.ask(c, "e.0", 8));
  auto r = p.all(std::move(t));
  for (auto& x : r) {
    ASSERT_TRUE(x.ok()) << x.error().describe();
    EXPECT_EQ(x->shape.dims, (std::vector<std::int64_t>{8, kDim}));
    EXPECT_EQ(floats_of(x->payload)[0], 2.0f);
  }
  ASSERT_EQ(p.experts.batches.size(), 1u);
  EXPECT_EQ(p.experts.batches[0].requests, 4u);
  EXPECT_EQ(p.experts.batches[0].rows, 32);

  ServerOptions o;
  o.max_batch = 16;
  ServerPair q(o);
  std::vector<Task<Result<TensorReply>>> u;
  for (std::size_t c = 1; c <= 4; ++c) u.push_back(q.ask(c, "e.0", 8));
  for (auto& x : q.all(std::move(u))) EXPECT_TRUE(x.ok());
  ASSERT_EQ(q.experts.batches.size(), 2u);
  EXPECT_EQ(q.experts.batches[0].rows, 16);
  EXPECT_EQ(q.experts.batches[1].rows, 16);
}

TEST(ExpertServerCore, MinBatchHoldsTheOldestForCompanyUpToTheWait) {
  ServerOptions o;
  o.min_batch = 16;
  o.batch_wait = 100ms;
  ServerPair p(o);
  // One request of 8 rows alone: served after the 100 ms wait, not before.
  const TimePoint t0 = p.net.now();
  std::vector<Task<Result<TensorReply>>> t;
  t.push_back(p.ask(1, "e.0", 8));
  auto r = p.all(std::move(t));
  ASSERT_TRUE(r[0].ok());
  EXPECT_GE(p.net.now() - t0, 100ms);
  EXPECT_LT(p.net.now() - t0, 150ms);
}

TEST(ExpertServerCore, BadRequestsGetClearErrorsAndTheServerKeepsServing) {
  ServerPair p;
  std::vector<Task<Result<TensorReply>>> t;
  t.push_back(p.ask(1, "nobody.0", 2));
  t.push_back(p.ask(2, "e.0", 2, kDim + 1));
  t.push_back(p.ask(3, "throw.0", 2));
  t.push_back(p.ask(4, "e.0", 0));
  auto r = p.all(std::move(t));
  ASSERT_FALSE(r[0].ok());
  EXPECT_NE(r[0].error().message.find("no expert nobody.0 here"), std::string::npos);
  ASSERT_FALSE(r[1].ok());
  EXPECT_NE(r[1].error().message.find("takes [batch, 3] inputs, got [2, 4]"), std::string::npos) << r[1].error().message;
  ASSERT_FALSE(r[2].ok());
  EXPECT_NE(r[2].error().message.find("out of memory"), std::string::npos) << r[2].error().message;
  ASSERT_FALSE(r[3].ok());
  // More rows than a batch may hold, and a float32 payload that does not match its shape, are
  // refused before they reach the device.
  auto big = p.all([&] {
    std::vector<Task<Result<TensorReply>>> v;
    v.push_back(p.ask(1, "e.0", 5000));
    ForwardRequest q{"e.0", TensorShape{{1000000, kDim}}, 0, floats(std::vector<float>(3, 1.0f)), 0};
    v.push_back(p.rpcs[2]->call<TensorReply>(p[0].local(), std::move(q), 10s));
    return v;
  }());
  ASSERT_FALSE(big[0].ok());
  EXPECT_NE(big[0].error().message.find("over the server's 4096 per batch"), std::string::npos) << big[0].error().message;
  ASSERT_FALSE(big[1].ok());
  EXPECT_NE(big[1].error().message.find("over the server's"), std::string::npos) << big[1].error().message;
  std::vector<Task<Result<TensorReply>>> lying;
  {
    ForwardRequest q{"e.0", TensorShape{{2, kDim}}, 0, floats(std::vector<float>(5, 1.0f)), 0};
    lying.push_back(p.rpcs[3]->call<TensorReply>(p[0].local(), std::move(q), 10s));
  }
  auto lie = p.all(std::move(lying));
  ASSERT_FALSE(lie[0].ok());
  EXPECT_NE(lie[0].error().message.find("does not hold the tensors"), std::string::npos) << lie[0].error().message;
  // Backward gradients of the wrong shape are refused before the backend sees them.
  BackwardRequest q{"e.0", TensorShape{{2, kDim}}, TensorShape{{3, kDim}}, 0, floats(std::vector<float>(12, 0.0f)), 0, 24};
  auto bad = p.all([&] {
    std::vector<Task<Result<TensorReply>>> v;
    v.push_back(p.rpcs[1]->call<TensorReply>(p[0].local(), std::move(q), 10s));
    return v;
  }());
  ASSERT_FALSE(bad[0].ok());
  EXPECT_NE(bad[0].error().message.find("output gradients must have the output's shape"), std::string::npos);
  const std::size_t seen = p.experts.batches.size();
  std::vector<Task<Result<TensorReply>>> good;
  good.push_back(p.ask(1, "e.0", 2));
  EXPECT_TRUE(p.all(std::move(good))[0].ok());
  EXPECT_EQ(p.experts.batches.size(), seen + 1);
}

TEST(TimedBackend, BatchesTakeRowsOverSpeedOneAtATime) {
  ServerPair p;
  TimedBackend device(p[1].runtime(), p.experts, 100, 50);  // 100 rows/s forward
  ExpertServer timed(p[1].runtime(), *p.rpcs[1], device);
  const TimePoint t0 = p.net.now();
  // Two experts' lanes at once: 20 rows and 30 rows run one after the other on the one device.
  p.experts.scale["f.0"] = 3;
  auto call = [&](std::size_t c, std::string uid, std::int64_t rows) {
    ForwardRequest q{uid, TensorShape{{rows, kDim}}, 0, floats(std::vector<float>(static_cast<std::size_t>(rows * kDim), 1.0f)), 0};
    return p.rpcs[c]->call<TensorReply>(p[1].local(), std::move(q), 10s);
  };
  std::vector<Task<Result<TensorReply>>> t;
  t.push_back(call(2, "e.0", 20));
  t.push_back(call(3, "f.0", 30));
  auto r = p.all(std::move(t));
  ASSERT_TRUE(r[0].ok() && r[1].ok());
  // 0.2 s + 0.3 s of device time, plus two 5 ms hops.
  EXPECT_EQ(p.net.now() - t0, 510ms);
}
