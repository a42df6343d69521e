#include <gtest/gtest.h>

#include "core/runtime/rng.hpp"
#include "core/wire/codec.hpp"
#include "core/wire/frame.hpp"

namespace apiary::wire {
namespace {

TEST(Codec, RoundTripsEveryType) {
  Writer w;
  w.u8(0xab);
  w.u16(0xbeef);
  w.u32(0xdeadbeef);
  w.u64(0x0123456789abcdefULL);
  w.i64(-42);
  w.f32(1.5f);
  w.f64(-2.25);
  w.varint(0);
  w.varint(127);
  w.varint(128);
  w.varint(UINT64_MAX);
  w.str("hello");
  w.bytes(Bytes{});
  Bytes b = w.take();
  Reader r(b);
  EXPECT_EQ(r.u8(), 0xab);
  EXPECT_EQ(r.u16(), 0xbeef);
  EXPECT_EQ(r.u32(), 0xdeadbeefu);
  EXPECT_EQ(r.u64(), 0x0123456789abcdefULL);
  EXPECT_EQ(r.i64(), -42);
  EXPECT_EQ(r.f32(), 1.5f);
  EXPECT_EQ(r.f64(), -2.25);
  EXPECT_EQ(r.varint(), 0u);
  EXPECT_EQ(r.varint(), 127u);
  EXPECT_EQ(r.varint(), 128u);
  EXPECT_EQ(r.varint(), UINT64_MAX);
  EXPECT_EQ(r.str(), "hello");
  EXPECT_TRUE(r.bytes().empty());
  EXPECT_NO_THROW(r.expect_end());
}

TEST(Codec, LittleEndianOnTheWire) {
  Writer w;
  w.u32(0x01020304);
  EXPECT_EQ(w.take(), (Bytes{4, 3, 2, 1}));
}

TEST(Codec, TruncatedInputThrows) {
  Writer w;
  w.u64(7);
  Bytes b = w.take();
  for (std::size_t n = 0; n < 8; ++n) {
    Reader r(std::span<const std::uint8_t>(b).first(n));
    EXPECT_THROW(r.u64(), DecodeError) << n;
  }
}

TEST(Codec, OversizedLengthIsRejectedWithoutAllocating) {
  Writer w;
  w.varint(1ull << 40);  // claims a terabyte
  Bytes b = w.take();
  Reader r(b);
  EXPECT_THROW(r.bytes(), DecodeError);
  Reader r2(b);
  EXPECT_THROW(r2.bytes(1024), DecodeError);
}

TEST(Codec, OverlongVarintThrows) {
  Bytes b(11, 0xff);
  Reader r(b);
  EXPECT_THROW(r.varint(), DecodeError);
  Bytes b2 = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x02};  // bit 64 set
  Reader r2(b2);
  EXPECT_THROW(r2.varint(), DecodeError);
}

TEST(Codec, TrailingBytesAreAnError) {
  Bytes b = {1, 2};
  Reader r(b);
  r.u8();
  EXPECT_THROW(r.expect_end(), DecodeError);
}

Bytes frame_message(std::uint32_t stream, const Bytes& header, const Bytes& payload) {
  Bytes out;
  std::uint64_t off = 0;
  const std::uint64_t first = std::min<std::uint64_t>(kPartSize, payload.size());
  out = encode_begin_prefix(stream, static_cast<std::uint32_t>(header.size()), payload.size(), first);
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.begin() + static_cast<std::ptrdiff_t>(first));
  off = first;
  while (off < payload.size()) {
    const auto n = std::min<std::uint64_t>(kPartSize, payload.size() - off);
    auto h = encode_part_header(stream, off, static_cast<std::uint32_t>(n));
    out.insert(out.end(), h.begin(), h.end());
    out.insert(out.end(), payload.begin() + static_cast<std::ptrdiff_t>(off),
               payload.begin() + static_cast<std::ptrdiff_t>(off + n));
    off += n;
  }
  return out;
}

