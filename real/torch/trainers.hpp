#pragma once
// A live collaborative trainer as its own process: an MLP on Fashion-MNIST in LibTorch,
// trained with TorchCollaborative over real sockets, joining the swarm's DHT through a seed
// peer. It writes what happens as JSON lines (one object per line, flushed at once, so a
// trainer that is killed leaves its record): "start", "joined" (newcomers: the epoch and
// parameters it downloaded), "step" (epoch, samples in the global batch, group size, seconds),
// "eval" (test accuracy and loss every few epochs) and "final".
//
// The baseline is the same model, the same initialisation and optimizer, trained in one process
// for the same number of steps with the same global batch size.
#include "real/child_options.hpp"

namespace apiary::real {

// Returns the exit code: 0 when the trainer reached `steps` epochs.
int run_trainer(const TrainerOptions& options);
int run_baseline(const TrainerOptions& options);

}  // namespace apiary::real

namespace apiary::real {

// Live DMoE: expert servers and a trainer as processes. The classifier is
// Linear(784, dim) -> ReLU -> mixture of FFN experts (dim -> hidden -> dim, on a grid) ->
// Linear(dim, 10). Servers host experts and declare them in the DHT; the trainer's mixture layer
// finds them by beam search and calls them (k best, k_min, timeouts), the experts training on
// their servers from the gradients it sends. The baseline is the same classifier with the same
// experts, gate and routing in one process.
int run_expert_server(const DmoeOptions& o);  // until SIGTERM
int run_dmoe_trainer(const DmoeOptions& o);
int run_dmoe_baseline(const DmoeOptions& o);

}  // namespace apiary::real
