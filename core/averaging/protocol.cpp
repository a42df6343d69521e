#include "core/averaging/protocol.hpp"

#include <cmath>

namespace apiary::averaging {

void Member::encode(wire::Writer& w) const {
  w.u32(endpoint.ip);
  w.u16(endpoint.port);
  w.u8(static_cast<std::uint8_t>(kind));
  w.f64(bandwidth);
}

Member Member::decode(wire::Reader& r) {
  Member m;
  m.endpoint.ip = r.u32();
  m.endpoint.port = r.u16();
  const auto k = r.u8();
  if (k > 2) throw wire::DecodeError("unknown member kind " + std::to_string(k));
  m.kind = static_cast<MemberKind>(k);
  m.bandwidth = r.f64();
  if (!std::isfinite(m.bandwidth) || m.bandwidth < 0) throw wire::DecodeError("member bandwidth must be finite and >= 0");
  return m;
}

void encode_schema(wire::Writer& w, const TensorSchema& s) {
  w.varint(s.shapes.size());
  for (const auto& shape : s.shapes) {
    w.varint(shape.size());
    for (auto d : shape) w.varint(static_cast<std::uint64_t>(d));
  }
}

TensorSchema decode_schema(wire::Reader& r) {
  TensorSchema s;
  const auto n = r.varint_max(kMaxTensors, "tensors in a schema");
  s.shapes.resize(n);
  for (auto& shape : s.shapes) {
    const auto dims = r.varint_max(kMaxDims, "dimensions of a tensor");
    for (std::uint64_t i = 0; i < dims; ++i)
      shape.push_back(static_cast<std::int64_t>(r.varint_max(std::uint64_t{1} << 40, "tensor dimension")));
  }
  if (s.total() > (std::uint64_t{1} << 40)) throw wire::DecodeError("schema too large");
  return s;
}

std::optional<std::size_t> Group::index_of(const Endpoint& e) const {
  for (std::size_t i = 0; i < members.size(); ++i)
    if (members[i].endpoint == e) return i;
  return std::nullopt;
}

void Group::encode(wire::Writer& w) const {
  w.u64(id);
  w.varint(members.size());
  for (const auto& m : members) m.encode(w);
  encode_schema(w, schema);
}

Group Group::decode(wire::Reader& r) {
  Group g;
  g.id = r.u64();
  const auto n = r.varint_max(kMaxMembers, "group members");
  for (std::uint64_t i = 0; i < n; ++i) g.members.push_back(Member::decode(r));
  g.schema = decode_schema(r);
  return g;
}

}  // namespace apiary::averaging
