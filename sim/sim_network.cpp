#include "sim/sim_network.hpp"

#include <ns3/internet-stack-helper.h>
#include <ns3/ipv4-static-routing-helper.h>
#include <ns3/ipv4.h>
#include <ns3/simulator.h>

namespace apiary::sim {

using namespace ns3;

SimNetwork::SimNetwork() : channel_(CreateObject<DirectChannel>(kBaseIp)) {}

SimNetwork::~SimNetwork() {
  runtimes_.clear();  // closes sockets, cancels timers
  devices_.clear();
  nodes_.clear();
  channel_ = nullptr;
  Simulator::Destroy();
}

std::size_t SimNetwork::add_peer(const LinkParams& link, TransportLimits limits) {
  const std::size_t i = runtimes_.size();
  const Endpoint ep{kBaseIp + 1 + static_cast<std::uint32_t>(nodes_.size()), kPort};
  Ptr<Node> node = CreateObject<Node>();
  InternetStackHelper stack;
  stack.SetIpv6StackInstall(false);
  Ipv4StaticRoutingHelper static_routing;
  stack.SetRoutingHelper(static_routing);
  stack.Install(node);

  Ptr<DirectNetDevice> dev = CreateObject<DirectNetDevice>();
  dev->SetAddress(Mac48Address::Allocate());
  dev->SetLink(link);
  node->AddDevice(dev);
  channel_->Attach(dev, ep.ip);

  // Assigned by hand rather than with Ipv4AddressHelper, which would also install a queue disc
  // (FqCoDel costs ~5x in time and memory at scale and models nothing we need here).
  Ptr<Ipv4> ipv4 = node->GetObject<Ipv4>();
  const std::int32_t ifx = ipv4->AddInterface(dev);
  ipv4->AddAddress(ifx, Ipv4InterfaceAddress(Ipv4Address(ep.ip), Ipv4Mask("255.0.0.0")));
  ipv4->SetMetric(ifx, 1);
  ipv4->SetUp(ifx);

  host_.push_back(nodes_.size());
  beside_.push_back(false);
  nodes_.push_back(node);
  devices_.push_back(dev);
  endpoints_.push_back(ep);
  runtimes_.push_back(std::make_unique<SimRuntime>(node, ep, sidecar_, limits));
  return i;
}

std::size_t SimNetwork::add_peer_beside(std::size_t host, TransportLimits limits) {
  const std::size_t i = runtimes_.size();
  const std::size_t n = host_.at(host);
  std::uint16_t port = kPort;
  for (std::size_t j = 0; j < i; ++j)
    if (host_[j] == n) port = std::max<std::uint16_t>(port, static_cast<std::uint16_t>(endpoints_[j].port + 1));
  const Endpoint ep{endpoints_[host].ip, port};
  host_.push_back(n);
  beside_.push_back(true);
  endpoints_.push_back(ep);
  runtimes_.push_back(std::make_unique<SimRuntime>(nodes_[n], ep, sidecar_, limits));
  return i;
}

void SimNetwork::set_up(std::size_t i, bool up) {
  if (!beside_[i]) {  // the node's own peer: its link goes up and down with it
    devices_[host_[i]]->SetUp(up);
    if (!up) channel_->ForgetNat(static_cast<std::uint32_t>(host_[i] + 1));
  }
  if (up)
    runtimes_[i]->open();
  else
    runtimes_[i]->close();
}

}  // namespace apiary::sim
