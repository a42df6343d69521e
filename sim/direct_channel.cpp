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

void DirectNetDevice::SetUp(bool up) { channel_->model().set_up(host_, up); }
bool DirectNetDevice::up() const { return channel_ && channel_->model().up(host_); }

bool DirectNetDevice::Send(Ptr<Packet> packet, const Address&, std::uint16_t protocol) {
  if (!channel_ || !up()) return false;
  channel_->Transmit(this, packet, protocol);
  return true;
}

bool DirectNetDevice::SendFrom(Ptr<Packet> packet, const Address&, const Address& dest,
                               std::uint16_t protocol) {
  return Send(packet, dest, protocol);
}

void DirectNetDevice::Receive(Ptr<Packet> p, std::uint16_t protocol, Mac48Address from) {
  if (!up() || rx_.IsNull()) return;
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

DirectChannel::DirectChannel(std::uint32_t base_ip) : model_(base_ip) {}

void DirectChannel::Attach(Ptr<DirectNetDevice> dev, std::uint32_t ip, const LinkParams& link) {
  dev->channel_ = this;
  devices_.push_back(dev);
  const std::uint32_t host = ip - model_.base_ip();
  dev->host_ = host;
  if (host >= by_host_.size()) by_host_.resize(host + 1);
  by_host_[host] = dev;
  model_.add_host(host, link);
}

Ptr<NetDevice> DirectChannel::GetDevice(std::size_t i) const { return devices_.at(i); }

void DirectChannel::Transmit(DirectNetDevice* src, Ptr<Packet> p, std::uint16_t protocol) {
  Ipv4Header ip;
  p->PeekHeader(ip);
  const std::uint32_t host = ip.GetDestination().Get() - model_.base_ip();
  const std::uint32_t src_host = ip.GetSource().Get() - model_.base_ip();
  const auto arrival = model_.depart(src_host, host, p->GetSize());
  if (!arrival) return;
  Ptr<DirectNetDevice> dst = by_host_[host];
  Simulator::ScheduleWithContext(dst->GetNode()->GetId(), *arrival - Simulator::Now(), &DirectChannel::Arrive, this, dst, p,
                                 protocol, src->mac_);
}

void DirectChannel::Arrive(Ptr<DirectNetDevice> dst, Ptr<Packet> p, std::uint16_t protocol, Mac48Address from) {
  const auto at = model_.arrive(dst->host_, p->GetSize());
  if (!at) return;
  Simulator::Schedule(*at - Simulator::Now(), &DirectNetDevice::Receive, dst, p, protocol, from);
}

void DirectChannel::DoDispose() {
  by_host_.clear();
  devices_.clear();
  Channel::DoDispose();
}

}  // namespace apiary::sim
