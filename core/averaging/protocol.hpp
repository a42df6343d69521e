#pragma once
// Averaging messages (methods 200-209). Decoders bound every count: a hostile peer cannot make a
// member allocate more than its message's bytes.
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "core/averaging/partition.hpp"
#include "core/runtime/endpoint.hpp"
#include "core/runtime/payload.hpp"
#include "core/runtime/time.hpp"
#include "core/wire/codec.hpp"

namespace apiary::averaging {

inline constexpr std::size_t kMaxMembers = 4096;
inline constexpr std::size_t kMaxTensors = 1u << 16;
inline constexpr std::size_t kMaxDims = 16;

struct Member {
  Endpoint endpoint;
  MemberKind kind = MemberKind::kFull;
  double bandwidth = 1.0;  // relative; only ratios matter
  void encode(wire::Writer& w) const;
  static Member decode(wire::Reader& r);
  bool operator==(const Member&) const = default;
};

void encode_schema(wire::Writer& w, const TensorSchema& s);
TensorSchema decode_schema(wire::Reader& r);

// A group about to run one all-reduce: who is in it (in order: a member's index is its rank) and
// what is averaged.
struct Group {
  std::uint64_t id = 0;
  std::vector<Member> members;
  TensorSchema schema;
  std::optional<std::size_t> index_of(const Endpoint& e) const;
  void encode(wire::Writer& w) const;
  static Group decode(wire::Reader& r);
};

// What a peer looking for a group declares under the group key in the DHT (a record's value,
// so any peer may have written it).
struct Declaration {
  Member member;
  std::uint64_t schema_hash = 0;
  TimePoint deadline{};
  Bytes encode() const {
    Bytes b;
    wire::Writer w(b);
    member.encode(w);
    w.u64(schema_hash);
    w.i64(to_ns(deadline));
    return b;
  }
  static Declaration decode(std::span<const std::uint8_t> bytes) {
    wire::Reader r(bytes);
    Declaration d;
    d.member = Member::decode(r);
    d.schema_hash = r.u64();
    d.deadline = TimePoint(Duration(r.i64()));
    r.expect_end();
    return d;
  }
};

// A sender's piece of a reducer's part; the payload is the codec's body for the piece's values
// (compression::encode_body): every member knows the piece's length, so only the codec travels
// beside it, and a float32 piece is the sender's memory as it is. The reply comes once the piece
// is reduced and carries the weighted mean the same way.
struct PieceRequest {
  static constexpr std::uint32_t kMethod = 200;
  std::uint64_t group = 0;
  std::uint64_t piece = 0;  // index among the reducer's pieces
  double weight = 1.0;
  compression::Codec codec = compression::Codec::kFloat32;
  Payload payload;
  void encode(wire::Writer& w) const {
    w.u64(group);
    w.varint(piece);
    w.f64(weight);
    w.u8(static_cast<std::uint8_t>(codec));
  }
  static PieceRequest decode(wire::Reader& r) {
    PieceRequest p;
    p.group = r.u64();
    p.piece = r.varint();
    p.weight = r.f64();
    p.codec = compression::codec_from_byte(r.u8());
    return p;
  }
};
struct PieceReply {
  compression::Codec codec = compression::Codec::kFloat32;
  Payload payload;
  void encode(wire::Writer& w) const { w.u8(static_cast<std::uint8_t>(codec)); }
  static PieceReply decode(wire::Reader& r) { return {compression::codec_from_byte(r.u8()), {}}; }
};

// One-way: the sender leaves the round (sends nothing more, reduces nothing).
struct CancelNotice {
  static constexpr std::uint32_t kMethod = 201;
  std::uint64_t group = 0;
  void encode(wire::Writer& w) const { w.u64(group); }
  static CancelNotice decode(wire::Reader& r) { return CancelNotice{r.u64()}; }
};

// Matchmaking: a follower asks a leader to take it into the group it is assembling. The reply
// comes when the group is assembled (or the leader gives up) and carries the group.
struct JoinRequest {
  static constexpr std::uint32_t kMethod = 202;
  std::string key;
  std::uint64_t schema_hash = 0;
  Member member;
  void encode(wire::Writer& w) const {
    w.str(key);
    w.u64(schema_hash);
    member.encode(w);
  }
  static JoinRequest decode(wire::Reader& r) {
    JoinRequest j;
    j.key = r.str(256);
    j.schema_hash = r.u64();
    j.member = Member::decode(r);
    return j;
  }
};
struct JoinReply {
  Group group;
  void encode(wire::Writer& w) const { group.encode(w); }
  static JoinReply decode(wire::Reader& r) { return JoinReply{Group::decode(r)}; }
};

// State download: a newcomer asks a peer for its current parameters and optimizer state.
struct StateRequest {
  static constexpr std::uint32_t kMethod = 203;
  std::string prefix;
  void encode(wire::Writer& w) const { w.str(prefix); }
  static StateRequest decode(wire::Reader& r) { return StateRequest{r.str(256)}; }
};
struct StateReply {
  std::uint64_t epoch = 0;
  TensorSchema schema;
  Bytes extra;      // opaque state beside the tensors (optimizer state, counters)
  Payload payload;  // the flattened float32 tensors, little-endian
  void encode(wire::Writer& w) const {
    w.varint(epoch);
    encode_schema(w, schema);
    w.bytes(extra);
  }
  static StateReply decode(wire::Reader& r) {
    StateReply s;
    s.epoch = r.varint();
    s.schema = decode_schema(r);
    auto e = r.bytes(1u << 20);
    s.extra.assign(e.begin(), e.end());
    return s;
  }
};

}  // namespace apiary::averaging
