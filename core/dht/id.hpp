#pragma once
// 160-bit identifiers of the Kademlia DHT: peers are named by the hash of their public key,
// records by the hash of their key. The metric is XOR, compared as a big-endian integer.
#include <array>
#include <compare>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <string_view>

#include "core/runtime/rng.hpp"

namespace apiary::dht {

struct DhtId {
  static constexpr std::size_t kBytes = 20;
  static constexpr int kBits = 160;
  std::array<std::uint8_t, kBytes> b{};

  // Ordered as a 160-bit big-endian integer. Written out (three byte-swapped loads) because the
  // defaulted comparison of std::array calls memcmp, which dominated lookups and stores.
  std::strong_ordering operator<=>(const DhtId& o) const {
    const auto a = words(), c = o.words();
    for (int i = 0; i < 3; ++i)
      if (a[i] != c[i]) return a[i] < c[i] ? std::strong_ordering::less : std::strong_ordering::greater;
    return std::strong_ordering::equal;
  }
  bool operator==(const DhtId& o) const {  // three loads a side, not a call to memcmp
    std::uint64_t a0, a1, c0, c1;
    std::uint32_t a2, c2;
    std::memcpy(&a0, b.data(), 8), std::memcpy(&c0, o.b.data(), 8);
    std::memcpy(&a1, b.data() + 8, 8), std::memcpy(&c1, o.b.data() + 8, 8);
    std::memcpy(&a2, b.data() + 16, 4), std::memcpy(&c2, o.b.data() + 16, 4);
    return ((a0 ^ c0) | (a1 ^ c1) | (a2 ^ c2)) == 0;
  }
  std::array<std::uint64_t, 3> words() const {
    std::uint64_t w0, w1;
    std::uint32_t w2;
    std::memcpy(&w0, b.data(), 8);
    std::memcpy(&w1, b.data() + 8, 8);
    std::memcpy(&w2, b.data() + 16, 4);
    return {__builtin_bswap64(w0), __builtin_bswap64(w1), __builtin_bswap32(w2)};
  }
  DhtId operator^(const DhtId& o) const {
    DhtId r;
    for (std::size_t i = 0; i < kBytes; ++i) r.b[i] = b[i] ^ o.b[i];
    return r;
  }
  bool bit(int i) const { return (b[static_cast<std::size_t>(i / 8)] >> (7 - i % 8)) & 1; }
  // Number of leading bits this id shares with `o` (160 if equal).
  int common_prefix(const DhtId& o) const;
  std::string hex() const;

  // BLAKE2b-160 of arbitrary bytes (libsodium).
  static DhtId hash(std::span<const std::uint8_t> data);
  static DhtId of_key(std::string_view key) {
    return hash({reinterpret_cast<const std::uint8_t*>(key.data()), key.size()});
  }
  static DhtId random(Rng& rng);
  // A uniformly random id whose first `depth` bits equal those of `prefix`.
  static DhtId random_with_prefix(Rng& rng, const DhtId& prefix, int depth);
  static DhtId from_bytes(std::span<const std::uint8_t> bytes);  // exactly 20 bytes
};

// True if a is closer to target than b (XOR metric).
inline bool closer(const DhtId& target, const DhtId& a, const DhtId& b) {
  return (a ^ target) < (b ^ target);
}

}  // namespace apiary::dht
