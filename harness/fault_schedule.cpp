#include "harness/fault_schedule.hpp"

#include <algorithm>
#include <cmath>
#include <string>

namespace apiary {

void schedule_fault_windows(const SwarmSpec& spec, Metrics& metrics, Duration end, const FaultHooks& hooks) {
  using Apply = std::function<void(std::uint32_t, bool)>;
  auto schedule = [&](const std::optional<FaultWindow>& w, const std::string& name, std::uint64_t tag, const Apply& apply,
                      const std::function<void(bool)>& around) {
    if (!w || !apply) return;
    std::uint64_t k = 0;
    for (Duration t = w->at; t < end; t += w->every, ++k) {
      hooks.at(t, [&spec, &metrics, at = hooks.at, w = *w, name, tag, apply, around, k, t] {
        Rng r = Rng(spec.seed ^ tag).fork(k + 1);
        std::vector<std::uint32_t> all(spec.peers);
        for (std::uint32_t i = 0; i < spec.peers; ++i) all[i] = i;
        auto n = static_cast<std::size_t>(std::llround(w.fraction * spec.peers));
        if (name == "partition") n = std::clamp<std::size_t>(n, 1, spec.peers - 1);  // two sides, never one
        for (std::size_t i = 0; i < n && i < all.size(); ++i) std::swap(all[i], all[i + r.below(all.size() - i)]);
        all.resize(std::min(n, all.size()));
        for (auto i : all) apply(i, true);
        if (around) around(true);
        metrics.count("faults." + name, 1);
        metrics.count("faults." + name + ".peers", static_cast<std::int64_t>(all.size()));
        at(t + w.duration, [all, apply, around] {
          for (auto i : all) apply(i, false);
          if (around) around(false);
        });
      });
      if (w->every == Duration::zero()) break;
    }
  };
  const auto& f = spec.faults;
  schedule(f.partition, "partition", 0x7061727469ULL, hooks.partition, hooks.partitioned);
  schedule(f.stall, "stall", 0x7374616c6cULL, hooks.stall, {});
  schedule(f.latency_spike, "latency_spike", 0x6c6174ULL, hooks.latency_spike, {});
  schedule(f.bandwidth_drop, "bandwidth_drop", 0x6277ULL, hooks.bandwidth_drop, {});
}

LiveNetworkFaults::LiveNetworkFaults(const SwarmSpec& spec, const std::vector<Endpoint>& directory, Metrics& metrics)
    : spec_(spec), metrics_(metrics), side_(directory.size(), 0), extra_(directory.size(), Duration::zero()) {
  for (std::uint32_t i = 0; i < directory.size(); ++i) index_[directory[i]] = i;
}

FaultHooks LiveNetworkFaults::hooks(std::function<void(Duration, std::function<void()>)> at) {
  FaultHooks h;
  h.at = std::move(at);
  h.partition = [this](std::uint32_t i, bool on) { set_side(i, on); };
  h.partitioned = [this](bool on) { set_partitioned(on); };
  if (spec_.faults.latency_spike) {
    const Duration extra = spec_.faults.latency_spike->extra_latency;
    h.latency_spike = [this, extra](std::uint32_t i, bool on) { set_extra(i, on ? extra : Duration::zero()); };
  }
  return h;
}

FaultyTransport::FaultyTransport(LiveNetworkFaults& faults, std::uint32_t self, Transport& inner, Timers& timers, Clock& clock,
                                 Rng loss_rng)
    : faults_(faults), self_(self), inner_(inner), timers_(timers), clock_(clock), rng_(loss_rng) {
  inner_.set_handler(this);
}

FaultyTransport::~FaultyTransport() {
  drop_held();
  if (inner_.handler() == this) inner_.set_handler(nullptr);
}

void FaultyTransport::drop_held() {
  for (const auto id : held_) timers_.cancel(id);
  held_.clear();
  clear_.clear();
}

void FaultyTransport::send(const Endpoint& to, Message message) {
  auto it = faults_.index_.find(to);
  if (it == faults_.index_.end()) {  // not a peer of the swarm: no faults
    inner_.send(to, std::move(message));
    return;
  }
  const std::uint32_t peer = it->second;
  if (faults_.partitioned_ && faults_.side_[self_] != faults_.side_[peer]) {
    faults_.metrics_.count("network.partition_drops", 1);
    return;
  }
  Duration delay = faults_.extra_[self_] + faults_.extra_[peer];
  const double loss = faults_.spec_.faults.loss;
  if (loss > 0) {
    Duration rto = faults_.spec_.faults.rto_min;
    for (int resend = 0; resend < 12 && rng_.uniform(0, 1) < loss; ++resend, rto *= 2) {
      delay += rto;
      faults_.metrics_.count("network.retransmissions", 1);
    }
  }
  const TimePoint now = clock_.now();
  auto clear = clear_.find(to);
  const bool behind = clear != clear_.end() && clear->second > now;
  if (delay == Duration::zero() && !behind) {
    inner_.send(to, std::move(message));
    return;
  }
  // Held back: it leaves after the delay, and never before what was sent to `to` earlier.
  const TimePoint leaves = std::max(now + delay, behind ? clear->second : now);
  clear_[to] = leaves;
  auto held = std::make_shared<Message>(std::move(message));
  auto id = std::make_shared<TimerId>(0);
  *id = timers_.schedule(leaves - now, [this, to, held, id] {
    held_.erase(*id);
    inner_.send(to, std::move(*held));
  });
  held_.insert(*id);
}

void FaultyTransport::on_message(const Endpoint& from, Message message) {
  if (handler_) handler_->on_message(from, std::move(message));
}

void FaultyTransport::on_peer_error(const Endpoint& peer, const Error& error) {
  if (handler_) handler_->on_peer_error(peer, error);
}

PayloadTarget FaultyTransport::place_payload(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> header,
                                             std::uint64_t size) {
  return handler_ ? handler_->place_payload(from, link, header, size) : PayloadTarget{};
}

}  // namespace apiary
