#include "harness/workloads/dht.hpp"

#include <algorithm>

#include "harness/runner.hpp"

namespace apiary {

void DhtWorkloadDriver::issue_store(dht::DhtNode& node, std::uint32_t peer, TimePoint now) {
  const std::uint64_t n = next_key_++;
  dht::Record r;
  r.key = "key-" + std::to_string(spec_.seed) + "-" + std::to_string(n);
  r.value.resize(cfg_.value_size);
  for (std::size_t i = 0; i < r.value.size(); ++i) r.value[i] = static_cast<std::uint8_t>(n * 31 + i);
  r.expiration = now + cfg_.ttl;
  ++issued_;
  metrics_.count("dht.store.issued", 1);
  metrics_.trace(to_ns(now), peer, "dht.store", n, 0);
  Stored s{r.key, r.value, r.expiration};
  node.spawn_store(std::move(r), [this, s = std::move(s)](const dht::StoreResult& res) {
    ++completed_;
    metrics_.sample("dht.store.replicas", static_cast<double>(res.replicas));
    metrics_.sample("dht.store.latency_ns", static_cast<double>(res.latency.count()));
    if (res.replicas > 0) {
      metrics_.count("dht.store.ok", 1);
      stored_.push_back(s);
    } else {
      metrics_.count("dht.store.failed", 1);
    }
  });
}

void DhtWorkloadDriver::check_get_failure(double asked_s) {
  // Invariant: a live key whose holders are all up is gettable. It is checked where that holds:
  // no churn (every holder stays up), and not while a partition or a stall keeps peers out of
  // reach, nor until a replication has run after it ends (a record stored meanwhile may sit on
  // the second-nearest peers until then; Kademlia promises no more): one period, up to 1.2x with
  // its jitter, and 30 s for that replication's own lookups; nor a minute before it begins (a get
  // still under way when it strikes).
  if (spec_.churn.kind != ChurnSpec::Kind::kNone) return;
  const Duration asked(static_cast<std::int64_t>(asked_s * 1e9));
  const Duration before = std::chrono::minutes(1);
  const Duration after = std::max<Duration>(std::chrono::minutes(1), spec_.dht.config.replicate_period * 6 / 5 + std::chrono::seconds(30));
  for (const auto& w : {spec_.faults.partition, spec_.faults.stall})
    if (w && w->covers(asked, before, after)) return;
  metrics_.count("invariant.dht.live_key_not_found", 1);
}

bool DhtWorkloadDriver::issue_get(dht::DhtNode& node, std::uint32_t peer, TimePoint now) {
  // Forget expired keys, then pick a live one (with a margin so it is live when the get lands).
  const TimePoint margin = now + std::chrono::seconds(30);
  std::erase_if(stored_, [&](const Stored& s) { return s.expiration <= margin; });
  if (stored_.empty()) return false;
  const Stored& s = stored_[rng_.below(stored_.size())];
  ++issued_;
  metrics_.count("dht.get.issued", 1);
  metrics_.trace(to_ns(now), peer, "dht.get", 0, 0);
  node.spawn_get(s.key, [this, expect = s.value, asked = to_seconds(now.time_since_epoch())](const dht::GetResult& res) {
    ++completed_;
    const bool ok = res.found && !res.records.empty() && res.records[0].value == expect;
    metrics_.count(ok ? "dht.get.ok" : "dht.get.failed", 1);
    // After a single partition has healed: how the swarm recovers.
    if (const auto& w = spec_.faults.partition; w && w->every == Duration::zero() && asked >= to_seconds(w->at + w->duration))
      metrics_.count(ok ? "dht.get.after_heal.ok" : "dht.get.after_heal.failed", 1);
    if (!ok) {
      metrics_.sample("dht.get.failed_at_s", asked);  // when it was asked: failures over time
      check_get_failure(asked);
    }
    if (ok) {
      metrics_.sample("dht.get.latency_ns", static_cast<double>(res.latency.count()));
      metrics_.sample("dht.get.hops", static_cast<double>(res.hops));
    }
  });
  return true;
}

namespace {

class DhtPeer final : public PeerApp {};

class DhtWorkload final : public Workload {
 public:
  DhtWorkload(const SwarmSpec& spec, Metrics& metrics)
      : cfg_(spec.workload_config<DhtWorkloadConfig>()), driver_(spec, metrics, spec.seed ^ 0x64726976ULL) {}
  std::unique_ptr<PeerApp> make_app(PeerStack&) override { return std::make_unique<DhtPeer>(); }
  void begin(Runner& r) override {
    r.at(cfg_.start, [this, &r] {
      schedule_store(r);
      schedule_get(r);
    });
  }
  void finish(Runner& r, RunInfo&) override {
    record_table_health(r);
    r.metrics().count("dht.ops_abandoned", driver_.abandoned());
  }

