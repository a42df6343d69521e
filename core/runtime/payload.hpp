#pragma once
// A message is a small header (real bytes, always encoded and decoded) plus an optional payload.
// The payload is either real bytes or size-only: in simulation the network carries `size()`
// virtual bytes, while the data (if any) rides beside the packet in memory, so timing is modelled
// by ns-3 and the math stays exact. Buffers are shared and immutable, so a payload can be queued,
// retried and delivered without copies.
//
// Real bytes are a view of memory that the payload keeps alive through a shared owner: a byte
// vector of its own, or memory that belongs to something else (a tensor sent as it is, without
// an encoding copy). Whoever makes a view promises not to change that memory while any copy of
// the payload exists (owner.use_count() tells).
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

namespace apiary {

using Bytes = std::vector<std::uint8_t>;

class Payload {
 public:
  Payload() = default;
  // Real bytes.
  static Payload bytes(Bytes data) { return shared(std::make_shared<const Bytes>(std::move(data))); }
  static Payload shared(std::shared_ptr<const Bytes> data) {
    Payload p;
    if (data) p.set(data->data(), data->size());
    p.owner_ = std::move(data);
    return p;
  }
  // `bytes`, kept alive by `owner` (which must not be null).
  static Payload view(std::shared_ptr<const void> owner, std::span<const std::uint8_t> bytes) {
    Payload p;
    p.set(bytes.data(), bytes.size());
    p.owner_ = std::move(owner);
    return p;
  }
  // N bytes on the wire with no content: a modelled transfer. A live transport sends zeros.
  static Payload size_only(std::uint64_t n) {
    Payload p;
    p.size_ = n;
    return p;
  }

  std::uint64_t size() const { return size_; }
  bool empty() const { return size_ == 0; }
  bool has_data() const { return owner_ != nullptr; }
  std::span<const std::uint8_t> data() const {
    return owner_ ? std::span<const std::uint8_t>(ptr_, static_cast<std::size_t>(size_))
                  : std::span<const std::uint8_t>();
  }
  const std::shared_ptr<const void>& owner() const { return owner_; }

 private:
  void set(const std::uint8_t* p, std::size_t n) {
    ptr_ = p;
    size_ = n;
  }
  std::shared_ptr<const void> owner_;
  const std::uint8_t* ptr_ = nullptr;
  std::uint64_t size_ = 0;
};

// Memory an incoming payload may be written into directly, instead of a buffer of the
// transport's own (see TransportHandler::place_payload): `bytes` is kept alive by `owner`.
struct PayloadTarget {
  std::shared_ptr<void> owner;
  std::span<std::uint8_t> bytes;
  explicit operator bool() const { return owner != nullptr; }
};

struct Message {
  Bytes header;     // small, always real; the RPC envelope and body live here
  Payload payload;  // optional bulk data
  // The connection a received message came on, for transports with connections (live TCP: a
  // number per connection, never reused); 0 where a transport has none (ns-3's datagrams, the
  // fake world). Ignored on send.
  std::uint64_t link = 0;
  std::uint64_t wire_size() const { return header.size() + payload.size(); }
};

}  // namespace apiary
