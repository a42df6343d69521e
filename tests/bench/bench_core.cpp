// Micro-benchmarks of the codec and the RPC path (core only, no network).
//   build/tests/apiary_bench --benchmark_min_time=0.5
#include <benchmark/benchmark.h>

#include "core/auth/handshake.hpp"
#include "core/compression/codecs.hpp"
#include "core/runtime/rpc.hpp"
#include "core/wire/frame.hpp"
#include "harness/workloads/ping.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary {
namespace {

void BM_VarintRoundTrip(benchmark::State& state) {
  Rng rng(1);
  std::vector<std::uint64_t> values(1024);
  for (auto& v : values) v = rng.next() >> rng.below(64);
  Bytes buf;
  for (auto _ : state) {
    buf.clear();
    wire::Writer w(buf);
    for (auto v : values) w.varint(v);
    wire::Reader r(buf);
    std::uint64_t sum = 0;
    for (std::size_t i = 0; i < values.size(); ++i) sum += r.varint();
    benchmark::DoNotOptimize(sum);
  }
  state.SetItemsProcessed(state.iterations() * static_cast<std::int64_t>(values.size()));
}
BENCHMARK(BM_VarintRoundTrip);

// float32 -> float16 -> float32 of 1M values (an all-reduce part): the bulk path (F16C where the
// CPU has it) against the scalar one, in the same run. Arg 1: bulk, 0: scalar.
void BM_HalfEncode(benchmark::State& state) {
  Rng rng(2);
  std::vector<float> v(1 << 20);
  for (auto& x : v) x = static_cast<float>(rng.normal(0, 1));
  std::vector<std::uint8_t> out(2 * v.size());
  for (auto _ : state) {
    if (state.range(0))
      compression::floats_to_halves(v, out.data());
    else
      compression::floats_to_halves_scalar(v, out.data());
    benchmark::DoNotOptimize(out.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(4 * v.size()));
}
BENCHMARK(BM_HalfEncode)->Arg(0)->Arg(1);

void BM_HalfDecode(benchmark::State& state) {
  Rng rng(3);
  std::vector<float> v(1 << 20);
  for (auto& x : v) x = static_cast<float>(rng.normal(0, 1));
  std::vector<std::uint8_t> halves(2 * v.size());
  compression::floats_to_halves_scalar(v, halves.data());
  for (auto _ : state) {
    if (state.range(0))
      compression::halves_to_floats(halves.data(), v);
    else
      compression::halves_to_floats_scalar(halves.data(), v);
    benchmark::DoNotOptimize(v.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(4 * v.size()));
}
BENCHMARK(BM_HalfDecode)->Arg(0)->Arg(1);

void BM_PingEncodeDecode(benchmark::State& state) {
  Bytes buf;
  for (auto _ : state) {
    buf.clear();
    wire::Writer w(buf);
    PingRequest{42, true, {}}.encode(w);
    wire::Reader r(buf);
    benchmark::DoNotOptimize(PingRequest::decode(r));
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_PingEncodeDecode);

// Stream decoding of framed messages with payloads of the given size (bytes/s).
void BM_FrameDecoder(benchmark::State& state) {
  const auto size = static_cast<std::size_t>(state.range(0));
  Bytes payload(size, 7), header(32, 1);
  Bytes stream;
  for (std::uint32_t s = 1; s <= 4; ++s) {
    std::uint64_t off = std::min<std::uint64_t>(wire::kPartSize, size);
    Bytes f = wire::encode_begin_prefix(s, static_cast<std::uint32_t>(header.size()), size, off);
    stream.insert(stream.end(), f.begin(), f.end());
    stream.insert(stream.end(), header.begin(), header.end());
    stream.insert(stream.end(), payload.begin(), payload.begin() + static_cast<std::ptrdiff_t>(off));
    for (; off < size; off += wire::kPartSize) {
      const auto n = std::min<std::uint64_t>(wire::kPartSize, size - off);
      auto h = wire::encode_part_header(s, off, static_cast<std::uint32_t>(n));
      stream.insert(stream.end(), h.begin(), h.end());
      stream.insert(stream.end(), payload.begin(), payload.begin() + static_cast<std::ptrdiff_t>(n));
    }
  }
  for (auto _ : state) {
    wire::FrameDecoder d;
    std::vector<wire::FrameDecoder::Event> ev;
    for (std::size_t pos = 0; pos < stream.size(); pos += 65536)
      d.feed(std::span(stream).subspan(pos, std::min<std::size_t>(65536, stream.size() - pos)), ev);
    benchmark::DoNotOptimize(ev.data());
  }
  state.SetBytesProcessed(state.iterations() * static_cast<std::int64_t>(stream.size()));
}
BENCHMARK(BM_FrameDecoder)->Arg(64)->Arg(64 << 10)->Arg(4 << 20);

// One typed RPC round trip through the whole core path (envelope, handler task, reply, timer
// set and cancelled) on the in-memory fake transport.
void BM_RpcRoundTrip(benchmark::State& state) {
  test::FakeSwarm s(2, Duration(0));
  Rpc a(s[0].runtime()), b(s[1].runtime());
  b.serve<PingRequest, PingResponse>([](const Endpoint&, PingRequest r) -> Task<Result<PingResponse>> {
    co_return PingResponse{r.nonce, {}};
  });
  const Endpoint to = s[1].local();
  for (auto _ : state) {
    auto t = a.call<PingResponse>(to, PingRequest{1, false, {}}, std::chrono::seconds(1));
    t.start();
    s.net.run(std::chrono::seconds(1), [&] { return t.done(); });
    benchmark::DoNotOptimize(t.result());
  }
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_RpcRoundTrip);

// One authenticated handshake (HELLO, two proofs: two Ed25519 signatures, two verifications and
// the transcripts) between two fresh sessions, with one message behind it, on the fake transport:
// the host cost a first contact adds, and what network.proof_cost models in ns-3.
void BM_AuthHandshake(benchmark::State& state) {
  test::FakeSwarm s(2, Duration(0));
  const auto ka = dht::Identity::from_seed(1), kb = dht::Identity::from_seed(2);
  struct Count final : TransportHandler {
    std::size_t got = 0;
    void on_message(const Endpoint&, Message) override { ++got; }
    void on_peer_error(const Endpoint&, const Error&) override {}
  } sink;
  for (auto _ : state) {
    auth::AuthTransport a(s[0], s[0], s[0], s[0].runtime().rng, s[0].runtime().observer, ka);
    auth::AuthTransport b(s[1], s[1], s[1], s[1].runtime().rng, s[1].runtime().observer, kb);
    b.set_handler(&sink);
    a.send(s[1].local(), Message{Bytes{1, 0}, {}});
    s.net.run(std::chrono::seconds(1), [&] { return b.established(s[0].local()); });
  }
  state.SetItemsProcessed(state.iterations());
  state.counters["delivered"] = static_cast<double>(sink.got);
}
BENCHMARK(BM_AuthHandshake);

// Making an id that carries `bits` of work (network.id_work_bits): about 2^bits key derivations.
void BM_IdWithWork(benchmark::State& state) {
  std::uint64_t seed = 1;
  for (auto _ : state) benchmark::DoNotOptimize(dht::Identity::with_work(seed++ * 7919, static_cast<unsigned>(state.range(0))));
  state.SetItemsProcessed(state.iterations());
}
BENCHMARK(BM_IdWithWork)->Arg(0)->Arg(8)->Arg(12)->Unit(benchmark::kMillisecond);

}  // namespace
}  // namespace apiary

BENCHMARK_MAIN();
