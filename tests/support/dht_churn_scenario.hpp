#pragma once
// A small DHT under churn, for tests that need a run exercising joins, leaves, stores, gets and
// long timers (beyond ns-3's next seconds): 120 peers, Weibull sessions, k = 8. `sets` override
// keys as `--set` does (duration, seed, network.stack, ...).
#include <string>
#include <vector>

#include "harness/scenario.hpp"
#include "harness/spec.hpp"

namespace apiary::test {

inline SwarmSpec dht_churn_spec(const std::vector<std::string>& sets) {
  auto sc = Scenario::from_string(R"(
peers = 120
duration = "8min"
[churn]
model = "weibull"
mean_session = "4min"
mean_downtime = "1min"
[dht]
k = 8
join_window = "30s"
replicate = "2min"
refresh = "3min"
[workload]
kind = "dht"
start = "1min"
store_rate = "2/s"
get_rate = "4/s"
)", "dht.toml", sets);
  return parse_swarm_spec(sc);
}

}  // namespace apiary::test
