#pragma once
// The wire codec: little-endian fixed-width integers, LEB128 varints, length-prefixed bytes and
// strings. Every read is bounds-checked; a truncated, oversized or garbled input throws
// DecodeError (never reads past the buffer, never allocates more than the input could hold).
#include <cstdint>
#include <cstring>
#include <span>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "core/runtime/payload.hpp"

namespace apiary::wire {

class DecodeError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

class Writer {
 public:
  Writer() = default;
  explicit Writer(Bytes& out) : out_(&out) {}

  void u8(std::uint8_t v) { buf().push_back(v); }
  void u16(std::uint16_t v) { fixed(v); }
  void u32(std::uint32_t v) { fixed(v); }
  void u64(std::uint64_t v) { fixed(v); }
  void i64(std::int64_t v) { fixed(static_cast<std::uint64_t>(v)); }
  void f32(float v) {
    std::uint32_t u;
    std::memcpy(&u, &v, 4);
    fixed(u);
  }
  void f64(double v) {
    std::uint64_t u;
    std::memcpy(&u, &v, 8);
    fixed(u);
  }
  void varint(std::uint64_t v) {
    while (v >= 0x80) {
      buf().push_back(static_cast<std::uint8_t>(v | 0x80));
      v >>= 7;
    }
    buf().push_back(static_cast<std::uint8_t>(v));
  }
  void bytes(std::span<const std::uint8_t> b) {
    varint(b.size());
    raw(b);
  }
  void str(std::string_view s) {
    bytes({reinterpret_cast<const std::uint8_t*>(s.data()), s.size()});
  }
  void raw(std::span<const std::uint8_t> b) { buf().insert(buf().end(), b.begin(), b.end()); }

  Bytes& buf() { return out_ ? *out_ : own_; }
  Bytes take() { return std::move(buf()); }
  std::size_t size() { return buf().size(); }

 private:
  template <class U>
  void fixed(U v) {
    for (std::size_t i = 0; i < sizeof(U); ++i) buf().push_back(static_cast<std::uint8_t>(v >> (8 * i)));
  }
  Bytes own_;
  Bytes* out_ = nullptr;
};

class Reader {
 public:
  explicit Reader(std::span<const std::uint8_t> in) : in_(in) {}

  std::uint8_t u8() { return static_cast<std::uint8_t>(fixed<1>()); }
  std::uint16_t u16() { return static_cast<std::uint16_t>(fixed<2>()); }
  std::uint32_t u32() { return static_cast<std::uint32_t>(fixed<4>()); }
  std::uint64_t u64() { return fixed<8>(); }
  std::int64_t i64() { return static_cast<std::int64_t>(fixed<8>()); }
  float f32() {
    auto u = u32();
    float v;
    std::memcpy(&v, &u, 4);
    return v;
  }
  double f64() {
    auto u = u64();
    double v;
    std::memcpy(&v, &u, 8);
    return v;
  }
  std::uint64_t varint();
  // A varint that must be at most `max` (counts, lengths, enum values).
  std::uint64_t varint_max(std::uint64_t max, const char* what);
  std::span<const std::uint8_t> bytes(std::uint64_t max_len = UINT64_MAX);
  std::string str(std::uint64_t max_len = UINT64_MAX);
  std::span<const std::uint8_t> raw(std::size_t n);
  std::span<const std::uint8_t> rest() {
    auto r = in_.subspan(pos_);
    pos_ = in_.size();
    return r;
  }

  std::size_t remaining() const { return in_.size() - pos_; }
  std::size_t position() const { return pos_; }
  // Throws unless everything was consumed: trailing garbage is an error, not ignored.
  void expect_end() const;

 private:
  template <int N>
  std::uint64_t fixed() {
    need(N, "fixed-width integer");
    std::uint64_t v = 0;
    for (int i = 0; i < N; ++i) v |= std::uint64_t{in_[pos_ + i]} << (8 * i);
    pos_ += N;
    return v;
  }
  void need(std::size_t n, const char* what) const;

  std::span<const std::uint8_t> in_;
  std::size_t pos_ = 0;
};

}  // namespace apiary::wire
