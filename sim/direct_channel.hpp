#pragma once
// The full network stack's channel: every peer's ns-3 node has one DirectNetDevice; all devices
// attach to one DirectChannel, which delivers a packet straight to the device that owns its
// destination IPv4 address (an O(1) table lookup) — no hub node, no shared medium, no ARP
// (NeedsArp() is false), no global routing. Latency, bandwidth, loss, partitions and NAT are the
// LinkModel's (sim/link_model.hpp), the same the lean stack uses.
//
// Only sim/ includes ns-3; this header is never seen by core/.
#include <cstdint>
#include <memory>
#include <vector>

#include <ns3/channel.h>
#include <ns3/mac48-address.h>
#include <ns3/net-device.h>
#include <ns3/nstime.h>
#include <ns3/packet.h>

#include "sim/link_model.hpp"

namespace apiary::sim {

class DirectChannel;

class DirectNetDevice : public ns3::NetDevice {
 public:
  static ns3::TypeId GetTypeId();
  DirectNetDevice() = default;

  void SetUp(bool up);
  bool up() const;
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
  std::uint32_t if_index_ = 0;
  std::uint16_t mtu_ = 65535;
  std::uint32_t host_ = 0;  // its address - the channel's base
};


class DirectChannel : public ns3::Channel {
 public:
  static ns3::TypeId GetTypeId();
  // Devices own addresses base+1 ... base+N in attach order.
  explicit DirectChannel(std::uint32_t base_ip = 0x0a000000);

  // The device owns address `ip` and has the access link `link`.
  void Attach(ns3::Ptr<DirectNetDevice> dev, std::uint32_t ip, const LinkParams& link);
  void Transmit(DirectNetDevice* src, ns3::Ptr<ns3::Packet> p, std::uint16_t protocol);
  LinkModel& model() { return model_; }
  const LinkModel& model() const { return model_; }

  std::size_t GetNDevices() const override { return devices_.size(); }
  ns3::Ptr<ns3::NetDevice> GetDevice(std::size_t i) const override;

 protected:
  void DoDispose() override;

 private:
  void Arrive(ns3::Ptr<DirectNetDevice> dst, ns3::Ptr<ns3::Packet> p, std::uint16_t protocol,
              ns3::Mac48Address from);
  LinkModel model_;
  std::vector<ns3::Ptr<DirectNetDevice>> by_host_;  // index: ip - base_ip
  std::vector<ns3::Ptr<DirectNetDevice>> devices_;
};

}  // namespace apiary::sim
