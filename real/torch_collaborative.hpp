#pragma once
// Collaborative training from a LibTorch training loop (issue 7): wraps any torch::nn::Module and
// torch::optim optimizer. After loss.backward() on a local batch, accumulate(samples) adds the
// gradients; step() waits for the swarm's global batch, averages the gradients over it
// (weighted by samples, through the DHT-matched all-reduce), writes them into the parameters'
// .grad() and calls the optimizer's own step — SGD, Adam, anything.
//
//   TorchCollaborative collab(model, optimizer, rt, rpc, dht, identity, config);
//   for (batch : data) {
//     model->zero_grad();  loss(model(x), y).backward();
//     collab.accumulate(batch_size);
//     if (collab.local_samples() >= my_share) co_await collab.step();
//   }
#include <torch/torch.h>

#include "core/optim/collaborative.hpp"

namespace apiary::real {

class TorchCollaborative {
 public:
  TorchCollaborative(torch::nn::Module& model, torch::optim::Optimizer& optimizer, Runtime& rt, Rpc& rpc,
                     dht::DhtNode& dht, dht::Identity identity, optim::CollaborativeConfig config);
  // Adds the current .grad() of every parameter (a mean over `samples` samples).
  void accumulate(std::uint64_t samples);
  // One global step through the swarm, then the optimizer's step on the averaged gradients.
  Task<Result<optim::StepReport>> step();
  // A newcomer: the swarm's parameters and epoch into the model before it contributes.
  Task<Result<std::uint64_t>> join();
  std::uint64_t epoch() const { return collab_->epoch(); }
  std::uint64_t local_samples() const { return collab_->local_samples(); }

 private:
  std::vector<torch::Tensor> params_;
  torch::optim::Optimizer& optimizer_;
  std::unique_ptr<optim::CollaborativeOptimizer> collab_;
};

}  // namespace apiary::real
