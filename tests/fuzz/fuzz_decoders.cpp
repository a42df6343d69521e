// The libFuzzer entry point: byte 0 of an input picks one of the targets in targets.cpp (every
// decoder a peer exposes, and whole RPC envelopes to a peer running every server), the rest is
// that target's input. Built with clang -fsanitize=fuzzer (cmake -DAPIARY_LIBFUZZER=ON) it is a
// libFuzzer binary; otherwise driver.cpp runs it on seeded random and mutated valid inputs.
#include <cstddef>
#include <cstdint>

#include "tests/fuzz/targets.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  apiary::fuzz::run_one({data, size});
  return 0;
}
