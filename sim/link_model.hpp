#pragma once
// The simulated network's model of the path between two peers, shared by both network stacks
// (sim/sim_network): the full stack hands it ns-3 packets through DirectChannel, the lean stack
// whole messages as their datagrams' sizes. Same numbers, same random draws, so a scenario gives
// the same delivery times on either stack when messages do not overlap on a downlink.
//
// Each peer's host has an access link: one-way latency to the core, and uplink and downlink
// bandwidths that serialise packets in FIFO order. A packet from A to B leaves A's uplink after
// serialisation, travels latency(A) + latency(B) (or a latency function's value when one is set),
// then is serialised on B's downlink. A host that is down drops what reaches it. Hosts are
// numbered by their address: host = ip - base (the first is 1).
//
// Only sim/ includes ns-3; this header is never seen by core/.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <unordered_map>
#include <vector>

#include <ns3/nstime.h>

#include "core/runtime/rng.hpp"

namespace apiary::sim {

struct LinkParams {
  ns3::Time latency = ns3::MilliSeconds(10);  // one way, this peer to the core
  double up_bps = 100e6;
  double down_bps = 100e6;
};

struct ChannelStats {
  std::uint64_t packets = 0;
  std::uint64_t bytes = 0;
  std::uint64_t dropped_down = 0;         // sender or receiver was down
  std::uint64_t dropped_no_route = 0;     // no peer owns the destination address
  std::uint64_t dropped_partition = 0;    // sender and receiver on different sides of a partition
  std::uint64_t retransmissions = 0;      // packet loss: resends (a packet lost k times counts k)
  std::uint64_t dropped_nat = 0;          // to a peer behind NAT that had not opened the way
};

class LinkModel {
 public:
  explicit LinkModel(std::uint32_t base_ip) : base_ip_(base_ip) {}
  std::uint32_t base_ip() const { return base_ip_; }

  // Host `host` (its address is base + host) with its access link; up.
  void add_host(std::uint32_t host, const LinkParams& link);
  bool has_host(std::uint32_t host) const { return host < hosts_.size() && hosts_[host].present; }
  void set_up(std::uint32_t host, bool up) { hosts_.at(host).up = up; }
  bool up(std::uint32_t host) const { return hosts_.at(host).up; }
  const LinkParams& link(std::uint32_t host) const { return hosts_.at(host).link; }

  // A packet of `bytes` (as the wire carries it) from `src` to `dst` leaves now: when it reaches
  // dst's downlink, or nothing if the network drops it (partition, NAT, no such host).
  std::optional<ns3::Time> depart(std::uint32_t src, std::uint32_t dst, std::uint64_t bytes);
  // It reaches dst's downlink now: when dst has it, or nothing if dst is down.
  std::optional<ns3::Time> arrive(std::uint32_t dst, std::uint64_t bytes);
  // The same for a packet that reached the downlink at `at` (not before the downlink's last one).
  ns3::Time serialise_down(std::uint32_t dst, std::uint64_t bytes, ns3::Time at);

  // Optional pairwise one-way latency, replacing latency(A) + latency(B); arguments are addresses.
  void SetLatencyFunction(std::function<ns3::Time(std::uint32_t from_ip, std::uint32_t to_ip)> f) {
    latency_fn_ = std::move(f);
  }
  // Faults. Packet loss with probability `p` per packet, as TCP sees it: a lost packet arrives
  // after rto_min more, doubled each time it is lost again (at most 12 resends), and every later
  // packet from the same sender to the same receiver arrives after it (head-of-line blocking).
  // The resends' own bandwidth is not modelled. Draws come from `seed`: the same run, the same
  // losses.
  void SetLoss(double p, ns3::Time rto_min, std::uint64_t seed);
  // A partition: while on, packets between peers on different sides are dropped.
  void SetSide(std::uint32_t host, std::uint8_t side);
  void SetPartitioned(bool on) { partitioned_ = on; }
  // Per host: extra one-way latency, and a multiplier of its bandwidth.
  void SetExtraLatency(std::uint32_t host, ns3::Time extra);
  void SetBandwidthFactor(std::uint32_t host, double factor);
  // NAT: a peer behind one accepts packets only from peers it sent to itself within the last
  // `mapping` (a connection it opened; replies and pushes on it come in). Its own packets open or
  // refresh the way; a packet from anyone else is dropped, as an unanswered connection attempt.
  void SetNat(std::uint32_t host, ns3::Time mapping);
  // A peer that leaves closes its connections: the ways its NAT held open are gone.
  void ForgetNat(std::uint32_t host);

  const ChannelStats& stats() const { return stats_; }
  ChannelStats& stats() { return stats_; }

 private:
  struct Host {
    LinkParams link;
    ns3::Time tx_free{0};  // when the uplink finishes what it already has
    ns3::Time rx_free{0};  // when the downlink finishes what it already has
    bool up = true;
    bool present = false;
  };
  std::uint8_t side_of(std::uint32_t h) const { return h < side_.size() ? side_[h] : 0; }
  double factor_of(std::uint32_t h) const { return h < bandwidth_factor_.size() ? bandwidth_factor_[h] : 1.0; }
  ns3::Time extra_of(std::uint32_t h) const { return h < extra_latency_.size() ? extra_latency_[h] : ns3::Time(0); }

  std::uint32_t base_ip_;
  std::vector<Host> hosts_;  // index: ip - base
  std::function<ns3::Time(std::uint32_t, std::uint32_t)> latency_fn_;
  ChannelStats stats_;
  // Faults (all empty or off unless set).
  double loss_ = 0;
  ns3::Time rto_min_;
  std::unique_ptr<Rng> loss_rng_;
  std::unordered_map<std::uint64_t, ns3::Time> pair_clear_;  // (src, dst) host pair: its last arrival
  bool partitioned_ = false;
  std::vector<std::uint8_t> side_;
  std::vector<ns3::Time> extra_latency_;
  std::vector<double> bandwidth_factor_;
  ns3::Time nat_mapping_;
  std::vector<bool> nat_;  // per host: behind NAT
  std::unordered_map<std::uint64_t, ns3::Time> nat_open_;  // (NAT host, peer): when the way was last used from inside
};

}  // namespace apiary::sim
