#pragma once
// The worlds the conformance suite runs in: ns-3 on its full stack (simulated time, ns-3 UDP
// sockets on the DirectChannel) and on its lean stack (no ns-3 nodes: whole messages through the
// same link model), live (Boost.Asio, TCP on loopback), and the recording fake transport of the
// unit tests (plain simulated time, whole messages, no sockets). Same interface, same tests.
#include <utility>

#include <boost/asio.hpp>
#include <gtest/gtest.h>
#include <functional>
#include <memory>
#include <ns3/inet-socket-address.h>
#include <ns3/simulator.h>
#include <ns3/udp-socket-factory.h>

#include "core/runtime/metrics.hpp"
#include "core/wire/frame.hpp"
#include "real/live_runtime.hpp"
#include "sim/sim_network.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary::test {

class World {
 public:
  virtual ~World() = default;
  virtual std::size_t add_peer() = 0;
  // A peer on peer `host`'s machine: the same address, a port of its own (Sybils on one host).
  virtual std::size_t add_peer_beside(std::size_t host) = 0;
  virtual Runtime& runtime(std::size_t i) = 0;
  virtual void kill(std::size_t i) = 0;    // the peer's process is gone
  virtual void revive(std::size_t i) = 0;  // it comes back on the same endpoint
  virtual std::size_t pending_timers(std::size_t i) = 0;
  // Drives the world until done() or `limit` of the world's own time passes; returns done().
  virtual bool run_until(const std::function<bool()>& done, Duration limit) = 0;
  // Raw bytes from outside the protocol stack to peer i's listening endpoint.
  virtual void send_garbage(std::size_t i, const Bytes& bytes) = 0;
  Endpoint endpoint(std::size_t i) { return runtime(i).transport.local(); }
  Metrics metrics;
};

template <sim::Stack kStack>
class SimWorldOn final : public World {
 public:
  ~SimWorldOn() override {
    peers_.clear();
    net_.reset();
  }
  std::size_t add_peer() override {
    const std::size_t i = net_->add_peer(sim::LinkParams{ns3::MilliSeconds(5), 100e6, 100e6});
    peers_.push_back(std::make_unique<PeerEnv>(net_->runtime(i), metrics, i, Rng(i + 1)));
    net_->runtime(i).set_observer(peers_.back()->observer);
    net_->set_up(i, true);
    return i;
  }
  std::size_t add_peer_beside(std::size_t host) override {
    const std::size_t i = net_->add_peer_beside(host);
    peers_.push_back(std::make_unique<PeerEnv>(net_->runtime(i), metrics, i, Rng(i + 1)));
    net_->runtime(i).set_observer(peers_.back()->observer);
    net_->set_up(i, true);
    return i;
  }
  Runtime& runtime(std::size_t i) override { return peers_[i]->runtime; }
  void kill(std::size_t i) override { net_->set_up(i, false); }
  void revive(std::size_t i) override { net_->set_up(i, true); }
  std::size_t pending_timers(std::size_t i) override { return net_->runtime(i).pending_timers(); }
  bool run_until(const std::function<bool()>& done, Duration limit) override {
    const auto end = ns3::Simulator::Now() + ns3::NanoSeconds(limit.count());
    std::function<void()> check = [&] {
      if (done() || ns3::Simulator::Now() >= end) {
        ns3::Simulator::Stop();
        return;
      }
      ns3::Simulator::Schedule(ns3::MilliSeconds(1), check);
    };
    ns3::Simulator::ScheduleNow(check);
    ns3::Simulator::Run();
    return done();
  }
  void send_garbage(std::size_t i, const Bytes& bytes) override {
    if constexpr (kStack == sim::Stack::kLean) {
      // No sockets: the bytes reach the peer as a whole message from an address nobody owns.
      Message m;
      m.header = bytes;
      net_->inject(i, Endpoint{Endpoint::ipv4(10, 255, 255, 1), 9}, std::move(m));
      return;
    }
    if (!raw_) {
      // A node outside the protocol stack, with a bare ns-3 UDP socket.
      const std::size_t r = net_->add_peer(sim::LinkParams{});
      raw_ = ns3::Socket::CreateSocket(net_->device(r).GetNode(), ns3::UdpSocketFactory::GetTypeId());
      raw_->Bind(ns3::InetSocketAddress(ns3::Ipv4Address(net_->endpoint(r).ip), 9));
    }
    const auto to = endpoint(i);
    raw_->SendTo(ns3::Create<ns3::Packet>(bytes.data(), static_cast<std::uint32_t>(bytes.size())), 0,
                 ns3::InetSocketAddress(ns3::Ipv4Address(to.ip), to.port));
  }

