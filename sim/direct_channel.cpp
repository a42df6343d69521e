#include "sim/direct_channel.hpp"

#include <ns3/ipv4-header.h>
#include <ns3/node.h>
#include <ns3/simulator.h>

namespace apiary::sim {

using namespace ns3;

TypeId DirectNetDevice::GetTypeId() {
  static TypeId tid = TypeId("apiary::sim::DirectNetDevice")
                          .SetParent<NetDevice>()
                          .SetGroupName("Apiary")
                          .AddConstructor<DirectNetDevice>();
  return tid;
}

Ptr<Channel> DirectNetDevice::GetChannel() const { return channel_; }

bool DirectNetDevice::Send(Ptr<Packet> packet, const Address&, std::uint16_t protocol) {
  if (!up_ || !channel_) return false;
  channel_->Transmit(this, packet, protocol);
  return true;
}

bool DirectNetDevice::SendFrom(Ptr<Packet> packet, const Address&, const Address& dest,
                               std::uint16_t protocol) {
  return Send(packet, dest, protocol);
}

void DirectNetDevice::Receive(Ptr<Packet> p, std::uint16_t protocol, Mac48Address from) {
  if (!up_ || rx_.IsNull()) return;
  rx_(this, p, protocol, from);
}

void DirectNetDevice::DoDispose() {
  channel_ = nullptr;
  node_ = nullptr;
  rx_ = MakeNullCallback<bool, Ptr<NetDevice>, Ptr<const Packet>, std::uint16_t, const Address&>();
  NetDevice::DoDispose();
}

TypeId DirectChannel::GetTypeId() {
  static TypeId tid =
      TypeId("apiary::sim::DirectChannel").SetParent<Channel>().SetGroupName("Apiary");
  return tid;
}

DirectChannel::DirectChannel(std::uint32_t base_ip) : base_ip_(base_ip) {}

void DirectChannel::Attach(Ptr<DirectNetDevice> dev, std::uint32_t ip) {
  dev->channel_ = this;
  devices_.push_back(dev);
  const std::uint32_t host = ip - base_ip_;
  if (host >= by_host_.size()) by_host_.resize(host + 1);
  by_host_[host] = dev;
}

Ptr<NetDevice> DirectChannel::GetDevice(std::size_t i) const { return devices_.at(i); }

void DirectChannel::Transmit(DirectNetDevice* src, Ptr<Packet> p, std::uint16_t protocol) {
  Ipv4Header ip;
  p->PeekHeader(ip);
  const std::uint32_t dst_ip = ip.GetDestination().Get();
  const std::uint32_t host = dst_ip - base_ip_;
  if (host >= by_host_.size() || !by_host_[host]) {
    ++stats_.dropped_no_route;
    return;
  }
  Ptr<DirectNetDevice> dst = by_host_[host];
  const Time now = Simulator::Now();
  const std::uint32_t bytes = p->GetSize();
  const Time tx = Seconds(bytes * 8.0 / src->link_.up_bps);
  src->tx_free_ = std::max(now, src->tx_free_) + tx;
  const Time latency = latency_fn_ ? latency_fn_(ip.GetSource().Get(), dst_ip)
                                   : src->link_.latency + dst->link_.latency;
  ++stats_.packets;
  stats_.bytes += bytes;
  Simulator::ScheduleWithContext(dst->GetNode()->GetId(), src->tx_free_ + latency - now,
                                 &DirectChannel::Arrive, this, dst, p, protocol, src->mac_);
}

void DirectChannel::Arrive(Ptr<DirectNetDevice> dst, Ptr<Packet> p, std::uint16_t protocol,
                           Mac48Address from) {
  if (!dst->up_) {
    ++stats_.dropped_down;
    return;
  }
  const Time now = Simulator::Now();
  const Time rx = Seconds(p->GetSize() * 8.0 / dst->link_.down_bps);
  dst->rx_free_ = std::max(now, dst->rx_free_) + rx;
  Simulator::Schedule(dst->rx_free_ - now, &DirectNetDevice::Receive, dst, p, protocol, from);
}

void DirectChannel::DoDispose() {
  by_host_.clear();
  devices_.clear();
  Channel::DoDispose();
}

}  // namespace apiary::sim
