// Remote DMoE experts over live loopback sockets: forward bit for bit, backward gradients and
// server-side updates, wrong shapes refused while the server keeps serving, checkpoints.
#include <gtest/gtest.h>

#include <boost/asio/io_context.hpp>
#include <cstring>
#include <filesystem>

#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"
#include "harness/data/idx.hpp"
#include "core/dht/validate.hpp"
#include "real/torch/mixture.hpp"
#include "tests/support/live_peers.hpp"

namespace apiary::real {
namespace {

// A client and a server, live on loopback.
struct Pair : test::LivePeers {
  Pair() : LivePeers(2) { server = std::make_unique<ExpertServer>(runtime(0), *rpcs[0]); }
  std::unique_ptr<ExpertServer> server;
};

TEST(RemoteExpert, ForwardIsBitForBitAndBackwardMatchesLocalAutograd) {
  torch::manual_seed(0);
  Pair p;
  p.server->add("ffn.0.3", make_ffn_expert(16, 64, 0.1));
  HostedExpert* hosted = p.server->find("ffn.0.3");
  RemoteExpert remote(*p.rpcs[1], p.rts[0]->local(), "ffn.0.3", p.drive());

  const torch::Tensor x = torch::randn({8, 16});
  torch::Tensor local;
  {
    torch::NoGradGuard g;
    local = hosted->forward(x);
  }
  const torch::Tensor y = remote.forward(x.clone().requires_grad_(true));
  EXPECT_TRUE(torch::equal(y, local)) << "remote forward differs from the local module";

  // Local reference gradients, computed before the server's update.
  std::vector<torch::Tensor> before;
  for (const auto& prm : hosted->module->parameters()) before.push_back(prm.detach().clone());
  torch::Tensor xl = x.clone().requires_grad_(true);
  const torch::Tensor w = torch::randn({8, 16});
  (hosted->forward(xl) * w).sum().backward();
  hosted->module->zero_grad();

  torch::Tensor xr = x.clone().requires_grad_(true);
  (remote.forward(xr) * w).sum().backward();
  ASSERT_TRUE(xr.grad().defined());
  EXPECT_TRUE(torch::allclose(xr.grad(), xl.grad(), 0, 1e-6)) << (xr.grad() - xl.grad()).abs().max().item<float>();
  EXPECT_EQ(hosted->updates, 1u);
  EXPECT_EQ(p.metrics.counter("moe.backwards_from_kept"), 1) << "the backward should reuse the forward's activations";
  EXPECT_EQ(p.server->kept(), 1u);  // the first forward (not back-propagated) is still held
  double moved = 0;
  auto params = hosted->module->parameters();
  for (std::size_t i = 0; i < params.size(); ++i) moved += (params[i] - before[i]).abs().sum().item<double>();
  EXPECT_GT(moved, 0.0) << "the server's optimizer step changed nothing";
}

TEST(RemoteExpert, WrongShapesAreRefusedAndTheServerKeepsServing) {
  torch::manual_seed(1);
  Pair p;
  p.server->add("ffn.1.1", make_ffn_expert(16, 32, 0.1));
  RemoteExpert remote(*p.rpcs[1], p.rts[0]->local(), "ffn.1.1", p.drive());
  try {
    remote.call_forward(torch::randn({4, 15}));
    FAIL() << "a [4, 15] input was accepted";
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("takes [batch, 16] inputs, got [4, 15]"), std::string::npos) << e.what();
  }
  EXPECT_THROW(remote.call_forward(torch::randn({16})), std::runtime_error);
  RemoteExpert missing(*p.rpcs[1], p.rts[0]->local(), "ffn.9.9", p.drive());
  EXPECT_THROW(missing.call_forward(torch::randn({2, 16})), std::runtime_error);
  EXPECT_EQ(remote.call_forward(torch::randn({3, 16})).sizes(), (std::vector<std::int64_t>{3, 16}));
}

TEST(RemoteExpert, CheckpointRestoreGivesTheSameOutputs) {
  torch::manual_seed(2);
  Pair p;
  p.server->add("ffn.2.0", make_ffn_expert(8, 16, 0.5));
  RemoteExpert remote(*p.rpcs[1], p.rts[0]->local(), "ffn.2.0", p.drive());
  const torch::Tensor x = torch::randn({5, 8});
  const torch::Tensor y0 = remote.call_forward(x);
  const std::string dir = testing::TempDir() + "/apiary-ckpt";
  p.server->save(dir);
  remote.call_backward(x, torch::ones({5, 8}));  // the expert trains: outputs change
  EXPECT_FALSE(torch::equal(remote.call_forward(x), y0));
  p.server->load(dir);
  EXPECT_TRUE(torch::equal(remote.call_forward(x), y0));
  std::filesystem::remove_all(dir);
}

}  // namespace
}  // namespace apiary::real

