#include "core/runtime/endpoint.hpp"

#include <charconv>


namespace apiary {

std::string Endpoint::to_string() const {
  return std::to_string((ip >> 24) & 0xff) + "." + std::to_string((ip >> 16) & 0xff) + "." +
         std::to_string((ip >> 8) & 0xff) + "." + std::to_string(ip & 0xff) + ":" +
         std::to_string(port);
}

std::optional<Endpoint> Endpoint::parse(std::string_view text) {
  auto colon = text.rfind(':');
  if (colon == std::string_view::npos) return std::nullopt;
  std::string_view host = text.substr(0, colon), port = text.substr(colon + 1);
  if (host == "localhost") host = "127.0.0.1";
  std::uint32_t ip = 0;
  const char* p = host.data();
  const char* end = host.data() + host.size();
  for (int i = 0; i < 4; ++i) {
    unsigned octet = 0;
    auto [next, ec] = std::from_chars(p, end, octet);
    if (ec != std::errc{} || octet > 255 || next == p) return std::nullopt;
    ip = (ip << 8) | octet;
    p = next;
    if (i < 3) {
      if (p == end || *p != '.') return std::nullopt;
      ++p;
    }
  }
  if (p != end) return std::nullopt;
  unsigned port_value = 0;
  auto [pend, pec] = std::from_chars(port.data(), port.data() + port.size(), port_value);
  if (pec != std::errc{} || pend != port.data() + port.size() || port_value > 65535)
    return std::nullopt;
  return Endpoint{ip, static_cast<std::uint16_t>(port_value)};
}

}  // namespace apiary
