#pragma once
// The lean network stack: a peer is its SimRuntime and its host's entry in the LinkModel — no ns-3
// node, device, IPv4 or UDP objects. A message travels whole: it is timed as the datagrams the
// full stack would send for it (the same sizes through the same LinkModel: uplink serialisation,
// latency, loss, partitions, NAT, then downlink serialisation) and handed to the receiving runtime
// in two ns-3 events, one when its first datagram reaches the receiver's downlink (the receiver's
// host must be up then), one when its last has crossed it. The one difference from the full stack:
// a message's datagrams cross the downlink together, not interleaved with other messages'.
//
// Only sim/ includes ns-3; this header is never seen by core/.
#include <cstdint>
#include <map>
#include <vector>

#include "core/runtime/runtime.hpp"
#include "sim/link_model.hpp"

namespace apiary::sim {

class SimRuntime;

class LeanChannel {
 public:
  explicit LeanChannel(LinkModel& model) : model_(model) {}
  LeanChannel(const LeanChannel&) = delete;
  LeanChannel& operator=(const LeanChannel&) = delete;

  // The runtime receives what is sent to `at` (its host must be in the model).
  void attach(SimRuntime& runtime, const Endpoint& at);
  // Sends `message` from `from` to `to` now; returns the number of datagrams it counts as.
  std::uint64_t transmit(const Endpoint& from, const Endpoint& to, Message message);
  // Hands `message` to the runtime at `to` now, as from `from`, with no network in between (what
  // a raw socket outside the protocol stack would deliver). False if nobody is there.
  bool inject(const Endpoint& from, const Endpoint& to, Message message);

  LinkModel& model() { return model_; }

 private:
  class Delivery;
  SimRuntime* find(const Endpoint& at) const;
  std::uint32_t host_of(const Endpoint& e) const { return e.ip - model_.base_ip(); }

  LinkModel& model_;
  std::vector<SimRuntime*> by_host_;         // index: host; the peer on the host's first port
  std::map<Endpoint, SimRuntime*> beside_;    // peers on other ports of a host (rare)
};

}  // namespace apiary::sim
