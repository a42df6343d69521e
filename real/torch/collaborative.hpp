#pragma once
// Collaborative training from a LibTorch training loop: wraps any torch::nn::Module and
// torch::optim optimizer. After loss.backward() on a local batch, accumulate(samples) adds the
// gradients; step() waits for the swarm's global batch, averages the gradients over it
// (weighted by samples, through the DHT-matched all-reduce), writes them into the parameters'
// .grad() and calls the optimizer's own step — SGD, Adam, anything. The optimizer's state (SGD
// momentum buffers; Adam/AdamW moments and step counts) travels with the parameters when a
// newcomer joins and when state is averaged every N epochs.
//
//   TorchCollaborative collab(model, optimizer, rt, rpc, dht, identity, config);
//   for (batch : data) {
//     model->zero_grad();  loss(model(x), y).backward();
//     collab.accumulate(batch_size);
//     swarm = co_await collab.report_progress();           // now and then
//     if (collab.step_due(swarm)) co_await collab.step();
//   }
//
// Mixed precision: GradScaler scales the loss so small float16 gradients survive, unscales the
// gradients before they are accumulated, and skips (and backs off on) batches whose gradients
// overflowed — the dynamic loss scaling of torch.cuda.amp.GradScaler, for any device.
#include <torch/torch.h>

#include "core/optim/collaborative.hpp"
#include "core/optim/diloco.hpp"

namespace apiary::real {

// The tensors' values one after the other, as float32 on the host (the one copy off their device);
// and back: consecutive slices of `flat` into the tensors of `dst`, in order, each on its device.
std::vector<float> flat(const std::vector<torch::Tensor>& ts);
void unflatten_into(std::span<const float> flat, const std::vector<torch::Tensor>& dst);

class TorchCollaborative {
 public:
  TorchCollaborative(torch::nn::Module& model, torch::optim::Optimizer& optimizer, Runtime& rt, Rpc& rpc,
                     dht::DhtNode& dht, dht::Identity identity, optim::CollaborativeConfig config);
  // Adds the current .grad() of every parameter (a mean over `samples` samples).
  void accumulate(std::uint64_t samples);
  Task<optim::SwarmProgress> report_progress() { return collab_->report_progress(); }
  bool step_due(const optim::SwarmProgress& swarm, bool early = false) const { return collab_->step_due(swarm, early); }
  // One global step through the swarm, then the optimizer's step on the averaged gradients.
  Task<Result<optim::StepReport>> step();
  // A newcomer: the swarm's parameters, optimizer state and epoch into the model before it
  // contributes.
  Task<Result<std::uint64_t>> join();
  std::uint64_t epoch() const { return collab_->epoch(); }
  std::uint64_t local_samples() const { return collab_->local_samples(); }
  optim::CollaborativeOptimizer& core() { return *collab_; }

 private:
  std::vector<torch::Tensor> params_;
  torch::optim::Optimizer& optimizer_;
  std::unique_ptr<optim::CollaborativeOptimizer> collab_;
};

// DiLoCo from a LibTorch training loop: the caller's optimizer is the inner optimizer, stepped on
// every local batch; every H inner steps, outer_step() averages the pseudo-gradients (start minus
// current parameters) through the swarm and writes the outer step's result into the model.
//
//   TorchDiloco diloco(model, rt, rpc, dht, config);
//   for (batch : data) {
//     optimizer.zero_grad();  loss(model(x), y).backward();  optimizer.step();
//     if (diloco.inner_step_done(batch_size)) co_await diloco.outer_step();
//   }
class TorchDiloco {
 public:
  TorchDiloco(torch::nn::Module& model, Runtime& rt, Rpc& rpc, dht::DhtNode& dht, optim::DilocoConfig config);
  bool inner_step_done(std::uint64_t samples) { return core_->inner_step_done(samples); }
  Task<Result<optim::OuterReport>> outer_step();
  // An auxiliary peer: reduce a part of the swarm's current round (trains nothing).
  Task<Result<optim::OuterReport>> assist() { return core_->assist(); }
  std::uint64_t round() const { return core_->round(); }

 private:
  std::vector<torch::Tensor> params_;
  std::unique_ptr<optim::DilocoOptimizer> core_;
};

// Optimizer state as flat float32 vectors, for SGD (momentum buffers) and Adam/AdamW (first and
// second moments, step count); other optimizers have none here. Missing state reads as zeros.
averaging::TensorSchema optimizer_state_schema(const torch::optim::Optimizer& opt);
std::vector<float> get_optimizer_state(torch::optim::Optimizer& opt);
void set_optimizer_state(torch::optim::Optimizer& opt, std::span<const float> flat);

class GradScaler {
 public:
  struct Options {
    double init_scale = 65536.0;
    double growth_factor = 2.0;
    double backoff_factor = 0.5;
    int growth_interval = 2000;  // steps without overflow before the scale grows
  };
  GradScaler() : GradScaler(Options{}) {}
  explicit GradScaler(Options o) : o_(o), scale_(o.init_scale) {}
  torch::Tensor scale(const torch::Tensor& loss) const { return loss * scale_; }
  // Divides every gradient of `params` by the scale; false if any is inf or NaN (then the
  // gradients must not be used: the caller skips this batch).
  bool unscale(const std::vector<torch::Tensor>& params);
  // After each batch: back off on overflow, grow after growth_interval clean batches.
  void update(bool found_inf);
  double current_scale() const { return scale_; }

 private:
  Options o_;
  double scale_;
  int clean_ = 0;
};

}  // namespace apiary::real