namespace apiary::real {
namespace {

// A live swarm in one process: six expert servers (one expert each on a 3x3 grid) and a client,
// all DHT peers on one io_context.
// A live swarm in one process: six expert servers (one expert each on a 3x3 grid) and a client,
// all DHT peers on one io_context.
struct MoeSwarm : test::LivePeers {
  static constexpr int kServers = 6;
  explicit MoeSwarm(std::int64_t dim = 8, std::int64_t hidden = 16, double lr = 0.05) : LivePeers(kServers + 1), dim_(dim) {
    dht::DhtConfig cfg;
    cfg.k = 8;
    cfg.rpc_timeout = std::chrono::milliseconds(500);
    for (int i = 0; i <= kServers; ++i)
      nodes.push_back(std::make_unique<dht::DhtNode>(runtime(i), *rpcs[i], dht::Identity::from_seed(i + 300).id(), cfg));
    for (int i = 0; i <= kServers; ++i) {
      std::vector<Endpoint> seeds{endpoint(i == 0 ? 1 : 0)};
      run(nodes[i]->bootstrap(seeds));
    }
    for (int i = 0; i < kServers; ++i) {
      servers.push_back(std::make_unique<ExpertServer>(runtime(i), *rpcs[i]));
      const moe::ExpertUid uid{"ffn", cells[i]};
      servers.back()->add(uid.str(), make_ffn_expert(dim, hidden, lr));
      std::vector<moe::ExpertUid> mine{uid};
      run(moe::declare_experts(*nodes[i], mine, endpoint(i), runtime(i).now() + std::chrono::hours(1)));
      server_of[uid.str()] = i;
    }
  }
  ~MoeSwarm() {
    for (auto& r : rpcs) r->shutdown();
    nodes.clear();
  }
  void kill(const std::string& uid) { rts[server_of.at(uid)]->close(); }
  void slow_down(const std::string& uid, Duration d) { rts[server_of.at(uid)]->set_emulated_delay(d); }
  std::vector<std::vector<std::uint32_t>> cells{{0, 0}, {0, 2}, {1, 1}, {2, 0}, {2, 2}, {1, 2}};
  RemoteMixtureOfExperts layer(std::size_t k_best, std::size_t k_min, bool per_sample = false, bool switch_mode = false) {
    MoeOptions o;
    o.per_sample = per_sample;
    o.switch_mode = switch_mode;
    o.grid = {3, 3};
    o.dim = dim_;
    o.k_best = k_best;
    o.k_min = k_min;
    o.forward_timeout = std::chrono::seconds(3);
    o.timeout_after_k_min = std::chrono::milliseconds(300);
    return RemoteMixtureOfExperts(runtime(kServers), *rpcs[kServers], *nodes[kServers], o, drive());
  }
  std::int64_t dim_;
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
  std::vector<std::unique_ptr<ExpertServer>> servers;
  std::map<std::string, int> server_of;
};

TEST(RemoteMixture, ForwardAndBackwardThroughRemoteExperts) {
  torch::manual_seed(3);
  MoeSwarm s;
  auto moe = s.layer(4, 2);
  torch::Tensor x = torch::randn({5, 8}).requires_grad_(true);
  torch::Tensor y = moe->forward(x);
  ASSERT_EQ(y.sizes(), (std::vector<std::int64_t>{5, 8}));
  EXPECT_EQ(moe->last_responders().size(), 4u);
  y.pow(2).sum().backward();
  ASSERT_TRUE(x.grad().defined());
  EXPECT_GT(x.grad().abs().sum().item<float>(), 0);
  EXPECT_GT(moe->gate->weight.grad().abs().sum().item<float>(), 0) << "the gate learns from the mixture weights";
  std::size_t updates = 0;
  for (const auto& [uid, i] : s.server_of) updates += s.servers[i]->find(uid)->updates;
  EXPECT_EQ(updates, 4u) << "each answering expert took one optimizer step";
}

// The whole path learns: a Fashion-MNIST classifier whose middle layer is the remote mixture
// (experts on six servers, trained by their own optimizers from the gradients the client sends)
// reaches well above chance after 150 steps of 64 images.
TEST(RemoteMixture, AClassifierWithRemoteExpertsLearnsFashionMnist) {
  torch::manual_seed(6);
  const auto train = data::load_fashion_mnist("train");
  const auto test = data::load_fashion_mnist("t10k");
  auto images = [](const data::ImageSet& set, std::size_t from, std::size_t n) {
    torch::Tensor x = torch::empty({static_cast<std::int64_t>(n), 784});
    torch::Tensor y = torch::empty({static_cast<std::int64_t>(n)}, torch::kLong);
    for (std::size_t i = 0; i < n; ++i) {
      const auto img = set.image(from + i);
      std::memcpy(x[static_cast<std::int64_t>(i)].data_ptr<float>(), img.data(), 784 * sizeof(float));
      y[static_cast<std::int64_t>(i)] = static_cast<std::int64_t>(set.labels[from + i]);
    }
    return std::make_pair(x, y);
  };
  MoeSwarm s(32, 64, 0.05);
  auto moe = s.layer(2, 1);
  torch::nn::Linear in(784, 32), out(32, 10);
  std::vector<torch::Tensor> params = in->parameters();
  for (auto& p : out->parameters()) params.push_back(p);
  for (auto& p : moe->parameters()) params.push_back(p);
  torch::optim::Adam opt(params, torch::optim::AdamOptions(3e-3));
  auto model = [&](const torch::Tensor& x) { return out(moe->forward(torch::relu(in(x)))); };
  const auto [tx, ty] = images(test, 0, 1000);
  auto accuracy = [&] {
    torch::NoGradGuard g;
    return model(tx).argmax(1).eq(ty).to(torch::kFloat).mean().item<float>();
  };
  const float before = accuracy();
  for (int step = 0; step < 150; ++step) {
    const auto [x, y] = images(train, static_cast<std::size_t>(step) * 64, 64);
    opt.zero_grad();
    torch::nn::functional::cross_entropy(model(x), y).backward();
    opt.step();
  }
  const float after = accuracy();
  std::printf("Fashion-MNIST through remote experts: test accuracy %.3f before, %.3f after 150 steps\n", before, after);
  EXPECT_LT(before, 0.3f);
  EXPECT_GT(after, 0.6f) << "accuracy " << before << " -> " << after;
  std::size_t updates = 0;
  for (const auto& [uid, i] : s.server_of) updates += s.servers[i]->find(uid)->updates;
  EXPECT_GE(updates, 150u) << "the experts trained too";
}

TEST(RemoteMixture, ADeadExpertIsSkippedAndAllDeadSearchesAgain) {
  torch::manual_seed(4);
  MoeSwarm s;
  auto moe = s.layer(4, 1);
  const torch::Tensor x = torch::randn({3, 8});
  moe->forward(x);
  const auto first = moe->last_responders();
  ASSERT_EQ(first.size(), 4u);
  // One of the four chosen experts dies: the layer answers with the other three, gradients flow.
  s.kill(first[0]);
  torch::Tensor xi = x.clone().requires_grad_(true);
  torch::Tensor y = moe->forward(xi);
  EXPECT_EQ(moe->last_responders().size(), 3u);
  y.sum().backward();
  EXPECT_TRUE(xi.grad().defined());
  // All four chosen die: the first round gets no answer, the layer searches again without them.
  for (std::size_t j = 1; j < first.size(); ++j) s.kill(first[j]);
  torch::Tensor y2 = moe->forward(x);
  ASSERT_FALSE(moe->last_responders().empty());
  for (const auto& uid : moe->last_responders())
    EXPECT_EQ(std::find(first.begin(), first.end(), uid), first.end()) << uid << " is dead";
  EXPECT_GE(s.metrics.counter("moe.researches"), 1);
  EXPECT_EQ(y2.sizes(), x.sizes());
}

}  // namespace
}  // namespace apiary::real

