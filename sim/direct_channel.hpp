#pragma once
// A network for many peers whose cost per packet does not grow with the number of peers.
//
// Every peer's node has one DirectNetDevice; all devices attach to one DirectChannel, which
// delivers a packet straight to the device that owns its destination IPv4 address (an O(1)
// table lookup) — no hub node, no shared medium, no ARP (NeedsArp() is false), no global
// routing. Each device models an access link: one-way latency to the core, and uplink and
// downlink bandwidths that serialise packets in FIFO order. A packet from A to B leaves A's
// uplink after serialisation, travels latency(A) + latency(B) (or a matrix entry when one is
// set), then is serialised on B's downlink. Devices that are down drop what they would send or
// receive (a peer that left the swarm).
//
// Only sim/ includes ns-3; this header is never seen by core/.
#include <cstdint>
#include <functional>
#include <memory>
#include <unordered_map>
#include <vector>

#include "core/runtime/rng.hpp"
#include <ns3/channel.h>
#include <ns3/mac48-address.h>
#include <ns3/net-device.h>
#include <ns3/nstime.h>
#include <ns3/packet.h>

namespace apiary::sim {

class DirectChannel;

struct LinkParams {
  ns3::Time latency = ns3::MilliSeconds(10);  // one way, this peer to the core
  double up_bps = 100e6;
  double down_bps = 100e6;
};

class DirectNetDevice : public ns3::NetDevice {
 public:
  static ns3::TypeId GetTypeId();
  DirectNetDevice() = default;

  void SetLink(const LinkParams& p) { link_ = p; }
  const LinkParams& link() const { return link_; }
  void SetUp(bool up) { up_ = up; }
  bool up() const { return up_; }
  void Receive(ns3::Ptr<ns3::Packet> p, std::uint16_t protocol, ns3::Mac48Address from);

  // ns3::NetDevice
  void SetIfIndex(const std::uint32_t index) override { if_index_ = index; }
  std::uint32_t GetIfIndex() const override { return if_index_; }
  ns3::Ptr<ns3::Channel> GetChannel() const override;
  void SetAddress(ns3::Address address) override { mac_ = ns3::Mac48Address::ConvertFrom(address); }
  ns3::Address GetAddress() const override { return mac_; }
  bool SetMtu(const std::uint16_t mtu) override {
    mtu_ = mtu;
    return true;
  }
  std::uint16_t GetMtu() const override { return mtu_; }
  bool IsLinkUp() const override { return true; }
  void AddLinkChangeCallback(ns3::Callback<void>) override {}
  bool IsBroadcast() const override { return true; }
  ns3::Address GetBroadcast() const override { return ns3::Mac48Address::GetBroadcast(); }
  bool IsMulticast() const override { return false; }
  ns3::Address GetMulticast(ns3::Ipv4Address) const override { return ns3::Mac48Address::GetBroadcast(); }
  ns3::Address GetMulticast(ns3::Ipv6Address) const override { return ns3::Mac48Address::GetBroadcast(); }
  bool IsBridge() const override { return false; }
  bool IsPointToPoint() const override { return false; }
  bool Send(ns3::Ptr<ns3::Packet> packet, const ns3::Address& dest, std::uint16_t protocol) override;
  bool SendFrom(ns3::Ptr<ns3::Packet> packet, const ns3::Address& source, const ns3::Address& dest,
                std::uint16_t protocol) override;
  ns3::Ptr<ns3::Node> GetNode() const override { return node_; }
  void SetNode(ns3::Ptr<ns3::Node> node) override { node_ = node; }
  bool NeedsArp() const override { return false; }
  void SetReceiveCallback(ReceiveCallback cb) override { rx_ = cb; }
  void SetPromiscReceiveCallback(PromiscReceiveCallback) override {}
  bool SupportsSendFrom() const override { return false; }

 protected:
  void DoDispose() override;

