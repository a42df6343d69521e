#pragma once
// Transport framing shared by both backends. A message travels as one BEGIN frame (its header
// and the first part of its payload) and zero or more PART frames, so a large payload is
// streamed in bounded parts that interleave with small messages on the same connection. A
// stream transport (live TCP) opens with a HELLO frame that names the sender's listening
// endpoint, so replies can reuse the connection.
//
// Fixed frame header, 24 bytes little-endian:
//   u32 magic "APY1" | u8 type | u8 flags | u16 reserved (0) | u32 stream | u32 length | u64 extra
// BEGIN: extra = total payload bytes; body = u32 header_len, header, first payload part.
// PART:  extra = payload offset of this part; body = payload bytes.
// HELLO: body = u32 ip, u16 port, u8 flags.
#include <array>
#include <cstdint>
#include <map>
#include <span>
#include <vector>

#include "core/runtime/endpoint.hpp"
#include "core/runtime/payload.hpp"
#include "core/runtime/runtime.hpp"
#include "core/wire/codec.hpp"

namespace apiary::wire {

inline constexpr std::uint32_t kFrameMagic = 0x31595041;  // "APY1"
inline constexpr std::size_t kFrameHeaderSize = 24;
inline constexpr std::size_t kPartSize = 256 * 1024;  // payload bytes per frame

enum class FrameType : std::uint8_t { kHello = 1, kBegin = 2, kPart = 3 };

struct FrameHeader {
  FrameType type{};
  std::uint8_t flags = 0;
  std::uint32_t stream = 0;
  std::uint32_t length = 0;
  std::uint64_t extra = 0;
};

std::array<std::uint8_t, kFrameHeaderSize> encode_frame_header(const FrameHeader& h);
// Throws DecodeError on a bad magic, type or reserved field.
FrameHeader decode_frame_header(std::span<const std::uint8_t> in);

Bytes encode_hello(const Endpoint& self, std::uint8_t flags = 0);
// The frame header plus the u32 header length of a BEGIN frame whose payload part is `part_len`.
Bytes encode_begin_prefix(std::uint32_t stream, std::uint32_t header_len, std::uint64_t total,
                          std::uint64_t part_len);
std::array<std::uint8_t, kFrameHeaderSize> encode_part_header(std::uint32_t stream,
                                                              std::uint64_t offset,
                                                              std::uint32_t part_len);

// Incremental decoder for a byte stream. Bounded: frames, headers, payloads and streams in
// flight are limited by TransportLimits; payload memory grows only as bytes arrive.
class FrameDecoder {
 public:
  struct Event {
    bool is_hello = false;
    Endpoint hello;
    std::uint8_t hello_flags = 0;
    Message message;
  };
  explicit FrameDecoder(TransportLimits limits = {});
  // Throws DecodeError on any protocol violation; the caller should drop the connection.
  void feed(std::span<const std::uint8_t> data, std::vector<Event>& out);
  std::size_t streams_in_flight() const { return streams_.size(); }

 private:
  struct Incoming {
    Bytes header;
    Bytes payload;
    std::uint64_t total = 0;
  };
  void on_frame(std::vector<Event>& out);
  void complete_if_done(std::uint32_t stream, std::vector<Event>& out);

  TransportLimits limits_;
  std::array<std::uint8_t, kFrameHeaderSize> head_{};
  std::size_t head_fill_ = 0;
  FrameHeader cur_{};
  Bytes body_;
  std::size_t body_need_ = 0;
  Incoming* direct_ = nullptr;  // the stream a PART body is being copied into
  std::map<std::uint32_t, Incoming> streams_;
};

}  // namespace apiary::wire
