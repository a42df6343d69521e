// Expert throughput: forward+backward samples per second of a feed-forward expert computed
// locally in this process versus served by an ExpertServer over loopback TCP (the same process
// drives both ends on one thread, so the remote figure pays compute plus the wire).
//
//   build/tests/apiary_moe_bench [--dim 1024] [--hidden 4096] [--batches 256 512 1024] [--steps 5]
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"
#include "real/torch/mixture.hpp"

using namespace apiary;
using namespace apiary::real;

int main(int argc, char** argv) {
  std::int64_t dim = 1024, hidden = 4096;
  int steps = 5;
  std::vector<std::int64_t> batches{256, 512, 1024};
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    if (a == "--dim" && i + 1 < argc) dim = std::stoll(argv[++i]);
    else if (a == "--hidden" && i + 1 < argc) hidden = std::stoll(argv[++i]);
    else if (a == "--steps" && i + 1 < argc) steps = std::stoi(argv[++i]);
    else if (a == "--batches") {
      batches.clear();
      while (i + 1 < argc && argv[i + 1][0] != '-') batches.push_back(std::stoll(argv[++i]));
    } else {
      std::fprintf(stderr, "usage: %s [--dim N] [--hidden N] [--steps N] [--batches B...]\n", argv[0]);
      return 2;
    }
  }
  torch::manual_seed(0);
  boost::asio::io_context io;
  Metrics metrics;
  LiveRuntime srt(io, LiveOptions{}), crt(io, LiveOptions{});
  srt.open();
  crt.open();
  PeerEnv senv(srt, metrics, 0, Rng(1)), cenv(crt, metrics, 1, Rng(2));
  Rpc srpc(senv.runtime), crpc(cenv.runtime);
  ExpertServer server(senv.runtime, srpc);
  server.add("ffn.0", make_ffn_expert(dim, hidden, 1e-3));
  HostedExpert* local = server.find("ffn.0");
  RemoteExpert remote(crpc, srt.local(), "ffn.0", [&](const std::function<bool()>& done) {
    while (!done()) io.run_one_for(std::chrono::milliseconds(20));
  });
  std::printf("FFN expert %lld -> %lld -> %lld, SGD; %d steps per point after one warm-up; torch threads %d\n",
              static_cast<long long>(dim), static_cast<long long>(hidden), static_cast<long long>(dim), steps,
              torch::get_num_threads());
  std::printf("| batch | local samples/s | remote samples/s | remote overhead |\n|---:|---:|---:|---:|\n");
  for (auto b : batches) {
    const torch::Tensor x = torch::randn({b, dim});
    const torch::Tensor g = torch::randn({b, dim});
    auto local_step = [&] {
      torch::Tensor xi = x.clone().requires_grad_(true);
      local->optimizer->zero_grad();
      local->forward(xi).backward(g);
      local->optimizer->step();
    };
    auto remote_step = [&] {
      torch::Tensor xi = x.clone().requires_grad_(true);
      remote.forward(xi).backward(g);
    };
    auto time_it = [&](auto&& step) {
      step();  // warm-up
      const auto t0 = std::chrono::steady_clock::now();
      for (int s = 0; s < steps; ++s) step();
      return std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count() / steps;
    };
    // Interleave to share the machine's state fairly: local, remote, local, remote.
    const double l1 = time_it(local_step), r1 = time_it(remote_step), l2 = time_it(local_step), r2 = time_it(remote_step);
    const double l = std::min(l1, l2), r = std::min(r1, r2);
    std::printf("| %lld | %.0f | %.0f | %+.1f%% |\n", static_cast<long long>(b), b / l, b / r, (r / l - 1) * 100);
  }
  crpc.shutdown();
  srpc.shutdown();
  return 0;
}
