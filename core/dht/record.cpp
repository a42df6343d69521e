#include "core/dht/record.hpp"

namespace apiary::dht {

void Record::encode(wire::Writer& w) const {
  w.str(key);
  w.u8(subkey ? 1 : 0);
  if (subkey) w.str(*subkey);
  w.bytes(value);
  w.i64(to_ns(expiration));
  w.bytes(signature);
}

Record Record::decode(wire::Reader& r, const Limits& lim) {
  Record rec;
  rec.key = r.str(lim.max_key);
  const auto has_sub = r.u8();
  if (has_sub > 1) throw wire::DecodeError("subkey flag must be 0 or 1");
  if (has_sub) rec.subkey = r.str(lim.max_subkey);
  auto v = r.bytes(lim.max_value);
  rec.value.assign(v.begin(), v.end());
  rec.expiration = time_from_ns(r.i64());
  auto s = r.bytes(64);
  if (!s.empty() && s.size() != 64) throw wire::DecodeError("signature must be 0 or 64 bytes");
  rec.signature.assign(s.begin(), s.end());
  return rec;
}

Bytes Record::signed_bytes() const {
  wire::Writer w;
  w.str("apiary-dht-record-v1");
  w.str(key);
  w.u8(subkey ? 1 : 0);
  if (subkey) w.str(*subkey);
  w.bytes(value);
  w.i64(to_ns(expiration));
  return w.take();
}

bool Record::owned() const {
  constexpr std::string_view tag = "[owner:";
  return key.find(tag) != std::string::npos || (subkey && subkey->find(tag) != std::string::npos);
}

}  // namespace apiary::dht
