#pragma once
// An expert server in LibTorch: hosts experts (real/torch/experts.hpp) and serves the expert
// protocol (core/moe/protocol.hpp: info, forward, backward, any codec) over the RPC layer.
// Experts train asynchronously: a backward request recomputes the forward with gradients (or
// reuses kept activations), back-propagates the client's output gradients, returns the input
// gradients and steps the expert's optimizer. A wrong input shape gets an error reply; the server
// keeps serving.
#include <torch/torch.h>

#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <tuple>

#include "core/moe/protocol.hpp"
#include "core/runtime/rpc.hpp"
#include "real/torch/experts.hpp"

namespace apiary::real {

using moe::ExpertInfo;

// Batching: requests to one expert queue up (forward and backward in separate lanes); the server
// runs them as one batch — the oldest first, up to max_batch rows — and, while fewer than
// min_batch rows wait, holds the oldest up to batch_wait for company. A batch of one forward
// keeps its activations for the backward; larger batches are recomputed in the backward (one
// forward and backward for the whole batch, then one optimizer step).
struct ServerOptions {
  std::int64_t max_batch = 4096;  // rows
  std::int64_t min_batch = 1;
  Duration batch_wait = Duration::zero();
  double fail_probability = 0;  // failure injection: a request fails (an error reply) with this probability
};

class ExpertServer {
 public:
  ExpertServer(Runtime& rt, Rpc& rpc, ServerOptions options = {});
  ~ExpertServer();
  void add(std::string uid, HostedExpert expert);
  HostedExpert* find(const std::string& uid);
  // Checkpoints: every expert's parameters to DIR/<uid>.pt, and back.
  void save(const std::string& dir);
  void load(const std::string& dir);
  std::size_t kept() const { return kept_.size(); }
  static ExpertInfo info_of(const HostedExpert& e);

 private:
  // Activations of forwards a client will back-propagate through (from RemoteExpert::forward):
  // the backward then skips recomputing the forward. Bounded in time and count; if the expert's
  // parameters changed meanwhile, the backward recomputes.
  struct Kept {
    torch::Tensor x, y;
    TimePoint at;
  };
  static constexpr Duration kKeepFor = std::chrono::seconds(60);
  static constexpr std::size_t kMaxKept = 256;
  void keep(const Endpoint& from, const std::string& uid, std::uint64_t id, torch::Tensor x, torch::Tensor y);
  std::optional<std::pair<torch::Tensor, torch::Tensor>> take(const Endpoint& from, const std::string& uid, std::uint64_t id);

  struct Job;  // one request waiting in a lane (real/torch/expert_server.cpp)
  using Lane = std::pair<std::string, bool>;  // expert uid, backward
  Task<Result<moe::TensorReply>> enqueue(std::string uid, bool backward, std::shared_ptr<Job> job);
  void schedule(const Lane& key);
  void run_batch(const Lane& key);
  void forward_batch(const std::string& uid, HostedExpert& e, std::vector<std::shared_ptr<Job>>& jobs);
  void backward_batch(const std::string& uid, HostedExpert& e, std::vector<std::shared_ptr<Job>>& jobs);

  Runtime& rt_;
  ServerOptions opt_;
  std::map<Lane, std::deque<std::shared_ptr<Job>>> lanes_;
  std::set<Lane> scheduled_;
  Notifier arrivals_;
  std::map<std::string, HostedExpert> experts_;
  std::map<std::tuple<Endpoint, std::string, std::uint64_t>, Kept> kept_;
  TaskScope scope_;
};

}  // namespace apiary::real
