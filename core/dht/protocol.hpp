#pragma once
// DHT messages. Every request names its sender (id, and whether it is a client that accepts no
// requests), so every request and reply teaches the routing table. Store and find carry many
// keys in one message. Decoders enforce dht::Limits: a hostile peer cannot make a node allocate
// more than a message's bytes, nor send more keys, values or contacts than the limits allow.
#include <vector>

#include "core/dht/record.hpp"
#include "core/dht/routing_table.hpp"

namespace apiary::dht {

inline const Limits kDefaultLimits{};

struct Sender {
  DhtId id;
  bool client = false;    // accepts no requests: stay out of routing tables
  bool newcomer = false;  // (re)joined lately with an empty store: hand it the records it should hold
  void encode(wire::Writer& w) const {
    w.raw(id.b);
    w.u8(static_cast<std::uint8_t>((client ? 1 : 0) | (newcomer ? 2 : 0)));
  }
  static Sender decode(wire::Reader& r) {
    Sender s;
    s.id = DhtId::from_bytes(r.raw(DhtId::kBytes));
    const auto f = r.u8();
    if (f > 3) throw wire::DecodeError("unknown sender flags");
    s.client = f & 1;
    s.newcomer = f & 2;
    return s;
  }
};

inline void encode_id(wire::Writer& w, const DhtId& id) { w.raw(id.b); }
inline DhtId decode_id(wire::Reader& r) { return DhtId::from_bytes(r.raw(DhtId::kBytes)); }

struct PingRequest {
  static constexpr std::uint32_t kMethod = 100;
  Sender from;
  void encode(wire::Writer& w) const { from.encode(w); }
  static PingRequest decode(wire::Reader& r) { return PingRequest{Sender::decode(r)}; }
};
struct PingReply {
  DhtId id;
  void encode(wire::Writer& w) const { encode_id(w, id); }
  static PingReply decode(wire::Reader& r) { return PingReply{decode_id(r)}; }
};

struct StoreRequest {
  static constexpr std::uint32_t kMethod = 101;
  Sender from;
  std::vector<Record> records;
  void encode(wire::Writer& w) const {
    from.encode(w);
    w.varint(records.size());
    for (const auto& r : records) r.encode(w);
  }
  static StoreRequest decode(wire::Reader& r) {
    StoreRequest s;
    s.from = Sender::decode(r);
    const auto n = r.varint_max(kDefaultLimits.max_keys_per_request, "records per store");
    for (std::uint64_t i = 0; i < n; ++i) s.records.push_back(Record::decode(r, kDefaultLimits));
    return s;
  }
};

// What a node answers for each record of a store. A code this build does not know counts as refused.
enum class StoreOutcome : std::uint8_t {
  kStored = 0,   // held
  kStale = 1,    // the node holds a record under the (key, subkey) that expires no earlier
  kExpired = 2,  // expired on arrival
  kInvalid = 3,  // a validator refused it (signature, schema, size)
  kTooLate = 4,  // expires later than the node keeps anything
  kShadows = 5,  // an unowned plain value would hide an owner's signed subkeys
  kNoRoom = 6,   // the sender's share of the node's store is full of records that expire later
};
inline constexpr std::size_t kStoreOutcomes = 7;
// "stored", "stale", "expires too late", ...: how a reply's code reads in logs and the CLI.
const char* describe(StoreOutcome o);
// "stored", "stale", "too_late", ...: its name in counters (dht.store_refused.NAME).
const char* name_of(StoreOutcome o);

struct StoreReply {
  DhtId id;
  std::vector<std::uint8_t> outcomes;  // StoreOutcome per record
  void encode(wire::Writer& w) const {
    encode_id(w, id);
    w.bytes(outcomes);
  }
  static StoreReply decode(wire::Reader& r) {
    StoreReply s;
    s.id = decode_id(r);
    auto b = r.bytes(kDefaultLimits.max_keys_per_request);
    s.outcomes.assign(b.begin(), b.end());
    return s;
  }
};

// A FIND may carry records for the peer to store, as a STORE would (same checks, same quotas):
// a store's lookup hands each record to the peers it asks among the key's k nearest it knows
// then, so the store needs no second round of requests to the peers it ends with.
struct FindRequest {
  static constexpr std::uint32_t kMethod = 102;
  Sender from;
  std::vector<DhtId> keys;
  std::vector<Record> store;
  void encode(wire::Writer& w) const {
    from.encode(w);
    w.varint(keys.size());
    for (const auto& k : keys) encode_id(w, k);
    w.varint(store.size());
    for (const auto& rec : store) rec.encode(w);
  }
  static FindRequest decode(wire::Reader& r) {
    FindRequest f;
    f.from = Sender::decode(r);
    const auto n = r.varint_max(kDefaultLimits.max_keys_per_request, "keys per find");
    for (std::uint64_t i = 0; i < n; ++i) f.keys.push_back(decode_id(r));
    const auto ns = r.varint_max(kDefaultLimits.max_keys_per_request, "records per find");
    for (std::uint64_t i = 0; i < ns; ++i) f.store.push_back(Record::decode(r, kDefaultLimits));
    return f;
  }
};

struct FindReply {
  struct Entry {
    std::vector<Record> records;
    std::vector<Contact> nearest;
  };
  DhtId id;
  std::vector<Entry> entries;  // one per requested key, in order
  // Per record the request carried, in order: a StoreOutcome, or kDeclined.
  std::vector<std::uint8_t> stored;
  // The peer knows k peers nearer to the record's key than itself: it keeps no copy (one that no
  // later store would reach and update), and the storer sends a STORE if it ends among the k.
  static constexpr std::uint8_t kDeclined = 0xFF;
  void encode(wire::Writer& w) const {
    encode_id(w, id);
    w.varint(entries.size());
    for (const auto& e : entries) {
      w.varint(e.records.size());
      for (const auto& r : e.records) r.encode(w);
      w.varint(e.nearest.size());
      for (const auto& c : e.nearest) {
        encode_id(w, c.id);
        w.u32(c.endpoint.ip);
        w.u16(c.endpoint.port);
      }
    }
    w.bytes(stored);
  }
  static FindReply decode(wire::Reader& r) {
    FindReply f;
    f.id = decode_id(r);
    const auto n = r.varint_max(kDefaultLimits.max_keys_per_request, "entries per find reply");
    f.entries.resize(n);
    for (auto& e : f.entries) {
      const auto nr = r.varint_max(kDefaultLimits.max_values_per_key, "values per key");
      for (std::uint64_t i = 0; i < nr; ++i) e.records.push_back(Record::decode(r, kDefaultLimits));
      const auto nc = r.varint_max(kDefaultLimits.max_contacts, "contacts per key");
      for (std::uint64_t i = 0; i < nc; ++i) {
        Contact c;
        c.id = decode_id(r);
        c.endpoint.ip = r.u32();
        c.endpoint.port = r.u16();
        e.nearest.push_back(c);
      }
    }
    auto b = r.bytes(kDefaultLimits.max_keys_per_request);
    f.stored.assign(b.begin(), b.end());
    return f;
  }
};

}  // namespace apiary::dht
