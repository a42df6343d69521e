#include "real/torch/tensor.hpp"

#include "core/compression/codecs.hpp"

#include <ATen/ATen.h>

#include <cstring>
#include <stdexcept>
#include <string>

namespace apiary::real {

Payload tensor_to_payload(const at::Tensor& t) {
  at::Tensor c = t.detach().to(at::kCPU, at::kFloat).contiguous();
  Bytes bytes(static_cast<std::size_t>(c.numel()) * sizeof(float));
  if (!bytes.empty()) std::memcpy(bytes.data(), c.data_ptr<float>(), bytes.size());
  return Payload::bytes(std::move(bytes));
}

at::Tensor payload_to_tensor(const Payload& p, const std::vector<std::int64_t>& shape) {
  std::int64_t n = 1;
  for (auto d : shape) {
    if (d < 0) throw std::invalid_argument("negative dimension in tensor shape");
    if (d && n > INT64_MAX / 4 / d) throw std::invalid_argument("tensor shape too large");
    n *= d;
  }
  const auto expect = static_cast<std::uint64_t>(n) * sizeof(float);
  if (p.size() != expect)
    throw std::invalid_argument("payload of " + std::to_string(p.size()) + " bytes does not hold a float32 tensor of " +
                                std::to_string(n) + " elements");
  if (!p.has_data() && expect) throw std::invalid_argument("size-only payload carries no tensor data");
  at::Tensor out = at::empty(shape, at::TensorOptions().dtype(at::kFloat));
  if (expect) std::memcpy(out.data_ptr<float>(), p.data().data(), expect);
  return out;
}


moe::TensorShape shape_of(const at::Tensor& t) { return moe::TensorShape{t.sizes().vec()}; }

// A tensor in a payload: float32 as its raw bytes, any other codec as compression::encode's
// self-describing blob.
Payload pack(const at::Tensor& t, std::uint8_t codec) {
  if (codec == 0) return tensor_to_payload(t);
  const at::Tensor c = t.detach().to(at::kFloat).contiguous();
  return Payload::bytes(compression::encode(std::span<const float>(c.data_ptr<float>(), static_cast<std::size_t>(c.numel())),
                                            static_cast<compression::Codec>(codec)));
}

at::Tensor unpack(const Payload& p, const std::vector<std::int64_t>& dims, std::uint8_t codec) {
  if (codec == 0) return payload_to_tensor(p, dims);
  std::int64_t n = 1;
  for (auto d : dims) n *= d;
  if (!p.has_data()) throw std::invalid_argument("a compressed tensor without bytes");
  std::vector<float> v = compression::decode(p.data(), static_cast<std::size_t>(n));
  if (static_cast<std::int64_t>(v.size()) != n)
    throw std::invalid_argument("the payload holds " + std::to_string(v.size()) + " values, the shape " + std::to_string(n));
  return at::from_blob(v.data(), dims, at::kFloat).clone();
}

}  // namespace apiary::real