 private:
  void schedule_store(Runner& r) {
    r.after(driver_.next_store_gap(), [this, &r] {
      if (auto i = r.pick_joined_peer(driver_.rng())) driver_.issue_store(*r.peer(*i)->dht(), *i, r.peer(*i)->runtime().now());
      schedule_store(r);
    });
  }
  void schedule_get(Runner& r) {
    r.after(driver_.next_get_gap(), [this, &r] {
      if (auto i = r.pick_joined_peer(driver_.rng())) driver_.issue_get(*r.peer(*i)->dht(), *i, r.peer(*i)->runtime().now());
      schedule_get(r);
    });
  }
  // Routing-table health at the end: table sizes of live peers, and for a sample of them the
  // share of their k true nearest live peers that their table holds.
  void record_table_health(Runner& r) {
    auto& metrics = r.metrics();
    const auto& spec = r.spec();
    std::vector<std::pair<dht::DhtId, std::uint32_t>> alive;
    for (std::uint32_t i = 0; i < spec.peers; ++i)
      if (r.joined(i)) alive.emplace_back(r.peer(i)->dht()->id(), i);
    metrics.count("dht.alive_at_end", static_cast<std::int64_t>(alive.size()));
    Rng rng(spec.seed ^ 0x6865616c7468ULL);
    const std::size_t k = spec.dht.config.k;
    for (std::size_t s = 0; s < std::min<std::size_t>(100, alive.size()); ++s) {
      const auto& [self, idx] = alive[rng.below(alive.size())];
      auto& node = *r.peer(idx)->dht();
      const auto st = node.table().stats();
      metrics.sample("dht.table.contacts", static_cast<double>(st.contacts));
      metrics.sample("dht.table.buckets", static_cast<double>(st.buckets));
      metrics.sample("dht.table.replacements", static_cast<double>(st.replacements));
      std::vector<dht::DhtId> others;
      for (const auto& [id, j] : alive)
        if (j != idx) others.push_back(id);
      const std::size_t n = std::min(k, others.size());
      std::partial_sort(others.begin(), others.begin() + static_cast<std::ptrdiff_t>(n), others.end(),
                        [&](const dht::DhtId& a, const dht::DhtId& b) { return (a ^ self) < (b ^ self); });
      std::size_t held = 0;
      for (std::size_t j = 0; j < n; ++j) held += node.table().contains(others[j]);
      if (n) metrics.sample("dht.table.neighbour_recall", static_cast<double>(held) / static_cast<double>(n));
    }
  }
  const DhtWorkloadConfig& cfg_;
  DhtWorkloadDriver driver_;
};

std::shared_ptr<const WorkloadConfig> parse_dht(Scenario& s, const SwarmSpec& spec) {
  auto c = std::make_shared<DhtWorkloadConfig>();
  c->start = s.get_duration("workload.start", c->start);
  c->store_rate = s.get_rate("workload.store_rate", c->store_rate);
  c->get_rate = s.get_rate("workload.get_rate", c->get_rate);
  c->ttl = s.get_duration("workload.ttl", c->ttl);
  if (c->ttl <= Duration::zero()) s.fail("workload.ttl", "must be positive");
  c->value_size = s.get_bytes("workload.value_size", c->value_size);
  if (c->value_size > spec.dht.config.limits.max_value) s.fail("workload.value_size", "larger than the DHT's value limit (64KiB)");
  c->keys = static_cast<std::uint32_t>(s.get_int("workload.keys", c->keys, 1, 10'000'000));
  c->concurrency = static_cast<std::uint32_t>(s.get_int("workload.concurrency", c->concurrency, 1, 4096));
  c->get_holders = static_cast<std::uint32_t>(s.get_int("workload.get_holders", c->get_holders, 1, 1024));
  return c;
}

void summarize_dht(std::FILE* f, const Metrics& m, const RunInfo& info) {
  auto c = [&](const char* k) { return static_cast<long long>(m.counter(k)); };
  if (m.counter("dht.get.issued") || m.counter("dht.store.issued"))
    std::fprintf(f, "  dht: %lld/%lld gets ok, %lld/%lld stores ok, get p50 %.1f ms, %.2f hops\n", c("dht.get.ok"),
                 c("dht.get.issued"), c("dht.store.ok"), c("dht.store.issued"), m.quantile("dht.get.latency_ns", 0.5) / 1e6,
                 m.mean("dht.get.hops"));
  else if (info.figures.count("store_ops_per_second"))
    std::fprintf(f, "  dht: %lld stores ok, %lld failed; %lld gets ok, %lld failed; %.0f stores/s, %.0f gets/s\n", c("dht.store.ok"),
                 c("dht.store.failed"), c("dht.get.ok"), c("dht.get.failed"), info.figures.at("store_ops_per_second"),
                 info.figures.at("get_ops_per_second"));
}

const RegisterWorkload kRegister{WorkloadType{
    "dht", "stores and gets of random keys at swarm-wide Poisson rates (Kademlia)", true, parse_dht,
    [](const SwarmSpec& spec, Metrics& m) { return std::make_unique<DhtWorkload>(spec, m); }, summarize_dht}};

}  // namespace
}  // namespace apiary
