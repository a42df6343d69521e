#include <gtest/gtest.h>

#include <ATen/ATen.h>

#include "real/torch/collaborative.hpp"
#include "real/torch/experts.hpp"
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

namespace apiary::real {
namespace {

// Devices by name: the CPU always; CUDA where this LibTorch and machine have it, else a clear error.
TEST(TorchDevice, NamesAreCheckedAndCudaNeedsAGpu) {
  EXPECT_TRUE(device_named("cpu").is_cpu());
  try {
    device_named("tpu:0");
    ADD_FAILURE() << "tpu:0 accepted";
  } catch (const std::invalid_argument& e) {
    EXPECT_NE(std::string(e.what()).find("is not cpu, cuda or cuda:N"), std::string::npos) << e.what();
  }
  if (torch::cuda::is_available()) {
    EXPECT_TRUE(device_named("cuda:0").is_cuda());
    EXPECT_THROW(device_named("cuda:" + std::to_string(torch::cuda::device_count())), std::invalid_argument);
  } else {
    try {
      device_named("cuda:0");
      ADD_FAILURE() << "cuda:0 accepted without CUDA";
    } catch (const std::invalid_argument& e) {
      EXPECT_NE(std::string(e.what()).find("no CUDA here"), std::string::npos) << e.what();
    }
  }
}

// Tensors of another dtype (and, on a GPU machine, device) leave through one host copy and come
// back onto their own dtype and device.
TEST(TorchDevice, FlatAndBackKeepEachTensorsDeviceAndDtype) {
  const auto dev = torch::cuda::is_available() ? torch::Device("cuda:0") : torch::Device("cpu");
  std::vector<torch::Tensor> ts{torch::arange(6, torch::TensorOptions().dtype(torch::kDouble).device(dev)).reshape({2, 3}),
                                torch::full({2}, 0.5, torch::TensorOptions().dtype(torch::kHalf).device(dev))};
  const auto f = flat(ts);
  EXPECT_EQ(f, (std::vector<float>{0, 1, 2, 3, 4, 5, 0.5f, 0.5f}));
  std::vector<float> back{6, 5, 4, 3, 2, 1, 0.25f, 0.75f};
  unflatten_into(back, ts);
  EXPECT_EQ(ts[0].scalar_type(), torch::kDouble);
  EXPECT_EQ(ts[1].device(), dev);
  EXPECT_EQ(flat(ts), back);
}

}  // namespace
}  // namespace apiary::real
