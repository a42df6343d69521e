#pragma once
// A deterministic in-memory world for core tests: one virtual clock and event queue, and peers
// whose transport delivers to each other after a fixed latency and records what they sent.
// No ns-3, no sockets: the bottom of the test pyramid.
#include <functional>
#include <map>
#include <memory>
#include <vector>

#include "core/runtime/metrics.hpp"
#include "core/runtime/runtime.hpp"

namespace apiary::test {

class FakeNet {
 public:
  TimePoint now() const { return now_; }
  std::uint64_t at(TimePoint t, std::function<void()> fn) {
    const auto id = next_++;
    events_.emplace(std::make_pair(t, id), std::move(fn));
    return id;
  }
  bool cancel(TimePoint t, std::uint64_t id) { return events_.erase({t, id}) > 0; }
  // Runs events in time order until none is left, `until` is reached, or `done()` holds.
  void run(Duration limit = std::chrono::hours(24), std::function<bool()> done = {}) {
    const TimePoint end = now_ + limit;
    while (!events_.empty() && !(done && done())) {
      auto it = events_.begin();
      if (it->first.first > end) break;
      now_ = it->first.first;
      auto fn = std::move(it->second);
      events_.erase(it);
      fn();
    }
    if (!(done && done()) && now_ < end) now_ = end;
  }
  std::size_t pending() const { return events_.size(); }

 private:
  TimePoint now_{};
  std::uint64_t next_ = 1;
  std::map<std::pair<TimePoint, std::uint64_t>, std::function<void()>> events_;
};

class FakePeer final : public Clock, public Timers, public Transport {
 public:
  FakePeer(FakeNet& net, std::map<Endpoint, FakePeer*>& directory, Endpoint self, Duration latency,
           Metrics& metrics, std::uint32_t index)
      : net_(net), dir_(directory), self_(self), latency_(latency), observer_(metrics, *this, index),
        rng_(index + 1), runtime_{*this, *this, *this, rng_, observer_} {
    dir_[self_] = this;
  }
  ~FakePeer() override { dir_.erase(self_); }

  Runtime& runtime() { return runtime_; }
  // Cancels every pending timer (a peer that goes down).
  void cancel_all() {
    for (const auto& [id, t] : timers_) net_.cancel(t.first, t.second);
    timers_.clear();
  }
  bool up = true;
  std::vector<std::pair<Endpoint, Message>> sent;  // the recording
  std::size_t pending_timers() const { return timers_.size(); }

  TimePoint now() const override { return net_.now(); }
  TimerId schedule(Duration d, std::function<void()> fn) override {
    const TimerId id = next_timer_++;
    const TimePoint t = net_.now() + std::max(d, Duration::zero());
    const auto ev = net_.at(t, [this, id, fn = std::move(fn)] {
      timers_.erase(id);
      fn();
    });
    timers_.emplace(id, std::make_pair(t, ev));
    return id;
  }
  bool cancel(TimerId id) override {
    auto it = timers_.find(id);
    if (it == timers_.end()) return false;
    net_.cancel(it->second.first, it->second.second);
    timers_.erase(it);
    return true;
  }
  Endpoint local() const override { return self_; }
  void set_handler(TransportHandler* h) override { handler_ = h; }
  TransportHandler* handler() const override { return handler_; }
  void send(const Endpoint& to, Message m) override {
    sent.emplace_back(to, m);
    if (!up) return;
    net_.at(net_.now() + latency_, [this, to, m = std::move(m), from = self_]() mutable {
      auto it = dir_.find(to);
      if (it == dir_.end() || !it->second->up) {
        // Refused: tell the sender, as a live transport would for a closed port.
        if (refuse_dead && handler_) handler_->on_peer_error(to, Error{ErrorCode::kUnreachable, "refused"});
        return;
      }
      if (it->second->handler_) it->second->handler_->on_message(from, std::move(m));
    });
  }
  bool refuse_dead = false;

 private:
  FakeNet& net_;
  std::map<Endpoint, FakePeer*>& dir_;
  Endpoint self_;
  Duration latency_;
  PeerObserver observer_;
  Rng rng_;
  Runtime runtime_;
  TransportHandler* handler_ = nullptr;
  TimerId next_timer_ = 1;
  std::map<TimerId, std::pair<TimePoint, std::uint64_t>> timers_;
};

// A handful of fake peers on one FakeNet.
struct FakeSwarm {
  explicit FakeSwarm(std::size_t n, Duration latency = std::chrono::milliseconds(5)) {
    for (std::size_t i = 0; i < n; ++i)
      peers.push_back(std::make_unique<FakePeer>(
          net, dir, Endpoint{Endpoint::ipv4(10, 0, 0, static_cast<std::uint8_t>(i + 1)), 7000},
          latency, metrics, static_cast<std::uint32_t>(i)));
  }
  FakePeer& operator[](std::size_t i) { return *peers[i]; }
  FakeNet net;
  Metrics metrics;
  std::map<Endpoint, FakePeer*> dir;
  std::vector<std::unique_ptr<FakePeer>> peers;
};

}  // namespace apiary::test