 private:
  std::unique_ptr<sim::SimNetwork> net_ = std::make_unique<sim::SimNetwork>(kStack);
  std::vector<std::unique_ptr<PeerEnv>> peers_;
  ns3::Ptr<ns3::Socket> raw_;
};

using SimWorld = SimWorldOn<sim::Stack::kFull>;
using LeanWorld = SimWorldOn<sim::Stack::kLean>;

// The unit tests' world: the recording fake transport, 5 ms per message. It carries whole
// messages, so "garbage" reaches the RPC layer as an undecodable envelope.
class FakeWorld final : public World {
 public:
  ~FakeWorld() override {
    envs_.clear();
    peers_.clear();
  }
  std::size_t add_peer() override {
    ++hosts_;
    return add_at(Endpoint{Endpoint::ipv4(10, 9, static_cast<std::uint8_t>(hosts_ >> 8), static_cast<std::uint8_t>(hosts_)), 7000});
  }
  std::size_t add_peer_beside(std::size_t host) override {
    const Endpoint at = endpoint(host);
    std::uint16_t port = at.port;
    while (dir_.count(Endpoint{at.ip, port})) ++port;
    return add_at(Endpoint{at.ip, port});
  }
  std::size_t add_at(const Endpoint& ep) {
    const std::size_t i = peers_.size();
    peers_.push_back(std::make_unique<FakePeer>(net_, dir_, ep, std::chrono::milliseconds(5), metrics, static_cast<std::uint32_t>(i)));
    peers_.back()->refuse_dead = true;
    envs_.push_back(std::make_unique<PeerEnv>(*peers_.back(), metrics, static_cast<std::uint32_t>(i), Rng(i + 1)));
    return i;
  }
  Runtime& runtime(std::size_t i) override { return envs_[i]->runtime; }
  void kill(std::size_t i) override {
    peers_[i]->cancel_all();
    peers_[i]->up = false;
  }
  void revive(std::size_t i) override { peers_[i]->up = true; }
  std::size_t pending_timers(std::size_t i) override { return peers_[i]->pending_timers(); }
  bool run_until(const std::function<bool()>& done, Duration limit) override {
    net_.run(limit, done);
    return done();
  }
  void send_garbage(std::size_t i, const Bytes& bytes) override {
    if (auto* h = peers_[i]->handler()) h->on_message(Endpoint{Endpoint::ipv4(10, 9, 9, 9), 9}, Message{bytes, {}});
  }

 private:
  FakeNet net_;
  std::size_t hosts_ = 0;
  std::map<Endpoint, FakePeer*> dir_;
  std::vector<std::unique_ptr<FakePeer>> peers_;
  std::vector<std::unique_ptr<PeerEnv>> envs_;
};

