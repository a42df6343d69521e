#pragma once
// What the DHT stores: under a key, either one plain value or a dictionary of subkeys, each with
// its own expiration time. Signed records carry their owner's Ed25519 signature beside the value.
#include <cstdint>
#include <optional>
#include <string>

#include "core/dht/id.hpp"
#include "core/runtime/payload.hpp"
#include "core/runtime/time.hpp"
#include "core/wire/codec.hpp"

namespace apiary::dht {

struct Limits {
  std::size_t max_key = 256;            // bytes of a raw key
  std::size_t max_subkey = 256;
  std::size_t max_value = 64 * 1024;
  std::size_t max_keys_per_request = 64;
  std::size_t max_values_per_key = 256;  // subkeys returned for one key
  std::size_t max_contacts = 64;         // contacts in one reply
};

// One (key, subkey) record as it travels in store requests and find replies.
struct Record {
  std::string key;                    // the raw key (its id is DhtId::of_key(key))
  std::optional<std::string> subkey;  // set: a dictionary entry
  Bytes value;
  TimePoint expiration{};
  Bytes signature;  // empty, or 64 bytes of Ed25519

  void encode(wire::Writer& w) const;
  static Record decode(wire::Reader& r, const Limits& lim);
  // The bytes a signature covers.
  Bytes signed_bytes() const;
  // Whether its key or subkey names an owner ("[owner:...]"): then a validator has checked the
  // owner's signature over it before any node keeps or returns it.
  bool owned() const;
  bool operator==(const Record&) const = default;
};

}  // namespace apiary::dht
