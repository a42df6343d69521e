#pragma once
// LibTorch experts behind the expert server of core/moe/server.hpp: TorchExperts is the backend
// that computes a batch on real modules, and ExpertServer bundles it with the protocol server.
// Experts train asynchronously: a backward recomputes the forward with gradients (or reuses the
// activations a lone forward kept), back-propagates the client's output gradients, returns the
// input gradients and steps the expert's optimizer, once per batch. A request that does not
// decode gets an error reply; the server keeps serving.
#include <torch/torch.h>

#include <map>
#include <memory>
#include <optional>
#include <string>
#include <tuple>

#include "core/moe/server.hpp"
#include "core/runtime/rpc.hpp"
#include "real/torch/experts.hpp"

namespace apiary::real {

using moe::ExpertInfo;
using moe::ServerOptions;

class TorchExperts final : public moe::ExpertBackend {
 public:
  explicit TorchExperts(Runtime& rt) : rt_(rt) {}
  void add(std::string uid, HostedExpert expert);
  HostedExpert* find(const std::string& uid);
  // Checkpoints: every expert's parameters to DIR/<uid>.pt, and back.
  void save(const std::string& dir);
  void load(const std::string& dir);
  std::size_t kept() const { return kept_.size(); }
  static ExpertInfo info_of(const HostedExpert& e);

  std::optional<ExpertInfo> info(const std::string& uid) override;
  Task<void> run(const std::string& uid, bool backward, std::vector<moe::ExpertJob*> jobs) override;

 private:
  // Activations of a lone forward a client will back-propagate through (keep != 0): its backward
  // then skips recomputing the forward. Bounded in time and count; if the expert's parameters
  // changed meanwhile, the backward recomputes.
  struct Kept {
    torch::Tensor x, y;
    TimePoint at;
  };
  static constexpr Duration kKeepFor = std::chrono::seconds(60);
  static constexpr std::size_t kMaxKept = 256;
  void keep(const Endpoint& from, const std::string& uid, std::uint64_t id, torch::Tensor x, torch::Tensor y);
  std::optional<std::pair<torch::Tensor, torch::Tensor>> take(const Endpoint& from, const std::string& uid, std::uint64_t id);
  struct Decoded {
    moe::ExpertJob* job;
    torch::Tensor x, g;
  };
  void forward_batch(const std::string& uid, HostedExpert& e, std::vector<Decoded>& jobs);
  void backward_batch(const std::string& uid, HostedExpert& e, std::vector<Decoded>& jobs);

  Runtime& rt_;
  std::map<std::string, HostedExpert> experts_;
  std::map<std::tuple<Endpoint, std::string, std::uint64_t>, Kept> kept_;
};

// LibTorch experts served over the expert protocol.
class ExpertServer {
 public:
  ExpertServer(Runtime& rt, Rpc& rpc, ServerOptions options = {}) : experts_(rt), server_(rt, rpc, experts_, options) {}
  void add(std::string uid, HostedExpert expert) { experts_.add(std::move(uid), std::move(expert)); }
  HostedExpert* find(const std::string& uid) { return experts_.find(uid); }
  void save(const std::string& dir) { experts_.save(dir); }
  void load(const std::string& dir) { experts_.load(dir); }
  std::size_t kept() const { return experts_.kept(); }
  TorchExperts& experts() { return experts_; }

 private:
  TorchExperts experts_;
  moe::ExpertServer server_;
};

}  // namespace apiary::real
