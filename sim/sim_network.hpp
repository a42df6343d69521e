#pragma once
// The simulated network: ns-3 nodes with an IPv4 stack (static routing only, no ARP, no queue
// discs), each with one DirectNetDevice on a shared DirectChannel, and one SimRuntime per peer.
// The n-th node has address 10.0.0.0 + n (so peer i has 10.0.0.0 + i + 1 when no peer was added
// beside another). One SimNetwork per process at a time: ns-3's simulator is a process-wide
// singleton, destroyed with the network.
#include <memory>
#include <vector>

#include <ns3/node.h>
#include <ns3/ptr.h>

#include "sim/direct_channel.hpp"
#include "sim/sim_runtime.hpp"

namespace apiary::sim {

class SimNetwork {
 public:
  static constexpr std::uint32_t kBaseIp = 0x0a000000;  // 10.0.0.0/8
  static constexpr std::uint16_t kPort = 7000;

  SimNetwork();
  ~SimNetwork();
  SimNetwork(const SimNetwork&) = delete;
  SimNetwork& operator=(const SimNetwork&) = delete;

  // Adds a node and its runtime (socket not yet open). Returns the peer index.
  std::size_t add_peer(const LinkParams& link, TransportLimits limits = {});
  // Adds a peer on peer `host`'s node: its own runtime and port, the same address and link (one
  // machine running many peers, as an attacker's Sybils do). Up and down with its own socket only.
  std::size_t add_peer_beside(std::size_t host, TransportLimits limits = {});
  std::size_t size() const { return runtimes_.size(); }
  SimRuntime& runtime(std::size_t i) { return *runtimes_[i]; }
  const SimRuntime& runtime(std::size_t i) const { return *runtimes_[i]; }
  DirectNetDevice& device(std::size_t i) { return *devices_[host_[i]]; }
  Endpoint endpoint(std::size_t i) const { return endpoints_[i]; }
  DirectChannel& channel() { return *channel_; }
  Sidecar& sidecar() { return sidecar_; }

  // Peer leaves (socket closed, timers cancelled, link down) or rejoins.
  void set_up(std::size_t i, bool up);

 private:
  ns3::Ptr<DirectChannel> channel_;
  std::vector<ns3::Ptr<ns3::Node>> nodes_;
  std::vector<ns3::Ptr<DirectNetDevice>> devices_;
  std::vector<std::unique_ptr<SimRuntime>> runtimes_;
  std::vector<Endpoint> endpoints_;
  std::vector<std::size_t> host_;  // the node each peer runs on
  std::vector<bool> beside_;        // added beside another peer (not its node's own)
  Sidecar sidecar_;
};

}  // namespace apiary::sim
