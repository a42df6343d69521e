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
  dev->host_ = host;
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
  const std::uint32_t src_host = ip.GetSource().Get() - base_ip_;
  if (partitioned_ && side_of(src_host) != side_of(host)) {
    ++stats_.dropped_partition;
    return;
  }
  const Time now = Simulator::Now();
  if (src_host < nat_.size() && nat_[src_host]) nat_open_[(static_cast<std::uint64_t>(src_host) << 32) | host] = now;
  if (host < nat_.size() && nat_[host]) {
    auto way = nat_open_.find((static_cast<std::uint64_t>(host) << 32) | src_host);
    if (way == nat_open_.end() || now - way->second > nat_mapping_) {
      ++stats_.dropped_nat;
      return;
    }
  }
  const std::uint32_t bytes = p->GetSize();
  const Time tx = Seconds(bytes * 8.0 / (src->link_.up_bps * factor_of(src_host)));
  src->tx_free_ = std::max(now, src->tx_free_) + tx;
  const Time latency = (latency_fn_ ? latency_fn_(ip.GetSource().Get(), dst_ip) : src->link_.latency + dst->link_.latency) +
                       extra_of(src_host) + extra_of(host);
  ++stats_.packets;
  stats_.bytes += bytes;
  Time arrival = src->tx_free_ + latency;
  if (loss_ > 0) {
    Time rto = rto_min_;
    for (int resend = 0; resend < 12 && loss_rng_->uniform(0, 1) < loss_; ++resend, rto = rto * 2) {
      arrival += rto;
      ++stats_.retransmissions;
    }
    Time& clear = pair_clear_[(static_cast<std::uint64_t>(src_host) << 32) | host];
    arrival = std::max(arrival, clear);
    clear = arrival;
  }
  Simulator::ScheduleWithContext(dst->GetNode()->GetId(), arrival - now, &DirectChannel::Arrive, this, dst, p, protocol,
                                 src->mac_);
}

void DirectChannel::SetLoss(double p, Time rto_min, std::uint64_t seed) {
  loss_ = p;
  rto_min_ = rto_min;
  loss_rng_ = std::make_unique<Rng>(seed);
}

void DirectChannel::SetNat(std::uint32_t host, Time mapping) {
  if (host >= nat_.size()) nat_.resize(host + 1, false);
  nat_[host] = true;
  nat_mapping_ = mapping;
}

void DirectChannel::ForgetNat(std::uint32_t host) {
  if (host >= nat_.size() || !nat_[host]) return;
  std::erase_if(nat_open_, [host](const auto& e) { return (e.first >> 32) == host; });
}

void DirectChannel::SetSide(std::uint32_t host, std::uint8_t side) {
  if (host >= side_.size()) side_.resize(host + 1, 0);
  side_[host] = side;
}

void DirectChannel::SetExtraLatency(std::uint32_t host, Time extra) {
  if (host >= extra_latency_.size()) extra_latency_.resize(host + 1, Time(0));
  extra_latency_[host] = extra;
}

void DirectChannel::SetBandwidthFactor(std::uint32_t host, double factor) {
  if (host >= bandwidth_factor_.size()) bandwidth_factor_.resize(host + 1, 1.0);
  bandwidth_factor_[host] = factor;
}

void DirectChannel::Arrive(Ptr<DirectNetDevice> dst, Ptr<Packet> p, std::uint16_t protocol,
                           Mac48Address from) {
  if (!dst->up_) {
    ++stats_.dropped_down;
    return;
  }
  const Time now = Simulator::Now();
  const Time rx = Seconds(p->GetSize() * 8.0 / (dst->link_.down_bps * factor_of(dst->host_)));
  dst->rx_free_ = std::max(now, dst->rx_free_) + rx;
  Simulator::Schedule(dst->rx_free_ - now, &DirectNetDevice::Receive, dst, p, protocol, from);
}

void DirectChannel::DoDispose() {
  by_host_.clear();
  devices_.clear();
  Channel::DoDispose();
}

}  // namespace apiary::sim
