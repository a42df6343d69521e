#include "harness/workloads/ping.hpp"

#include <algorithm>
#include <cmath>

#include "harness/runner.hpp"

namespace apiary {

PingApp::PingApp(Runtime& rt, Rpc& rpc, const std::vector<Endpoint>& directory, PingConfig config)
    : rt_(rt), rpc_(rpc), directory_(directory), cfg_(config) {
  rpc_.serve<PingRequest, PingResponse>(
      [this](const Endpoint&, PingRequest req) -> Task<Result<PingResponse>> {
        rt_.observer.count("ping.served");
        PingResponse resp{req.nonce, {}};
        if (req.echo) resp.payload = req.payload;
        co_return resp;
      });
}

void PingApp::start() { scope_.spawn(loop()); }

Task<void> PingApp::loop() {
  const double mean_ns = static_cast<double>(cfg_.mean_interval.count());
  for (;;) {
    co_await sleep_on(rt_.timers, Duration(static_cast<std::int64_t>(rt_.rng.exponential(mean_ns))));
    if (directory_.size() < 2) continue;
    Endpoint target = rt_.transport.local();
    while (target == rt_.transport.local()) target = directory_[rt_.rng.below(directory_.size())];
    if (outstanding_ >= cfg_.max_outstanding) {
      rt_.observer.count("ping.skipped_backlog");
      continue;
    }
    scope_.spawn(ping_one(target));
  }
}

Task<void> PingApp::ping_one(Endpoint target) {
  ++outstanding_;
  struct Guard {
    std::uint32_t& n;
    ~Guard() { --n; }
  } guard{outstanding_};
  PingRequest req;
  req.nonce = next_nonce_++;
  req.echo = cfg_.echo_payload;
  if (cfg_.payload_bytes) {
    if (cfg_.real_payload) {
      Bytes data(cfg_.payload_bytes);
      for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(req.nonce + i);
      req.payload = Payload::bytes(std::move(data));
    } else {
      req.payload = Payload::size_only(cfg_.payload_bytes);
    }
  }
  const TimePoint t0 = rt_.now();
  rt_.observer.count("ping.sent");
  rt_.observer.count("ping.bytes_sent", static_cast<std::int64_t>(req.payload.size() + 9));
  PingRequest sent = req;  // kept to check the echo; the call takes its own by move
  auto r = co_await rpc_.call<PingResponse>(target, std::move(req), cfg_.timeout);
  req = std::move(sent);
  if (!r.ok()) {
    rt_.observer.count(std::string("ping.failed.") + to_string(r.error().code));
    co_return;
  }
  if (r->nonce != req.nonce ||
      (req.echo && (r->payload.size() != req.payload.size() ||
                    (cfg_.real_payload && !std::equal(r->payload.data().begin(),
                                                      r->payload.data().end(),
                                                      req.payload.data().begin()))))) {
    rt_.observer.count("ping.corrupt");
    co_return;
  }
  rt_.observer.count("ping.ok");
  rt_.observer.sample("ping.rtt_ns", static_cast<double>(to_ns(rt_.now() - t0)));
}

}  // namespace apiary

// ---- the ping workload -------------------------------------------------------------------


namespace apiary {
namespace {

class PingPeer final : public PeerApp {
 public:
  PingPeer(PeerStack& p, const PingConfig& cfg) : app_(p.runtime(), p.rpc(), p.directory(), cfg) {}
  void start() override { app_.start(); }

 private:
  PingApp app_;
};

class PingWorkload final : public Workload {
 public:
  explicit PingWorkload(const SwarmSpec& spec) : cfg_(spec.workload_config<PingWorkloadConfig>()) {}
  std::unique_ptr<PeerApp> make_app(PeerStack& peer) override { return std::make_unique<PingPeer>(peer, cfg_.ping); }

 private:
  const PingWorkloadConfig& cfg_;
};

std::shared_ptr<const WorkloadConfig> parse_ping(Scenario& s, const SwarmSpec& spec) {
  auto c = std::make_shared<PingWorkloadConfig>();
  auto& p = c->ping;
  const double rate = s.get_rate("workload.rate", 1.0);
  if (rate <= 0) s.fail("workload.rate", "must be positive");
  p.mean_interval = Duration(static_cast<std::int64_t>(std::llround(1e9 / rate)));
  p.timeout = s.get_duration("workload.timeout", p.timeout);
  if (p.timeout <= Duration::zero()) s.fail("workload.timeout", "must be positive");
  p.payload_bytes = s.get_bytes("workload.payload", 0);
  if (p.payload_bytes > (1ull << 30)) s.fail("workload.payload", "at most 1GiB");
  p.echo_payload = s.get_bool("workload.echo", false);
  p.real_payload = s.get_bool("workload.real_payload", spec.backend == "live");
  p.max_outstanding = static_cast<std::uint32_t>(s.get_int("workload.max_outstanding", 256, 1, 1'000'000));
  return c;
}

void summarize_ping(std::FILE* f, const Metrics& m, const RunInfo&) {
  std::fprintf(f, "  pings: %lld sent, %lld ok, %lld timed out, %lld unreachable\n",
               static_cast<long long>(m.counter("ping.sent")), static_cast<long long>(m.counter("ping.ok")),
               static_cast<long long>(m.counter("ping.failed.timeout")),
               static_cast<long long>(m.counter("ping.failed.unreachable")));
  if (m.series().count("ping.rtt_ns"))
    std::fprintf(f, "  rtt: p50 %.2f ms, p95 %.2f ms, p99 %.2f ms\n", m.quantile("ping.rtt_ns", 0.5) / 1e6,
                 m.quantile("ping.rtt_ns", 0.95) / 1e6, m.quantile("ping.rtt_ns", 0.99) / 1e6);
}

const RegisterWorkload kRegister{WorkloadType{
    "ping", "every peer pings random others (Poisson), optionally with a bulk payload echoed back", false, parse_ping,
    [](const SwarmSpec& spec, Metrics&) { return std::make_unique<PingWorkload>(spec); }, summarize_ping}};

}  // namespace
}  // namespace apiary
