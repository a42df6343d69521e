#pragma once
// Live peers in one process for tests: LiveRuntimes on loopback sharing one io_context, each
// with its observer, Rng and RPC layer, and a `drive` that runs the loop until a condition
// holds (never sleeps; a wall-clock cap guards against a hang).
#include <boost/asio/io_context.hpp>
#include <chrono>
#include <functional>
#include <memory>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "core/runtime/rpc.hpp"
#include "real/live_runtime.hpp"

namespace apiary::test {

struct LivePeers {
  explicit LivePeers(std::size_t n) {
    for (std::size_t i = 0; i < n; ++i) {
      rts.push_back(std::make_unique<real::LiveRuntime>(io, real::LiveOptions{}));
      rts.back()->open();
      envs.push_back(std::make_unique<PeerEnv>(*rts.back(), metrics, static_cast<std::uint32_t>(i), Rng(i + 1)));
      rts.back()->set_observer(envs.back()->observer);
      rpcs.push_back(std::make_unique<Rpc>(envs.back()->runtime));
    }
  }
  ~LivePeers() {
    for (auto& r : rpcs) r->shutdown();
    for (auto& r : rts) r->close();
  }
  Runtime& runtime(std::size_t i) { return envs[i]->runtime; }
  Endpoint endpoint(std::size_t i) const { return rts[i]->local(); }
  std::function<void(const std::function<bool()>&)> drive(std::chrono::seconds cap = std::chrono::seconds(60)) {
    return [this, cap](const std::function<bool()>& done) {
      const auto end = std::chrono::steady_clock::now() + cap;
      while (!done() && std::chrono::steady_clock::now() < end) io.run_one_for(std::chrono::milliseconds(5));
    };
  }
  template <class T>
  T run(Task<T> t) {
    t.start();
    drive()([&] { return t.done(); });
    return t.result();
  }
  boost::asio::io_context io;
  Metrics metrics;
  std::vector<std::unique_ptr<real::LiveRuntime>> rts;
  std::vector<std::unique_ptr<PeerEnv>> envs;
  std::vector<std::unique_ptr<Rpc>> rpcs;
};

}  // namespace apiary::test
