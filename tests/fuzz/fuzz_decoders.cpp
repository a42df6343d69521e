// The libFuzzer entry point: byte 0 of an input picks one of the targets in targets.cpp (every
// decoder a peer exposes, and whole RPC envelopes to a peer running every server), the rest is
// that target's input. With APIARY_FUZZ_TARGET=NAME in the environment the whole input goes to
// that one target (tests/fuzz/campaign.sh fuzzes each decoder on its own this way). Built with
// clang -fsanitize=fuzzer (cmake -DAPIARY_LIBFUZZER=ON) it is a libFuzzer binary; otherwise
// driver.cpp runs it on seeded random and mutated valid inputs.
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "tests/fuzz/targets.hpp"

namespace {

const apiary::fuzz::Target* chosen_target() {
  static const apiary::fuzz::Target* chosen = [] () -> const apiary::fuzz::Target* {
    const char* name = std::getenv("APIARY_FUZZ_TARGET");
    if (!name || !*name) return nullptr;
    for (const auto& t : apiary::fuzz::targets())
      if (t.name == name) return &t;
    std::fprintf(stderr, "APIARY_FUZZ_TARGET=%s names no target (fuzz_decoders --list)\n", name);
    std::exit(2);
  }();
  return chosen;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  if (const auto* t = chosen_target()) {
    t->run({data, size});
    return 0;
  }
  apiary::fuzz::run_one({data, size});
  return 0;
}
