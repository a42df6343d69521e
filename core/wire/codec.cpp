#include "core/wire/codec.hpp"

namespace apiary::wire {

void Reader::need(std::size_t n, const char* what) const {
  if (remaining() < n)
    throw DecodeError("truncated " + std::string(what) + ": need " + std::to_string(n) +
                      " bytes at offset " + std::to_string(pos_) + ", have " +
                      std::to_string(remaining()));
}

std::uint64_t Reader::varint() {
  std::uint64_t v = 0;
  for (int shift = 0; shift < 64; shift += 7) {
    need(1, "varint");
    const std::uint8_t b = in_[pos_++];
    if (shift == 63 && b > 1) throw DecodeError("varint overflows 64 bits");
    v |= std::uint64_t{b & 0x7fu} << shift;
    if (!(b & 0x80)) return v;
  }
  throw DecodeError("varint longer than 10 bytes");
}

std::uint64_t Reader::varint_max(std::uint64_t max, const char* what) {
  const auto v = varint();
  if (v > max)
    throw DecodeError(std::string(what) + " " + std::to_string(v) + " exceeds limit " +
                      std::to_string(max));
  return v;
}

std::span<const std::uint8_t> Reader::bytes(std::uint64_t max_len) {
  const auto n = varint();
  if (n > max_len)
    throw DecodeError("length " + std::to_string(n) + " exceeds limit " + std::to_string(max_len));
  return raw(static_cast<std::size_t>(n));
}

std::string Reader::str(std::uint64_t max_len) {
  auto b = bytes(max_len);
  return std::string(reinterpret_cast<const char*>(b.data()), b.size());
}

std::span<const std::uint8_t> Reader::raw(std::size_t n) {
  need(n, "byte string");
  auto r = in_.subspan(pos_, n);
  pos_ += n;
  return r;
}

void Reader::expect_end() const {
  if (remaining() != 0)
    throw DecodeError(std::to_string(remaining()) + " trailing bytes after message");
}

}  // namespace apiary::wire
