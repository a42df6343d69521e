// Runs the fuzz targets without libFuzzer: for each target, seeded random inputs and mutations of
// its valid seeds (byte flips, truncation, splices of random bytes), reporting executions and
// speed per target. Deterministic: the same --seed gives the same inputs.
//
//   fuzz_decoders [--runs N] [--target NAME] [--seed S] [--write-corpus DIR] [--list]
//
// --runs is per target. --write-corpus writes every target's seeds, selector byte first, as the
// starting corpus for a libFuzzer build (tests/fuzz/corpus in the repository).
#include <chrono>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "core/runtime/rng.hpp"
#include "tests/fuzz/targets.hpp"

int main(int argc, char** argv) {
  long runs = 10000;
  std::uint64_t seed = 1234;
  std::string only, corpus;
  bool list = false;
  for (int i = 1; i < argc; ++i) {
    const std::string a = argv[i];
    const bool has_value = i + 1 < argc;
    if (a == "--runs" && has_value) runs = std::stol(argv[++i]);
    else if (a == "--seed" && has_value) seed = std::stoull(argv[++i]);
    else if (a == "--target" && has_value) only = argv[++i];
    else if (a == "--write-corpus" && has_value) corpus = argv[++i];
    else if (a == "--list") list = true;
    else {
      std::fprintf(stderr, "fuzz_decoders: unknown argument '%s'\n", a.c_str());
      return 2;
    }
  }
  const auto& targets = apiary::fuzz::targets();
  bool found = only.empty();
  for (std::size_t t = 0; t < targets.size(); ++t) {
    const auto& target = targets[t];
    if (list) {
      std::printf("%zu %s\n", t, target.name.c_str());
      continue;
    }
    if (!only.empty() && target.name != only) continue;
    found = true;
    const auto seeds = target.seeds();
    if (!corpus.empty()) {
      std::filesystem::create_directories(corpus);
      for (std::size_t k = 0; k < seeds.size(); ++k) {
        std::ofstream f(std::filesystem::path(corpus) / (target.name + "-" + std::to_string(k)), std::ios::binary);
        const char selector = static_cast<char>(t);
        f.write(&selector, 1);
        f.write(reinterpret_cast<const char*>(seeds[k].data()), static_cast<std::streamsize>(seeds[k].size()));
      }
      continue;
    }
    apiary::Rng rng(seed + t);
    std::vector<std::uint8_t> buf;
    const auto t0 = std::chrono::steady_clock::now();
    for (long i = 0; i < runs; ++i) {
      buf.clear();
      if (i % 4 == 0 || seeds.empty()) {  // random bytes
        buf.resize(rng.below(128));
        for (auto& b : buf) b = static_cast<std::uint8_t>(rng.next());
      } else {  // a valid seed, broken a little
        buf = seeds[rng.below(seeds.size())];
        const auto flips = 1 + rng.below(4);
        for (std::uint64_t f = 0; f < flips && !buf.empty(); ++f)
          buf[rng.below(buf.size())] = static_cast<std::uint8_t>(rng.below(4) == 0 ? 0xff : rng.next());
        if (rng.below(4) == 0) buf.resize(rng.below(buf.size() + 1));
        if (rng.below(8) == 0) {
          const auto at = rng.below(buf.size() + 1);
          for (auto n = rng.below(16); n > 0; --n)
            buf.insert(buf.begin() + static_cast<std::ptrdiff_t>(at), static_cast<std::uint8_t>(rng.next()));
        }
      }
      target.run(buf);
    }
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (target.name == "rpc-envelope-to-every-server") {
      // The valid seeds, unbroken, must be served: proof that fuzzed envelopes reach the handlers.
      const auto before = apiary::fuzz::envelope_answers();
      for (const auto& s : seeds) target.run(s);
      const auto after = apiary::fuzz::envelope_answers();
      const auto answered = after.first - before.first, refused = after.second - before.second;
      std::printf("  its %zu valid envelopes: %llu answers, %llu of them errors\n", seeds.size(),
                  static_cast<unsigned long long>(answered), static_cast<unsigned long long>(refused));
      if (answered + 2 < seeds.size() || refused * 2 > answered) {
        std::fprintf(stderr, "fuzz_decoders: the serving peer answered too few valid requests: the target is broken\n");
        return 1;
      }
    }
    std::printf("%-30s %12ld inputs, no crash (%.0f per second)\n", target.name.c_str(), runs, runs / std::max(secs, 1e-9));
  }
  if (!found) {
    std::fprintf(stderr, "fuzz_decoders: no target named '%s' (--list shows them)\n", only.c_str());
    return 2;
  }
  return 0;
}