namespace apiary::real {
namespace {

TEST(RemoteExpert, TransformerBlockAndInfo) {
  torch::manual_seed(5);
  Pair p;
  p.server->add("attn.0", make_transformer_expert(16, 4, 32, 0.1));
  HostedExpert* hosted = p.server->find("attn.0");
  RemoteExpert remote(*p.rpcs[1], p.rts[0]->local(), "attn.0", p.drive());
  const ExpertInfo info = remote.info();
  EXPECT_EQ(info.input_dim, 16);
  EXPECT_EQ(info.output_dim, 16);
  EXPECT_TRUE(info.sequence);
  EXPECT_EQ(info.kind, "transformer");
  const torch::Tensor x = torch::randn({2, 5, 16});
  torch::Tensor local;
  {
    torch::NoGradGuard g;
    local = hosted->forward(x);
  }
  EXPECT_TRUE(torch::equal(remote.call_forward(x), local));
  torch::Tensor xl = x.clone().requires_grad_(true);
  hosted->forward(xl).sum().backward();
  hosted->module->zero_grad();
  torch::Tensor xr = x.clone().requires_grad_(true);
  remote.forward(xr).sum().backward();
  EXPECT_TRUE(torch::allclose(xr.grad(), xl.grad(), 0, 1e-5));
  // A [batch, dim] input is refused by a sequence expert, clearly.
  try {
    remote.call_forward(torch::randn({2, 16}));
    FAIL();
  } catch (const std::runtime_error& e) {
    EXPECT_NE(std::string(e.what()).find("takes [batch, seq, 16] inputs, got [2, 16]"), std::string::npos) << e.what();
  }
}

}  // namespace
}  // namespace apiary::real

