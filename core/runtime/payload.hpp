#pragma once
// A message is a small header (real bytes, always encoded and decoded) plus an optional payload.
// The payload is either real bytes or size-only: in simulation the network carries `size()`
// virtual bytes, while the data (if any) rides beside the packet in memory, so timing is modelled
// by ns-3 and the math stays exact. Buffers are shared and immutable, so a payload can be queued,
// retried and delivered without copies.
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
  static Payload bytes(Bytes data) {
    Payload p;
    p.size_ = data.size();
    p.data_ = std::make_shared<const Bytes>(std::move(data));
    return p;
  }
  static Payload shared(std::shared_ptr<const Bytes> data) {
    Payload p;
    p.size_ = data ? data->size() : 0;
    p.data_ = std::move(data);
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
  bool has_data() const { return data_ != nullptr; }
  std::span<const std::uint8_t> data() const {
    return data_ ? std::span<const std::uint8_t>(*data_) : std::span<const std::uint8_t>();
  }
  const std::shared_ptr<const Bytes>& buffer() const { return data_; }

 private:
  std::shared_ptr<const Bytes> data_;
  std::uint64_t size_ = 0;
};

struct Message {
  Bytes header;     // small, always real; the RPC envelope and body live here
  Payload payload;  // optional bulk data
  std::uint64_t wire_size() const { return header.size() + payload.size(); }
};

}  // namespace apiary
