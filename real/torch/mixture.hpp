#pragma once
// The client side of DMoE in LibTorch: a remote expert whose forward and backward run on an
// expert server, and the remote mixture-of-experts layer.
//
//   ExpertServer server(rt, rpc);                    // on the server peer
//   server.add("ffn.0.3", make_ffn_expert(64, 256, /*lr=*/0.01));
//   RemoteExpert e(rpc, server_endpoint, "ffn.0.3", drive);   // on a client peer
//   torch::Tensor y = e.forward(x);                  // runs on the server
//   y.sum().backward();                              // input gradients from the server, which
//                                                    // also applies its own optimizer step
//
// Experts train asynchronously: a backward request recomputes the forward with gradients,
// back-propagates the client's output gradients, returns the input gradients and steps the
// expert's optimizer. A wrong input shape gets an error reply; the server keeps serving.
// Only real/ includes this header (it pulls in LibTorch).
#include <torch/torch.h>

#include <deque>
#include <functional>
#include <set>
#include <optional>
#include <tuple>
#include <map>
#include <memory>
#include <string>

#include "core/averaging/partition.hpp"
#include "core/moe/experts.hpp"
#include "core/moe/mixture.hpp"
#include "core/moe/protocol.hpp"
#include "core/runtime/rpc.hpp"
#include "real/torch/expert_server.hpp"

namespace apiary::real {

class RemoteExpert : public torch::nn::Module {
 public:
  // `drive(done)` runs the caller's event loop until done() holds (live: io_context::run_one). It
  // calls done() before it runs anything: that first call starts the work, so a drive that must
  // first take hold of its loop (the Python package's) starts it there.
  using Drive = std::function<void(const std::function<bool()>&)>;
  RemoteExpert(Rpc& rpc, Endpoint server, std::string uid, Drive drive,
               Duration timeout = std::chrono::seconds(30));
  // Differentiable: backward() asks the server for the input gradients.
  torch::Tensor forward(torch::Tensor x);
  // The raw calls (throw std::runtime_error on an error reply, timeout or bad reply).
  // keep != 0 asks the server to hold the activations for the backward with the same id.
  torch::Tensor call_forward(const torch::Tensor& x, std::uint64_t keep = 0);
  torch::Tensor call_backward(const torch::Tensor& x, const torch::Tensor& grad_output, std::uint64_t keep = 0);
  const std::string& uid() const { return uid_; }
  // The wire codec, chosen per tensor by size as in averaging (default: float32, exact).
  void set_codec(averaging::CodecPolicy p) { codec_ = p; }
  std::uint8_t codec_for(const torch::Tensor& t) const {
    return static_cast<std::uint8_t>(codec_.for_tensor(static_cast<std::uint64_t>(t.numel())));
  }
  std::uint64_t next_keep() { return next_keep_++; }
  // The expert's input/output schema (throws std::runtime_error on failure).
  ExpertInfo info();
  // Forward and backward as tasks returning tensors (errors as values: an error reply, a
  // timeout, a reply that is not a tensor).
  Task<Result<torch::Tensor>> forward_async(torch::Tensor x, std::uint64_t keep, Duration timeout);
  Task<Result<torch::Tensor>> backward_async(torch::Tensor x, torch::Tensor grad_output, std::uint64_t keep, Duration timeout);

 private:
  // Runs a call on the caller's event loop; its tensor, or std::runtime_error naming the expert.
  torch::Tensor await_tensor(Task<Result<torch::Tensor>> task);
  Rpc& rpc_;
  Endpoint server_;
  std::string uid_;
  Drive drive_;
  Duration timeout_;
  std::uint64_t next_keep_ = 1;
  averaging::CodecPolicy codec_;
};

// A mixture-of-experts layer whose experts live on other peers (Learning@home's DMoE layer). The
// gate scores every grid coordinate per sample; routing, the parallel expert calls with their
// k_min / grace / timeout rule, searching again past failures and the parallel backward are
// core/moe/mixture.hpp's router, the same code the simulated trainers run. This module adds the
// math: it mixes the answers by the softmax of each sample's gate scores over its experts that
// answered (switch routing: each sample's one expert, scaled by the gate's probability of it, and
// a load-balancing loss), differentiably in the gate and the inputs. An expert that fails in the
// backward contributes no gradient, like dropout.
struct MoeOptions {
  std::string prefix = "ffn";
  std::vector<std::uint32_t> grid;
  std::int64_t dim = 0;
  std::size_t k_best = 4;
  std::size_t k_min = 1;
  Duration forward_timeout = std::chrono::seconds(10);
  Duration backward_timeout = std::chrono::seconds(10);
  Duration timeout_after_k_min = std::chrono::seconds(1);
  std::size_t searches = 2;  // attempts to find k_min responders
  // Per-sample routing: every sample goes to its own k best alive experts; each expert gets the
  // rows routed to it. Beam searches reuse prefix reads for cache_ttl (0: read every time).
  bool per_sample = false;
  // Switch routing (implies per-sample with k_best = 1): each sample's output is its one
  // expert's, scaled by the gate's probability of that expert, and last_balance_loss() is the
  // load-balancing loss to add to the training loss.
  bool switch_mode = false;
  Duration cache_ttl = std::chrono::seconds(5);
  averaging::CodecPolicy codec;  // for the tensors sent to experts and their replies
};

class RemoteMixtureOfExpertsImpl : public torch::nn::Module {
 public:
  RemoteMixtureOfExpertsImpl(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MoeOptions options, RemoteExpert::Drive drive);
  // x: [batch, dim] -> [batch, dim]. Throws std::runtime_error when no k_min experts answer.
  torch::Tensor forward(torch::Tensor x);
  // The same with the gate's scores given ([batch, sum(grid)], differentiable): for a caller that
  // owns its gate (the Python module). Inputs on any device; data leaves it only at the wire.
  torch::Tensor mix(torch::Tensor x, torch::Tensor logits);
  torch::nn::Linear gate{nullptr};
  // Which experts answered the last forward (for tests and logs).
  const std::vector<std::string>& last_responders() const { return last_responders_; }
  // The experts each sample of the last forward was sent to, best first.
  const std::vector<std::vector<std::string>>& last_routes() const { return last_routes_; }
  // Switch routing: sum over grid dimensions d of g_d * sum_i f_{d,i} P_{d,i} / dims, where f is
  // the share of samples routed to coordinate i and P the gate's mean probability of it (1 when
  // balanced); differentiable in the gate.
  torch::Tensor last_balance_loss() const { return balance_loss_; }

  struct CallSet;  // the experts of one forward, for its backward (real/torch/mixture.cpp)

 private:
  Runtime& rt_;
  MoeOptions opt_;
  RemoteExpert::Drive drive_;
  moe::MixtureRouter router_;
  std::vector<std::string> last_responders_;
  std::vector<std::vector<std::string>> last_routes_;
  torch::Tensor balance_loss_;
  std::shared_ptr<int> alive_ = std::make_shared<int>(0);  // expires with the layer (a late backward sees it)
};
TORCH_MODULE(RemoteMixtureOfExperts);

}  // namespace apiary::real