 private:
  friend class DirectChannel;
  ns3::Ptr<DirectChannel> channel_;
  ns3::Ptr<ns3::Node> node_;
  ReceiveCallback rx_;
  ns3::Mac48Address mac_;
  LinkParams link_;
  std::uint32_t if_index_ = 0;
  std::uint16_t mtu_ = 65535;
  bool up_ = true;
  std::uint32_t host_ = 0;  // its address - the channel's base
  ns3::Time tx_free_{0};  // when the uplink finishes what it already has
  ns3::Time rx_free_{0};  // when the downlink finishes what it already has
};

struct ChannelStats {
  std::uint64_t packets = 0;
  std::uint64_t bytes = 0;
  std::uint64_t dropped_down = 0;         // sender or receiver was down
  std::uint64_t dropped_no_route = 0;     // no device owns the destination address
  std::uint64_t dropped_partition = 0;    // sender and receiver on different sides of a partition
  std::uint64_t retransmissions = 0;      // packet loss: resends (a packet lost k times counts k)
  std::uint64_t dropped_nat = 0;          // to a peer behind NAT that had not opened the way
};

class DirectChannel : public ns3::Channel {
 public:
  static ns3::TypeId GetTypeId();
  // Devices own addresses base+1 ... base+N in attach order.
  explicit DirectChannel(std::uint32_t base_ip = 0x0a000000);

  void Attach(ns3::Ptr<DirectNetDevice> dev, std::uint32_t ip);
  // Optional pairwise one-way latency, replacing latency(A) + latency(B).
  void SetLatencyFunction(std::function<ns3::Time(std::uint32_t from_ip, std::uint32_t to_ip)> f) {
    latency_fn_ = std::move(f);
  }
  void Transmit(DirectNetDevice* src, ns3::Ptr<ns3::Packet> p, std::uint16_t protocol);

  // Faults. Packet loss with probability `p` per packet, as TCP sees it: a lost packet arrives
  // after rto_min more, doubled each time it is lost again (at most 12 resends), and every later
  // packet from the same sender to the same receiver arrives after it (head-of-line blocking).
  // The resends' own bandwidth is not modelled. Draws come from `seed`: the same run, the same
  // losses.
  void SetLoss(double p, ns3::Time rto_min, std::uint64_t seed);
  // A partition: while on, packets between peers on different sides are dropped.
  void SetSide(std::uint32_t host, std::uint8_t side);
  void SetPartitioned(bool on) { partitioned_ = on; }
  // Per peer (host = ip - base): extra one-way latency, and a multiplier of its bandwidth.
  void SetExtraLatency(std::uint32_t host, ns3::Time extra);
  void SetBandwidthFactor(std::uint32_t host, double factor);
  // NAT: a peer behind one accepts packets only from peers it sent to itself within the last
  // `mapping` (a connection it opened; replies and pushes on it come in). Its own packets open or
  // refresh the way; a packet from anyone else is dropped, as an unanswered connection attempt.
  void SetNat(std::uint32_t host, ns3::Time mapping);
  // A peer that leaves closes its connections: the ways its NAT held open are gone.
  void ForgetNat(std::uint32_t host);
  const ChannelStats& stats() const { return stats_; }

  std::size_t GetNDevices() const override { return devices_.size(); }
  ns3::Ptr<ns3::NetDevice> GetDevice(std::size_t i) const override;

 protected:
  void DoDispose() override;

 private:
  void Arrive(ns3::Ptr<DirectNetDevice> dst, ns3::Ptr<ns3::Packet> p, std::uint16_t protocol,
              ns3::Mac48Address from);
  std::uint8_t side_of(std::uint32_t h) const { return h < side_.size() ? side_[h] : 0; }
  double factor_of(std::uint32_t h) const { return h < bandwidth_factor_.size() ? bandwidth_factor_[h] : 1.0; }
  ns3::Time extra_of(std::uint32_t h) const { return h < extra_latency_.size() ? extra_latency_[h] : ns3::Time(0); }
  std::uint32_t base_ip_;
  std::vector<ns3::Ptr<DirectNetDevice>> by_host_;  // index: ip - base_ip
  std::vector<ns3::Ptr<DirectNetDevice>> devices_;
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
