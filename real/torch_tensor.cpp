#include "real/torch_tensor.hpp"

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

}  // namespace apiary::real
