// Real math in simulated time: LibTorch experts behind the device model (moe::TimedBackend) on
// ns-3, served by core's expert server, called by the LibTorch remote mixture through core's
// router. The answer is exactly the local mixture of the same experts, and the simulated time of
// a forward and of a backward includes the device's rows / speed.
#include <gtest/gtest.h>

#include "core/dht/node.hpp"
#include "core/moe/server.hpp"
#include "real/torch/expert_server.hpp"
#include "real/torch/mixture.hpp"
#include "tests/conformance/worlds.hpp"

namespace apiary::real {
namespace {

TEST(SimTorchMixture, RealMathInNs3BehindADeviceModel) {
  torch::manual_seed(11);
  test::SimWorld world;
  std::vector<std::unique_ptr<Rpc>> rpcs;
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
  dht::DhtConfig cfg;
  cfg.k = 8;
  for (std::size_t i = 0; i < 4; ++i) {
    world.add_peer();
    rpcs.push_back(std::make_unique<Rpc>(world.runtime(i)));
    nodes.push_back(std::make_unique<dht::DhtNode>(world.runtime(i), *rpcs[i], dht::Identity::from_seed(i + 700).id(), cfg));
  }
  auto run = [&](auto task) {
    task.start();
    EXPECT_TRUE(world.run_until([&] { return task.done(); }, std::chrono::hours(1)));
    return task.result();
  };
  for (std::size_t i = 0; i < 4; ++i) {
    std::vector<Endpoint> seeds{world.endpoint(i == 0 ? 1 : 0)};
    run(nodes[i]->bootstrap(seeds));
  }
  const std::vector<std::vector<std::uint32_t>> cells{{0, 0}, {1, 1}, {2, 2}};
  std::vector<std::unique_ptr<TorchExperts>> experts;
  std::vector<std::unique_ptr<moe::TimedBackend>> devices;
  std::vector<std::unique_ptr<moe::ExpertServer>> servers;
  for (std::size_t i = 0; i < 3; ++i) {
    experts.push_back(std::make_unique<TorchExperts>(world.runtime(i)));
    const moe::ExpertUid uid{"ffn", cells[i]};
    experts.back()->add(uid.str(), make_ffn_expert(8, 16, 0.1));
    devices.push_back(std::make_unique<moe::TimedBackend>(world.runtime(i), *experts.back(), 1000, 500));  // rows/s
    servers.push_back(std::make_unique<moe::ExpertServer>(world.runtime(i), *rpcs[i], *devices.back()));
    std::vector<moe::ExpertUid> mine{uid};
    run(moe::declare_experts(*nodes[i], mine, world.endpoint(i), world.runtime(i).now() + std::chrono::hours(1)));
  }
  MoeOptions o;
  o.grid = {3, 3};
  o.dim = 8;
  o.k_best = 3;
  o.k_min = 3;
  RemoteExpert::Drive drive = [&world](const std::function<bool()>& done) { world.run_until(done, std::chrono::hours(1)); };
  RemoteMixtureOfExperts moe(world.runtime(3), *rpcs[3], *nodes[3], o, drive);
  const torch::Tensor x = torch::randn({16, 8});
  const TimePoint t0 = world.runtime(3).now();
  const torch::Tensor y = moe->forward(x);
  const Duration took = world.runtime(3).now() - t0;
  ASSERT_EQ(moe->last_responders().size(), 3u);
  torch::Tensor want;  // the same mixture, here: softmax over the experts of the summed gate scores
  {
    torch::NoGradGuard g;
    const torch::Tensor logits = moe->gate(x);
    std::vector<torch::Tensor> scores, outs;
    for (std::size_t i = 0; i < 3; ++i) {
      scores.push_back(logits.select(1, cells[i][0]) + logits.select(1, 3 + cells[i][1]));
      outs.push_back(experts[i]->find(moe::ExpertUid{"ffn", cells[i]}.str())->forward(x));
    }
    const torch::Tensor w = torch::softmax(torch::stack(scores, 1), 1);
    want = torch::zeros_like(x);
    for (std::size_t i = 0; i < 3; ++i) want += w.select(1, static_cast<std::int64_t>(i)).unsqueeze(1) * outs[i];
  }
  EXPECT_TRUE(torch::allclose(y, want, 1e-5, 1e-6)) << (y - want).abs().max().item<float>();
  EXPECT_GE(took, std::chrono::milliseconds(16)) << "16 rows at 1,000 rows/s on each server's device";
  // The backward reaches every expert (the inputs need no gradient; the experts still learn),
  // which steps once; 16 rows at 500 rows/s is 32 ms of device.
  const TimePoint t1 = world.runtime(3).now();
  y.sum().backward();
  EXPECT_GE(world.runtime(3).now() - t1, std::chrono::milliseconds(32));
  for (std::size_t i = 0; i < 3; ++i) EXPECT_EQ(experts[i]->find(moe::ExpertUid{"ffn", cells[i]}.str())->updates, 1u);
  EXPECT_GT(moe->gate->weight.grad().abs().sum().item<float>(), 0);
  servers.clear();
  for (auto& r : rpcs) r->shutdown();
  nodes.clear();
}

}  // namespace
}  // namespace apiary::real
