#pragma once
// The simulated network: one SimRuntime per peer on one of two stacks, both timed by the same
// LinkModel (latency, bandwidth, loss, partitions, NAT).
//  - Full: an ns-3 node per host with an IPv4 stack (static routing only, no ARP, no queue discs)
//    and one DirectNetDevice on a shared DirectChannel; messages cross ns-3's UDP and IPv4 layers
//    as datagrams. For experiments that need ns-3's own stack (its sockets, tracing, raw packets).
//  - Lean: no ns-3 node, device or protocol objects; the LeanChannel times each message as the
//    datagrams the full stack would send and hands it to the receiving runtime. A peer costs its
//    runtime and its link's entry, a few hundred bytes, so a run can hold a million peers.
// The n-th host has address 10.0.0.0 + n (so peer i has 10.0.0.0 + i + 1 when no peer was added
// beside another). One SimNetwork per process at a time: ns-3's simulator is a process-wide
// singleton, destroyed with the network.
#include <memory>
#include <vector>

#include <ns3/node.h>
#include <ns3/ptr.h>

#include "sim/direct_channel.hpp"
#include "sim/lean_channel.hpp"
#include "sim/sim_runtime.hpp"

namespace apiary::sim {

enum class Stack { kFull, kLean };
// ns-3's queue of pending events (every choice runs them in one order): time buckets
// (sim/bucket_scheduler.hpp), a binary heap, or ns-3's default std::map.
enum class EventQueue { kBuckets, kHeap, kMap };

class SimNetwork {
 public:
  static constexpr std::uint32_t kBaseIp = 0x0a000000;  // 10.0.0.0/8
  static constexpr std::uint16_t kPort = 7000;

  // The event queue is ns-3's, for the whole process: NS_GLOBAL_VALUE's SchedulerType, if set,
  // has the last word.
  explicit SimNetwork(Stack stack = Stack::kFull, EventQueue queue = EventQueue::kBuckets);
  ~SimNetwork();
  SimNetwork(const SimNetwork&) = delete;
  SimNetwork& operator=(const SimNetwork&) = delete;

  Stack stack() const { return stack_; }
  // Adds a host and its peer's runtime (socket not yet open). Returns the peer index.
  std::size_t add_peer(const LinkParams& link, TransportLimits limits = {});
  // Adds a peer on peer `host`'s host: its own runtime and port, the same address and link (one
  // machine running many peers, as an attacker's Sybils do). Up and down with its own socket only.
  std::size_t add_peer_beside(std::size_t host, TransportLimits limits = {});
  std::size_t size() const { return runtimes_.size(); }
  SimRuntime& runtime(std::size_t i) { return *runtimes_[i]; }
  const SimRuntime& runtime(std::size_t i) const { return *runtimes_[i]; }
  Endpoint endpoint(std::size_t i) const { return endpoints_[i]; }
  // The link model of either stack: faults are set here.
  LinkModel& links() { return lean_ ? *lean_model_ : channel_->model(); }
  const LinkModel& links() const { return lean_ ? *lean_model_ : channel_->model(); }
  // Full stack only (std::logic_error on the lean one).
  DirectNetDevice& device(std::size_t i);
  // Lean stack only: hands `message` to peer i as from `from`, with no network in between.
  bool inject(std::size_t i, const Endpoint& from, Message message);
  Sidecar& sidecar() { return sidecar_; }

  // Peer leaves (socket closed, timers cancelled, link down) or rejoins.
  void set_up(std::size_t i, bool up);

 private:
  Stack stack_;
  ns3::Ptr<DirectChannel> channel_;            // full
  std::unique_ptr<LinkModel> lean_model_;      // lean
  std::unique_ptr<LeanChannel> lean_;          // lean
  std::vector<ns3::Ptr<ns3::Node>> nodes_;     // full: per host
  std::vector<ns3::Ptr<DirectNetDevice>> devices_;
  std::vector<std::unique_ptr<SimRuntime>> runtimes_;
  std::vector<Endpoint> endpoints_;
  std::vector<std::uint32_t> host_;  // the host each peer runs on (1, 2, ...)
  std::vector<bool> beside_;         // added beside another peer (not its host's own)
  std::uint32_t hosts_ = 0;
  Sidecar sidecar_;
};

}  // namespace apiary::sim
