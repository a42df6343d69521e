#pragma once
// One peer's protocol stack, the same on every runtime: the RPC layer, a DHT node when the
// workload uses one (joined through the swarm's bootstrap peers), and the workload's app.
#include <cstdint>
#include <memory>
#include <vector>

#include "core/auth/handshake.hpp"
#include "core/dht/node.hpp"
#include "core/runtime/rpc.hpp"
#include "harness/spec.hpp"

namespace apiary {

class PeerStack {
 public:
  PeerStack(Runtime& rt, const SwarmSpec& spec, const std::vector<Endpoint>& directory, std::uint32_t index,
            double bandwidth, Workload& workload);
  ~PeerStack();
  PeerStack(const PeerStack&) = delete;
  PeerStack& operator=(const PeerStack&) = delete;

  // Starts the app; joins the DHT (if any) through the bootstrap peers and then tells the app.
  void start();

  // The peer's runtime; with network.authenticate, its transport is the authenticated one.
  Runtime& runtime() { return rt_; }
  auth::AuthTransport* auth() { return auth_ ? &auth_->transport : nullptr; }
  // The peer's identity (swarm_identity): its DHT id is the hash of this key, the key it proves.
  const dht::Identity& identity() const { return identity_; }
  Rpc& rpc() { return *rpc_; }
  dht::DhtNode* dht() { return dht_.get(); }
  const SwarmSpec& spec() const { return spec_; }
  const std::vector<Endpoint>& directory() const { return directory_; }
  std::uint32_t index() const { return index_; }
  // The peer's access bandwidth in bit/s as the scenario drew it (for bandwidth-aware parts).
  double bandwidth() const { return bandwidth_; }
  bool joined() const { return joined_; }
  PeerApp* app() { return app_.get(); }
  template <class T>
  T* app_as() {
    return static_cast<T*>(app_.get());
  }

 private:
  dht::Identity identity_;
  std::unique_ptr<auth::AuthenticatedRuntime> auth_;
  Runtime& rt_;
  const SwarmSpec& spec_;
  const std::vector<Endpoint>& directory_;
  std::uint32_t index_;
  double bandwidth_;
  std::unique_ptr<Rpc> rpc_;
  std::unique_ptr<dht::DhtNode> dht_;
  std::unique_ptr<PeerApp> app_;
  bool joined_ = false;
};

}  // namespace apiary
