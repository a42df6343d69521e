// Fuzz entry point for every decoder a peer exposes to the network: the stream frame decoder
// (live TCP), the frame header (sim datagrams) and the RPC envelope with the ping bodies.
// Build with clang -fsanitize=fuzzer for libFuzzer; driver.cpp runs it on seeded random input.
#include <cstddef>
#include <cstdint>

#include "core/compression/codecs.hpp"
#include "core/dht/protocol.hpp"
#include "core/moe/protocol.hpp"
#include "core/runtime/rpc.hpp"
#include "core/wire/frame.hpp"
#include "harness/workloads/ping.hpp"
#include "tests/support/fake_runtime.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  using namespace apiary;
  std::span<const std::uint8_t> in(data, size);
  try {
    TransportLimits lim;
    lim.max_payload = 1 << 20;
    wire::FrameDecoder d(lim);
    std::vector<wire::FrameDecoder::Event> ev;
    d.feed(in, ev);
  } catch (const wire::DecodeError&) {
  }
  try {
    (void)wire::decode_frame_header(in);
  } catch (const wire::DecodeError&) {
  }
  try {
    wire::Reader r(in);
    (void)PingRequest::decode(r);
  } catch (const wire::DecodeError&) {
  }
  // Every DHT message decoder.
  auto each = [&](auto decode) {
    try {
      wire::Reader r(in);
      (void)decode(r);
    } catch (const wire::DecodeError&) {
    } catch (const std::invalid_argument&) {
    }
  };
  each([](wire::Reader& r) { return dht::PingRequest::decode(r); });
  each([](wire::Reader& r) { return dht::StoreRequest::decode(r); });
  each([](wire::Reader& r) { return dht::StoreReply::decode(r); });
  each([](wire::Reader& r) { return dht::FindRequest::decode(r); });
  each([](wire::Reader& r) { return dht::FindReply::decode(r); });
  // The expert protocol, in every world.
  each([](wire::Reader& r) { return moe::ForwardRequest::decode(r); });
  each([](wire::Reader& r) { return moe::BackwardRequest::decode(r); });
  each([](wire::Reader& r) { return moe::InfoRequest::decode(r); });
  each([](wire::Reader& r) { return moe::ExpertInfo::decode(r); });
  each([](wire::Reader& r) { return moe::TensorReply::decode(r); });
  try {
    (void)compression::decode(in, 1 << 20);
  } catch (const wire::DecodeError&) {
  }
  // The RPC envelope, through a real Rpc on a fake peer: must count, never crash.
  static test::FakeSwarm* swarm = new test::FakeSwarm(2);
  static Rpc* rpc = new Rpc((*swarm)[0].runtime());
  rpc->on_message((*swarm)[1].local(), Message{Bytes(in.begin(), in.end()), {}});
  swarm->net.run(std::chrono::seconds(1));
  return 0;
}
