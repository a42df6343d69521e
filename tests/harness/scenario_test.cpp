#include <gtest/gtest.h>

#include <filesystem>
#include <fstream>

#include "harness/scenario.hpp"
#include "harness/spec.hpp"
#include "harness/workloads/ping.hpp"

namespace apiary {
namespace {

using namespace std::chrono_literals;

TEST(Units, Durations) {
  EXPECT_EQ(parse_duration("50ms"), Duration(50ms));
  EXPECT_EQ(parse_duration("30min"), Duration(30min));
  EXPECT_EQ(parse_duration("1.5s"), Duration(1500ms));
  EXPECT_EQ(parse_duration("2h"), Duration(2h));
  std::string why;
  EXPECT_FALSE(parse_duration("50", &why));
  EXPECT_NE(why.find("needs a time unit"), std::string::npos) << why;
  EXPECT_FALSE(parse_duration("fast", &why));
  EXPECT_FALSE(parse_duration("-5s", &why));
}

TEST(Units, SizesRatesBitrates) {
  EXPECT_EQ(parse_bytes("64MiB"), 64ull << 20);
  EXPECT_EQ(parse_bytes("1KB"), 1000u);
  EXPECT_EQ(parse_bitrate("10Mbps"), 10e6);
  EXPECT_EQ(parse_rate("20/s"), 20.0);
  EXPECT_DOUBLE_EQ(*parse_rate("30/min"), 0.5);
  EXPECT_FALSE(parse_bytes("3 apples"));
}

TEST(Scenario, ReadsTypedValuesAndDistributions) {
  auto s = Scenario::from_string(R"(
peers = 10
duration = "1min"
[network]
latency = { dist = "uniform", min = "10ms", max = "30ms" }
bandwidth = "1Gbps"
)", "t.toml");
  EXPECT_EQ(s.get_int("peers", 0, 2, 100), 10);
  EXPECT_EQ(s.get_duration("duration", 0s), Duration(60s));
  auto lat = s.get_distribution("network.latency", Distribution::fixed(0), "duration");
  EXPECT_EQ(lat.kind, Distribution::Kind::kUniform);
  EXPECT_EQ(lat.a, 10e6);
  EXPECT_EQ(lat.b, 30e6);
  EXPECT_EQ(s.get_distribution("network.bandwidth", Distribution::fixed(0), "bitrate").a, 1e9);
  EXPECT_NO_THROW(s.check_unused());
}

std::string error_of(const std::string& text, const std::vector<std::string>& sets = {}) {
  try {
    auto s = Scenario::from_string(text, "bad.toml", sets);
    parse_swarm_spec(s);
  } catch (const ScenarioError& e) {
    return e.what();
  }
  return "";
}

TEST(Scenario, ErrorsNameFileLineAndKey) {
  EXPECT_EQ(error_of("peers = 10\nduration = 5\n"),
            "bad.toml:2: key 'duration': expected a quantity with a unit as a string (e.g. "
            "\"50ms\"), found an integer");
  EXPECT_EQ(error_of("peers = 1\n"), "bad.toml:1: key 'peers': 1 is outside [2, 1000000]");
  EXPECT_EQ(error_of("backend = \"cloud\"\n"),
            "bad.toml:1: key 'backend': 'cloud' is not one of: sim, live");
  EXPECT_EQ(error_of("[network]\nlatency = \"fast\"\n"),
            "bad.toml:2: key 'network.latency': 'fast' does not start with a number");
  EXPECT_EQ(error_of("peers = 4\n\n[workload]\nrat = \"1/s\"\n"), "bad.toml:4: unknown key 'workload.rat'");
  // Churn that a live swarm of processes cannot apply is refused, not ignored; in one process
  // the runner applies it, as in ns-3.
  EXPECT_EQ(error_of("backend = \"live\"\npeers = 4\n[workload]\nkind = \"dmoe\"\n[churn]\nmodel = \"exponential\"\n"
                     "[live]\nprocesses = true\n"),
            "");
  EXPECT_EQ(error_of("backend = \"live\"\npeers = 4\n[workload]\nkind = \"dht\"\n[churn]\nmodel = \"exponential\"\n"
                     "[live]\nprocesses = true\n"), "");
  EXPECT_EQ(error_of("backend = \"live\"\npeers = 4\n[workload]\nkind = \"dht\"\n[churn]\nmodel = \"exponential\"\n"), "");
  EXPECT_EQ(error_of("peers = 4\n[workload]\nkind = \"dht\"\n[churn]\nmodel = \"exponential\"\n[live]\nprocesses = true\n"),
            "");  // the same file runs in ns-3 with backend = "sim"
  EXPECT_EQ(error_of("backend = \"live\"\npeers = 4\n[live]\nprocesses = true\n"),
            "bad.toml:4: key 'live.processes': the ping workload has no live process swarm; it runs live in one process");
  EXPECT_EQ(error_of("peers = 4\n[workload]\nkind = \"training\"\n[training]\ndevice = \"gpu0\"\n"),
            "bad.toml:5: key 'training.device': 'gpu0' is not a device: cpu, cuda or cuda:N");
  EXPECT_EQ(error_of("peers = 4\n[workload]\nkind = \"training\"\n[training]\ndevice = \"cuda:1\"\n"), "");
  EXPECT_EQ(
      error_of("backend = \"live\"\npeers = 4\nduration = \"2min\"\n[workload]\nkind = \"averaging\"\n[churn]\nmodel = \"exponential\"\n"),
      "");
}

// A swarm's own schema rules: read into the spec, and a malformed one named with its line.
TEST(Scenario, SchemaRulesAreReadAndCheckedWhereTheyAre) {
  const std::string head = "peers = 4\n[workload]\nkind = \"dht\"\n[dht.schema]\n";
  auto s = Scenario::from_string(head + "\"*:scores\" = \"owned:512\"\n\"metrics.*\" = \"float64\"\n", "t.toml");
  auto spec = parse_swarm_spec(s);
  ASSERT_EQ(spec.dht.schema.size(), 2u);
  EXPECT_EQ(spec.dht.schema[0], (std::pair<std::string, std::string>{"*:scores", "owned:512"}));
  EXPECT_EQ(error_of(head + "\"*:scores\" = \"owned\"\n\"metrics\" = \"float64\"\n"),
            "bad.toml:6: key 'dht.schema.metrics': pattern 'metrics' must be *SUFFIX (for owned) or PREFIX* (for a type), with a "
            "non-empty part");
  EXPECT_EQ(error_of(head + "\"x*\" = 3\n"), "bad.toml:5: key 'dht.schema.x*': expected a string, found an integer");
}

TEST(Scenario, SyntaxErrorsNameLineAndColumn) {
  const auto e = error_of("peers = 4\nduration = \"5s\n");
  EXPECT_EQ(e.rfind("bad.toml:2:", 0), 0u) << e;
}

TEST(Scenario, OverridesReplaceAndAddKeys) {
  auto s = Scenario::from_string("peers = 10\n[network]\nlatency = \"5ms\"\n", "t.toml",
                                 {"peers=1000", "network.latency=50ms", "workload.payload=64KiB"});
  auto spec = parse_swarm_spec(s);
  EXPECT_EQ(spec.peers, 1000u);
  EXPECT_EQ(spec.latency.a, 50e6);
  EXPECT_EQ(spec.workload_config<PingWorkloadConfig>().ping.payload_bytes, 64u << 10);
  EXPECT_NE(spec.scenario_text.find("--set peers=1000"), std::string::npos);
}

TEST(Scenario, BadOverridesNameTheOverride) {
  EXPECT_EQ(error_of("peers = 10\n", {"peers=many"}),
            "--set peers=many: key 'peers': expected an integer, found a string");
  EXPECT_EQ(error_of("peers = 10\n", {"peerz=5"}), "--set peerz=5: unknown key 'peerz'");
  EXPECT_EQ(error_of("peers = 10\n", {"novalue"}), "--set novalue: expected key=value");
}

TEST(Scenario, ChurnTraceErrorsNameFileAndLine) {
  const std::string path = std::string(APIARY_SOURCE_DIR) + "/scenarios/traces/small-churn.trace";
  auto events = read_churn_trace(path, 10);
  ASSERT_EQ(events.size(), 7u);
  EXPECT_EQ(events[0].at, Duration(30s));
  EXPECT_EQ(events[0].peer, 4u);
  EXPECT_FALSE(events[0].up);
  EXPECT_EQ(events[4].at, Duration(2min));
  try {
    read_churn_trace(path, 5);  // peer 7 and 9 do not exist in a 5-peer swarm
    FAIL();
  } catch (const ScenarioError& e) {
    EXPECT_EQ(std::string(e.what()), path + ":3: peer 7 does not exist (the scenario has 5)");
  }
}

TEST(Scenario, LatencyMatrixAndItsErrors) {
  const std::string path = std::string(APIARY_SOURCE_DIR) + "/scenarios/topologies/five-sites.matrix";
  auto m = read_latency_matrix(path);
  ASSERT_EQ(m.sites(), 5u);
  EXPECT_EQ(m.between(0, 4), 115);
  EXPECT_EQ(m.between(7, 3), 35);  // peer 7 is at site 2, peer 3 at site 3
  const std::string bad = testing::TempDir() + "/bad.matrix";
  auto expect_error = [&](const std::string& text, const std::string& want) {
    std::ofstream(bad) << text;
    try {
      read_latency_matrix(bad);
      FAIL() << "accepted: " << text;
    } catch (const ScenarioError& e) {
      EXPECT_EQ(std::string(e.what()), bad + want);
    }
  };
  expect_error("# sites\n1 2\n3 x\n", ":3: 'x' is not a latency in milliseconds (a number >= 0)");
  expect_error("1 2\n3\n", ":2: row has 1 entries, the first row 2");
  expect_error("1 2\n3 -4\n", ":2: '-4' is not a latency in milliseconds (a number >= 0)");
  expect_error("1 2 3\n3 4 5\n", ": the latency matrix must be square; it has 2 rows of 3");
  expect_error("# nothing\n", ": the latency matrix is empty");
}

TEST(Scenario, SweepTablesAndTheirErrors) {
  auto s = Scenario::from_string(R"(peers = 10
[sweep]
grid = { "peers" = [10, 20], "network.latency" = ["10ms", "50ms"] }
zip = { "dht.k" = [5, 10], "dht.alpha" = [2, 3] }
seeds = [1, 2, 3]
)", "sw.toml");
  auto sw = s.get_sweep();
  ASSERT_EQ(sw.grid.size(), 2u);
  // Axes come in key order (TOML tables are unordered).
  EXPECT_EQ(sw.grid[0].key, "network.latency");
  EXPECT_EQ(sw.grid[1].values, (std::vector<std::string>{"10", "20"}));
  EXPECT_EQ(sw.zip[0].key, "dht.alpha");
  EXPECT_EQ(sw.zip[1].values, (std::vector<std::string>{"5", "10"}));
  EXPECT_EQ(sw.seeds, (std::vector<std::uint64_t>{1, 2, 3}));
  auto err = [](const std::string& text) {
    try {
      Scenario::from_string(text, "sw.toml").get_sweep();
    } catch (const ScenarioError& e) {
      return std::string(e.what());
    }
    return std::string("accepted");
  };
  EXPECT_EQ(err("[sweep]\nzip = { a = [1, 2], b = [1] }\n"),
            "sw.toml:2: key 'sweep.zip': 'b' has 1 values but 'a' has 2; zipped axes advance together");
  EXPECT_EQ(err("[sweep]\ngrid = { a = [] }\n"), "sw.toml:2: key 'sweep.grid.a': must be a non-empty array of values");
  EXPECT_EQ(err("[sweep]\nseedz = [1]\n"), "sw.toml:2: unknown key 'sweep.seedz' (sweep has grid, zip and seeds)");
}

TEST(Scenario, MissingFileIsAClearError) {
  try {
    Scenario::from_file("/nonexistent/x.toml");
    FAIL();
  } catch (const ScenarioError& e) {
    EXPECT_EQ(std::string(e.what()), "/nonexistent/x.toml: cannot open scenario file");
  }
}

// Every scenario file shipped in scenarios/ and papers/ (a new one is held to this without being
// listed here).
TEST(Scenario, EveryShippedScenarioParses) {
  namespace fs = std::filesystem;
  std::vector<fs::path> files;
  for (const char* dir : {"scenarios", "papers"})
    for (const auto& e : fs::recursive_directory_iterator(fs::path(APIARY_SOURCE_DIR) / dir))
      if (e.is_regular_file() && e.path().extension() == ".toml") files.push_back(e.path());
  EXPECT_GT(files.size(), 30u);
  for (const auto& path : files) {
    SCOPED_TRACE(path.string());
    auto s = Scenario::from_file(path.string());
    EXPECT_NO_THROW(parse_swarm_spec(s));
  }
}

}  // namespace
}  // namespace apiary
