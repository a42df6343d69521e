// Collaborative training from a LibTorch loop: 3 live peers (one process, loopback TCP) with
// batches of 4, 8 and 12 samples take two global steps with torch::optim::SGD and end with the
// parameters of one process doing SGD on the concatenated global batches.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>

#include "core/dht/validate.hpp"
#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"
#include "real/torch_collaborative.hpp"
#include "tests/support/live_peers.hpp"

namespace apiary::real {
namespace {

TEST(TorchCollaborative, EqualsSgdOnTheConcatenatedGlobalBatches) {
  test::LivePeers peers(3);
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
  dht::DhtConfig dcfg;
  dcfg.k = 4;
  for (int i = 0; i < 3; ++i)
    nodes.push_back(std::make_unique<dht::DhtNode>(peers.runtime(i), *peers.rpcs[i], dht::Identity::from_seed(2000 + i).id(),
                                                   dcfg, std::vector<std::shared_ptr<dht::Validator>>{std::make_shared<dht::SignatureValidator>()}));
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
