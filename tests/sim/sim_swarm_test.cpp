// Whole swarms in simulated time: the network model does what it says.
#include <gtest/gtest.h>

#include <fstream>
#include <set>

#include "harness/workloads/averaging.hpp"

#include "sim/sim_host.hpp"

namespace apiary {
namespace {

// A test's base settings, then a run's own (later ones win).
std::vector<std::string> settings(const std::vector<std::string>& base, std::vector<std::string> more) {
  more.insert(more.begin(), base.begin(), base.end());
  return more;
}

SwarmSpec spec_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  auto sc = Scenario::from_string(text, "t.toml", sets);
  return parse_swarm_spec(sc);
}

TEST(SimSwarm, RoundTripIsTwiceTheSumOfAccessLatencies) {
  // Fixed 10 ms access latency and a fast link: every RTT is 4 x 10 ms plus serialisation. (The
  // link model alone: without the handshake, whose round trip a first contact pays on top.)
  auto spec = spec_of("peers = 20\nduration = \"20s\"\n[network]\nlatency = \"10ms\"\nauthenticate = false\n"
                      "bandwidth = \"10Gbps\"\n[workload]\nrate = \"1/s\"\n");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  ASSERT_GT(m.counter("ping.ok"), 300);
  EXPECT_EQ(m.counter("ping.failed.timeout"), 0);
  EXPECT_GE(m.quantile("ping.rtt_ns", 0.0), 40e6);
  EXPECT_LT(m.quantile("ping.rtt_ns", 1.0), 40.1e6);
}

TEST(SimSwarm, LatencyMatrixSetsEveryRoundTrip) {
  // Five sites; a round trip between peers at sites a and b takes 2 x matrix[a][b] (plus
  // serialisation at 10 Gbit/s).
  auto spec = spec_of("peers = 25\nduration = \"20s\"\n[network]\nauthenticate = false\nlatency_matrix = \"" +
                      std::string(APIARY_SOURCE_DIR) +
                      "/scenarios/topologies/five-sites.matrix\"\nbandwidth = \"10Gbps\"\n[workload]\nrate = \"2/s\"\n");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  ASSERT_GT(m.counter("ping.ok"), 500);
  const std::vector<double> entries{0.5, 8, 45, 80, 115, 38, 70, 110, 35, 50};
  for (double rtt : m.series().at("ping.rtt_ns")) {
    const double ms = rtt / 1e6;
    const bool matches = std::any_of(entries.begin(), entries.end(), [&](double e) { return ms >= 2 * e && ms < 2 * e + 0.1; });
    ASSERT_TRUE(matches) << "round trip of " << ms << " ms matches no matrix entry";
  }
  EXPECT_NEAR(m.quantile("ping.rtt_ns", 1.0) / 1e6, 230, 0.1);
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

// Packet loss as TCP sees it: nothing is lost to the application, a lost packet arrives one
// retransmission timeout (or more) late, and the resends per packet are p / (1 - p) on average.
TEST(SimSwarm, PacketLossIsResentNotLost) {
  auto spec = spec_of("peers = 10\nduration = \"60s\"\n[network]\nlatency = \"10ms\"\nbandwidth = \"10Gbps\"\n"
                      "loss = 0.2\nrto_min = \"200ms\"\n[workload]\nrate = \"5/s\"\ntimeout = \"30s\"\n");
  Metrics m;
  const auto info = sim::run_sim_swarm(spec, m);
  ASSERT_GT(m.counter("ping.ok"), 2500);
  EXPECT_EQ(m.counter("ping.failed.timeout") + m.counter("ping.failed.unreachable"), 0);
  EXPECT_GE(static_cast<double>(m.counter("ping.ok")), 0.98 * static_cast<double>(m.counter("ping.sent")));
  EXPECT_GE(m.quantile("ping.rtt_ns", 0.0), 40e6);
  EXPECT_GE(m.quantile("ping.rtt_ns", 0.9), 240e6) << "a lost packet costs at least one RTO";
  const double per_packet = static_cast<double>(m.counter("network.retransmissions")) / info.figures.at("channel_packets");
  EXPECT_NEAR(per_packet, 0.25, 0.03);
  Metrics again;
  sim::run_sim_swarm(spec, again);
  EXPECT_EQ(again.trace_hash(), m.trace_hash()) << "the same seed loses the same packets";
}

// A partition of half the peers for 10 s of a 40 s run: pings across it fail then, and only
// then; a latency spike on half the peers adds its delay to their round trips.
TEST(SimSwarm, PartitionsAndLatencySpikesComeAndGo) {
  const std::string base = "peers = 20\nduration = \"40s\"\n[network]\nlatency = \"10ms\"\nbandwidth = \"10Gbps\"\n"
                           "[workload]\nrate = \"2/s\"\ntimeout = \"2s\"\n";
  Metrics cut;
  sim::run_sim_swarm(spec_of(base + "[faults]\npartition = { at = \"10s\", duration = \"10s\", fraction = 0.5 }\n"), cut);
  EXPECT_EQ(cut.counter("faults.partition"), 1);
  EXPECT_EQ(cut.counter("faults.partition.peers"), 10);
  EXPECT_GT(cut.counter("network.partition_drops"), 50);
  const double sent = static_cast<double>(cut.counter("ping.sent"));
  const double timeouts = static_cast<double>(cut.counter("ping.failed.timeout"));
  // Half the pairs are cut for a quarter of the run: about 1/8 of the pings fail.
  EXPECT_GT(timeouts / sent, 0.08);
  EXPECT_LT(timeouts / sent, 0.18);
  Metrics spiked;
  sim::run_sim_swarm(spec_of(base + "[faults]\nlatency_spike = { at = \"0s\", duration = \"10s\", every = \"20s\", "
                                    "fraction = 0.5, extra = \"100ms\" }\n"),
                     spiked);
  EXPECT_EQ(spiked.counter("faults.latency_spike"), 2);
  EXPECT_EQ(spiked.counter("ping.failed.timeout"), 0);
  EXPECT_GE(spiked.quantile("ping.rtt_ns", 0.0), 40e6);
  EXPECT_LT(spiked.quantile("ping.rtt_ns", 0.3), 41e6) << "most pings see no spike";
  EXPECT_GE(spiked.quantile("ping.rtt_ns", 1.0), 440e6) << "both ends spiked: 4 x (10 + 100) ms";
}

// A stall freezes a peer: calls to it time out while it lasts; its own work waits and resumes.
TEST(SimSwarm, StalledPeersFreezeAndResume) {
  const std::string base = "peers = 10\nduration = \"40s\"\n[network]\nlatency = \"10ms\"\nbandwidth = \"10Gbps\"\n"
                           "authenticate = false\n"
                           "[workload]\nrate = \"2/s\"\ntimeout = \"1s\"\n";
  Metrics calm, frozen;
  sim::run_sim_swarm(spec_of(base), calm);
  sim::run_sim_swarm(spec_of(base + "[faults]\nstall = { at = \"10s\", duration = \"10s\", fraction = 0.5 }\n"), frozen);
  EXPECT_EQ(calm.counter("ping.failed.timeout"), 0);
  EXPECT_EQ(frozen.counter("faults.stall"), 1);
  const double timeouts = static_cast<double>(frozen.counter("ping.failed.timeout"));
  const double sent = static_cast<double>(frozen.counter("ping.sent"));
  // While 5 of 10 peers are frozen (a quarter of the run) they send nothing, and the other 5's
  // pings go to a frozen peer 5 times in 9: about 5 x 2/s x 10 s x 5/9 = 56 of ~700 pings fail.
  EXPECT_GT(timeouts / sent, 0.05);
  EXPECT_LT(timeouts / sent, 0.11);
  EXPECT_GT(frozen.quantile("ping.rtt_ns", 1.0), 1e9) << "a ping answered after its peer thawed";
}

// A live run of processes refuses network faults, and bad windows name their key.
TEST(SimSwarm, FaultKeysAreChecked) {
  auto fails = [](const std::string& text) {
    try {
      spec_of(text);
    } catch (const ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_NE(fails("backend = \"live\"\n[live]\nprocesses = true\n[network]\nloss = 0.01\n").find("network.loss"), std::string::npos);
  EXPECT_EQ(fails("backend = \"live\"\n[network]\nloss = 0.01\n"), "accepted") << "in one process the runner applies it";
  EXPECT_NE(fails("backend = \"live\"\n[network]\nnat = 0.3\n").find("network.nat"), std::string::npos);
  EXPECT_NE(fails("[faults]\npartition = { at = \"1s\", fraction = 0.5 }\n").find("faults.partition.duration"),
            std::string::npos);
  EXPECT_NE(fails("[faults]\nbandwidth_drop = { at = \"1s\", duration = \"2s\", fraction = 0.5, factor = 2 }\n")
                .find("faults.bandwidth_drop.factor"),
            std::string::npos);
  EXPECT_NE(fails("[faults]\npartition = { at = \"1s\", duration = \"2s\", fraction = 0.5, evry = \"5s\" }\n").find("evry"),
            std::string::npos);
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

// Faults injected into every peer's RPC (5% of replies dropped, 10% late by up to 1 s): the
// lookups route around them, and the same seed injects the same faults.
TEST(SimDht, InjectedReplyFaultsAreSurvivedAndReplayed) {
  const std::string text = R"(
peers = 100
duration = "6min"
[dht]
k = 10
join_window = "30s"
rpc_timeout = "2s"
[workload]
kind = "dht"
start = "1min"
store_rate = "1/s"
get_rate = "4/s"
ttl = "10min"
[faults]
inject = { drop_reply = 0.05, delay_reply = 0.1, delay_max = "1s" }
)";
  Metrics m, again;
  sim::run_sim_swarm(spec_of(text), m);
  EXPECT_GT(m.counter("faults.injected.drop_reply"), 100);
  EXPECT_GT(m.counter("faults.injected.delay_reply"), 200);
  const auto ok = m.counter("dht.get.ok"), failed = m.counter("dht.get.failed");
  ASSERT_GT(ok, 1000);
  EXPECT_GE(static_cast<double>(ok) / static_cast<double>(ok + failed), 0.99);
  sim::run_sim_swarm(spec_of(text), again);
  EXPECT_EQ(again.trace_hash(), m.trace_hash());
  EXPECT_EQ(again.counter("faults.injected.drop_reply"), m.counter("faults.injected.drop_reply"));
}

// Peers behind NAT accept only what they asked for: pings to them fail (their ways close after
// 1 s here), their own pings come back; the DHT runs them in client mode, so nobody needs to
// reach them and every get still succeeds.
TEST(SimSwarm, PeersBehindNatAreReachedOnlyOnWaysTheyOpened) {
  Metrics m;
  auto spec = spec_of("peers = 20\nduration = \"60s\"\n[network]\nlatency = \"10ms\"\nnat = 0.5\nnat_mapping = \"1s\"\n"
                      "[workload]\nrate = \"1/s\"\ntimeout = \"2s\"\n");
  std::uint32_t behind = 0;
  for (std::uint32_t i = 0; i < spec.peers; ++i) behind += spec.behind_nat(i);
  EXPECT_FALSE(spec.behind_nat(0) || spec.behind_nat(1) || spec.behind_nat(2)) << "the DHT seeds must be reachable";
  ASSERT_GT(behind, 4u);
  sim::run_sim_swarm(spec, m);
  EXPECT_GT(m.counter("network.nat_drops"), 100);
  const double failed = static_cast<double>(m.counter("ping.failed.timeout")) / static_cast<double>(m.counter("ping.sent"));
  const double share = behind / 19.0;  // a ping goes to one of the 19 others
  EXPECT_NEAR(failed, share, 0.12) << behind << " peers behind NAT";
}

TEST(SimDht, PeersBehindNatWorkAsClients) {
  auto spec = spec_of(R"(
peers = 100
duration = "8min"
[network]
latency = { dist = "uniform", min = "5ms", max = "50ms" }
nat = 0.4
[dht]
join_window = "1min"
[workload]
kind = "dht"
start = "2min"
store_rate = "1/s"
get_rate = "4/s"
ttl = "30min"
)");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  ASSERT_GT(m.counter("dht.get.ok"), 1000);
  EXPECT_EQ(m.counter("dht.get.failed"), 0);
  EXPECT_EQ(m.counter("invariant.dht.live_key_not_found"), 0);
  EXPECT_EQ(m.counter("network.nat_drops"), 0) << "nobody should try to reach a client first";
}

// Found by a fault campaign (campaign-dht, seed 952): a client (behind NAT) frozen for 55 s had
// every call time out at once when it woke, dropped every contact, and, called by nobody, never
// found one again, so all its later gets failed. A node with no usable contact joins again
// through its seeds. The same with a partition instead of the stall (seed 477): the clients cut
// off lost their contacts and failed every get after the swarm healed.
TEST(SimDht, AClientThatLostEveryContactJoinsAgain) {
  const std::string file = std::string(APIARY_SOURCE_DIR) + "/scenarios/campaign-dht.toml";
  Scenario stalled = Scenario::from_file(
      file, {"network.nat=0.3443", "faults.stall={ at = \"41356ms\", duration = \"54754ms\", fraction = 0.364 }", "seed=952"});
  Metrics m;
  sim::run_sim_swarm(parse_swarm_spec(stalled), m);
  EXPECT_GT(m.counter("dht.rejoins"), 0);
  EXPECT_GT(m.counter("dht.get.ok"), 1000);
  EXPECT_LE(m.counter("dht.get.failed"), 3) << "20 failed before: every get of the frozen client after it woke";
  EXPECT_EQ(m.counter("invariant.dht.live_key_not_found"), 0);
  Scenario cut = Scenario::from_file(file, {"network.loss=0.04957", "network.nat=0.383", "seed=477",
                                            "faults.partition={ at = \"59971ms\", duration = \"75538ms\", fraction = 0.1734 }"});
  Metrics c;
  sim::run_sim_swarm(parse_swarm_spec(cut), c);
  EXPECT_GT(c.counter("dht.get.after_heal.ok"), 500);
  EXPECT_LE(c.counter("dht.get.after_heal.failed"), 5) << "36 failed before";
  EXPECT_EQ(c.counter("invariant.dht.live_key_not_found"), 0);
}

// Found by a fault campaign (campaign-dmoe, 134 of 1,000 seeds, every one with stalled peers): a
// trainer frozen while its expert calls were out finished them after the stall, over their
// timeout by the stall's length, and was counted as a violation. A frozen peer's own timers
// cannot fire, so the bound does not count the time it was frozen.
TEST(SimDmoe, AFrozenCallerIsNotHeldToItsTimeoutWhileFrozen) {
  Scenario sc = Scenario::from_file(std::string(APIARY_SOURCE_DIR) + "/scenarios/campaign-dmoe.toml",
                                    {"network.loss=0.02704", "seed=23",
                                     "faults.partition={ at = \"56992ms\", duration = \"13155ms\", fraction = 0.3339 }",
                                     "faults.stall={ at = \"49859ms\", duration = \"24565ms\", fraction = 0.3201 }"});
  Metrics m;
  sim::run_sim_swarm(parse_swarm_spec(sc), m);
  EXPECT_EQ(m.counter("faults.stall"), 1);
  EXPECT_GT(m.counter("dmoe.samples"), 10000);
  EXPECT_EQ(m.counter("invariant.moe.call_over_timeout"), 0);
}

// Every peer crashes at once and restarts 10 s later. Restarted empty, the swarm has lost every
// record stored before; restarted with its state (a restart from disk), it finds them all.
TEST(SimDht, CrashRestartWithAndWithoutKeptState) {
  const std::string trace = testing::TempDir() + "/all-restart.trace";
  {
    std::ofstream f(trace);
    for (int i = 0; i < 12; ++i) f << "180s " << i << " down\n190s " << i << " up\n";
  }
  auto run = [&](bool keep) {
    auto spec = spec_of("peers = 12\nduration = \"6min\"\n[churn]\nmodel = \"trace\"\ntrace = \"" + trace +
                        "\"\nkeep_state = " + (keep ? "true" : "false") +
                        "\n[dht]\nk = 5\njoin_window = \"20s\"\n[workload]\nkind = \"dht\"\nstart = \"40s\"\n"
                        "store_rate = \"0.5/s\"\nget_rate = \"2/s\"\nttl = \"30min\"\n");
    auto m = std::make_unique<Metrics>();
    sim::run_sim_swarm(spec, *m);
    return m;
  };
  const auto empty = run(false), kept = run(true);
  EXPECT_EQ(empty->counter("churn.kept_records"), 0);
  EXPECT_GT(kept->counter("churn.kept_records"), 100);
  const auto gets = kept->counter("dht.get.ok") + kept->counter("dht.get.failed");
  ASSERT_GT(gets, 500);
  EXPECT_GT(empty->counter("dht.get.failed"), gets / 5) << "records stored before the crash are gone";
  EXPECT_LT(kept->counter("dht.get.failed"), gets / 100) << "a restart from disk keeps them";
}

// 5% packet loss everywhere and a third of the swarm cut off for 5 minutes: gets may fail while
// the swarm is split, never after it heals (with a minute's grace for lookups under way).
TEST(SimDht, GetsSucceedOnceAPartitionHeals) {
  auto spec = spec_of(R"(
peers = 300
duration = "20min"
[network]
latency = { dist = "lognormal", median = "30ms", sigma = 0.6 }
loss = 0.05
[faults]
partition = { at = "8min", duration = "5min", fraction = 0.33 }
[dht]
k = 20
join_window = "1min"
replicate = "10min"
[workload]
kind = "dht"
start = "2min"
store_rate = "1/s"
get_rate = "5/s"
ttl = "30min"
)");
  Metrics m;
  sim::run_sim_swarm(spec, m);
  EXPECT_GT(m.counter("network.retransmissions"), 1000);
  EXPECT_GT(m.counter("network.partition_drops"), 1000);
  ASSERT_GT(m.counter("dht.get.ok"), 4000);
  ASSERT_GT(m.counter("dht.get.failed"), 0) << "a partition of a third should cost some gets";
  EXPECT_EQ(m.counter("invariant.dht.live_key_not_found"), 0);
  for (double t : m.series().at("dht.get.failed_at_s")) {
    EXPECT_GE(t, 8 * 60);
    EXPECT_LE(t, 14 * 60) << "a get failed " << t - 13 * 60 << " s after the partition healed";
  }
}

}  // namespace
}  // namespace apiary

namespace apiary {
namespace {

const char* kAveraging = R"(
peers = 16
duration = "3min"
[network]
latency = { dist = "uniform", min = "5ms", max = "40ms" }
bandwidth = { dist = "uniform", min = "20Mbps", max = "200Mbps" }
[dht]
k = 8
join_window = "10s"
[workload]
kind = "averaging"
[averaging]
grouping = "moshpit"
grid_side = 4
grid_dims = 2
elements = 5000
rounds = 4
start = "20s"
period = "10s"
matchmaking_budget = "3s"
sender_timeout = "3s"
reducer_timeout = "6s"
)";

// The averaging protocol in ns-3: a full 4x4 grid, DHT matchmaking, butterfly all-reduce of
// 5,000 values over links of different bandwidth: the exact mean after 2 rounds.
TEST(SimAveraging, FullMoshpitGridIsExactAfterTwoRounds) {
  auto spec = spec_of(kAveraging);
  Metrics m;
  sim::run_sim_swarm(spec, m);
  const auto& var = m.series().at("avg.round.variance");
  ASSERT_EQ(var.size(), 5u);  // before round 0, after rounds 1..4
  EXPECT_GT(var[0], 0.5);
  EXPECT_GT(var[1], 1e-3);
  EXPECT_LT(var[2], 1e-12);  // float32 rounding of the mean only
  EXPECT_EQ(m.counter("avg.rounds_ok"), 4 * 16);
  EXPECT_EQ(m.counter("avg.matchmaking_failures"), 0);
  EXPECT_EQ(m.quantile("avg.group_size", 0.0), 4);
  // Bytes: in a group of 4, a member sends the others' parts of its 20 KB and the mean of its own
  // part to the 3 others: (1 - s) + 3 s of 20 KB for part share s, 1.5 x 20 KB on average.
  EXPECT_NEAR(m.mean("avg.round.bytes_sent"), 1.5 * 5000 * 4, 0.02 * 1.5 * 5000 * 4);
}

// Placement on a partly filled grid: `distinct` gives every peer its own cell (the Moshpit
// authors' simulation), `random` draws each coordinate on its own, so cells are shared; with
// `fixed` coordinates a 12-peer run on a 4x4 grid still averages (groups are grid lines).
TEST(SimAveraging, DistinctPlacementAndFixedCoordinates) {
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    const std::string sd = "seed=" + std::to_string(seed);
    auto distinct = spec_of(kAveraging, {"peers=12", "averaging.placement=distinct", sd});
    auto random = spec_of(kAveraging, {"peers=12", "averaging.placement=random", sd});
    Metrics m;
    AveragingDriver d(distinct, m), r(random, m);
    std::set<std::vector<std::uint32_t>> cells;
    for (std::uint32_t i = 0; i < 12; ++i) {
      const auto pos = d.initial_position(i);
      ASSERT_EQ(pos.coords.size(), 2u);
      EXPECT_LT(pos.coords[0], 4u);
      EXPECT_LT(pos.coords[1], 4u);
      cells.insert(pos.coords);
    }
    EXPECT_EQ(cells.size(), 12u) << "seed " << seed;
    EXPECT_EQ(d.initial_position(3).coords, AveragingDriver(distinct, m).initial_position(3).coords) << "the same on every peer";
    const auto plain = spec_of(kAveraging, {"peers=12", sd});  // the driver keeps a reference: a named spec
    AveragingDriver by_default(plain, m);
    for (std::uint32_t i = 0; i < 12; ++i)
      EXPECT_EQ(by_default.initial_position(i).coords, d.initial_position(i).coords) << "a partly filled grid is placed distinct";
  }
  // (With replacement, 12 draws from 16 cells collide with probability 1 - 16!/(4! 16^12) > 99%.)
  std::size_t shared = 0;
  for (std::uint64_t seed = 1; seed <= 20; ++seed) {
    Metrics m;
    const auto spec = spec_of(kAveraging, {"peers=12", "averaging.placement=random", "seed=" + std::to_string(seed)});
    AveragingDriver r(spec, m);
    std::set<std::vector<std::uint32_t>> cells;
    for (std::uint32_t i = 0; i < 12; ++i) cells.insert(r.initial_position(i).coords);
    shared += cells.size() < 12 ? 1 : 0;
  }
  EXPECT_GE(shared, 18u);
  Metrics run;
  sim::run_sim_swarm(spec_of(kAveraging, {"peers=12", "averaging.placement=distinct", "averaging.grid_rule=fixed", "averaging.rounds=6"}),
                     run);
  const auto& var = run.series().at("avg.round.variance");
  EXPECT_LT(var.back(), 1e-3 * var.front()) << "grid lines of a partly filled grid still mix";
}

// Failing peers skip rounds and keep their values: the mean stays put, the variance still falls,
// and a compressed codec works end to end.
TEST(SimAveraging, FailuresAndCompressionStillConverge) {
  auto spec = spec_of(kAveraging, {"averaging.fail_probability=0.2", "averaging.rounds=6",
                                   "averaging.codec=float16", "duration=4min"});
  Metrics m;
  sim::run_sim_swarm(spec, m);
  const auto& var = m.series().at("avg.round.variance");
  ASSERT_EQ(var.size(), 7u);
  EXPECT_GT(m.counter("avg.peer_round_failures"), 5);
  EXPECT_GT(m.counter("avg.parked"), 5) << "peers that sat a round out left the ranks to the others";
  EXPECT_LT(var.back(), var.front() / 50);
  EXPECT_LT(m.mean("avg.round.bytes_sent"), 1.5 * 5000 * 2 * 1.05);  // half precision: 2 bytes a value
}

// Peers leave mid-round and come back with the values they held: rounds still complete (members
// that vanished are reported as failed reducers or left-out senders) and the variance falls.
TEST(SimAveraging, ChurnDoesNotStopAveraging) {
  auto spec = spec_of(kAveraging, {"churn.model=exponential", "churn.mean_session=2min", "churn.mean_downtime=20s",
                                   "dht.rpc_timeout=500ms", "averaging.rounds=8", "duration=3min", "peers=36",
                                   "averaging.grid_side=6"});
  Metrics m;
  sim::run_sim_swarm(spec, m);
  EXPECT_GT(m.counter("churn.leaves"), 5);
  EXPECT_GT(m.counter("avg.rounds_ok"), 8 * 36 / 2);
  const auto& var = m.series().at("avg.round.variance");
  EXPECT_LT(var.back(), var.front() / 10);
}

TEST(SimAveraging, BaselinesBehaveAsDefined) {
  Metrics ar, go;
  sim::run_sim_swarm(spec_of(kAveraging, {"averaging.grouping=allreduce", "averaging.rounds=2"}), ar);
  EXPECT_LT(ar.series().at("avg.round.variance")[1], 1e-12);  // one group of all: exact at once
  sim::run_sim_swarm(spec_of(kAveraging, {"averaging.grouping=gossip", "averaging.rounds=2"}), go);
  EXPECT_EQ(go.quantile("avg.group_size", 1.0), 2);
  EXPECT_GT(go.series().at("avg.round.variance")[2], 1e-3);  // pairs mix slowly
}

TEST(SimAveraging, SameSeedSameTrace) {
  Metrics a, b, c;
  sim::run_sim_swarm(spec_of(kAveraging, {"averaging.fail_probability=0.1"}), a);
  sim::run_sim_swarm(spec_of(kAveraging, {"averaging.fail_probability=0.1"}), b);
  sim::run_sim_swarm(spec_of(kAveraging, {"averaging.fail_probability=0.1", "seed=2"}), c);
  EXPECT_EQ(a.trace_hash(), b.trace_hash());
  EXPECT_EQ(a.series(), b.series());
  EXPECT_NE(a.trace_hash(), c.trace_hash());
}

}  // namespace
}  // namespace apiary

