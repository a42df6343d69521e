#pragma once
// Every decoder a peer exposes to the network, as fuzz targets: the live stream framing and the
// datagram frame header, each message of the DHT, averaging, progress and expert protocols, the
// records other peers write into the DHT (matchmaking declarations, progress reports), the
// tensor codecs, and whole RPC envelopes delivered to a peer that runs every server at once.
//
// One input drives one target: its first byte picks the target (modulo the count), the rest is
// the target's bytes. A target must never crash or hang; a rejected input is a thrown DecodeError
// (or invalid_argument), an error reply or a counter.
#include <cstdint>
#include <span>
#include <string>
#include <utility>
#include <vector>

namespace apiary::fuzz {

struct Target {
  std::string name;
  void (*run)(std::span<const std::uint8_t> in);
  // Valid inputs (without the selector byte), which mutations then break in interesting places.
  std::vector<std::vector<std::uint8_t>> (*seeds)();
};

const std::vector<Target>& targets();
// Answers (and, of them, error replies) the envelope target's peer has sent back so far.
std::pair<std::uint64_t, std::uint64_t> envelope_answers();
// Runs the input: byte 0 selects the target, the rest goes to it.
void run_one(std::span<const std::uint8_t> in);

}  // namespace apiary::fuzz
