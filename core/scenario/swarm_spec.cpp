#include "core/scenario/swarm_spec.hpp"

#include <cmath>

namespace apiary {

SwarmSpec parse_swarm_spec(Scenario& s) {
  SwarmSpec spec;
  spec.name = s.get_string("name", spec.name);
  s.get_string("description", "");
  spec.backend = s.get_string("backend", spec.backend, {"sim", "live"});
  spec.seed = static_cast<std::uint64_t>(s.get_int("seed", 1, 0, INT64_MAX));
  const std::int64_t max_peers = spec.backend == "live" ? 4096 : 1'000'000;
  spec.peers = static_cast<std::uint32_t>(s.get_int("peers", spec.peers, 2, max_peers));
  spec.duration = s.get_duration("duration", spec.duration);
  if (spec.duration <= Duration::zero()) s.fail("duration", "must be positive");

  spec.latency = s.get_distribution("network.latency", spec.latency, "duration");
  spec.bandwidth = s.get_distribution("network.bandwidth", spec.bandwidth, "bitrate");
  if (spec.bandwidth.kind == Distribution::Kind::kFixed && spec.bandwidth.a <= 0)
    s.fail("network.bandwidth", "must be positive");

  const auto churn = s.get_string("churn.model", "none", {"none", "exponential", "weibull"});
  spec.churn.kind = churn == "none"          ? ChurnSpec::Kind::kNone
                    : churn == "exponential" ? ChurnSpec::Kind::kExponential
                                             : ChurnSpec::Kind::kWeibull;
  spec.churn.mean_session = s.get_duration("churn.mean_session", spec.churn.mean_session);
  spec.churn.mean_downtime = s.get_duration("churn.mean_downtime", spec.churn.mean_downtime);
  spec.churn.weibull_shape = s.get_double("churn.weibull_shape", spec.churn.weibull_shape, 0.05, 20);
  if (spec.churn.kind != ChurnSpec::Kind::kNone && spec.churn.mean_session <= Duration::zero())
    s.fail("churn.mean_session", "must be positive");

  spec.workload = s.get_string("workload.kind", spec.workload, {"ping"});
  const double rate = s.get_rate("workload.rate", 1.0);
  if (rate <= 0) s.fail("workload.rate", "must be positive");
  spec.ping.mean_interval = Duration(static_cast<std::int64_t>(std::llround(1e9 / rate)));
  spec.ping.timeout = s.get_duration("workload.timeout", spec.ping.timeout);
  if (spec.ping.timeout <= Duration::zero()) s.fail("workload.timeout", "must be positive");
  spec.ping.payload_bytes = s.get_bytes("workload.payload", 0);
  if (spec.ping.payload_bytes > (1ull << 30)) s.fail("workload.payload", "at most 1GiB");
  spec.ping.echo_payload = s.get_bool("workload.echo", false);
  spec.ping.real_payload = s.get_bool("workload.real_payload", spec.backend == "live");
  spec.ping.max_outstanding =
      static_cast<std::uint32_t>(s.get_int("workload.max_outstanding", 256, 1, 1'000'000));

  spec.live_host = s.get_string("live.host", spec.live_host);
  spec.live_base_port = static_cast<std::uint16_t>(s.get_int("live.base_port", 0, 0, 65535));

  s.check_unused();
  spec.scenario_text = s.text();
  spec.scenario_source = s.source_name();
  return spec;
}

}  // namespace apiary

namespace apiary {

PeerStack::PeerStack(Runtime& rt, const SwarmSpec& spec, const std::vector<Endpoint>& directory)
    : rpc_(std::make_unique<Rpc>(rt)),
      ping_(std::make_unique<PingApp>(rt, *rpc_, directory, spec.ping)) {}

PeerStack::~PeerStack() {
  rpc_->shutdown();  // no handler runs after this
  ping_.reset();
  rpc_.reset();
}

}  // namespace apiary
