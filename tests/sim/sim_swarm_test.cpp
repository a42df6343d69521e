// Whole swarms in simulated time: the network model does what it says.
#include <gtest/gtest.h>

#include "sim/sim_swarm.hpp"

namespace apiary {
namespace {

SwarmSpec spec_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  auto sc = Scenario::from_string(text, "t.toml", sets);
  return parse_swarm_spec(sc);
}

TEST(SimSwarm, RoundTripIsTwiceTheSumOfAccessLatencies) {
  // Fixed 10 ms access latency and a fast link: every RTT is 4 x 10 ms plus serialisation.
  auto spec = spec_of("peers = 20\nduration = \"20s\"\n[network]\nlatency = \"10ms\"\n"
                      "bandwidth = \"10Gbps\"\n[workload]\nrate = \"1/s\"\n");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  ASSERT_GT(m.counter("ping.ok"), 300);
  EXPECT_EQ(m.counter("ping.failed.timeout"), 0);
  EXPECT_GE(m.quantile("ping.rtt_ns", 0.0), 40e6);
  EXPECT_LT(m.quantile("ping.rtt_ns", 1.0), 40.1e6);
}

TEST(SimSwarm, BandwidthShapesBulkTransfers) {
  // 1 MB echoed over 8 Mbit/s links: 1 s to send, 1 s to receive at each end, plus latency.
  // Serialisation at uplink and downlink of each direction (store and forward): ~4 s total.
  auto spec = spec_of("peers = 2\nduration = \"60s\"\n[network]\nlatency = \"1ms\"\n"
                      "bandwidth = \"8Mbps\"\n[workload]\nrate = \"0.02/s\"\npayload = \"1MB\"\n"
                      "echo = true\ntimeout = \"30s\"\nmax_outstanding = 1\n");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  ASSERT_GE(m.counter("ping.ok"), 1);
  const double rtt = m.quantile("ping.rtt_ns", 0.5) / 1e9;
  EXPECT_GT(rtt, 2.0);
  EXPECT_LT(rtt, 4.5);
}

TEST(SimSwarm, ChurnedPeersTimeOutAndComeBack) {
  auto spec = spec_of("peers = 50\nduration = \"5min\"\n[churn]\nmodel = \"exponential\"\n"
                      "mean_session = \"30s\"\nmean_downtime = \"30s\"\n[workload]\nrate = \"1/s\"\n"
                      "timeout = \"1s\"\n");
  Metrics m;
  const auto info = sim::run_sim_swarm(spec, m);
  EXPECT_GT(m.counter("churn.leaves"), 100);
  EXPECT_GT(m.counter("churn.joins"), 100);
  // With ~half the peers down at any time, a large share of pings time out, and many succeed.
  const double ok = static_cast<double>(m.counter("ping.ok")) / static_cast<double>(m.counter("ping.sent"));
  EXPECT_GT(ok, 0.3);
  EXPECT_LT(ok, 0.8);
  EXPECT_GT(info.figures.at("channel_dropped_down"), 100);
}

}  // namespace
}  // namespace apiary

namespace apiary {
namespace {

TEST(SimDht, JoinsStoresAndGetsUnderChurn) {
  auto spec = spec_of(R"(
peers = 300
duration = "20min"
[churn]
model = "exponential"
mean_session = "10min"
mean_downtime = "5min"
[dht]
k = 10
join_window = "1min"
replicate = "3min"
[workload]
kind = "dht"
start = "2min"
store_rate = "1/s"
get_rate = "4/s"
ttl = "10min"
)");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  EXPECT_GT(m.counter("churn.leaves"), 300);
  EXPECT_GE(m.counter("dht.joins"), 300);
  const auto ok = m.counter("dht.get.ok"), failed = m.counter("dht.get.failed");
  ASSERT_GT(ok, 3000);
  EXPECT_GE(static_cast<double>(ok) / static_cast<double>(ok + failed), 0.99);
  EXPECT_GE(m.mean("dht.store.replicas"), 9.0);  // k = 10 (plus the storer at times)
  EXPECT_GE(m.mean("dht.table.neighbour_recall"), 0.8);
  EXPECT_GT(m.mean("dht.get.hops"), 0.0);
  EXPECT_LT(m.mean("dht.get.hops"), 5.0);
}

}  // namespace
}  // namespace apiary
