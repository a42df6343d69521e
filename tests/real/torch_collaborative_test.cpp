// Collaborative training from a LibTorch loop: 3 live peers (one process, loopback TCP) with
// batches of 4, 8 and 12 samples take two global steps with torch::optim::SGD and end with the
// parameters of one process doing SGD on the concatenated global batches.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include "core/dht/validate.hpp"
#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"
#include "real/torch/collaborative.hpp"
#include "tests/support/live_peers.hpp"

namespace apiary::real {
namespace {

TEST(TorchCollaborative, EqualsSgdOnTheConcatenatedGlobalBatches) {
  test::LivePeers peers(3);
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
  dht::DhtConfig dcfg;
  dcfg.k = 4;
  for (int i = 0; i < 3; ++i)
    nodes.push_back(
        std::make_unique<dht::DhtNode>(peers.runtime(i), *peers.rpcs[i], dht::Identity::from_seed(2000 + i).id(), dcfg,
                                       std::vector<std::shared_ptr<dht::Validator>>{std::make_shared<dht::SignatureValidator>()}));
  auto drive = peers.drive();
  for (int i = 0; i < 3; ++i) {
    std::vector<Endpoint> seeds{peers.endpoint(i == 0 ? 1 : 0)};
    peers.run(nodes[i]->bootstrap(seeds));
  }
  // Identical initial models; different data per peer.
  std::vector<torch::nn::Linear> models;
  std::vector<std::unique_ptr<torch::optim::SGD>> opts;
  for (int i = 0; i < 3; ++i) {
    torch::manual_seed(9);
    models.emplace_back(4, 1);
    opts.push_back(std::make_unique<torch::optim::SGD>(models.back()->parameters(), torch::optim::SGDOptions(0.1)));
  }
  torch::manual_seed(10);
  torch::nn::Linear reference(4, 1);
  {
    torch::manual_seed(9);
    torch::nn::Linear same(4, 1);
    torch::NoGradGuard g;
    reference->weight.copy_(same->weight);
    reference->bias.copy_(same->bias);
  }
  torch::optim::SGD ref_opt(reference->parameters(), torch::optim::SGDOptions(0.1));
  optim::CollaborativeConfig cc;
  cc.progress.target_batch = 24;
  cc.matchmaking.target_group_size = cc.matchmaking.min_group_size = 3;
  cc.matchmaking.budget = std::chrono::seconds(5);
  cc.matchmaking.poll = std::chrono::milliseconds(100);
  cc.poll = std::chrono::milliseconds(50);
  cc.allreduce.min_part = 1;
  std::vector<std::unique_ptr<TorchCollaborative>> collabs;
  for (int i = 0; i < 3; ++i)
    collabs.push_back(std::make_unique<TorchCollaborative>(*models[i], *opts[i], peers.runtime(i), *peers.rpcs[i], *nodes[i],
                                                           dht::Identity::from_seed(2100 + i), cc));
  for (int step = 0; step < 2; ++step) {
    std::vector<torch::Tensor> xs, ys;
    for (int i = 0; i < 3; ++i) {
      const std::int64_t n = 4 * (i + 1);
      xs.push_back(torch::randn({n, 4}));
      ys.push_back(xs.back().sum(1, true) * 0.5);
      models[i]->zero_grad();
      torch::mse_loss(models[i]->forward(xs.back()), ys.back()).backward();
      collabs[i]->accumulate(static_cast<std::uint64_t>(n));
    }
    std::vector<Task<Result<optim::StepReport>>> steps;
    for (auto& c : collabs) {
      steps.push_back(c->step());
      steps.back().start();
    }
    drive([&] { return std::all_of(steps.begin(), steps.end(), [](auto& t) { return t.done(); }); });
    for (auto& t : steps) {
      ASSERT_TRUE(t.done());
      auto r = t.result();
      ASSERT_TRUE(r.ok()) << r.error().describe();
      EXPECT_EQ(r->group, 3u);
    }
    ref_opt.zero_grad();
    torch::mse_loss(reference->forward(torch::cat(xs)), torch::cat(ys)).backward();
    ref_opt.step();
    for (int i = 0; i < 3; ++i) {
      EXPECT_TRUE(torch::allclose(models[i]->weight, reference->weight, 0, 1e-5)) << "peer " << i << " step " << step;
      EXPECT_TRUE(torch::allclose(models[i]->bias, reference->bias, 0, 1e-5)) << "peer " << i << " step " << step;
    }
  }
  for (auto& r : peers.rpcs) r->shutdown();
  collabs.clear();
  nodes.clear();
}

}  // namespace
}  // namespace apiary::real

