#include "harness/runner.hpp"

#include <algorithm>
#include <stdexcept>

#include "core/runtime/task.hpp"

namespace apiary {

Runner::Runner(const SwarmSpec& spec, Metrics& metrics, Host& host)
    : spec_(spec),
      metrics_(metrics),
      host_(host),
      churn_(spec, metrics,
             ChurnDriver::Hooks{[this](Duration t, std::function<void()> fn) { host_.at(t, std::move(fn)); },
                                [this] { return host_.elapsed(); },
                                [this](std::uint32_t i) { return static_cast<bool>(peers_[i].stack); },
                                [this](std::uint32_t i) { join(i); }, [this](std::uint32_t i) { leave(i); }}) {
  const WorkloadType* type = WorkloadRegistry::find(spec.workload);
  if (!type) throw std::invalid_argument("unknown workload '" + spec.workload + "'");
  // The links first, one latency and one bandwidth draw per peer in index order, from the
  // network's own stream: the same peer gets the same link in ns-3 and live.
  Rng net_rng(spec.seed ^ 0x6e6574776f726bULL);  // "network"
  peers_.resize(spec.peers);
  directory_.reserve(spec.peers);
  for (std::uint32_t i = 0; i < spec.peers; ++i) {
    LinkDraw link;
    link.latency_ns = spec.latency.sample(net_rng);
    link.bandwidth_bps = std::max(1e3, spec.bandwidth.sample(net_rng));
    peers_[i].bandwidth = link.bandwidth_bps;
    host_.add_peer(i, link);
    if (spec.inject.any()) host_.env(i).inject(spec.inject, Rng(spec.seed ^ 0x696e6a656374ULL).fork(i + 1));  // "inject"
    directory_.push_back(host_.endpoint(i));
  }
  workload_ = type->make(spec, metrics);
  if (spec.faults.any() && !host_.simulates_network_faults()) {
    network_faults_ = std::make_unique<LiveNetworkFaults>(spec, directory_, metrics);
    for (std::uint32_t i = 0; i < spec.peers; ++i) {
      auto& env = host_.env(i);
      auto& p = peers_[i];
      p.faulty = std::make_unique<FaultyTransport>(*network_faults_, i, env.runtime.transport, env.runtime.timers, env.runtime.clock,
                                                   Rng(spec.seed ^ 0x6c6f7373ULL).fork(i + 1));  // "loss"
      p.faulty_runtime = std::make_unique<Runtime>(
          Runtime{env.runtime.clock, env.runtime.timers, *p.faulty, env.runtime.rng, env.runtime.observer, env.runtime.faults});
    }
  }
}

Runtime& Runner::runtime_of(std::uint32_t i) {
  return peers_[i].faulty_runtime ? *peers_[i].faulty_runtime : host_.env(i).runtime;
}

Runner::~Runner() {
  for (std::uint32_t i = 0; i < peers_.size(); ++i) leave(i);
}

RunInfo Runner::run(const ProgressFn& progress) {
  const std::int64_t frames_before = detail::live_frames();
  const bool dht = spec_.uses_dht;
  Rng join_rng(spec_.seed ^ 0x6a6f696eULL);  // "join"
  // A peer whose first churn-trace event is "up" starts down: it joins at that time. With a DHT,
  // the seeds join at once and the others uniformly over the join window.
  const std::vector<bool> starts_down = spec_.churn.starts_down(spec_.peers);
  for (std::uint32_t i = 0; i < spec_.peers; ++i) {
    if (starts_down[i]) continue;
    if (!dht || i < spec_.dht.bootstrap_peers) {
      join(i);
    } else {
      const Duration t(static_cast<std::int64_t>(join_rng.uniform(0, static_cast<double>(spec_.dht.join_window.count()))));
      host_.at(t, [this, i] { join(i); });
    }
  }
  // The seeds stay up; the others' sessions begin once the swarm has formed.
  churn_.begin(dht ? spec_.dht.bootstrap_peers : 0, dht ? spec_.dht.join_window : Duration::zero());
  if (network_faults_)
    schedule_fault_windows(spec_, metrics_, spec_.duration,
                           network_faults_->hooks([this](Duration t, std::function<void()> fn) { host_.at(t, std::move(fn)); }));
  workload_->begin(*this);
  if (progress)
    for (int k = 1; k < 100; ++k) host_.at(Duration(spec_.duration.count() / 100 * k), [progress, k] { progress(k / 100.0); });

  host_.run(spec_.duration);
  if (progress) progress(1.0);

  RunInfo info;
  info.backend = host_.backend();
  info.run_seconds = to_seconds(host_.elapsed());  // earlier than duration if the workload ended the run
  workload_->finish(*this, info);
  host_.add_figures(info, metrics_);
  const double peer_minutes = spec_.peers * info.run_seconds / 60.0;
  const auto messages = metrics_.counter("transport.messages_sent");
  info.figures["messages"] = static_cast<double>(messages);
  if (peer_minutes > 0) {
    info.figures["messages_per_peer_minute"] = static_cast<double>(messages) / peer_minutes;
    info.figures["bytes_per_peer_minute"] = static_cast<double>(metrics_.counter("transport.bytes_sent")) / peer_minutes;
  }
  for (std::uint32_t i = 0; i < spec_.peers; ++i) leave(i);  // tear down while the host still runs
  // Every peer has gone, and with it every task it started: a frame left is a task that outlived
  // its peer (the workload's own tasks end with the run too).
  const std::int64_t left = detail::live_frames() - frames_before;
  if (left > 0) metrics_.count("invariant.task.outlived_peer", static_cast<std::uint64_t>(left));
  return info;
}

void Runner::join(std::uint32_t i) {
  auto& p = peers_[i];
  if (p.stack) return;
  host_.set_up(i, true);
  auto& env = host_.env(i);
  p.stack = std::make_unique<PeerStack>(runtime_of(i), spec_, directory_, i, p.bandwidth, *workload_);
  if (auto* node = p.stack->dht(); node && (!p.kept_records.empty() || !p.kept_contacts.empty())) {
    const TimePoint now = env.runtime.now();
    for (const auto& r : p.kept_records) node->storage().store(r, now);  // expired ones are refused
    for (const auto& c : p.kept_contacts) node->table().add(c, now);
    metrics_.count("churn.kept_records", p.kept_records.size());
    p.kept_records.clear();
    p.kept_contacts.clear();
  }
  env.observer.trace("peer.join", i, 0);
  p.stack->start();
  workload_->peer_up(*this, i);
}

void Runner::leave(std::uint32_t i) {
  auto& p = peers_[i];
  if (!p.stack) return;
  host_.env(i).observer.trace("peer.leave", i, 0);
  workload_->peer_down(*this, i);
  if (auto* node = p.stack->dht(); node && spec_.churn.keep_state) {
    const TimePoint now = host_.env(i).runtime.now();
    p.kept_records = node->storage().all(now);
    p.kept_contacts = node->table().nearest(node->table().self(), node->table().size());
  }
  p.stack.reset();
  if (p.faulty) p.faulty->drop_held();  // its connections closed: what was held back is lost
  // What the peer's code scheduled went with it: a timer still pending would call into freed code.
  if (const auto timers = host_.pending_timers(i)) metrics_.count("invariant.timer.outlived_peer", timers);
  host_.set_up(i, false);
}

std::optional<std::uint32_t> Runner::pick_joined_peer(Rng& rng) {
  for (int tries = 0; tries < 64; ++tries) {
    const auto i = static_cast<std::uint32_t>(rng.below(spec_.peers));
    if (joined(i)) return i;
  }
  return std::nullopt;
}

RunInfo run_on_host(const SwarmSpec& spec, Metrics& metrics, Host& host, const ProgressFn& progress) {
  Runner runner(spec, metrics, host);
  return runner.run(progress);
}

}  // namespace apiary
