// Runs the fuzz entry point on seeded random and mutated-valid inputs when libFuzzer is absent.
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <string>
#include <vector>

#include "core/runtime/rng.hpp"
#include "core/wire/frame.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size);

int main(int argc, char** argv) {
  long runs = 10000;
  for (int i = 1; i + 1 < argc; ++i)
    if (std::strcmp(argv[i], "--runs") == 0) runs = std::stol(argv[i + 1]);
  apiary::Rng rng(1234);
  // Seeds: valid frames and envelopes, which mutations then break in interesting places.
  std::vector<std::vector<std::uint8_t>> seeds;
  seeds.push_back(apiary::wire::encode_hello(apiary::Endpoint{0x7f000001, 4000}));
  auto begin = apiary::wire::encode_begin_prefix(1, 3, 5, 5);
  begin.insert(begin.end(), {1, 7, 0, 1, 2, 3, 4, 5});
  seeds.push_back(begin);
  seeds.push_back({1, 5, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0});  // request id 5, ping
  seeds.push_back({3, 9, 4, 3, 'b', 'a', 'd'});            // error reply
  for (long i = 0; i < runs; ++i) {
    std::vector<std::uint8_t> buf;
    if (i % 2 == 0) {
      buf.resize(rng.below(96));
      for (auto& b : buf) b = static_cast<std::uint8_t>(rng.next());
    } else {
      buf = seeds[rng.below(seeds.size())];
      const auto flips = 1 + rng.below(4);
      for (std::uint64_t f = 0; f < flips && !buf.empty(); ++f)
        buf[rng.below(buf.size())] = static_cast<std::uint8_t>(rng.next());
      if (rng.below(4) == 0) buf.resize(rng.below(buf.size() + 1));
    }
    LLVMFuzzerTestOneInput(buf.data(), buf.size());
  }
  std::printf("fuzz_decoders: %ld inputs, no crash\n", runs);
  return 0;
}