TEST(FrameDecoder, ReassemblesAcrossArbitrarySplits) {
  Rng rng(5);
  Bytes payload(3 * kPartSize + 17);
  for (auto& b : payload) b = static_cast<std::uint8_t>(rng.next());
  Bytes stream = encode_hello(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 4000});
  Bytes m1 = frame_message(1, Bytes{1, 2, 3}, payload);
  Bytes m2 = frame_message(2, Bytes{9}, {});
  stream.insert(stream.end(), m1.begin(), m1.end());
  stream.insert(stream.end(), m2.begin(), m2.end());
  for (int trial = 0; trial < 20; ++trial) {
    FrameDecoder d;
    std::vector<FrameDecoder::Event> ev;
    std::size_t pos = 0;
    while (pos < stream.size()) {
      const std::size_t n = std::min<std::size_t>(stream.size() - pos, 1 + rng.below(70000));
      d.feed(std::span(stream).subspan(pos, n), ev);
      pos += n;
    }
    ASSERT_EQ(ev.size(), 3u);
    EXPECT_TRUE(ev[0].is_hello);
    EXPECT_EQ(ev[0].hello.port, 4000);
    EXPECT_EQ(ev[1].message.header, (Bytes{1, 2, 3}));
    ASSERT_EQ(ev[1].message.payload.size(), payload.size());
    EXPECT_TRUE(std::equal(payload.begin(), payload.end(), ev[1].message.payload.data().begin()));
    EXPECT_EQ(ev[2].message.header, (Bytes{9}));
    EXPECT_EQ(ev[2].message.payload.size(), 0u);
    EXPECT_EQ(d.streams_in_flight(), 0u);
  }
}

// The live transport reads payload bytes straight into the decoder's direct sink and only
// framing bytes through feed(); any mix of the two must reassemble the same messages.
// A placement puts a message's payload where its receiver wants it; a target of the wrong size
// is ignored (the decoder allocates), and messages without a payload are not asked about.
TEST(FrameDecoder, PlacementReceivesPayloadsIntoLentMemory) {
  Rng rng(11);
  Bytes payload(kPartSize + 777);
  for (auto& b : payload) b = static_cast<std::uint8_t>(rng.next());
  Bytes stream;
  for (std::uint32_t s = 1; s <= 3; ++s) {
    Bytes m = frame_message(s, Bytes{static_cast<std::uint8_t>(s)}, s == 3 ? Bytes{} : payload);
    stream.insert(stream.end(), m.begin(), m.end());
  }
  auto lent = std::make_shared<Bytes>(payload.size(), 0);
  auto wrong = std::make_shared<Bytes>(payload.size() + 1, 0);
  std::vector<std::uint8_t> asked;  // the header byte of each message asked about
  FrameDecoder d;
  d.set_placement([&](std::span<const std::uint8_t> header, std::uint64_t size) {
    EXPECT_EQ(size, payload.size());
    asked.push_back(header[0]);
    auto& t = header[0] == 1 ? lent : wrong;
    return PayloadTarget{t, {t->data(), t->size()}};
  });
  std::vector<FrameDecoder::Event> ev;
  for (std::size_t pos = 0; pos < stream.size();) {
    auto sink = d.direct_sink();
    const std::size_t want = std::min<std::size_t>(stream.size() - pos, 1 + rng.below(100000));
    if (!sink.empty()) {
      const std::size_t n = std::min(want, sink.size());
      std::copy_n(stream.begin() + static_cast<std::ptrdiff_t>(pos), n, sink.begin());
      d.filled(n, ev);
      pos += n;
    } else {
      d.feed(std::span(stream).subspan(pos, want), ev);
      pos += want;
    }
  }
  EXPECT_EQ(asked, (std::vector<std::uint8_t>{1, 2}));
  ASSERT_EQ(ev.size(), 3u);
  EXPECT_EQ(ev[0].message.payload.data().data(), lent->data());  // placed
  EXPECT_EQ(*lent, payload);
  EXPECT_NE(ev[1].message.payload.data().data(), wrong->data());  // wrong size: not placed
  EXPECT_EQ(*wrong, Bytes(payload.size() + 1, 0));
  for (int i = 0; i < 2; ++i)
    EXPECT_TRUE(std::equal(payload.begin(), payload.end(), ev[i].message.payload.data().begin()));
  EXPECT_EQ(ev[2].message.payload.size(), 0u);
}