class LiveWorld final : public World {
 public:
  ~LiveWorld() override {
    for (auto& p : peers_) p->rt->close();
    peers_.clear();
  }
  Duration emulated_delay{};  // for peers added after it is set
  // Peers added after it is set listen on addresses of their own (127.0.1.1, 127.0.1.2, ...), as
  // hosts apart, rather than all on 127.0.0.1.
  bool own_addresses = false;
  std::size_t add_peer() override {
    return add_at(own_addresses ? Endpoint{Endpoint::ipv4(127, 0, 1, static_cast<std::uint8_t>(++hosts_)), 0}
                                : Endpoint{Endpoint::ipv4(127, 0, 0, 1), 0});
  }
  std::size_t add_peer_beside(std::size_t host) override { return add_at(Endpoint{endpoint(host).ip, 0}); }
  std::size_t add_at(const Endpoint& listen) {
    const std::size_t i = peers_.size();
    auto p = std::make_unique<Peer>();
    real::LiveOptions o;
    o.listen = listen;
    o.emulated_delay = emulated_delay;
    p->rt = std::make_unique<real::LiveRuntime>(io_, o);
    p->rt->open();
    p->env = std::make_unique<PeerEnv>(*p->rt, metrics, i, Rng(i + 1));
    p->rt->set_observer(p->env->observer);
    peers_.push_back(std::move(p));
    return i;
  }
  Runtime& runtime(std::size_t i) override { return peers_[i]->env->runtime; }
  void kill(std::size_t i) override { peers_[i]->rt->close(); }
  void revive(std::size_t i) override {
    // Reopen on the same port, as a restarted process would.
    peers_[i]->rt->close();
    peers_[i]->rt->open();
  }
  std::size_t pending_timers(std::size_t i) override { return peers_[i]->rt->pending_timers(); }
  std::size_t connections(std::size_t i) const { return peers_[i]->rt->connections(); }
  bool run_until(const std::function<bool()>& done, Duration limit) override {
    // Wall-clock bound only as a safety net against a hang; the loop itself never sleeps.
    const auto end = std::chrono::steady_clock::now() + limit + std::chrono::seconds(2);
    io_.restart();
    while (!done() && std::chrono::steady_clock::now() < end)
      io_.run_one_for(std::chrono::milliseconds(5));
    return done();
  }
  void send_garbage(std::size_t i, const Bytes& bytes) override {
    garbage_.push_back(std::make_unique<boost::asio::ip::tcp::socket>(io_));
    auto& s = *garbage_.back();
    const auto to = endpoint(i);
    s.connect({boost::asio::ip::address_v4(to.ip), to.port});
    boost::asio::write(s, boost::asio::buffer(bytes));
  }
  // A hostile listener: it answers every connection made to it with a HELLO of its own (which
  // only the dialling side may send) and then says nothing more, holding the connection open.
  Endpoint hello_answering_listener() {
    namespace ip = boost::asio::ip;
    auto acc = std::make_unique<ip::tcp::acceptor>(io_, ip::tcp::endpoint(ip::address_v4::loopback(), 0));
    const Endpoint me{Endpoint::ipv4(127, 0, 0, 1), acc->local_endpoint().port()};
    accept_hostile(*acc, me);
    acceptors_.push_back(std::move(acc));
    return me;
  }

 private:
  void accept_hostile(boost::asio::ip::tcp::acceptor& acc, Endpoint me) {
    acc.async_accept([this, &acc, me](boost::system::error_code ec, boost::asio::ip::tcp::socket s) {
      if (ec) return;
      garbage_.push_back(std::make_unique<boost::asio::ip::tcp::socket>(std::move(s)));
      auto hello = std::make_shared<Bytes>(wire::encode_hello(me));
      boost::asio::async_write(*garbage_.back(), boost::asio::buffer(*hello), [hello](boost::system::error_code, std::size_t) {});
      accept_hostile(acc, me);
    });
  }
  struct Peer {
    std::unique_ptr<real::LiveRuntime> rt;
    std::unique_ptr<PeerEnv> env;
  };
  boost::asio::io_context io_;
  std::size_t hosts_ = 0;
  std::vector<std::unique_ptr<Peer>> peers_;
  std::vector<std::unique_ptr<boost::asio::ip::tcp::socket>> garbage_;
  std::vector<std::unique_ptr<boost::asio::ip::tcp::acceptor>> acceptors_;
};

// Runs `t` to completion in `world` (bounded by `limit` of the world's own time), in `scope`.
template <class T>
T run_in(World& world, TaskScope& scope, Task<T> t, Duration limit) {
  std::optional<T> out;
  scope.spawn([](Task<T> task, std::optional<T>& o) -> Task<void> {
    o.emplace(co_await std::move(task));
  }(std::move(t), out));
  EXPECT_TRUE(world.run_until([&] { return out.has_value(); }, limit)) << "did not finish";
  if (!out) throw std::runtime_error("task did not finish");
  return std::move(*out);
}

// The typed suites' worlds and their names in test names.
using Worlds = ::testing::Types<SimWorld, LeanWorld, LiveWorld, FakeWorld>;
class WorldNames {
 public:
  template <class T>
  static std::string GetName(int) {
    return std::is_same_v<T, SimWorld>    ? "ns3"
           : std::is_same_v<T, LeanWorld> ? "ns3lean"
           : std::is_same_v<T, LiveWorld> ? "live"
                                          : "fake";
  }
};

}  // namespace apiary::test
