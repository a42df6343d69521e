#pragma once
// LibTorch tensors on the wire: a float32 tensor travels as its raw little-endian bytes in a
// message payload; its shape travels in the (small) message header. Only real/ sees LibTorch,
// and only through this narrow header.
#include <ATen/core/Tensor.h>

#include <cstdint>
#include <vector>

#include "core/moe/protocol.hpp"
#include "core/runtime/payload.hpp"

namespace apiary::real {

// Contiguous float32 copy of `t` (any dtype convertible to float32, any device).
Payload tensor_to_payload(const at::Tensor& t);

// A float32 CPU tensor of `shape` holding the payload's bytes. Throws std::invalid_argument if
// the payload's size does not match the shape (a hostile or confused peer), never reads past it.
at::Tensor payload_to_tensor(const Payload& p, const std::vector<std::int64_t>& shape);

// A tensor in the expert protocol: its shape, and its values in a payload — float32 as raw bytes
// (codec 0), any other codec as compression::encode's self-describing blob.
moe::TensorShape shape_of(const at::Tensor& t);
Payload pack(const at::Tensor& t, std::uint8_t codec);
// Throws std::invalid_argument when the payload does not hold the shape's values.
at::Tensor unpack(const Payload& p, const std::vector<std::int64_t>& dims, std::uint8_t codec);

}  // namespace apiary::real
