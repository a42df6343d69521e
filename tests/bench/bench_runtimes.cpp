// The RPC path end to end on both backends: one typed call and its reply through ns-3's UDP
// stack on the DirectChannel (host cost per simulated round trip), and through real TCP on
// loopback (latency per round trip, and bulk throughput with streamed payloads).
//   build/tests/apiary_runtime_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include "core/runtime/rpc.hpp"
#include "harness/workloads/ping.hpp"
#include "tests/conformance/worlds.hpp"

namespace apiary {
namespace {

template <class W>
void rpc_round_trip(benchmark::State& state) {
  W world;
  world.add_peer();
  world.add_peer();
  Rpc a(world.runtime(0)), b(world.runtime(1));
  b.serve<PingRequest, PingResponse>([](const Endpoint&, PingRequest r) -> Task<Result<PingResponse>> {
    PingResponse resp{r.nonce, {}};
    resp.payload = r.payload;
    co_return resp;
  });
  const std::uint64_t bytes = static_cast<std::uint64_t>(state.range(0));
  Payload payload;
  if (bytes) {
    Bytes data(bytes, 1);
    payload = Payload::bytes(std::move(data));
  }
  const Endpoint to = world.endpoint(1);
  // Each iteration is a batch of sequential calls in one task, so the driver's own polling is
  // amortised and the figure is the protocol path's.
  const int batch = bytes >= (1 << 20) ? 4 : 100;
  auto calls = [&](Rpc& rpc) -> Task<bool> {
    for (int i = 0; i < batch; ++i) {
      PingRequest req{static_cast<std::uint64_t>(i), true, payload};
      auto r = co_await rpc.call<PingResponse>(to, std::move(req), std::chrono::seconds(30));
      if (!r.ok()) co_return false;
    }
    co_return true;
  };
  for (auto _ : state) {
    auto t = calls(a);
    t.start();
    if (!world.run_until([&] { return t.done(); }, std::chrono::seconds(60)) || !t.result()) {
      state.SkipWithError("call failed");
      break;
    }
  }
  state.SetItemsProcessed(state.iterations() * batch);
  state.SetBytesProcessed(state.iterations() * batch * static_cast<std::int64_t>(2 * bytes));
}

void BM_SimRpcRoundTrip(benchmark::State& s) { rpc_round_trip<test::SimWorld>(s); }
void BM_LiveRpcRoundTrip(benchmark::State& s) { rpc_round_trip<test::LiveWorld>(s); }
BENCHMARK(BM_SimRpcRoundTrip)->Arg(0)->Arg(1 << 20);
BENCHMARK(BM_LiveRpcRoundTrip)->Arg(0)->Arg(64 << 10)->Arg(16 << 20);

}  // namespace
}  // namespace apiary

BENCHMARK_MAIN();
