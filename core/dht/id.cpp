#include "core/dht/id.hpp"

#include <sodium.h>

#include <stdexcept>

namespace apiary::dht {

int DhtId::common_prefix(const DhtId& o) const {
  for (std::size_t i = 0; i < kBytes; ++i) {
    const std::uint8_t x = b[i] ^ o.b[i];
    if (x) return static_cast<int>(i * 8) + __builtin_clz(x) - 24;
  }
  return kBits;
}

std::string DhtId::hex() const {
  static const char* digits = "0123456789abcdef";
  std::string s;
  for (auto v : b) {
    s += digits[v >> 4];
    s += digits[v & 15];
  }
  return s;
}

DhtId DhtId::hash(std::span<const std::uint8_t> data) {
  DhtId id;
  crypto_generichash(id.b.data(), kBytes, data.data(), data.size(), nullptr, 0);
  return id;
}

DhtId DhtId::random(Rng& rng) {
  DhtId id;
  for (std::size_t i = 0; i < kBytes; i += 8) {
    const std::uint64_t v = rng.next();
    for (std::size_t j = 0; j < 8 && i + j < kBytes; ++j) id.b[i + j] = static_cast<std::uint8_t>(v >> (8 * j));
  }
  return id;
}

DhtId DhtId::random_with_prefix(Rng& rng, const DhtId& prefix, int depth) {
  DhtId id = random(rng);
  for (int i = 0; i < depth; ++i) {
    const auto byte = static_cast<std::size_t>(i / 8);
    const std::uint8_t mask = static_cast<std::uint8_t>(0x80 >> (i % 8));
    id.b[byte] = static_cast<std::uint8_t>((id.b[byte] & ~mask) | (prefix.b[byte] & mask));
  }
  return id;
}

DhtId DhtId::from_bytes(std::span<const std::uint8_t> bytes) {
  if (bytes.size() != kBytes) throw std::invalid_argument("a DHT id has 20 bytes");
  DhtId id;
  std::copy(bytes.begin(), bytes.end(), id.b.begin());
  return id;
}

}  // namespace apiary::dht
