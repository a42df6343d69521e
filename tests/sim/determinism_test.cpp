// Determinism is a tested property: the same scenario and seed give the same event trace and the
// same metrics, bit for bit; another seed gives another trace.
#include <gtest/gtest.h>

#include <cstdio>
#include <filesystem>

#include "analysis/h5/results_file.hpp"
#include "sim/sim_host.hpp"
#include "tests/support/dht_churn_scenario.hpp"

namespace apiary {
namespace {

SwarmSpec churny_spec(std::uint64_t seed) {
  auto sc = Scenario::from_string(R"(
name = "det"
peers = 60
duration = "2min"
[network]
latency = { dist = "exponential", mean = "20ms" }
bandwidth = { dist = "uniform", min = "5Mbps", max = "100Mbps" }
[churn]
model = "exponential"
mean_session = "40s"
mean_downtime = "10s"
[workload]
rate = "2/s"
timeout = "500ms"
payload = "200KB"
echo = true
)", "det.toml", {"seed=" + std::to_string(seed)});
  return parse_swarm_spec(sc);
}

struct Run {
  Metrics metrics;
  std::string h5;
};

std::unique_ptr<Run> run(std::uint64_t seed, const std::string& tag) {
  auto r = std::make_unique<Run>();
  r->metrics.set_trace_prefix_limit(2000);
  const auto spec = churny_spec(seed);
  const auto info = sim::run_sim_swarm(spec, r->metrics);
  r->h5 = (std::filesystem::temp_directory_path() / ("apiary-det-" + tag + ".h5")).string();
  results::write_h5(r->h5, spec, r->metrics, info);
  return r;
}

TEST(Determinism, SameSeedSameTraceAndMetrics) {
  auto a = run(42, "a");
  auto b = run(42, "b");
  auto c = run(43, "c");
  // The run exercised what it should: traffic, churn, timeouts, bulk payloads.
  EXPECT_GT(a->metrics.counter("ping.ok"), 1000);
  EXPECT_GT(a->metrics.counter("churn.leaves"), 50);
  EXPECT_GT(a->metrics.counter("ping.failed.timeout"), 10);
  EXPECT_GT(a->metrics.trace_events(), 10000u);

  EXPECT_EQ(a->metrics.trace_hash(), b->metrics.trace_hash());
  EXPECT_EQ(a->metrics.trace_events(), b->metrics.trace_events());
  ASSERT_EQ(a->metrics.trace_prefix().size(), b->metrics.trace_prefix().size());
  for (std::size_t i = 0; i < a->metrics.trace_prefix().size(); ++i) {
    const auto& x = a->metrics.trace_prefix()[i];
    const auto& y = b->metrics.trace_prefix()[i];
    ASSERT_TRUE(x.time_ns == y.time_ns && x.peer == y.peer && x.event == y.event && x.a == y.a &&
                x.b == y.b)
        << "first divergence at event " << i;
  }
  EXPECT_EQ(results::read_h5_metrics(a->h5), results::read_h5_metrics(b->h5));
  EXPECT_EQ(results::read_h5_string_attribute(a->h5, "trace_hash"),
            results::read_h5_string_attribute(b->h5, "trace_hash"));

  EXPECT_NE(a->metrics.trace_hash(), c->metrics.trace_hash());
  EXPECT_NE(results::read_h5_metrics(a->h5), results::read_h5_metrics(c->h5));
  for (auto* r : {a.get(), b.get(), c.get()}) std::filesystem::remove(r->h5);
}

TEST(Determinism, DhtScenarioIsReproducible) {
  auto make = [](std::uint64_t seed) { return test::dht_churn_spec({"seed=" + std::to_string(seed)}); };
  auto spec_a = make(5), spec_c = make(6);
  Metrics a, b, c;
  sim::run_sim_swarm(spec_a, a);
  sim::run_sim_swarm(spec_a, b);
  sim::run_sim_swarm(spec_c, c);
  EXPECT_GT(a.counter("dht.get.ok"), 500);
  EXPECT_EQ(a.trace_hash(), b.trace_hash());
  EXPECT_EQ(a.counters(), b.counters());
  EXPECT_EQ(a.series(), b.series());
  EXPECT_NE(a.trace_hash(), c.trace_hash());
}

}  // namespace
}  // namespace apiary
