#pragma once
// The runner's third world: a Host over the recording fake transport (tests/support/
// fake_runtime.hpp) in plain simulated time, with no ns-3 and no sockets. Every message takes the
// sender's plus the receiver's drawn access latency, as in the ns-3 model without bandwidth.
#include <map>
#include <memory>
#include <vector>

#include "harness/host.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary::test {

class FakeHost final : public Host {
 public:
  explicit FakeHost(const SwarmSpec& spec, Metrics& metrics) : spec_(spec), metrics_(metrics) {}
  ~FakeHost() override {
    envs_.clear();
    peers_.clear();
  }
  std::string backend() const override { return "fake"; }
  void add_peer(std::uint32_t i, const LinkDraw& link) override {
    // One fixed latency per peer: the fake transport takes a single latency per sender, so the
    // sender carries both ends' share (2 x its own access latency).
    const Endpoint ep{Endpoint::ipv4(10, static_cast<std::uint8_t>(i >> 16), static_cast<std::uint8_t>(i >> 8),
                                     static_cast<std::uint8_t>(i)),
                      7000};
    peers_.push_back(std::make_unique<FakePeer>(net_, dir_, ep, Duration(static_cast<std::int64_t>(2 * link.latency_ns)),
                                                metrics_, i));
    peers_.back()->up = false;
    peers_.back()->refuse_dead = true;
    envs_.push_back(std::make_unique<PeerEnv>(*peers_.back(), metrics_, i, Rng(spec_.seed).fork(i + 1)));
  }
  PeerEnv& env(std::uint32_t i) override { return *envs_[i]; }
  Endpoint endpoint(std::uint32_t i) const override { return peers_[i]->local(); }
  void set_up(std::uint32_t i, bool up) override {
    if (!up) peers_[i]->cancel_all();
    peers_[i]->up = up;
    ups.emplace_back(to_ns(net_.now()), i, up);
  }
  std::size_t pending_timers(std::uint32_t i) const override { return peers_[i]->pending_timers(); }
  Duration elapsed() const override { return net_.now() - TimePoint{}; }
  void at(Duration t, std::function<void()> fn) override { net_.at(std::max(TimePoint(t), net_.now()), std::move(fn)); }
  void run(Duration end) override {
    stopped_ = false;
    net_.run(end - elapsed(), [this] { return stopped_; });
  }
  void stop() override { stopped_ = true; }
  FakePeer& peer(std::uint32_t i) { return *peers_[i]; }

  // Every set_up call: (time in ns, peer, up).
  std::vector<std::tuple<std::int64_t, std::uint32_t, bool>> ups;

 private:
  const SwarmSpec& spec_;
  Metrics& metrics_;
  FakeNet net_;
  std::map<Endpoint, FakePeer*> dir_;
  std::vector<std::unique_ptr<FakePeer>> peers_;
  std::vector<std::unique_ptr<PeerEnv>> envs_;
  bool stopped_ = false;
};

}  // namespace apiary::test