namespace apiary::real {
namespace {

// Runs every task at once on the peers' loop and returns their results.
template <class T>
std::vector<Result<T>> run_all(test::LivePeers& p, std::vector<Task<Result<T>>> tasks) {
  std::vector<std::optional<Result<T>>> out(tasks.size());
  std::vector<Task<void>> wrappers;
  for (std::size_t i = 0; i < tasks.size(); ++i) {
    wrappers.push_back([](Task<Result<T>> t, std::optional<Result<T>>* o) -> Task<void> { *o = co_await std::move(t); }(
        std::move(tasks[i]), &out[i]));
    wrappers.back().start();
  }
  p.drive()([&] { return std::all_of(out.begin(), out.end(), [](const auto& o) { return o.has_value(); }); });
  std::vector<Result<T>> r;
  for (auto& o : out) r.push_back(o ? std::move(*o) : Result<T>(Error{ErrorCode::kTimeout, "did not finish"}));
  return r;
}

// Requests from 4 clients at once are served as one batch (min_batch holds the first until the
// rest arrive) and each gets exactly its own rows; with max_batch 16 the 32 rows take two
// batches. A batch of backwards gives every client the input gradients of the same parameters,
// then the expert takes one optimizer step.
TEST(ExpertServer, BatchesRequestsFromManyClients) {
  torch::manual_seed(5);
  test::LivePeers p(5);
  ServerOptions so;
  so.min_batch = 32;
  so.batch_wait = std::chrono::seconds(2);
  ExpertServer server(p.runtime(0), *p.rpcs[0], so);
  server.add("ffn.0.0", make_ffn_expert(16, 32, 0.1));
  HostedExpert* hosted = server.find("ffn.0.0");
  std::vector<std::unique_ptr<RemoteExpert>> clients;
  std::vector<torch::Tensor> xs, gs, local, local_grad;
  for (int c = 0; c < 4; ++c) {
    clients.push_back(std::make_unique<RemoteExpert>(*p.rpcs[1 + c], p.rts[0]->local(), "ffn.0.0", p.drive()));
    xs.push_back(torch::randn({8, 16}));
    gs.push_back(torch::randn({8, 16}));
    torch::Tensor x = xs.back().clone().requires_grad_(true);
    torch::Tensor y = hosted->forward(x);
    y.backward(gs.back());
    local.push_back(y.detach());
    local_grad.push_back(x.grad());
  }
  hosted->module->zero_grad();
  std::vector<Task<Result<torch::Tensor>>> fwd;
  for (int c = 0; c < 4; ++c) fwd.push_back(clients[c]->forward_async(xs[c], 0, std::chrono::seconds(10)));
  auto ys = run_all(p, std::move(fwd));
  for (int c = 0; c < 4; ++c) {
    ASSERT_TRUE(ys[c].ok()) << ys[c].error().describe();
    EXPECT_TRUE(torch::allclose(*ys[c], local[c], 1e-5, 1e-6)) << "client " << c << " got other rows";
  }
  EXPECT_EQ(p.metrics.counter("moe.batches"), 1);
  EXPECT_EQ(p.metrics.quantile("moe.batch_rows", 1.0), 32);

  std::vector<Task<Result<torch::Tensor>>> bwd;
  for (int c = 0; c < 4; ++c) bwd.push_back(clients[c]->backward_async(xs[c], gs[c], 0, std::chrono::seconds(10)));
  auto gx = run_all(p, std::move(bwd));
  for (int c = 0; c < 4; ++c) {
    ASSERT_TRUE(gx[c].ok()) << gx[c].error().describe();
    EXPECT_TRUE(torch::allclose(*gx[c], local_grad[c], 1e-4, 1e-5)) << "client " << c;
  }
  EXPECT_EQ(p.metrics.counter("moe.batches"), 2);
  EXPECT_EQ(hosted->updates, 1u) << "one optimizer step for the batch";

  // max_batch 16: the 32 rows go in two batches of two requests each.
  ServerOptions small;
  small.max_batch = 16;
  small.min_batch = 32;
  small.batch_wait = std::chrono::milliseconds(200);
  test::LivePeers q(5);
  ExpertServer s2(q.runtime(0), *q.rpcs[0], small);
  s2.add("ffn.0.0", make_ffn_expert(16, 32, 0.1));
  std::vector<std::unique_ptr<RemoteExpert>> c2;
  std::vector<Task<Result<torch::Tensor>>> fwd2;
  for (int c = 0; c < 4; ++c) {
    c2.push_back(std::make_unique<RemoteExpert>(*q.rpcs[1 + c], q.rts[0]->local(), "ffn.0.0", q.drive()));
    fwd2.push_back(c2.back()->forward_async(xs[c], 0, std::chrono::seconds(10)));
  }
  for (auto& r : run_all(q, std::move(fwd2))) EXPECT_TRUE(r.ok());
  EXPECT_EQ(q.metrics.counter("moe.batches"), 2);
  EXPECT_EQ(q.metrics.quantile("moe.batch_rows", 1.0), 16);
  EXPECT_EQ(q.metrics.quantile("moe.batch_requests", 0.0), 2);
}

}  // namespace
}  // namespace apiary::real

