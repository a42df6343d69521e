#pragma once
// A live all-reduce benchmark: N processes on this machine, each a LiveRuntime peer, run the
// butterfly all-reduce (core/averaging) of one float32 tensor in a static group, round after
// round. The parent spawns them, collects each round's time (the slowest peer's) and checks the
// result (peer r holds r+1 everywhere; every value must end at (N+1)/2).
//
//   apiary allreduce-bench --peers 4 --elements 16777216 --rounds 5 --warmup 1 [--json]
#include <cstdint>
#include <string>

namespace apiary::real {

struct AllReduceBenchOptions {
  std::uint32_t peers = 2;
  std::uint64_t elements = std::uint64_t{1} << 24;
  std::uint32_t rounds = 5;
  std::uint32_t warmup = 1;
  std::string codec = "float32";
  // 512 KiB pieces, up to 8 in flight per reducer and 4 MiB over all reducers (at least 2 per
  // reducer): the best of a small scan on this machine. That is 8 per reducer at 2 peers, 2 at 4
  // and 8 peers, where 5 (at 4) and 8 were 2-11% slower (docs/results.md).
  std::uint64_t piece_elements = std::uint64_t{1} << 17;
  std::uint32_t window = 8;
  std::uint64_t max_in_flight = std::uint64_t{4} << 20;  // bytes; 0: no cap
  std::string host = "127.0.0.1";
  bool json = false;
  // Child side (set by the parent when it spawns a peer).
  std::int64_t rank = -1;
  std::string dir;
};

// The parent (rank < 0) or one peer process (rank >= 0). Returns the process exit code.
int run_allreduce_bench(const AllReduceBenchOptions& o);

}  // namespace apiary::real