namespace apiary {
namespace {

const char* kTraining = R"(
peers = 6
duration = "20min"
[network]
latency = { dist = "uniform", min = "5ms", max = "30ms" }
bandwidth = { dist = "uniform", min = "20Mbps", max = "100Mbps" }
[dht]
bootstrap_peers = 2
join_window = "5s"
[workload]
kind = "training"
[training]
start = "10s"
train_samples = 6000
eval_samples = 500
batch_size = 32
target_batch = 8192
steps = 4
learning_rate = 0.05
samples_per_second = { dist = "uniform", min = "100/s", max = "200/s" }
eval_period = "10s"
)";

// The collaborative protocol in ns-3 with a compute model: a real model learns, every step's
// group holds every trainer, and with a step's compute about 10x its averaging time, delayed
// parameter updates keep every trainer computing at least 90% of the time — more than waiting
// for each step's averaging does.
TEST(SimTraining, DelayedUpdatesHideTheAveragingTime) {
  Metrics md, mw;
  const RunInfo delayed = sim::run_sim_swarm(spec_of(kTraining), md);
  const RunInfo waiting = sim::run_sim_swarm(spec_of(kTraining, {"training.delayed_updates=false"}), mw);
  for (const Metrics* m : {&md, &mw}) {
    EXPECT_EQ(m->counter("train.steps_ok"), 6 * 4);
    EXPECT_EQ(m->quantile("train.step.group", 0.0), 6);
    const auto& loss = m->series().at("train.eval.loss");
    ASSERT_GE(loss.size(), 2u);
    EXPECT_LT(loss.back(), 0.8 * loss.front());
  }
  EXPECT_EQ(delayed.figures.at("steps"), 4);
  EXPECT_GT(delayed.figures.at("compute_to_averaging"), 5);
  EXPECT_GE(delayed.figures.at("utilisation_min"), 0.9);
  EXPECT_LT(waiting.figures.at("utilisation_mean"), delayed.figures.at("utilisation_mean"));
  EXPECT_GT(delayed.figures.at("final_accuracy"), 0.6);
}

void expect_no_invariant_violations(const Metrics& m) {
  for (const auto& [key, v] : m.counters())
    if (key.rfind("invariant.", 0) == 0) {
      EXPECT_EQ(v, 0) << key;
    }
}

// Byzantine trainers: 4 of 10 send their gradients times -1000 from step 3 on. With the plain
// mean training falls apart; with CenteredClip at every reducer it ends within a few points of
// the same run without attackers. Random directions (norm x 1000) likewise.
TEST(SimTraining, CenteredClipWithstandsAttackersThatBreakTheMean) {
  const std::vector<std::string> base{"peers=10", "training.steps=20", "training.target_batch=2048", "training.clip_tau=0.1",
                                      "training.attackers=4", "training.attack_from_step=3", "duration=30min"};
  auto with = [&](std::vector<std::string> more) { return settings(base, std::move(more)); };
  Metrics clean, mean, clip, random_mean, random_clip;
  const RunInfo c = sim::run_sim_swarm(spec_of(kTraining, with({})), clean);
  const RunInfo m = sim::run_sim_swarm(spec_of(kTraining, with({"training.attack=sign_flip"})), mean);
  const RunInfo k = sim::run_sim_swarm(spec_of(kTraining, with({"training.attack=sign_flip", "training.aggregation=centered_clip"})), clip);
  const RunInfo rm = sim::run_sim_swarm(spec_of(kTraining, with({"training.attack=random_direction"})), random_mean);
  const RunInfo rk =
      sim::run_sim_swarm(spec_of(kTraining, with({"training.attack=random_direction", "training.aggregation=centered_clip"})), random_clip);
  EXPECT_EQ(clean.counter("train.attacks.sign_flip"), 0);
  EXPECT_GT(mean.counter("train.attacks.sign_flip"), 0);
  EXPECT_GT(random_clip.counter("train.attacks.random_direction"), 0);
  EXPECT_GT(clip.counter("avg.clip.clipped"), 0);
  const double acc = c.figures.at("final_accuracy");
  EXPECT_GT(acc, 0.6);
  EXPECT_LT(m.figures.at("final_accuracy"), acc - 0.2);
  EXPECT_LT(rm.figures.at("final_accuracy"), acc - 0.2);
  EXPECT_GT(k.figures.at("final_accuracy"), acc - 0.05);
  EXPECT_GT(rk.figures.at("final_accuracy"), acc - 0.05);
  for (const Metrics* x : {&clean, &mean, &clip, &random_mean, &random_clip}) expect_no_invariant_violations(*x);
}

// Progress poisoning: one trainer of six writes, from step 1 on, progress records claiming the
// swarm is at step 1,000,000 (core/optim/progress.hpp: poisoned_progress): a plain value squatting
// the key, an entry under a subkey that names no owner, an everlasting signed entry, and a Sybil's
// signed report. Every node refuses the first three (the key's schema, the longest lifetime) and
// every trainer outvotes the fourth, so the swarm takes its steps as fast as without the attacker
// (at least 90% of the speed) and nobody tries to catch up to the lie. One such record froze a swarm
// before these defences.
TEST(SimTraining, PoisonedProgressFreezesNobody) {
  const std::vector<std::string> base{"training.steps=6", "training.attackers=1", "training.attack_from_step=1"};
  auto with = [&](std::vector<std::string> more) { return settings(base, std::move(more)); };
  Metrics clean, poisoned;
  const RunInfo c = sim::run_sim_swarm(spec_of(kTraining, with({})), clean);
  const RunInfo p = sim::run_sim_swarm(spec_of(kTraining, with({"training.attack=progress_poison"})), poisoned);
  EXPECT_GT(poisoned.counter("train.attacks.progress_poison"), 0);
  EXPECT_GT(poisoned.counter("dht.store_rejected"), 0);           // squat and unsigned entry: the schema
  EXPECT_GT(poisoned.counter("dht.store_refused.too_late"), 0);   // the everlasting entry
  EXPECT_GT(poisoned.counter("train.attacks.progress_poison.replicas"), 0);  // the Sybil's report is stored...
  EXPECT_EQ(p.figures.at("steps"), 6);                           // ...and outvoted
  EXPECT_EQ(c.figures.at("steps"), 6);
  EXPECT_LE(p.figures.at("train_seconds"), c.figures.at("train_seconds") / 0.9);
  EXPECT_EQ(poisoned.counter("optim.catch_ups"), clean.counter("optim.catch_ups"));
  EXPECT_EQ(poisoned.counter("train.catch_ups_past_last_step"), 0);
  EXPECT_GT(p.figures.at("final_accuracy"), c.figures.at("final_accuracy") - 0.05);
  expect_no_invariant_violations(poisoned);
}

// BTARD (core/optim/btard.hpp) on top of CenteredClip: 10 peers, 4 Byzantine from step 5 on, who
// also accuse whoever they validate. Validators recompute members' gradients on their seeded
// batches and every honest trainer bans every attacker; no honest peer is banned (a false
// accusation bans the accuser); training ends within a few points of the same run without them.
const std::vector<std::string> kBtard{"peers=10", "training.steps=24", "training.target_batch=320", "training.clip_tau=0.1",
                                      "training.aggregation=centered_clip", "training.delayed_updates=false", "training.btard=true",
                                      "training.btard_ban_quorum=5", "training.btard_validators=4", "training.attackers=4",
                                      "training.attack_from_step=5",
                                      "training.btard_false_accusations=true", "training.eval_period=30s", "duration=20min"};

std::vector<std::string> btard_with(std::vector<std::string> more) { return settings(kBtard, std::move(more)); }

TEST(SimBtard, BansEveryAttackerAndNoHonestPeer) {
  Metrics clean, flip, random;
  const RunInfo c = sim::run_sim_swarm(spec_of(kTraining, btard_with({})), clean);
  const RunInfo f = sim::run_sim_swarm(spec_of(kTraining, btard_with({"training.attack=sign_flip"})), flip);
  const RunInfo r = sim::run_sim_swarm(spec_of(kTraining, btard_with({"training.attack=random_direction"})), random);
  EXPECT_EQ(clean.counter("btard.bans"), 0);
  EXPECT_GT(clean.counter("btard.validations"), 0);
  // Without attackers the checks of CenteredClip's fixed point mostly agree. A check weighted
  // otherwise than the aggregate (committed weights against equal ones) disputed 1,570 parts in
  // this run; weighted alike, 270 (members whose piece missed a reducer still announce a check).
  // The count follows the samples each step gathers: with stores along lookups
  // (dht.store_along), steps end sooner with 25% fewer samples and the fixed point is looser:
  // 290-470 over seeds 1-5, against 170-270 without.
  EXPECT_LT(clean.counter("btard.disputes"), 600);
  for (const RunInfo* x : {&f, &r}) {
    EXPECT_EQ(x->figures.at("btard_attackers"), 4);
    EXPECT_EQ(x->figures.at("btard_attackers_banned"), 4);  // by every honest trainer
    EXPECT_EQ(x->figures.at("btard_attackers_banned_by_any"), 4);
    EXPECT_EQ(x->figures.at("btard_false_bans"), 0);
    EXPECT_GT(x->figures.at("final_accuracy"), c.figures.at("final_accuracy") - 0.05);
  }
  EXPECT_GT(flip.counter("btard.accusations_sent"), 0);
  // Banned peers are kept out of later groups (their joins refused) and nobody takes their state
  // when catching up, and bans travel through the DHT: a peer that has not judged a ban itself
  // takes it once the quorum of reporters lists it.
  EXPECT_GT(flip.counter("avg.excluded_joins") + random.counter("avg.excluded_joins"), 0);
  EXPECT_GT(flip.counter("avg.state_providers_excluded"), 0);
  EXPECT_GT(random.counter("avg.state_providers_excluded"), 0);
  EXPECT_GT(flip.counter("btard.bans_from_dht"), 0);
  EXPECT_GT(c.figures.at("final_accuracy"), 0.6);
  for (const Metrics* x : {&clean, &flip, &random}) expect_no_invariant_violations(*x);
}

// Reducers that answer -1000 x their part's aggregate (4 attackers, of whom those with a part
// reduce): the check of CenteredClip's fixed point
// fails, every member fetches the part's committed contributions, finds the aggregate wrong, bans
// the reducer and steps with the recomputed aggregate, so training goes on. Without BTARD the
// same attack ruins the model.
TEST(SimBtard, CatchesAReducerThatReturnsAWrongAggregate) {
  Metrics plain, checked;
  const RunInfo p = sim::run_sim_swarm(spec_of(kTraining, btard_with({"training.attack=wrong_aggregate", "training.btard=false"})), plain);
  const RunInfo b = sim::run_sim_swarm(spec_of(kTraining, btard_with({"training.attack=wrong_aggregate"})), checked);
  EXPECT_GT(checked.counter("train.attacks.wrong_aggregate"), 0);
  EXPECT_GT(checked.counter("btard.disputes"), 0);
  EXPECT_GT(checked.counter("btard.aggregates_corrected"), 0);
  EXPECT_EQ(b.figures.at("btard_attackers_banned"), 4);  // the reducer for its aggregate, the rest for false accusations
  EXPECT_EQ(b.figures.at("btard_false_bans"), 0);
  EXPECT_LT(p.figures.at("final_accuracy"), 0.3);
  EXPECT_GT(b.figures.at("final_accuracy"), 0.6);
  expect_no_invariant_violations(checked);
}

// A sender that commits to its gradient and then sends another: every honest reducer refuses the
// pieces (counted), so they never count, and training is unharmed.
TEST(SimBtard, APieceChangedAfterItsCommitmentIsRefused) {
  Metrics m;
  const RunInfo b = sim::run_sim_swarm(spec_of(kTraining, btard_with({"training.attack=break_commitment", "training.attackers=2",
                                                                      "training.btard_false_accusations=false"})), m);
  EXPECT_GT(m.counter("train.attacks.break_commitment"), 0);
  EXPECT_GT(m.counter("btard.refused_pieces"), 0);
  EXPECT_EQ(b.figures.at("btard_false_bans"), 0);
  EXPECT_GT(b.figures.at("final_accuracy"), 0.6);
  expect_no_invariant_violations(m);
}

// PowerSGD at rank 2 sends softmax regression's 10x784 weight gradient as a 10x2 and a 784x2
// pair, two rounds per step, an auxiliary peer helping in both: about 5x fewer all-reduce bytes
// per sample, and the model still learns.
TEST(SimTraining, PowerSgdSendsFewerBytesAndStillLearns) {
  const std::vector<std::string> base{"peers=8", "training.steps=20", "training.target_batch=2048", "training.aux_fraction=0.125",
                                      "duration=30min"};
  auto with = [&](std::vector<std::string> more) { return settings(base, std::move(more)); };
  Metrics whole, pair;
  const RunInfo w = sim::run_sim_swarm(spec_of(kTraining, with({})), whole);
  const RunInfo p = sim::run_sim_swarm(spec_of(kTraining, with({"training.powersgd_rank=2"})), pair);
  EXPECT_EQ(whole.counter("optim.powersgd_steps"), 0);
  EXPECT_GT(pair.counter("optim.powersgd_steps"), 0);
  EXPECT_GT(pair.counter("train.assists_ok"), 0);
  const double ratio = w.figures.at("allreduce_bytes_per_sample") / p.figures.at("allreduce_bytes_per_sample");
  EXPECT_GT(ratio, 4.5);
  EXPECT_LT(ratio, 5.5);  // 7,850 values against 1,598
  EXPECT_GT(w.figures.at("final_accuracy"), 0.6);
  EXPECT_GT(p.figures.at("final_accuracy"), w.figures.at("final_accuracy") - 0.08);
  for (const Metrics* x : {&whole, &pair}) expect_no_invariant_violations(*x);
}

// Client and auxiliary peers take part; a trainer that leaves costs only its share, and one
// that comes back downloads the swarm's state before contributing again.
TEST(SimTraining, RolesAndAPeerLeavingAndComingBack) {
  auto spec = spec_of(kTraining, {"peers=8", "training.client_fraction=0.125", "training.aux_fraction=0.125",
                                  "training.target_batch=2048", "training.steps=20", "churn.model=trace",
                                  "churn.trace=" + std::string(APIARY_SOURCE_DIR) + "/scenarios/traces/train-leave-join.trace",
                                  "dht.rpc_timeout=1s", "training.sender_timeout=2s", "training.reducer_timeout=4s"});
  Metrics m;
  const RunInfo info = sim::run_sim_swarm(spec, m);
  EXPECT_EQ(info.figures.at("steps"), 20);  // long enough that the peer comes back mid-run (at 75 s)
  EXPECT_GE(m.counter("optim.state_downloads"), 1) << "the peer that came back fetched the state";
  EXPECT_GE(m.counter("train.assists_ok"), 10) << "the auxiliary peer helped average";
  EXPECT_EQ(m.quantile("train.step.group", 1.0), 8);
  EXPECT_LE(m.quantile("train.step.group", 0.0), 7);  // steps while peers were away
  const auto& loss = m.series().at("train.eval.loss");
  EXPECT_LT(loss.back(), 0.8 * loss.front());
}

// Found by a fault campaign (campaign-train, seed 75, 3 of the first 465 seeds): a trainer that
// fell behind caught up by downloading the state, the best-declared provider was out of reach
// (behind NAT, or failing), and it took the next provider's state, older than its own: its epoch
// went back 75 times in the run. A catching-up peer now takes no state older than its own.
TEST(SimTraining, CatchingUpNeverGoesBack) {
  Scenario sc = Scenario::from_file(
      std::string(APIARY_SOURCE_DIR) + "/scenarios/campaign-train.toml",
      {"seed=75", "network.loss=0.01449", "network.nat=0.3908",
       "faults.inject={ drop_reply = 0.02646, delay_reply = 0.01087, delay_max = \"1s\", slow_handler = 0.04992, slow_max = \"500ms\" }",
       "faults.latency_spike={ at = \"29779ms\", duration = \"27138ms\", fraction = 0.2295, extra = \"289ms\" }"});
  Metrics m;
  sim::run_sim_swarm(parse_swarm_spec(sc), m);
  EXPECT_GT(m.counter("optim.state_downloads"), 10);
  EXPECT_EQ(m.counter("invariant.train.epoch_went_back"), 0);
  EXPECT_GT(m.counter("train.catch_ups"), 0);
  EXPECT_EQ(m.counter("train.catch_ups_past_last_step"), 0);  // each toward a step the swarm took
}

// Local updates with the state averaged every 2 steps, under injected RPC faults and a client
// behind NAT: the peers that got a state round's means in full agree after it, and no peer's
// epoch goes back.
TEST(SimTraining, PeersAgreeAfterStateAveragingUnderFaults) {
  auto spec = spec_of(kTraining, {"peers=8", "training.local_updates=true", "training.average_state_every=2",
                                  "training.target_batch=1024", "training.steps=10", "network.nat=0.2",
                                  "training.sender_timeout=2s", "training.reducer_timeout=4s",
                                  "faults.inject={ drop_reply = 0.01, delay_reply = 0.05, delay_max = \"1s\" }"});
  Metrics m;
  sim::run_sim_swarm(spec, m);
  EXPECT_GT(m.counter("optim.state_averagings"), 20);
  EXPECT_GT(m.counter("train.state_compared"), 10) << "peers of one state round were compared";
  EXPECT_GT(m.counter("faults.injected.drop_reply"), 0);
  EXPECT_EQ(m.counter("invariant.train.state_disagrees"), 0);
  EXPECT_EQ(m.counter("invariant.train.epoch_went_back"), 0);
  EXPECT_EQ(m.counter("network.nat_drops"), 0);
}

// DiLoCo: with H inner steps per outer step, the all-reduce moves H times fewer bytes per
// sample than with one (counted bytes, the same swarm and samples).
TEST(SimTraining, DilocoCommunicatesHTimesFewerBytesPerSample) {
  const std::vector<std::string> base{"training.mode=diloco", "training.samples_per_second=200/s", "peers=4",
                                      "training.matchmaking_budget=10s", "training.outer_momentum=0"};
  auto with = [&](std::vector<std::string> more) {
    more.insert(more.end(), base.begin(), base.end());
    return more;
  };
  Metrics m1, m20;
  const RunInfo h1 =
      sim::run_sim_swarm(spec_of(kTraining, with({"training.inner_steps=1", "training.steps=40", "training.outer_lr=1"})), m1);
  const RunInfo h20 = sim::run_sim_swarm(spec_of(kTraining, with({"training.inner_steps=20", "training.steps=2"})), m20);
  EXPECT_EQ(m1.counter("train.samples"), m20.counter("train.samples"));
  EXPECT_EQ(m1.counter("train.steps_ok"), 4 * 40);
  EXPECT_EQ(m20.counter("train.steps_ok"), 4 * 2);
  const double ratio = h1.figures.at("allreduce_bytes_per_sample") / h20.figures.at("allreduce_bytes_per_sample");
  EXPECT_NEAR(ratio, 20.0, 0.5);
}

TEST(SimTraining, SameSeedSameTrace) {
  Metrics a, b;
  sim::run_sim_swarm(spec_of(kTraining, {"training.steps=2"}), a);
  sim::run_sim_swarm(spec_of(kTraining, {"training.steps=2"}), b);
  EXPECT_EQ(a.trace_hash(), b.trace_hash());
  EXPECT_EQ(a.series(), b.series());
}

}  // namespace
}  // namespace apiary

