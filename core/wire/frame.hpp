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
#include <functional>
#include <map>
#include <memory>
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
// flight are limited by TransportLimits; payload memory grows only as bytes arrive (a stream
// starts with at most kInitialPayload reserved, then grows 4x at a time).
//
// Payload bytes need not pass through feed(): while direct_sink() is not empty, the caller may
// read the next bytes of the stream straight into it (the payload's final place) and report them
// with filled(), saving a copy of every bulk byte.
class FrameDecoder {
 public:
  static constexpr std::uint64_t kInitialPayload = 1u << 20;
  struct Event {
    bool is_hello = false;
    Endpoint hello;
    std::uint8_t hello_flags = 0;
    Message message;
  };
  explicit FrameDecoder(TransportLimits limits = {});
  // Throws DecodeError on any protocol violation; the caller should drop the connection.
  void feed(std::span<const std::uint8_t> data, std::vector<Event>& out);
  // Where the next bytes belong when they are payload bytes (up to the end of the current
  // frame); empty when framing bytes come next.
  std::span<std::uint8_t> direct_sink();
  // `n` bytes (at most direct_sink().size()) were written into direct_sink().
  void filled(std::size_t n, std::vector<Event>& out);
  // Asked once per message with a payload, when its header has arrived: where its payload
  // should go (see TransportHandler::place_payload). A target of any other size than the
  // payload's is ignored. Without a placement (or an empty target) the decoder allocates.
  using Placement = std::function<PayloadTarget(std::span<const std::uint8_t> header, std::uint64_t size)>;
  void set_placement(Placement placement) { placement_ = std::move(placement); }
  std::size_t streams_in_flight() const { return streams_.size(); }
  // Bytes this decoder has allocated for messages not yet complete (not the buffers a placement lent).
  std::uint64_t unfinished_bytes() const { return unfinished_; }

 private:
  struct Incoming {
    Bytes header;
    std::shared_ptr<void> owner;  // keeps `data` alive
    std::uint8_t* data = nullptr;  // uninitialised beyond `received`
    std::uint64_t capacity = 0;
    std::uint64_t received = 0;
    std::uint64_t total = 0;
    bool lent = false;  // data is a placement's buffer, not the decoder's
  };
  enum class Stage { kHead, kHello, kBeginLen, kBeginHeader, kPayload };
  void on_head();
  void on_stage_done(std::vector<Event>& out);
  void reserve(Incoming& in, std::uint64_t need);
  void complete_if_done(std::uint32_t stream, std::vector<Event>& out);

  TransportLimits limits_;
  Stage stage_ = Stage::kHead;
  std::array<std::uint8_t, kFrameHeaderSize> head_{};
  FrameHeader cur_{};
  Bytes body_;             // the bytes of a kHello, kBeginLen or kBeginHeader stage
  std::size_t need_ = kFrameHeaderSize;  // bytes still missing in the current stage
  std::uint64_t part_ = 0;               // payload bytes of the current BEGIN frame
  Incoming* in_ = nullptr;               // the stream the payload bytes go to
  std::map<std::uint32_t, Incoming> streams_;
  std::uint64_t unfinished_ = 0;
  Placement placement_;
};

}  // namespace apiary::wire
