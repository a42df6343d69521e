#include "sim/sim_network.hpp"

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#include <ns3/internet-stack-helper.h>
#include <ns3/ipv4-static-routing-helper.h>
#include <ns3/ipv4.h>
#include <ns3/simulator.h>

#include "sim/bucket_scheduler.hpp"

namespace apiary::sim {

using namespace ns3;

SimNetwork::SimNetwork(Stack stack, EventQueue queue) : stack_(stack) {
  // Time buckets by default (sim/bucket_scheduler.hpp): with millions of events pending, less
  // host time per message than the binary heap, itself faster than ns-3's map (docs/results.md).
  const char* globals = std::getenv("NS_GLOBAL_VALUE");
  if (!globals || !std::strstr(globals, "SchedulerType")) {
    ObjectFactory scheduler;
    if (queue == EventQueue::kBuckets)
      scheduler.SetTypeId(ApiaryBucketScheduler::GetTypeId());
    else
      scheduler.SetTypeId(queue == EventQueue::kHeap ? "ns3::PriorityQueueScheduler" : "ns3::MapScheduler");
    Simulator::SetScheduler(scheduler);
  }
  if (stack_ == Stack::kFull) {
    channel_ = CreateObject<DirectChannel>(kBaseIp);
  } else {
    lean_model_ = std::make_unique<LinkModel>(kBaseIp);
    lean_ = std::make_unique<LeanChannel>(*lean_model_);
  }
}

SimNetwork::~SimNetwork() {
  runtimes_.clear();  // closes sockets, cancels timers
  devices_.clear();
  nodes_.clear();
  channel_ = nullptr;
  Simulator::Destroy();  // frees the lean stack's messages in flight (before the channel goes)
}

std::size_t SimNetwork::add_peer(const LinkParams& link, TransportLimits limits) {
  const std::size_t i = runtimes_.size();
  const std::uint32_t host = ++hosts_;
  const Endpoint ep{kBaseIp + host, kPort};
  host_.push_back(host);
  beside_.push_back(false);
  endpoints_.push_back(ep);
  if (lean_) {
    lean_model_->add_host(host, link);
    runtimes_.push_back(std::make_unique<SimRuntime>(*lean_, ep, limits));
    lean_->attach(*runtimes_.back(), ep);
    return i;
  }
  Ptr<Node> node = CreateObject<Node>();
  InternetStackHelper stack;
  stack.SetIpv6StackInstall(false);
  Ipv4StaticRoutingHelper static_routing;
  stack.SetRoutingHelper(static_routing);
  stack.Install(node);

  Ptr<DirectNetDevice> dev = CreateObject<DirectNetDevice>();
  dev->SetAddress(Mac48Address::Allocate());
  node->AddDevice(dev);
  channel_->Attach(dev, ep.ip, link);

  // Assigned by hand rather than with Ipv4AddressHelper, which would also install a queue disc
  // (FqCoDel costs ~5x in time and memory at scale and models nothing we need here).
  Ptr<Ipv4> ipv4 = node->GetObject<Ipv4>();
  const std::int32_t ifx = ipv4->AddInterface(dev);
  ipv4->AddAddress(ifx, Ipv4InterfaceAddress(Ipv4Address(ep.ip), Ipv4Mask("255.0.0.0")));
  ipv4->SetMetric(ifx, 1);
  ipv4->SetUp(ifx);

  nodes_.push_back(node);
  devices_.push_back(dev);
  runtimes_.push_back(std::make_unique<SimRuntime>(node, ep, sidecar_, limits));
  return i;
}

std::size_t SimNetwork::add_peer_beside(std::size_t host, TransportLimits limits) {
  const std::size_t i = runtimes_.size();
  const std::uint32_t h = host_.at(host);
  std::uint16_t port = kPort;
  for (std::size_t j = 0; j < i; ++j)
    if (host_[j] == h) port = std::max<std::uint16_t>(port, static_cast<std::uint16_t>(endpoints_[j].port + 1));
  const Endpoint ep{endpoints_[host].ip, port};
  host_.push_back(h);
  beside_.push_back(true);
  endpoints_.push_back(ep);
  if (lean_) {
    runtimes_.push_back(std::make_unique<SimRuntime>(*lean_, ep, limits));
    lean_->attach(*runtimes_.back(), ep);
  } else {
    runtimes_.push_back(std::make_unique<SimRuntime>(nodes_[h - 1], ep, sidecar_, limits));
  }
  return i;
}

DirectNetDevice& SimNetwork::device(std::size_t i) {
  if (lean_) throw std::logic_error("sim: the lean stack has no ns-3 devices");
  return *devices_[host_[i] - 1];
}

bool SimNetwork::inject(std::size_t i, const Endpoint& from, Message message) {
  if (!lean_) throw std::logic_error("sim: inject is for the lean stack (the full one takes raw packets)");
  return lean_->inject(from, endpoints_.at(i), std::move(message));
}

void SimNetwork::set_up(std::size_t i, bool up) {
  if (!beside_[i]) {  // the host's own peer: its link goes up and down with it
    links().set_up(host_[i], up);
    if (!up) links().ForgetNat(host_[i]);
  }
  if (up)
    runtimes_[i]->open();
  else
    runtimes_[i]->close();
}

}  // namespace apiary::sim
