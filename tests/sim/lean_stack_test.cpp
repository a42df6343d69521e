// The lean network stack against the full one: the same messages arrive at the same simulated
// instants (one link model), faults act the same, whole scenarios give the same event trace, and
// a lean peer's network costs a small fraction of a full one's.
#include <gtest/gtest.h>

#include <ns3/simulator.h>

#include "harness/scenario.hpp"
#include "harness/spec.hpp"
#include "sim/sim_host.hpp"
#include "sim/sim_network.hpp"

namespace apiary {
namespace {

using namespace std::chrono_literals;

struct Arrival {
  std::int64_t at_ns;
  std::size_t header;
  std::uint64_t payload;
  bool operator==(const Arrival&) const = default;
};

class Recorder final : public TransportHandler {
 public:
  void on_message(const Endpoint&, Message m) override {
    got.push_back({ns3::Simulator::Now().GetNanoSeconds(), m.header.size(), m.payload.size()});
  }
  void on_peer_error(const Endpoint&, const Error&) override {}
  std::vector<Arrival> got;
};

struct Plan {
  double loss = 0;
  bool receiver_down_at_50ms = false;
  bool nat_on_receiver = false;
};

// Three peers on links of different speeds; peer 0 and 2 send peer 1 messages of many sizes (a
// bare header, a header that rides beside, payloads of one to seventeen datagrams), one at a
// time, far apart; returns what peer 1 received and when.
std::vector<Arrival> deliveries(sim::Stack stack, const Plan& plan) {
  std::vector<Arrival> out;
  {
    sim::SimNetwork net(stack);
    net.add_peer({ns3::MilliSeconds(7), 20e6, 50e6});
    net.add_peer({ns3::MilliSeconds(13), 8e6, 3e6});
    net.add_peer({ns3::MilliSeconds(2), 100e6, 100e6});
    for (std::size_t i = 0; i < 3; ++i) net.set_up(i, true);
    if (plan.loss > 0) net.links().SetLoss(plan.loss, ns3::MilliSeconds(200), 99);
    if (plan.nat_on_receiver) net.links().SetNat(2, ns3::Seconds(30));  // peer 1's host is 2
    Recorder rec;
    net.runtime(1).set_handler(&rec);
    const std::vector<std::pair<std::size_t, std::uint64_t>> sizes = {
        {40, 0}, {40000, 0}, {300, 1000}, {300, 59000}, {300, 60000}, {300, 200000}, {100, 1u << 20}};
    std::int64_t t = 1;
    for (std::size_t from : {0u, 2u})
      for (const auto& [h, p] : sizes) {
        ns3::Simulator::Schedule(ns3::Seconds(static_cast<double>(t++) * 5), [&net, from, h = h, p = p] {
          Message m;
          m.header.assign(h, 0x42);
          m.payload = Payload::size_only(p);
          net.runtime(from).send(net.endpoint(1), std::move(m));
        });
      }
    if (plan.nat_on_receiver)  // peer 1 opens the way to peer 2 only
      ns3::Simulator::Schedule(ns3::Seconds(40), [&net] { net.runtime(1).send(net.endpoint(2), Message{}); });
    if (plan.receiver_down_at_50ms) {
      ns3::Simulator::Schedule(ns3::Seconds(5.05), [&net] { net.set_up(1, false); });
      ns3::Simulator::Schedule(ns3::Seconds(30), [&net] { net.set_up(1, true); });
    }
    ns3::Simulator::Stop(ns3::Seconds(200));
    ns3::Simulator::Run();
    out = rec.got;
  }
  return out;
}

TEST(LeanStack, MessagesArriveWhenTheFullStackDeliversThem) {
  const auto full = deliveries(sim::Stack::kFull, {});
  const auto lean = deliveries(sim::Stack::kLean, {});
  ASSERT_EQ(full.size(), 14u);
  EXPECT_EQ(lean, full);
  // A megabyte over the 3 Mbit/s downlink takes seconds: the serialisation is modelled.
  EXPECT_GT(full.back().at_ns - 70'000'000'000, 2'000'000'000);
}

TEST(LeanStack, LossDownHostsAndNatActAsOnTheFullStack) {
  for (const Plan& plan : {Plan{0.3, false, false}, Plan{0, true, false}, Plan{0, false, true}}) {
    const auto full = deliveries(sim::Stack::kFull, plan);
    const auto lean = deliveries(sim::Stack::kLean, plan);
    EXPECT_EQ(lean, full) << "loss " << plan.loss << " down " << plan.receiver_down_at_50ms << " nat " << plan.nat_on_receiver;
    EXPECT_LT(full.size(), 14u + (plan.loss > 0 ? 1u : 0u));
    if (plan.receiver_down_at_50ms || plan.nat_on_receiver) {
      EXPECT_LT(full.size(), 14u);
    }
  }
}

// A peer beside another on one host shares its link: while the host's own peer is down (its
// link with it), the other's messages go nowhere, on either stack; back up, they arrive.
TEST(LeanStack, APeerBesideADownHostSendsNothing) {
  for (const auto stack : {sim::Stack::kFull, sim::Stack::kLean}) {
    std::size_t got = 0;
    {
      sim::SimNetwork net(stack);
      net.add_peer({});
      net.add_peer({});
      const std::size_t beside = net.add_peer_beside(0);
      for (std::size_t i = 0; i < 3; ++i) net.set_up(i, true);
      Recorder rec;
      net.runtime(1).set_handler(&rec);
      net.set_up(0, false);  // the host's link goes down with its own peer
      ns3::Simulator::Schedule(ns3::Seconds(1), [&] { net.runtime(beside).send(net.endpoint(1), Message{Bytes(10, 1), {}}); });
      ns3::Simulator::Schedule(ns3::Seconds(2), [&] { net.set_up(0, true); });
      ns3::Simulator::Schedule(ns3::Seconds(3), [&] { net.runtime(beside).send(net.endpoint(1), Message{Bytes(10, 2), {}}); });
      ns3::Simulator::Run();
      got = rec.got.size();
    }
    EXPECT_EQ(got, 1u) << (stack == sim::Stack::kLean ? "lean" : "full");
  }
}

TEST(LeanStack, OverLimitMessagesAreCountedAndDropped) {
  sim::SimNetwork net(sim::Stack::kLean);
  TransportLimits limits;
  limits.max_header = 1000;
  limits.max_payload = 5000;
  net.add_peer({});
  net.add_peer({}, limits);
  Metrics metrics;
  PeerEnv env(net.runtime(1), metrics, 1, Rng(1));
  net.runtime(1).set_observer(env.observer);
  net.set_up(0, true);
  net.set_up(1, true);
  Recorder rec;
  net.runtime(1).set_handler(&rec);
  for (const auto& [h, p] : std::vector<std::pair<std::size_t, std::uint64_t>>{{1001, 0}, {10, 5001}, {1000, 5000}}) {
    Message m;
    m.header.assign(h, 1);
    m.payload = Payload::size_only(p);
    net.runtime(0).send(net.endpoint(1), std::move(m));
  }
  ns3::Simulator::Run();
  ASSERT_EQ(rec.got.size(), 1u);
  EXPECT_EQ(rec.got[0].header, 1000u);
  EXPECT_EQ(metrics.counter("transport.bad_frames"), 2);
}

SwarmSpec spec_on(const std::string& text, const std::string& stack) {
  auto sc = Scenario::from_string(text, "lean.toml", {"network.stack=" + stack});
  return parse_swarm_spec(sc);
}

// A DHT under churn and packet loss, with authenticated peers: the same trace on both stacks.
TEST(LeanStack, ScenarioTraceIsTheFullStacksTrace) {
  const std::string text = R"(
peers = 80
duration = "4min"
seed = 3
[network]
latency = { dist = "exponential", mean = "20ms" }
bandwidth = { dist = "uniform", min = "5Mbps", max = "100Mbps" }
loss = 0.01
[churn]
model = "exponential"
mean_session = "2min"
mean_downtime = "30s"
[dht]
k = 8
join_window = "20s"
[workload]
kind = "dht"
start = "30s"
store_rate = "2/s"
get_rate = "4/s"
)";
  Metrics full, lean;
  const auto info_full = sim::run_sim_swarm(spec_on(text, "full"), full);
  const auto info_lean = sim::run_sim_swarm(spec_on(text, "lean"), lean);
  EXPECT_GT(full.counter("dht.get.ok"), 300);
  EXPECT_GT(full.counter("churn.leaves"), 20);
  EXPECT_GT(full.counter("auth.proofs_checked"), 100);
  EXPECT_EQ(full.trace_hash(), lean.trace_hash());
  EXPECT_EQ(full.counters(), lean.counters());
  // The lean stack's network costs a small fraction of the full one's per peer.
  EXPECT_LT(info_lean.figures.at("network_bytes_per_peer") * 5, info_full.figures.at("network_bytes_per_peer"));
}

TEST(LeanStack, ModelledProofsKeepTheTraceAndRefuseAWrongTag) {
  const std::string text = R"(
peers = 40
duration = "40s"
[workload]
rate = "2/s"
)";
  auto signed_spec = spec_on(text, "lean");
  auto modelled = signed_spec;
  modelled.auth.modelled_proofs = true;
  Metrics a, b;
  sim::run_sim_swarm(signed_spec, a);
  sim::run_sim_swarm(modelled, b);
  EXPECT_GT(a.counter("ping.ok"), 1000);
  EXPECT_EQ(a.trace_hash(), b.trace_hash());
  EXPECT_EQ(a.counter("auth.bad_proofs"), 0);
}

TEST(LeanStack, ScenarioKeysAreCheckedAndLiveRefusesThem) {
  EXPECT_THROW(spec_on("peers = 4\n", "thin"), ScenarioError);
  auto sc = Scenario::from_string("backend = \"live\"\npeers = 4\n", "live.toml", {"network.stack=lean"});
  EXPECT_THROW(parse_swarm_spec(sc), ScenarioError);
  auto proofs = Scenario::from_string("backend = \"live\"\npeers = 4\n", "live.toml", {"network.proofs=modelled"});
  EXPECT_THROW(parse_swarm_spec(proofs), ScenarioError);
}

}  // namespace
}  // namespace apiary