namespace apiary::real {
namespace {

// Optimizer state travels as flat floats: copied into a fresh optimizer (over a copy of the
// model) it makes the next step identical, for SGD with momentum and for Adam.
template <class Opt, class Options>
void state_round_trip(Options options) {
  torch::manual_seed(3);
  torch::nn::Linear a(5, 3);
  Opt opt_a(a->parameters(), options);
  const auto x = torch::randn({8, 5});
  for (int i = 0; i < 3; ++i) {
    opt_a.zero_grad();
    a->forward(x).pow(2).sum().backward();
    opt_a.step();
  }
  torch::nn::Linear b(5, 3);
  {
    torch::NoGradGuard g;
    b->weight.copy_(a->weight);
    b->bias.copy_(a->bias);
  }
  Opt opt_b(b->parameters(), options);
  const auto state = get_optimizer_state(opt_a);
  ASSERT_EQ(state.size(), optimizer_state_schema(opt_a).total());
  set_optimizer_state(opt_b, state);
  EXPECT_EQ(get_optimizer_state(opt_b), state);
  for (auto* o : {&opt_a, &opt_b}) o->zero_grad();
  a->forward(x).pow(2).sum().backward();
  b->forward(x).pow(2).sum().backward();
  opt_a.step();
  opt_b.step();
  EXPECT_TRUE(torch::equal(a->weight, b->weight));
  EXPECT_TRUE(torch::equal(a->bias, b->bias));
  EXPECT_THROW(set_optimizer_state(opt_b, std::vector<float>(3)), std::invalid_argument);
}

TEST(TorchOptimizerState, SgdMomentumRoundTrips) {
  state_round_trip<torch::optim::SGD>(torch::optim::SGDOptions(0.1).momentum(0.9));
  torch::nn::Linear l(2, 2);
  torch::optim::SGD plain(l->parameters(), torch::optim::SGDOptions(0.1));
  EXPECT_EQ(optimizer_state_schema(plain).total(), 0u);  // plain SGD has no state
}

TEST(TorchOptimizerState, AdamMomentsAndStepsRoundTrip) {
  state_round_trip<torch::optim::Adam>(torch::optim::AdamOptions(0.01));
  state_round_trip<torch::optim::AdamW>(torch::optim::AdamWOptions(0.01));
}

// Dynamic loss scaling: scaled backward then unscale gives the unscaled gradients; an overflow
// is reported (the batch is skipped) and halves the scale; clean batches grow it again.
TEST(GradScaler, UnscalesSkipsOverflowsAndAdaptsTheScale) {
  torch::manual_seed(4);
  torch::nn::Linear m(6, 2);
  const auto x = torch::randn({4, 6});
  m->zero_grad();
  m->forward(x).sum().backward();
  const auto reference = m->weight.grad().clone();
  GradScaler::Options o;
  o.init_scale = 1024;
  o.growth_interval = 2;
  GradScaler scaler(o);
  m->zero_grad();
  scaler.scale(m->forward(x).sum()).backward();
  EXPECT_TRUE(scaler.unscale(m->parameters()));
  EXPECT_TRUE(torch::allclose(m->weight.grad(), reference, 1e-6, 1e-6));
  scaler.update(false);
  m->zero_grad();
  (m->forward(x).sum() * std::numeric_limits<float>::infinity()).backward();
  EXPECT_FALSE(scaler.unscale(m->parameters()));
  scaler.update(true);
  EXPECT_EQ(scaler.current_scale(), 512);
  scaler.update(false);
  scaler.update(false);
  EXPECT_EQ(scaler.current_scale(), 1024);
}

}  // namespace
}  // namespace apiary::real
