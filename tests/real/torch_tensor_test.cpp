#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "real/torch/tensor.hpp"

namespace apiary::real {
namespace {

TEST(TorchTensor, RoundTripsExactly) {
  at::manual_seed(0);
  for (auto shape : std::vector<std::vector<std::int64_t>>{{}, {0}, {7}, {3, 4, 5}}) {
    at::Tensor t = at::randn(shape);
    Payload p = tensor_to_payload(t);
    EXPECT_EQ(p.size(), static_cast<std::uint64_t>(t.numel()) * 4);
    at::Tensor back = payload_to_tensor(p, shape);
    EXPECT_TRUE(at::equal(t, back));
  }
}

TEST(TorchTensor, ConvertsDtypeAndLayout) {
  at::Tensor t = at::arange(12, at::kDouble).reshape({3, 4}).t();  // non-contiguous double
  at::Tensor back = payload_to_tensor(tensor_to_payload(t), {4, 3});
  EXPECT_TRUE(at::equal(t.to(at::kFloat), back));
}

TEST(TorchTensor, WrongShapeIsAClearError) {
  Payload p = tensor_to_payload(at::ones({2, 3}));
  try {
    payload_to_tensor(p, {4, 3});
    FAIL();
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("does not hold a float32 tensor of 12 elements"), std::string::npos);
  }
  EXPECT_THROW(payload_to_tensor(p, {-1, 6}), std::invalid_argument);
  EXPECT_THROW(payload_to_tensor(Payload::size_only(24), {2, 3}), std::invalid_argument);
}

}  // namespace
}  // namespace apiary::real
