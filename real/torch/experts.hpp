#pragma once
// Experts as LibTorch modules, hosted with their own optimizer: an FFN block and a transformer
// block. Served over the expert protocol by ExpertServer (real/torch/expert_server.hpp).
// Only real/torch includes LibTorch headers.
#include <torch/torch.h>

#include <functional>
#include <memory>
#include <string>

namespace apiary::real {

// Feed-forward block with a residual connection and layer norm: y = LN(x + W2 relu(W1 x)).
struct FfnExpertImpl : torch::nn::Module {
  FfnExpertImpl(std::int64_t dim, std::int64_t hidden);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::Linear w1{nullptr}, w2{nullptr};
  torch::nn::LayerNorm norm{nullptr};
};
TORCH_MODULE(FfnExpert);

// A transformer block: self-attention and the FFN block, each with residual and layer norm.
// Inputs [batch, seq, dim].
struct TransformerExpertImpl : torch::nn::Module {
  TransformerExpertImpl(std::int64_t dim, std::int64_t heads, std::int64_t hidden);
  torch::Tensor forward(torch::Tensor x);
  torch::nn::MultiheadAttention attention{nullptr};
  torch::nn::LayerNorm norm1{nullptr};
  FfnExpert ffn{nullptr};
};
TORCH_MODULE(TransformerExpert);

struct HostedExpert {
  std::shared_ptr<torch::nn::Module> module;
  std::function<torch::Tensor(const torch::Tensor&)> forward;
  std::unique_ptr<torch::optim::Optimizer> optimizer;
  std::int64_t input_dim = 0, output_dim = 0;
  bool sequence = false;  // inputs [batch, seq, dim] instead of [batch, dim]
  std::string kind = "ffn";
  std::uint64_t updates = 0;
  torch::Device device{torch::kCPU};  // where its parameters live: requests are moved there
};

// A device by name: "cpu", "cuda" or "cuda:N". std::invalid_argument for any other name, for a
// CUDA device where this LibTorch has no CUDA or no GPU is visible, and for a GPU index beyond
// those present; the message says which.
torch::Device device_named(const std::string& name);

// An FFN expert of width `dim` with an SGD optimizer of learning rate `lr`, on `device`.
HostedExpert make_ffn_expert(std::int64_t dim, std::int64_t hidden, double lr, torch::Device device = torch::kCPU);
// A transformer-block expert (inputs [batch, seq, dim]).
HostedExpert make_transformer_expert(std::int64_t dim, std::int64_t heads, std::int64_t hidden, double lr,
                                     torch::Device device = torch::kCPU);

}  // namespace apiary::real
