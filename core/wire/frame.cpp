#include "core/wire/frame.hpp"

#include <algorithm>
#include <string>

namespace apiary::wire {

std::array<std::uint8_t, kFrameHeaderSize> encode_frame_header(const FrameHeader& h) {
  std::array<std::uint8_t, kFrameHeaderSize> out{};
  Bytes tmp;
  Writer w(tmp);
  w.u32(kFrameMagic);
  w.u8(static_cast<std::uint8_t>(h.type));
  w.u8(h.flags);
  w.u16(0);
  w.u32(h.stream);
  w.u32(h.length);
  w.u64(h.extra);
  std::copy(tmp.begin(), tmp.end(), out.begin());
  return out;
}

FrameHeader decode_frame_header(std::span<const std::uint8_t> in) {
  Reader r(in.first(std::min(in.size(), kFrameHeaderSize)));
  const auto magic = r.u32();
  if (magic != kFrameMagic) throw DecodeError("bad frame magic");
  FrameHeader h;
  const auto type = r.u8();
  if (type < 1 || type > 3) throw DecodeError("unknown frame type " + std::to_string(type));
  h.type = static_cast<FrameType>(type);
  h.flags = r.u8();
  if (r.u16() != 0) throw DecodeError("reserved frame field is not zero");
  h.stream = r.u32();
  h.length = r.u32();
  h.extra = r.u64();
  return h;
}

Bytes encode_hello(const Endpoint& self, std::uint8_t flags) {
  Bytes body;
  Writer w(body);
  w.u32(self.ip);
  w.u16(self.port);
  w.u8(flags);
  auto head = encode_frame_header(
      {FrameType::kHello, 0, 0, static_cast<std::uint32_t>(body.size()), 0});
  Bytes out(head.begin(), head.end());
  out.insert(out.end(), body.begin(), body.end());
  return out;
}

Bytes encode_begin_prefix(std::uint32_t stream, std::uint32_t header_len, std::uint64_t total,
                          std::uint64_t part_len) {
  auto head = encode_frame_header({FrameType::kBegin, 0, stream,
                                   static_cast<std::uint32_t>(4 + header_len + part_len), total});
  Bytes out(head.begin(), head.end());
  Writer w(out);
  w.u32(header_len);
  return out;
}

std::array<std::uint8_t, kFrameHeaderSize> encode_part_header(std::uint32_t stream,
                                                              std::uint64_t offset,
                                                              std::uint32_t part_len) {
  return encode_frame_header({FrameType::kPart, 0, stream, part_len, offset});
}

FrameDecoder::FrameDecoder(TransportLimits limits) : limits_(limits) {}

void FrameDecoder::feed(std::span<const std::uint8_t> data, std::vector<Event>& out) {
  while (!data.empty()) {
    if (head_fill_ < kFrameHeaderSize) {
      const auto n = std::min(kFrameHeaderSize - head_fill_, data.size());
      std::copy_n(data.begin(), n, head_.begin() + head_fill_);
      head_fill_ += n;
      data = data.subspan(n);
      if (head_fill_ < kFrameHeaderSize) return;
      cur_ = decode_frame_header(head_);
      const std::uint64_t max_body = 4 + limits_.max_header + kPartSize;
      if (cur_.length > max_body)
        throw DecodeError("frame of " + std::to_string(cur_.length) + " bytes exceeds limit " +
                          std::to_string(max_body));
      body_.clear();
      body_need_ = cur_.length;
      direct_ = nullptr;
      if (cur_.type == FrameType::kPart) {
        // Bulk parts go straight into their stream's payload: one copy from the socket buffer.
        auto it = streams_.find(cur_.stream);
        if (it == streams_.end())
          throw DecodeError("part for unknown stream " + std::to_string(cur_.stream));
        auto& in = it->second;
        if (cur_.extra != in.payload.size())
          throw DecodeError("payload part at offset " + std::to_string(cur_.extra) + ", expected " +
                            std::to_string(in.payload.size()));
        if (in.payload.size() + cur_.length > in.total) throw DecodeError("payload part beyond declared size");
        const std::uint64_t need = in.payload.size() + cur_.length;
        if (in.payload.capacity() < need)  // grow 4x at a time (what arrived vouches for what is reserved)
          in.payload.reserve(static_cast<std::size_t>(std::min<std::uint64_t>(in.total, std::max(need, 4 * in.payload.size()))));
        direct_ = &in;
      } else {
        body_.reserve(cur_.length);
      }
    }
    const auto n = std::min(body_need_, data.size());
    Bytes& sink = direct_ ? direct_->payload : body_;
    sink.insert(sink.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
    body_need_ -= n;
    data = data.subspan(n);
    if (body_need_ == 0) {
      if (direct_)
        complete_if_done(cur_.stream, out);
      else
        on_frame(out);
      direct_ = nullptr;
      head_fill_ = 0;
    }
  }
}

void FrameDecoder::on_frame(std::vector<Event>& out) {
  Reader r(body_);
  switch (cur_.type) {
    case FrameType::kHello: {
      Event ev;
      ev.is_hello = true;
      ev.hello.ip = r.u32();
      ev.hello.port = r.u16();
      ev.hello_flags = r.u8();
      r.expect_end();
      out.push_back(std::move(ev));
      return;
    }
    case FrameType::kBegin: {
      if (streams_.count(cur_.stream))
        throw DecodeError("stream " + std::to_string(cur_.stream) + " begun twice");
      if (streams_.size() >= limits_.max_streams_in_flight)
        throw DecodeError("more than " + std::to_string(limits_.max_streams_in_flight) +
                          " streams in flight");
      if (cur_.extra > limits_.max_payload)
        throw DecodeError("payload of " + std::to_string(cur_.extra) + " bytes exceeds limit " +
                          std::to_string(limits_.max_payload));
      const auto header_len = r.u32();
      if (header_len > limits_.max_header)
        throw DecodeError("message header of " + std::to_string(header_len) +
                          " bytes exceeds limit");
      auto header = r.raw(header_len);
      auto part = r.rest();
      if (part.size() > cur_.extra) throw DecodeError("payload part beyond declared size");
      Incoming in;
      in.header.assign(header.begin(), header.end());
      in.total = cur_.extra;
      in.payload.assign(part.begin(), part.end());
      streams_.emplace(cur_.stream, std::move(in));
      complete_if_done(cur_.stream, out);
      return;
    }
    case FrameType::kPart:
      throw DecodeError("internal: parts are decoded in place");
  }
}

void FrameDecoder::complete_if_done(std::uint32_t stream, std::vector<Event>& out) {
  auto it = streams_.find(stream);
  if (it->second.payload.size() < it->second.total) return;
  Event ev;
  ev.message.header = std::move(it->second.header);
  if (it->second.total > 0) ev.message.payload = Payload::bytes(std::move(it->second.payload));
  streams_.erase(it);
  out.push_back(std::move(ev));
}

}  // namespace apiary::wire
