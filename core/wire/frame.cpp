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
    const std::size_t n = std::min<std::size_t>(need_, data.size());
    if (stage_ == Stage::kHead) {
      std::copy_n(data.begin(), n, head_.begin() + (kFrameHeaderSize - need_));
    } else if (stage_ == Stage::kPayload) {
      std::copy_n(data.begin(), n, in_->data + in_->received);
      in_->received += n;
    } else {
      body_.insert(body_.end(), data.begin(), data.begin() + static_cast<std::ptrdiff_t>(n));
    }
    need_ -= n;
    data = data.subspan(n);
    if (need_ == 0) on_stage_done(out);
  }
}

std::span<std::uint8_t> FrameDecoder::direct_sink() {
  if (stage_ != Stage::kPayload || need_ == 0) return {};
  return {in_->data + in_->received, need_};
}

void FrameDecoder::filled(std::size_t n, std::vector<Event>& out) {
  if (stage_ != Stage::kPayload || n > need_) throw DecodeError("internal: filled() beyond the direct sink");
  in_->received += n;
  need_ -= n;
  if (need_ == 0) on_stage_done(out);
}

void FrameDecoder::reserve(Incoming& in, std::uint64_t need) {
  if (in.capacity >= need) return;
  // What arrived vouches for what is reserved: grow 4x at a time.
  const std::uint64_t cap = std::min<std::uint64_t>(in.total, std::max({need, 4 * in.received, kInitialPayload}));
  const std::uint64_t held = unfinished_ - in.capacity + cap;
  if (held > limits_.max_unfinished_bytes)
    throw DecodeError("unfinished messages would hold " + std::to_string(held) + " bytes, over the limit of " +
                      std::to_string(limits_.max_unfinished_bytes));
  unfinished_ = held;
  std::shared_ptr<std::uint8_t[]> grown(new std::uint8_t[static_cast<std::size_t>(cap)]);
  if (in.received) std::copy_n(in.data, in.received, grown.get());
  in.data = grown.get();
  in.owner = std::move(grown);
  in.capacity = cap;
}

// The 24-byte frame header is in head_: validate it and set up the first stage of its body.
void FrameDecoder::on_head() {
  cur_ = decode_frame_header(head_);
  const std::uint64_t max_body = 4 + limits_.max_header + kPartSize;
  if (cur_.length > max_body)
    throw DecodeError("frame of " + std::to_string(cur_.length) + " bytes exceeds limit " + std::to_string(max_body));
  body_.clear();
  in_ = nullptr;
  switch (cur_.type) {
    case FrameType::kHello:
      stage_ = Stage::kHello;
      need_ = cur_.length;
      body_.reserve(cur_.length);
      return;
    case FrameType::kBegin:
      if (streams_.count(cur_.stream)) throw DecodeError("stream " + std::to_string(cur_.stream) + " begun twice");
      if (streams_.size() >= limits_.max_streams_in_flight)
        throw DecodeError("more than " + std::to_string(limits_.max_streams_in_flight) + " streams in flight");
      if (cur_.extra > limits_.max_payload)
        throw DecodeError("payload of " + std::to_string(cur_.extra) + " bytes exceeds limit " +
                          std::to_string(limits_.max_payload));
      if (cur_.length < 4) throw DecodeError("BEGIN frame of " + std::to_string(cur_.length) + " bytes is truncated");
      stage_ = Stage::kBeginLen;
      need_ = 4;
      return;
    case FrameType::kPart: {
      // Bulk parts go straight into their stream's payload.
      auto it = streams_.find(cur_.stream);
      if (it == streams_.end()) throw DecodeError("part for unknown stream " + std::to_string(cur_.stream));
      auto& in = it->second;
      if (cur_.extra != in.received)
        throw DecodeError("payload part at offset " + std::to_string(cur_.extra) + ", expected " +
                          std::to_string(in.received));
      if (in.received + cur_.length > in.total) throw DecodeError("payload part beyond declared size");
      reserve(in, in.received + cur_.length);
      in_ = &in;
      stage_ = Stage::kPayload;
      need_ = cur_.length;
      return;
    }
  }
}

// The current stage has all its bytes (possibly none were needed): act on them and move on,
// through any following stages that need no bytes.
void FrameDecoder::on_stage_done(std::vector<Event>& out) {
  while (need_ == 0) {
    switch (stage_) {
      case Stage::kHead:
        on_head();
        break;
      case Stage::kHello: {
        Reader r(body_);
        Event ev;
        ev.is_hello = true;
        ev.hello.ip = r.u32();
        ev.hello.port = r.u16();
        ev.hello_flags = r.u8();
        r.expect_end();
        out.push_back(std::move(ev));
        stage_ = Stage::kHead;
        need_ = kFrameHeaderSize;
        return;
      }
      case Stage::kBeginLen: {
        Reader r(body_);
        const std::uint64_t header_len = r.u32();
        if (header_len > limits_.max_header)
          throw DecodeError("message header of " + std::to_string(header_len) + " bytes exceeds limit");
        if (4 + header_len > cur_.length) throw DecodeError("message header beyond its frame");
        part_ = cur_.length - 4 - header_len;
        if (part_ > cur_.extra) throw DecodeError("payload part beyond declared size");
        body_.clear();
        body_.reserve(static_cast<std::size_t>(header_len));
        stage_ = Stage::kBeginHeader;
        need_ = static_cast<std::size_t>(header_len);
        break;
      }
      case Stage::kBeginHeader: {
        Incoming in;
        in.header = std::move(body_);
        body_.clear();
        in.total = cur_.extra;
        if (placement_ && in.total > 0) {
          PayloadTarget t = placement_(in.header, in.total);
          if (t && t.bytes.size() == in.total) {
            in.owner = std::move(t.owner);
            in.data = t.bytes.data();
            in.capacity = in.total;
            in.lent = true;
          }
        }
        auto [it, fresh] = streams_.emplace(cur_.stream, std::move(in));
        (void)fresh;
        reserve(it->second, part_);
        in_ = &it->second;
        stage_ = Stage::kPayload;
        need_ = static_cast<std::size_t>(part_);
        break;
      }
      case Stage::kPayload: {
        const std::uint32_t stream = cur_.stream;
        in_ = nullptr;
        stage_ = Stage::kHead;
        need_ = kFrameHeaderSize;
        complete_if_done(stream, out);
        return;
      }
    }
  }
}

void FrameDecoder::complete_if_done(std::uint32_t stream, std::vector<Event>& out) {
  auto it = streams_.find(stream);
  if (it->second.received < it->second.total) return;
  Event ev;
  ev.message.header = std::move(it->second.header);
  if (it->second.total > 0) {
    const std::span<const std::uint8_t> bytes(it->second.data, static_cast<std::size_t>(it->second.total));
    ev.message.payload = Payload::view(std::move(it->second.owner), bytes);
  }
  if (!it->second.lent) unfinished_ -= it->second.capacity;
  streams_.erase(it);
  out.push_back(std::move(ev));
}

}  // namespace apiary::wire
