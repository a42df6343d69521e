#pragma once
// A peer's transport address: IPv4 address and port. Both backends use IPv4 (ns-3 nodes get
// 10.x.y.z; live peers bind any local address), so one small value type serves both.
#include <compare>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

namespace apiary {

struct Endpoint {
  std::uint32_t ip = 0;  // host byte order
  std::uint16_t port = 0;

  constexpr auto operator<=>(const Endpoint&) const = default;
  bool valid() const { return port != 0; }
  std::string to_string() const;
  // "127.0.0.1:4000"; nullopt on anything else.
  static std::optional<Endpoint> parse(std::string_view text);
  static constexpr std::uint32_t ipv4(std::uint8_t a, std::uint8_t b, std::uint8_t c,
                                      std::uint8_t d) {
    return (std::uint32_t{a} << 24) | (std::uint32_t{b} << 16) | (std::uint32_t{c} << 8) | d;
  }
  // 127.0.0.1, the address every peer of a swarm on one machine shares: limits per address
  // (routing tables, lookups) do not apply to it. Other loopback addresses (127.0.0.2, ...)
  // stand for hosts of their own, as in tests that give peers addresses apart.
  constexpr bool shared_local() const { return ip == ipv4(127, 0, 0, 1); }
};

}  // namespace apiary

template <>
struct std::hash<apiary::Endpoint> {
  std::size_t operator()(const apiary::Endpoint& e) const noexcept {
    return std::hash<std::uint64_t>{}((std::uint64_t{e.ip} << 16) | e.port);
  }
};