namespace apiary {
namespace {

const char* kDmoe = R"(
peers = 20
duration = "60s"
[network]
latency = "1ms"
bandwidth = "1Gbps"
[dht]
bootstrap_peers = 4
join_window = "3s"
[workload]
kind = "dmoe"
[dmoe]
servers = 4
layers = 2
grid_side = 3
grid_dims = 2
k = 2
k_min = 1
batch_size = 32
hidden = 256
forward_speed = "2000/s"
backward_speed = "1000/s"
start = "15s"
grace = "100ms"
timeout = "20s"
)";

// DMoE in ns-3 with the compute model: trainers find experts through the DHT and complete
// batches; with a random delay on every hop model-parallel training slows by the round trips
// it waits for, DMoE with many trainers much less; failed experts are skipped; same seed, same
// trace.
TEST(SimDmoe, ThroughputAgainstHopDelayAndFailures) {
  auto throughput = [](std::vector<std::string> sets) {
    Metrics m;
    const RunInfo info = sim::run_sim_swarm(spec_of(kDmoe, sets), m);
    EXPECT_GT(m.counter("dmoe.samples"), 0);
    return info.figures.at("throughput_samples_per_second");
  };
  const double mp0 = throughput({"dmoe.mode=model-parallel", "peers=5"});
  const double mp =
      throughput({"dmoe.mode=model-parallel", "peers=5", "network.hop_delay.dist=exponential", "network.hop_delay.mean=100ms"});
  const double dm0 = throughput({});
  const double dm = throughput({"network.hop_delay.dist=exponential", "network.hop_delay.mean=100ms"});
  EXPECT_LT(mp, 0.5 * mp0) << "model parallel should wait for 8 round trips per batch";
  EXPECT_GT(dm, 0.5 * dm0) << "16 trainers keep the servers busy";
  EXPECT_GT(dm / dm0, 1.5 * (mp / mp0)) << "DMoE should degrade much less than model parallel";
  EXPECT_GT(dm, mp);
  Metrics f;
  sim::run_sim_swarm(spec_of(kDmoe, {"dmoe.fail_probability=0.2"}), f);
  EXPECT_GT(f.counter("moe.injected_failures"), 10);
  EXPECT_GT(f.counter("dmoe.samples"), 0) << "failed experts are skipped";
  Metrics a, b;
  sim::run_sim_swarm(spec_of(kDmoe, {"network.hop_delay.dist=exponential", "network.hop_delay.mean=20ms"}), a);
  sim::run_sim_swarm(spec_of(kDmoe, {"network.hop_delay.dist=exponential", "network.hop_delay.mean=20ms"}), b);
  EXPECT_EQ(a.trace_hash(), b.trace_hash());
  EXPECT_EQ(a.counter("dmoe.samples"), b.counter("dmoe.samples"));
}

}  // namespace
}  // namespace apiary