TEST(FrameDecoder, DirectSinkAndFeedMixReassemble) {
  Rng rng(7);
  Bytes payload(2 * kPartSize + 1000);
  for (auto& b : payload) b = static_cast<std::uint8_t>(rng.next());
  Bytes stream = encode_hello(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 4001});
  for (std::uint32_t s = 1; s <= 3; ++s) {
    Bytes m = frame_message(s, Bytes{static_cast<std::uint8_t>(s)}, s == 2 ? Bytes{} : payload);
    stream.insert(stream.end(), m.begin(), m.end());
  }
  for (int trial = 0; trial < 20; ++trial) {
    FrameDecoder d;
    std::vector<FrameDecoder::Event> ev;
    std::size_t pos = 0, direct = 0;
    while (pos < stream.size()) {
      const std::size_t want = std::min<std::size_t>(stream.size() - pos, 1 + rng.below(trial < 10 ? 64 : 300000));
      auto sink = d.direct_sink();
      if (!sink.empty() && rng.below(4) != 0) {
        const std::size_t n = std::min(want, sink.size());
        std::copy_n(stream.begin() + static_cast<std::ptrdiff_t>(pos), n, sink.begin());
        d.filled(n, ev);
        pos += n;
        direct += n;
      } else {
        d.feed(std::span(stream).subspan(pos, want), ev);
        pos += want;
      }
    }
    EXPECT_GT(direct, 0u);
    ASSERT_EQ(ev.size(), 4u);
    EXPECT_TRUE(ev[0].is_hello);
    for (std::uint32_t s = 1; s <= 3; ++s) {
      EXPECT_EQ(ev[s].message.header, Bytes{static_cast<std::uint8_t>(s)});
      const Bytes want = s == 2 ? Bytes{} : payload;
      ASSERT_EQ(ev[s].message.payload.size(), want.size());
      EXPECT_TRUE(std::equal(want.begin(), want.end(), ev[s].message.payload.data().begin()));
    }
    EXPECT_EQ(d.streams_in_flight(), 0u);
    EXPECT_TRUE(d.direct_sink().empty());
  }
}

TEST(FrameDecoder, RejectsHeaderLongerThanItsFrame) {
  FrameDecoder d;
  std::vector<FrameDecoder::Event> ev;
  Bytes f = encode_begin_prefix(1, 100, 0, 0);  // claims a 100-byte header in a frame of 104
  auto h = encode_frame_header({FrameType::kBegin, 0, 1, 8, 0});  // ...but the frame holds 8 bytes
  Bytes bad(h.begin(), h.end());
  bad.insert(bad.end(), f.begin() + static_cast<std::ptrdiff_t>(kFrameHeaderSize),
             f.begin() + static_cast<std::ptrdiff_t>(kFrameHeaderSize) + 4);
  bad.resize(bad.size() + 4);
  EXPECT_THROW(d.feed(bad, ev), DecodeError);
}

TEST(FrameDecoder, RejectsBadMagic) {
  FrameDecoder d;
  std::vector<FrameDecoder::Event> ev;
  Bytes junk(64, 0x41);
  EXPECT_THROW(d.feed(junk, ev), DecodeError);
}

TEST(FrameDecoder, RejectsOversizedPayloadDeclaration) {
  TransportLimits lim;
  lim.max_payload = 1000;
  FrameDecoder d(lim);
  std::vector<FrameDecoder::Event> ev;
  Bytes f = encode_begin_prefix(1, 0, 1001, 0);
  EXPECT_THROW(d.feed(f, ev), DecodeError);
}

TEST(FrameDecoder, RejectsTooManyStreams) {
  TransportLimits lim;
  lim.max_streams_in_flight = 4;
  FrameDecoder d(lim);
  std::vector<FrameDecoder::Event> ev;
  for (std::uint32_t s = 1; s <= 4; ++s) d.feed(encode_begin_prefix(s, 0, 10, 0), ev);
  EXPECT_THROW(d.feed(encode_begin_prefix(5, 0, 10, 0), ev), DecodeError);
}

TEST(FrameDecoder, RejectsOutOfOrderAndUnknownParts) {
  std::vector<FrameDecoder::Event> ev;
  {
    FrameDecoder d;
    auto h = encode_part_header(9, 0, 1);
    Bytes f(h.begin(), h.end());
    f.push_back(0);
    EXPECT_THROW(d.feed(f, ev), DecodeError);
  }
  {
    FrameDecoder d;
    d.feed(encode_begin_prefix(1, 0, 10, 0), ev);
    auto h = encode_part_header(1, 5, 1);
    Bytes f(h.begin(), h.end());
    f.push_back(0);
    EXPECT_THROW(d.feed(f, ev), DecodeError);
  }
}

TEST(FrameDecoder, RandomGarbageNeverCrashes) {
  Rng rng(11);
  int errors = 0;
  for (int i = 0; i < 2000; ++i) {
    Bytes junk(1 + rng.below(200));
    for (auto& b : junk) b = static_cast<std::uint8_t>(rng.next());
    if (i % 3 == 0) {  // a valid header with garbage after it
      auto h = encode_frame_header({FrameType::kBegin, 0, 1, static_cast<std::uint32_t>(junk.size()), rng.below(1000)});
      junk.insert(junk.begin(), h.begin(), h.end());
    }
    FrameDecoder d;
    std::vector<FrameDecoder::Event> ev;
    try {
      d.feed(junk, ev);
    } catch (const DecodeError&) {
      ++errors;
    }
  }
  EXPECT_GT(errors, 1000);
}

}  // namespace
}  // namespace apiary::wire
