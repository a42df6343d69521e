#include "real/torch/experts.hpp"

#include <optional>
#include <stdexcept>

namespace apiary::real {

FfnExpertImpl::FfnExpertImpl(std::int64_t dim, std::int64_t hidden)
    : w1(register_module("w1", torch::nn::Linear(dim, hidden))),
      w2(register_module("w2", torch::nn::Linear(hidden, dim))),
      norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))) {}

torch::Tensor FfnExpertImpl::forward(torch::Tensor x) { return norm(x + w2(torch::relu(w1(x)))); }

TransformerExpertImpl::TransformerExpertImpl(std::int64_t dim, std::int64_t heads, std::int64_t hidden)
    : attention(register_module("attention", torch::nn::MultiheadAttention(torch::nn::MultiheadAttentionOptions(dim, heads)))),
      norm1(register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
      ffn(register_module("ffn", FfnExpert(dim, hidden))) {}

torch::Tensor TransformerExpertImpl::forward(torch::Tensor x) {
  const torch::Tensor s = x.transpose(0, 1);  // [seq, batch, dim] for the attention
  const torch::Tensor a = std::get<0>(attention(s, s, s)).transpose(0, 1);
  return ffn(norm1(x + a));
}

torch::Device device_named(const std::string& name) {
  std::optional<torch::Device> d;
  try {
    d.emplace(name);
  } catch (const c10::Error&) {
  }
  if (!d || !(d->is_cpu() || d->is_cuda()))
    throw std::invalid_argument("device '" + name + "' is not cpu, cuda or cuda:N");
  if (d->is_cuda()) {
    if (!torch::cuda::is_available())
      throw std::invalid_argument("device '" + name +
                                  "': no CUDA here (this LibTorch is built for the CPU only, or no GPU is visible)");
    const auto count = static_cast<std::int64_t>(torch::cuda::device_count());
    if (d->has_index() && d->index() >= count)
      throw std::invalid_argument("device '" + name + "': this machine has " + std::to_string(count) + " GPU(s)");
  }
  return *d;
}

HostedExpert make_transformer_expert(std::int64_t dim, std::int64_t heads, std::int64_t hidden, double lr, torch::Device device) {
  TransformerExpert m(dim, heads, hidden);
  m->to(device);
  HostedExpert e;
  e.module = m.ptr();
  e.forward = [m](const torch::Tensor& x) mutable { return m->forward(x); };
  e.optimizer = std::make_unique<torch::optim::SGD>(m->parameters(), torch::optim::SGDOptions(lr));
  e.input_dim = e.output_dim = dim;
  e.sequence = true;
  e.kind = "transformer";
  e.device = device;
  return e;
}

HostedExpert make_ffn_expert(std::int64_t dim, std::int64_t hidden, double lr, torch::Device device) {
  FfnExpert m(dim, hidden);
  m->to(device);
  HostedExpert e;
  e.module = m.ptr();
  e.forward = [m](const torch::Tensor& x) mutable { return m->forward(x); };
  e.optimizer = std::make_unique<torch::optim::SGD>(m->parameters(), torch::optim::SGDOptions(lr));
  e.input_dim = e.output_dim = dim;
  e.device = device;
  return e;
}

}  // namespace apiary::real
