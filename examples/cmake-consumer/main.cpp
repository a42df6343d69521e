// A small DHT swarm in ns-3, described inline as a scenario and run by Apiary's harness; then a
// record signed with an identity of our own and checked by the validators every Apiary node runs.
// Prints what it measured and exits 0 if the swarm answered every get and the record checks out.
#include <cstdio>

#include "core/optim/schema.hpp"
#include "core/runtime/metrics.hpp"
#include "harness/scenario.hpp"
#include "harness/spec.hpp"
#include "sim/sim_host.hpp"

int main() {
  using namespace apiary;
  Scenario scenario = Scenario::from_string(
      "peers = 30\nduration = \"4min\"\nseed = 7\n[workload]\nkind = \"dht\"\nstart = \"60s\"\nget_rate = \"2/s\"\n", "inline.toml");
  const SwarmSpec spec = parse_swarm_spec(scenario);
  scenario.check_unused();
  Metrics metrics;
  sim::run_sim_swarm(spec, metrics);
  const auto ok = metrics.counter("dht.get.ok"), failed = metrics.counter("dht.get.failed");
  std::printf("30 peers in ns-3: %lld gets answered, %lld failed\n", static_cast<long long>(ok), static_cast<long long>(failed));

  const auto me = dht::Identity::from_seed(42);
  dht::Record record{"results" + me.owner_tag(), std::nullopt, Bytes{'4', '2'}, TimePoint(std::chrono::hours(1)), {}};
  me.sign(record);
  const auto why = dht::validate(optim::standard_validators(), record);
  std::printf("a record signed by %s: %s\n", me.id().hex().substr(0, 12).c_str(), why ? why->c_str() : "valid");
  return ok > 0 && failed == 0 && !why ? 0 : 1;
}