namespace apiary::real {
namespace {

// 1 of the 4 chosen experts is slow (every message to its server is held 2 s): the layer answers
// with the other three once k_min = 3 have answered and the grace period passed, well within the
// forward timeout, and the backward still works.
TEST(RemoteMixture, ASlowExpertIsLeftOutAfterTheGracePeriod) {
  torch::manual_seed(7);
  MoeSwarm s;
  auto moe = s.layer(4, 3);
  const torch::Tensor x = torch::randn({3, 8});
  moe->forward(x);
  const auto first = moe->last_responders();
  ASSERT_EQ(first.size(), 4u);
  s.slow_down(first[1], std::chrono::seconds(2));
  torch::Tensor xi = x.clone().requires_grad_(true);
  const TimePoint t0 = s.runtime(MoeSwarm::kServers).now();
  torch::Tensor y = moe->forward(xi);
  const Duration took = s.runtime(MoeSwarm::kServers).now() - t0;
  EXPECT_EQ(moe->last_responders().size(), 3u);
  EXPECT_EQ(std::find(moe->last_responders().begin(), moe->last_responders().end(), first[1]), moe->last_responders().end());
  EXPECT_LT(took, std::chrono::milliseconds(1900)) << "waited for the slow expert";
  y.sum().backward();
  EXPECT_GT(xi.grad().abs().sum().item<float>(), 0);
}

// Per-sample routing: every sample goes to its own k best alive experts — exactly the exhaustive
// top-k over the six alive experts by that sample's gate scores — and the backward reaches the
// inputs, the gate and every expert used (one optimizer step each: its rows come as one batch).
TEST(RemoteMixture, PerSampleRoutingIsEachSamplesExhaustiveTopK) {
  torch::manual_seed(8);
  MoeSwarm s;
  auto moe = s.layer(2, 1, /*per_sample=*/true);
  torch::Tensor x = torch::randn({6, 8}).requires_grad_(true);
  torch::Tensor y = moe->forward(x);
  ASSERT_EQ(y.sizes(), x.sizes());
  const torch::Tensor logits = moe->gate(x).detach();
  std::set<std::string> used;
  for (std::int64_t b = 0; b < 6; ++b) {
    std::vector<std::pair<float, std::string>> all;
    for (const auto& c : s.cells)
      all.emplace_back(-(logits[b][c[0]].item<float>() + logits[b][3 + c[1]].item<float>()), moe::ExpertUid{"ffn", c}.str());
    std::sort(all.begin(), all.end());
    const std::vector<std::string> want{all[0].second, all[1].second};
    EXPECT_EQ(moe->last_routes()[static_cast<std::size_t>(b)], want) << "sample " << b;
    used.insert(want.begin(), want.end());
  }
  EXPECT_EQ(moe->last_responders().size(), used.size());
  y.pow(2).sum().backward();
  EXPECT_GT(x.grad().abs().sum().item<float>(), 0);
  EXPECT_GT(moe->gate->weight.grad().abs().sum().item<float>(), 0);
  std::size_t updates = 0;
  for (const auto& [uid, i] : s.server_of) updates += s.servers[i]->find(uid)->updates;
  EXPECT_EQ(updates, used.size());
}

// Switch routing: one expert per sample, its output scaled by the gate's probability of it; the
// load-balancing loss is about 1 when balanced, reaches the gate, and a few steps of minimising
// it alone spread the samples over more experts.
TEST(RemoteMixture, SwitchRoutingWithALoadBalancingLoss) {
  torch::manual_seed(9);
  MoeSwarm s;
  auto moe = s.layer(4, 1, true, /*switch_mode=*/true);
  torch::Tensor x = torch::randn({32, 8});
  {
    torch::NoGradGuard g;  // a gate that sends everything one way
    moe->gate->bias.copy_(torch::tensor({3.f, 0.f, 0.f, 0.f, 0.f, 3.f}));
  }
  torch::Tensor y = moe->forward(x);
  for (const auto& r : moe->last_routes()) EXPECT_EQ(r.size(), 1u);
  const double skewed = moe->last_balance_loss().item<double>();
  EXPECT_GT(skewed, 1.2);
  torch::optim::SGD opt(moe->gate->parameters(), torch::optim::SGDOptions(0.5));
  for (int step = 0; step < 30; ++step) {
    opt.zero_grad();
    moe->forward(x);
    moe->last_balance_loss().backward();
    opt.step();
  }
  moe->forward(x);
  std::set<std::string> used;
  for (const auto& r : moe->last_routes()) used.insert(r[0]);
  EXPECT_LT(moe->last_balance_loss().item<double>(), skewed);
  EXPECT_GE(used.size(), 3u);
}

}  // namespace
}  // namespace apiary::real

