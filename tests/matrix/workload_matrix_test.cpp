// Every workload in both worlds from one scenario, with only `backend` changed: the same
// invariants hold in ns-3 and live (success rates, exactness where the math is exact), and the
// summaries agree within stated tolerances. The scenarios are small so that the live runs take a
// few seconds of wall time each.
#include <gtest/gtest.h>

#include <cmath>
#include <map>
#include <string>
#include <vector>

#include "harness/runner.hpp"
#include "real/live_host.hpp"
#include "sim/sim_host.hpp"

namespace apiary {
namespace {

struct Case {
  const char* name;
  const char* scenario;  // without `backend`
  std::vector<std::string> sets = {};
};

const char* kDiloco = R"(peers = 3
duration = "2min"
[network]
latency = "2ms"
[dht]
bootstrap_peers = 2
join_window = "500ms"
[workload]
kind = "training"
[training]
mode = "diloco"
train_samples = 2000
eval_samples = 200
start = "1s"
batch_size = 32
inner_steps = 10
steps = 2
learning_rate = 0.05
samples_per_second = "2000/s"
eval_period = "1s"
progress_period = "100ms"
matchmaking_budget = "2s"
matchmaking_poll = "100ms"
)";

// Small scenarios: sub-second latencies, short starts, a few peers.
const Case kCases[] = {
    {"ping", R"(peers = 6
duration = "2s"
[network]
latency = "2ms"
[workload]
kind = "ping"
rate = "10/s"
timeout = "1s"
payload = "4KiB"
echo = true
)"},
    {"dht", R"(peers = 12
duration = "6s"
[network]
latency = "2ms"
[dht]
bootstrap_peers = 3
join_window = "1s"
[workload]
kind = "dht"
start = "2s"
store_rate = "10/s"
get_rate = "20/s"
ttl = "10min"
)"},
    {"averaging", R"(peers = 4
duration = "20s"
[network]
latency = "2ms"
[dht]
bootstrap_peers = 2
join_window = "500ms"
[workload]
kind = "averaging"
[averaging]
grouping = "moshpit"
grid_side = 2
grid_dims = 2
elements = 1000
rounds = 2
start = "2s"
period = "2s"
matchmaking_budget = "1s"
poll = "100ms"
)"},
    {"averaging-bandwidth", R"(peers = 4
duration = "20s"
[network]
latency = "2ms"
bandwidth = { dist = "uniform", min = "10Mbps", max = "1Gbps" }
[dht]
bootstrap_peers = 2
join_window = "500ms"
[workload]
kind = "averaging"
[averaging]
grouping = "allreduce"
elements = 100000
rounds = 2
start = "2s"
period = "2s"
)"},
    {"training", R"(peers = 4
duration = "2min"
[network]
latency = "2ms"
[dht]
bootstrap_peers = 2
join_window = "500ms"
[workload]
kind = "training"
[training]
mode = "collaborative"
train_samples = 2000
eval_samples = 200
start = "1s"
batch_size = 32
target_batch = 256
steps = 4
learning_rate = 0.05
samples_per_second = "2000/s"
eval_period = "1s"
progress_period = "100ms"
matchmaking_budget = "3s"
matchmaking_poll = "100ms"
)"},
    {"diloco", kDiloco},
    {"diloco-roles", kDiloco, {"peers=5", "training.client_fraction=0.2", "training.aux_fraction=0.2"}},
    {"dmoe", R"(peers = 5
duration = "8s"
[network]
latency = "2ms"
[dht]
bootstrap_peers = 2
join_window = "500ms"
[workload]
kind = "dmoe"
[dmoe]
servers = 2
layers = 2
grid_side = 2
grid_dims = 2
k = 2
k_min = 1
batch_size = 16
hidden = 64
forward_speed = "20000/s"
backward_speed = "10000/s"
timeout = "2s"
start = "3s"
)"},
};

struct Outcome {
  Metrics metrics;
  RunInfo info;
};

const Outcome& run_case(const std::string& name, const std::string& backend) {
  static std::map<std::string, std::unique_ptr<Outcome>> done;  // the comparison test reuses runs
  const std::string key = name + "/" + backend;
  if (auto it = done.find(key); it != done.end()) return *it->second;
  const Case* c = nullptr;
  for (const auto& k : kCases)
    if (name == k.name) c = &k;
  auto sc = Scenario::from_string(std::string("backend = \"") + backend + "\"\n" + c->scenario, name + ".toml", c->sets);
  const SwarmSpec spec = parse_swarm_spec(sc);
  auto out = std::make_unique<Outcome>();
  out->info = backend == "sim" ? sim::run_sim_swarm(spec, out->metrics) : real::run_live_swarm(spec, out->metrics);
  return *done.emplace(key, std::move(out)).first->second;
}

double ratio(const Metrics& m, const char* ok, const char* bad) {
  const double a = static_cast<double>(m.counter(ok)), b = static_cast<double>(m.counter(bad));
  return a + b > 0 ? a / (a + b) : 0;
}

class WorkloadInBothWorlds : public testing::TestWithParam<std::tuple<std::string, std::string>> {};

TEST_P(WorkloadInBothWorlds, KeepsItsInvariants) {
  const auto& [name, backend] = GetParam();
  const auto& r = run_case(name, backend);
  const auto& m = r.metrics;
  EXPECT_EQ(r.info.backend, backend);
  EXPECT_EQ(m.counter("transport.bad_frames"), 0);
  if (name == "ping") {
    EXPECT_GT(m.counter("ping.ok"), 60);
    EXPECT_EQ(m.counter("ping.failed.timeout") + m.counter("ping.failed.unreachable"), 0);
  } else if (name == "dht") {
    EXPECT_EQ(m.counter("dht.joins"), 12);
    EXPECT_GT(m.counter("dht.store.ok"), 10);
    EXPECT_EQ(m.counter("dht.store.failed"), 0);
    EXPECT_GT(m.counter("dht.get.ok"), 20);
    EXPECT_EQ(m.counter("dht.get.failed"), 0);
  } else if (name == "averaging" || name == "averaging-bandwidth") {
    // Four peers averaged exactly: a full 2x2 Moshpit grid after two rounds, one group of all.
    EXPECT_EQ(m.counter("avg.rounds_ok"), 8);
    const auto& v = m.series().at("avg.round.variance");
    ASSERT_EQ(v.size(), 3u);
    EXPECT_GT(v[0], 0.5);
    EXPECT_LT(v[2], 1e-10);
    EXPECT_EQ(r.info.figures.at("rounds_to_target"), name == "averaging" ? 2 : 1);
    // Parts follow the peers' drawn bandwidths: a reducer of a larger part sends more. Equal
    // bandwidths, equal parts, equal bytes.
    const double lo = m.quantile("avg.round.bytes_sent", 0), hi = m.quantile("avg.round.bytes_sent", 1);
    if (name == "averaging")
      EXPECT_EQ(lo, hi);
    else
      EXPECT_GT(hi / lo, 1.2);
  } else if (name == "training" || name == "diloco" || name == "diloco-roles") {
    EXPECT_EQ(r.info.figures.at("steps"), name == "training" ? 4 : 2);
    // The auxiliary peer follows the trainers' rounds and reduces a part of each.
    if (name == "diloco-roles") {
      EXPECT_GE(m.counter("optim.outer_assists"), 1);
    }
    EXPECT_GT(m.counter("train.samples"), 0);
    EXPECT_LT(r.info.figures.at("final_loss"), std::log(10.0));  // below the initial model's loss
    // (A step that misses its group under load is retried, so no count of failures is asserted.)
    EXPECT_GT(m.counter("train.steps_ok"), 0);
  } else if (name == "dmoe") {
    EXPECT_GT(m.counter("dmoe.samples"), 0);
    EXPECT_EQ(m.counter("dmoe.failed_batches"), 0);
    EXPECT_GT(r.info.figures.at("throughput_samples_per_second"), 0);
  }
}

INSTANTIATE_TEST_SUITE_P(Matrix, WorkloadInBothWorlds,
                         testing::Combine(testing::Values("ping", "dht", "averaging", "averaging-bandwidth", "training",
                                                          "diloco", "diloco-roles", "dmoe"),
                                          testing::Values("sim", "live")),
                         [](const auto& p) {
                           std::string n = std::get<0>(p.param) + "_" + std::get<1>(p.param);
                           for (auto& ch : n)
                             if (ch == '-') ch = '_';
                           return n;
                         });

// The summaries of the two worlds agree where the model says they should.
TEST(WorkloadSummaries, AgreeBetweenTheWorlds) {
  {  // The same number of rounds to the target, and the same per-round variance up to float noise.
    const auto &s = run_case("averaging", "sim"), &l = run_case("averaging", "live");
    EXPECT_EQ(s.info.figures.at("rounds_to_target"), l.info.figures.at("rounds_to_target"));
    const auto &vs = s.metrics.series().at("avg.round.variance"), &vl = l.metrics.series().at("avg.round.variance");
    ASSERT_EQ(vs.size(), vl.size());
    EXPECT_DOUBLE_EQ(vs[0], vl[0]);  // the same initial values in both worlds
  }
  {  // The same success rates.
    const auto &s = run_case("dht", "sim"), &l = run_case("dht", "live");
    EXPECT_EQ(ratio(s.metrics, "dht.get.ok", "dht.get.failed"), ratio(l.metrics, "dht.get.ok", "dht.get.failed"));
  }
  {  // Training: the same steps; the loss within 0.25 nats (the order of contributions differs).
    const auto &s = run_case("training", "sim"), &l = run_case("training", "live");
    EXPECT_EQ(s.info.figures.at("steps"), l.info.figures.at("steps"));
    EXPECT_NEAR(s.info.figures.at("final_loss"), l.info.figures.at("final_loss"), 0.25);
  }
}


// Network faults from one scenario in both worlds: ns-3 simulates them, live the runner applies
// them at each peer's transport. Half the peers cut off for a third of the run: pings across the
// cut time out in both (about 4 x 4 x 2 / (8 x 7) of the pings cross, for a third of the time:
// 0.19); a latency spike of 100 ms on every peer shows in every round trip (4 x 100 ms).
TEST(NetworkFaults, APartitionAndALatencySpikeStrikeBothWorldsAlike) {
  const std::string cut = "peers = 8\nduration = \"6s\"\n[network]\nlatency = \"2ms\"\n[workload]\nkind = \"ping\"\n"
                          "rate = \"20/s\"\ntimeout = \"300ms\"\n[faults]\n"
                          "partition = { at = \"2s\", duration = \"2s\", fraction = 0.5 }\n";
  const std::string spike = "peers = 4\nduration = \"3s\"\n[network]\nlatency = \"2ms\"\n[workload]\nkind = \"ping\"\n"
                            "rate = \"10/s\"\ntimeout = \"2s\"\n[faults]\nlatency_spike = { at = \"0s\", duration = \"10s\", fraction = 1, "
                            "extra = \"100ms\" }\n";
  for (const std::string backend : {"sim", "live"}) {
    auto sc = Scenario::from_string("backend = \"" + backend + "\"\n" + cut, "cut.toml");
    const SwarmSpec spec = parse_swarm_spec(sc);
    Metrics m;
    backend == "sim" ? sim::run_sim_swarm(spec, m) : real::run_live_swarm(spec, m);
    EXPECT_EQ(m.counter("faults.partition.peers"), 4) << backend;
    EXPECT_GT(m.counter("network.partition_drops"), 10) << backend;
    const double failed = static_cast<double>(m.counter("ping.failed.timeout")) / static_cast<double>(m.counter("ping.sent"));
    EXPECT_GT(failed, 0.10) << backend;
    EXPECT_LT(failed, 0.30) << backend;
    auto sp = Scenario::from_string("backend = \"" + backend + "\"\n" + spike, "spike.toml");
    const SwarmSpec sspec = parse_swarm_spec(sp);
    Metrics ms;
    backend == "sim" ? sim::run_sim_swarm(sspec, ms) : real::run_live_swarm(sspec, ms);
    ASSERT_GT(ms.counter("ping.ok"), 50) << backend;
    EXPECT_GE(ms.quantile("ping.rtt_ns", 0.0), 400e6) << backend << ": every round trip pays 4 x 100 ms";
  }
}

// What a live run cannot apply is refused by name: bandwidth drops always; stalls in one process
// (peer processes are frozen instead); loss, partitions and spikes for peer processes.
TEST(NetworkFaults, ALiveRunRefusesWhatOnlyNs3Simulates) {
  const std::string stall = "[faults]\nstall = { at = \"1s\", duration = \"1s\", fraction = 0.5 }\n";
  const std::string processes = "[workload]\nkind = \"dht\"\n[live]\nprocesses = true\n";
  const std::vector<std::pair<std::string, std::string>> refused{
      {"[faults]\nbandwidth_drop = { at = \"1s\", duration = \"1s\", fraction = 0.5, factor = 0.5 }\n", "ns-3 only"},
      {stall, "live.processes"},
      {processes + "[network]\nloss = 0.01\n", "not peer processes"},
      {processes + "[faults]\npartition = { at = \"1s\", duration = \"1s\", fraction = 0.5 }\n", "not peer processes"}};
  for (const auto& [text, why] : refused) {
    try {
      auto sc = Scenario::from_string("backend = \"live\"\npeers = 4\n" + text, "f.toml");
      parse_swarm_spec(sc);
      ADD_FAILURE() << text << " was accepted live";
    } catch (const ScenarioError& e) {
      EXPECT_NE(std::string(e.what()).find(why), std::string::npos) << e.what();
    }
  }
  auto sc = Scenario::from_string("backend = \"live\"\npeers = 4\n" + processes + stall, "f.toml");
  EXPECT_TRUE(parse_swarm_spec(sc).faults.stall.has_value());
}

}  // namespace
}  // namespace apiary
