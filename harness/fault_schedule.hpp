#pragma once
// The scenario's network faults, written once for every world. When a fault window strikes and
// whom it strikes is decided here: each occurrence strikes a fresh seeded choice of its fraction
// of the peers (the same seed, the same peers, in ns-3 and live) and undoes itself when its
// duration is over. What striking means is the world's: ns-3 changes its channel, a live run in
// one process changes each peer's FaultyTransport.
//
// FaultyTransport is that live side: a wrapper around a peer's transport that applies packet
// loss as TCP sees it (a message is held back by rto_min, doubling each time it is lost again,
// and later messages to the same peer wait behind it), partitions (what crosses is dropped) and
// latency spikes (what a struck peer sends or is sent waits the extra latency) to the messages the
// peer sends. Stalls need the process itself: live peer processes are frozen (SIGSTOP/SIGCONT,
// real/processes.hpp). Bandwidth drops and NAT need the network: ns-3 only.
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "core/runtime/runtime.hpp"
#include "harness/spec.hpp"

namespace apiary {

struct FaultHooks {
  std::function<void(Duration, std::function<void()>)> at;  // run `fn` at run time t
  // Peer i struck (true) or released (false); null where the world cannot apply the fault.
  std::function<void(std::uint32_t, bool)> partition, stall, latency_spike, bandwidth_drop;
  std::function<void(bool)> partitioned;  // a partition begins or ends (after its peers are set)
};

// Schedules every occurrence of the spec's fault windows before `end`; counts faults.<name> and
// faults.<name>.peers as they strike.
void schedule_fault_windows(const SwarmSpec& spec, Metrics& metrics, Duration end, const FaultHooks& hooks);

// What every peer's FaultyTransport reads: the swarm's current faults, by peer index.
class LiveNetworkFaults {
 public:
  LiveNetworkFaults(const SwarmSpec& spec, const std::vector<Endpoint>& directory, Metrics& metrics);
  void set_side(std::uint32_t i, bool cut) { side_[i] = cut ? 1 : 0; }
  void set_partitioned(bool on) { partitioned_ = on; }
  void set_extra(std::uint32_t i, Duration extra) { extra_[i] = extra; }
  // The hooks that apply the spec's windows here.
  FaultHooks hooks(std::function<void(Duration, std::function<void()>)> at);

 private:
  friend class FaultyTransport;
  const SwarmSpec& spec_;
  Metrics& metrics_;
  std::map<Endpoint, std::uint32_t> index_;
  std::vector<std::uint8_t> side_;
  std::vector<Duration> extra_;
  bool partitioned_ = false;
};

class FaultyTransport final : public Transport, public TransportHandler {
 public:
  // Peer `self` of the swarm, over `inner`, delaying with `rt`'s timers; loss draws from `loss_rng`.
  FaultyTransport(LiveNetworkFaults& faults, std::uint32_t self, Transport& inner, Timers& timers, Clock& clock, Rng loss_rng);
  ~FaultyTransport() override;
  FaultyTransport(const FaultyTransport&) = delete;
  FaultyTransport& operator=(const FaultyTransport&) = delete;
  // Messages still held back are dropped (the peer went down: its connections closed).
  void drop_held();

  Endpoint local() const override { return inner_.local(); }
  void set_handler(TransportHandler* handler) override { handler_ = handler; }
  TransportHandler* handler() const override { return handler_; }
  void send(const Endpoint& to, Message message) override;

  void on_message(const Endpoint& from, Message message) override;
  void on_peer_error(const Endpoint& peer, const Error& error) override;
  PayloadTarget place_payload(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> header,
                              std::uint64_t size) override;

 private:
  LiveNetworkFaults& faults_;
  std::uint32_t self_;
  Transport& inner_;
  Timers& timers_;
  Clock& clock_;
  Rng rng_;
  TransportHandler* handler_ = nullptr;
  std::map<Endpoint, TimePoint> clear_;  // per destination: when its last held message goes
  std::set<TimerId> held_;  // timers of held-back messages
};

}  // namespace apiary