namespace apiary::real {
namespace {

// The wire codec, as in averaging: with float16 the remote expert's outputs and input gradients
// stay within half precision of the local module's, and the bytes on the wire about halve.
TEST(RemoteExpert, CompressedTensorsStayWithinTheCodecsBound) {
  torch::manual_seed(10);
  auto bytes_for = [](compression::Codec c, torch::Tensor* y, torch::Tensor* gx, const torch::Tensor& x) {
    auto p = std::make_unique<Pair>();
    p->server->add("ffn.0.0", make_ffn_expert(64, 128, 0.0));
    RemoteExpert remote(*p->rpcs[1], p->rts[0]->local(), "ffn.0.0", p->drive());
    remote.set_codec(averaging::CodecPolicy{c, 0});
    torch::Tensor xr = x.clone().requires_grad_(true);
    *y = remote.forward(xr);
    y->sum().backward();
    *gx = xr.grad();
    return p->metrics.counter("transport.bytes_sent");
  };
  const torch::Tensor x = torch::randn({256, 64});
  torch::Tensor y32, g32, y16, g16;
  torch::manual_seed(11);
  const auto b32 = bytes_for(compression::Codec::kFloat32, &y32, &g32, x);
  torch::manual_seed(11);  // the same expert weights
  const auto b16 = bytes_for(compression::Codec::kFloat16, &y16, &g16, x);
  EXPECT_TRUE(torch::allclose(y16, y32, 1e-2, 1e-2)) << (y16 - y32).abs().max().item<float>();
  EXPECT_TRUE(torch::allclose(g16, g32, 1e-2, 1e-2)) << (g16 - g32).abs().max().item<float>();
  EXPECT_FALSE(torch::equal(y16, y32)) << "float16 changed nothing: was it used?";
  EXPECT_LT(static_cast<double>(b16), 0.6 * static_cast<double>(b32));
}

}  // namespace
}  // namespace apiary::real
