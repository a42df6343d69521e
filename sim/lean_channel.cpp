#include "sim/lean_channel.hpp"

#include <ns3/event-impl.h>
#include <ns3/simulator.h>

#include "sim/sim_runtime.hpp"

namespace apiary::sim {

using namespace ns3;

// One message in flight: one event object, scheduled twice (reaching the downlink, crossing it).
class LeanChannel::Delivery final : public EventImpl {
 public:
  Delivery(LeanChannel& channel, const Endpoint& from, const Endpoint& to, Message message)
      : channel_(channel), from_(from), to_(to), message_(std::move(message)) {}
  std::uint64_t first_bytes = 0;
  // Datagrams after the first: when each reaches the downlink, and its size.
  std::vector<std::pair<Time, std::uint64_t>> rest;
  SimRuntime* receiver = nullptr;  // the peer on the destination's host when sent (checked again at delivery)

 private:
  void Notify() override {
    if (!crossed_) {
      const std::uint32_t dst = channel_.host_of(to_);
      auto done = channel_.model_.arrive(dst, first_bytes);
      if (!done) return;  // the receiver's host is down
      for (const auto& [at, bytes] : rest) *done = channel_.model_.serialise_down(dst, bytes, at);
      crossed_ = true;
      // With many peers the receiver's runtime is in no cache: start loading what delivery reads
      // (its first two lines) now; it is likely still cached when the message has crossed.
      if (receiver) {
        __builtin_prefetch(receiver);
        __builtin_prefetch(reinterpret_cast<const char*>(receiver) + 64);
      }
      Simulator::Schedule(*done - Simulator::Now(), Ptr<EventImpl>(this));
      return;
    }
    SimRuntime* rt = receiver && receiver->local() == to_ ? receiver : channel_.find(to_);
    if (rt) rt->receive_whole(from_, std::move(message_));
  }
  LeanChannel& channel_;
  Endpoint from_, to_;
  Message message_;
  bool crossed_ = false;
};

void LeanChannel::attach(SimRuntime& runtime, const Endpoint& at) {
  const std::uint32_t host = host_of(at);
  if (!model_.has_host(host)) throw std::logic_error("lean channel: no host for " + at.to_string());
  if (host >= by_host_.size()) by_host_.resize(host + 1, nullptr);
  if (!by_host_[host])
    by_host_[host] = &runtime;
  else
    beside_[at] = &runtime;
}

SimRuntime* LeanChannel::find(const Endpoint& at) const {
  const std::uint32_t host = host_of(at);
  if (host >= by_host_.size() || !by_host_[host]) return nullptr;
  if (by_host_[host]->local().port == at.port) return by_host_[host];
  auto it = beside_.find(at);
  return it == beside_.end() ? nullptr : it->second;
}

std::uint64_t LeanChannel::transmit(const Endpoint& from, const Endpoint& to, Message message) {
  const std::uint32_t src = host_of(from), dst = host_of(to);
  // A host that is down sends nothing (on the full stack its device refuses the packets).
  if (!model_.has_host(src) || !model_.up(src)) return SimRuntime::for_each_datagram(message, [](std::uint64_t) {});
  std::optional<Time> first;
  std::uint64_t first_bytes = 0;
  std::vector<std::pair<Time, std::uint64_t>> rest;
  bool dropped = false;
  const std::uint64_t n = SimRuntime::for_each_datagram(message, [&](std::uint64_t bytes) {
    if (dropped) return;
    const auto at = model_.depart(src, dst, bytes);
    if (!at) {  // no route, a partition or a NAT: every datagram of the message meets the same
      dropped = true;
    } else if (!first) {
      first = at;
      first_bytes = bytes;
    } else {
      rest.emplace_back(*at, bytes);
    }
  });
  if (dropped || !first) return n;
  Ptr<Delivery> d = Create<Delivery>(*this, from, to, std::move(message));
  d->first_bytes = first_bytes;
  d->rest = std::move(rest);
  if (dst < by_host_.size()) d->receiver = by_host_[dst];
  Simulator::Schedule(*first - Simulator::Now(), Ptr<EventImpl>(d));
  return n;
}

bool LeanChannel::inject(const Endpoint& from, const Endpoint& to, Message message) {
  SimRuntime* rt = find(to);
  if (!rt) return false;
  rt->receive_whole(from, std::move(message));
  return true;
}

}  // namespace apiary::sim
