#include "harness/spec.hpp"

#include "core/optim/schema.hpp"

#include <algorithm>
#include <cctype>
#include <charconv>
#include <cmath>
#include <fstream>
#include <sstream>

namespace apiary {

Duration ChurnSpec::draw_session(Rng& rng) const {
  const double mean = static_cast<double>(mean_session.count());
  if (kind == Kind::kWeibull) {
    const double scale = mean / std::tgamma(1.0 + 1.0 / weibull_shape);
    return Duration(static_cast<std::int64_t>(rng.weibull(weibull_shape, scale)));
  }
  return Duration(static_cast<std::int64_t>(rng.exponential(mean)));
}

Duration ChurnSpec::draw_downtime(Rng& rng) const {
  return Duration(static_cast<std::int64_t>(rng.exponential(static_cast<double>(mean_downtime.count()))));
}

std::vector<bool> ChurnSpec::starts_down(std::uint32_t peers) const {
  std::vector<bool> down(peers, false);
  if (kind != Kind::kTrace) return down;
  std::vector<bool> seen(peers, false);
  for (const auto& ev : trace)
    if (ev.peer < peers && !seen[ev.peer]) {
      seen[ev.peer] = true;
      down[ev.peer] = ev.up;
    }
  return down;
}

std::vector<ChurnEvent> read_churn_trace(const std::string& path, std::uint32_t peers) {
  std::ifstream in(path);
  if (!in) throw ScenarioError(path + ": cannot open churn trace");
  std::vector<ChurnEvent> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream fields(line);
    std::string time, peer, event, extra;
    if (!(fields >> time)) continue;  // blank or comment
    auto bad = [&](const std::string& why) { throw ScenarioError(path + ":" + std::to_string(n) + ": " + why); };
    if (!(fields >> peer >> event)) bad("expected 'TIME PEER up|down'");
    if (fields >> extra) bad("unexpected '" + extra + "' after the event");
    std::string why;
    auto at = parse_duration(time, &why);
    if (!at) bad(why);
    std::uint32_t p = 0;
    auto [end, ec] = std::from_chars(peer.data(), peer.data() + peer.size(), p);
    if (ec != std::errc{} || end != peer.data() + peer.size()) bad("peer '" + peer + "' is not an index");
    if (p >= peers) bad("peer " + peer + " does not exist (the scenario has " + std::to_string(peers) + ")");
    if (event != "up" && event != "down") bad("event must be 'up' or 'down', not '" + event + "'");
    out.push_back(ChurnEvent{*at, p, event == "up"});
  }
  std::stable_sort(out.begin(), out.end(), [](const ChurnEvent& a, const ChurnEvent& b) { return a.at < b.at; });
  return out;
}

LatencyMatrix read_latency_matrix(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ScenarioError(path + ": cannot open latency matrix");
  LatencyMatrix m;
  m.path = path;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream fields(line);
    std::vector<double> row;
    std::string f;
    while (fields >> f) {
      double v = 0;
      auto [end, ec] = std::from_chars(f.data(), f.data() + f.size(), v);
      if (ec != std::errc{} || end != f.data() + f.size() || !std::isfinite(v) || v < 0)
        throw ScenarioError(path + ":" + std::to_string(n) + ": '" + f + "' is not a latency in milliseconds (a number >= 0)");
      row.push_back(v);
    }
    if (row.empty()) continue;
    if (!m.ms.empty() && row.size() != m.ms[0].size())
      throw ScenarioError(path + ":" + std::to_string(n) + ": row has " + std::to_string(row.size()) + " entries, the first row " +
                          std::to_string(m.ms[0].size()));
    m.ms.push_back(std::move(row));
  }
  if (m.ms.empty()) throw ScenarioError(path + ": the latency matrix is empty");
  if (m.ms.size() != m.ms[0].size())
    throw ScenarioError(path + ": the latency matrix must be square; it has " + std::to_string(m.ms.size()) + " rows of " +
                        std::to_string(m.ms[0].size()));
  return m;
}

std::vector<NetnsSlot> read_netns_map(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw ScenarioError(path + ": cannot open the network namespace map");
  std::vector<NetnsSlot> out;
  std::string line;
  for (int n = 1; std::getline(in, line); ++n) {
    if (auto h = line.find('#'); h != std::string::npos) line.resize(h);
    std::istringstream fields(line);
    NetnsSlot slot;
    if (!(fields >> slot.netns)) continue;
    std::string extra;
    if (!(fields >> slot.address) || (fields >> extra))
      throw ScenarioError(path + ":" + std::to_string(n) + ": expected 'NAMESPACE IPV4'");
    const bool name_ok = slot.netns.size() <= 64 && std::all_of(slot.netns.begin(), slot.netns.end(), [](char c) {
                           return std::isalnum(static_cast<unsigned char>(c)) || c == '-' || c == '_' || c == '.';
                         }) && slot.netns[0] != '.';
    if (!name_ok) throw ScenarioError(path + ":" + std::to_string(n) + ": '" + slot.netns + "' is not a namespace name");
    if (!Endpoint::parse(slot.address + ":1"))
      throw ScenarioError(path + ":" + std::to_string(n) + ": '" + slot.address + "' is not an IPv4 address");
    out.push_back(std::move(slot));
  }
  if (out.empty()) throw ScenarioError(path + ": the network namespace map is empty");
  return out;
}

std::string path_beside(const Scenario& s, const std::string& path) {
  if (!path.empty() && path[0] != '/') {
    const auto slash = s.source_name().rfind('/');
    if (slash != std::string::npos) return s.source_name().substr(0, slash + 1) + path;
  }
  return path;
}

bool SwarmSpec::behind_nat(std::uint32_t i) const {
  if (faults.nat <= 0 || i < dht.bootstrap_peers || (config && i < config->must_accept())) return false;
  return Rng(seed ^ 0x6e6174ULL).fork(i + 1).uniform(0, 1) < faults.nat;  // "nat"
}

dht::Identity swarm_identity(const SwarmSpec& spec, std::uint32_t index) {
  if (spec.auth.id_work_bits > 0) return dht::Identity::with_work(spec.seed * 1000003ULL + index, spec.auth.id_work_bits);
  return dht::Identity::from_seed(spec.seed * 1000003ULL + index);
}

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
  if (const std::string matrix = s.get_string("network.latency_matrix", ""); !matrix.empty())
    spec.latency_matrix = read_latency_matrix(path_beside(s, matrix));
  if (s.has("network.hop_delay")) spec.hop_delay = s.get_distribution("network.hop_delay", Distribution::fixed(0), "duration");
  spec.faults.loss = s.get_double("network.loss", 0, 0, 0.5);
  spec.faults.rto_min = s.get_duration("network.rto_min", spec.faults.rto_min);
  spec.faults.nat = s.get_double("network.nat", 0, 0, 1);
  spec.faults.nat_mapping = s.get_duration("network.nat_mapping", spec.faults.nat_mapping);
  if (spec.faults.nat_mapping <= Duration::zero()) s.fail("network.nat_mapping", "must be positive");
  if (spec.faults.rto_min <= Duration::zero()) s.fail("network.rto_min", "must be positive");
  spec.auth.on = s.get_bool("network.authenticate", spec.auth.on);
  spec.auth.swarm_secret = s.get_string("network.swarm_secret", "");
  spec.auth.proof_cost = s.get_duration("network.proof_cost", spec.auth.proof_cost);
  spec.auth.id_work_bits = static_cast<unsigned>(s.get_int("network.id_work_bits", 0, 0, 24));
  if (spec.auth.proof_cost < Duration::zero()) s.fail("network.proof_cost", "must not be negative");
  spec.auth.modelled_proofs = s.get_string("network.proofs", "signed", {"signed", "modelled"}) == "modelled";
  if (spec.auth.modelled_proofs && spec.backend != "sim")
    s.fail("network.proofs", "modelled proofs are for simulations: live peers sign their proofs");
  spec.lean_stack = s.get_string("network.stack", "full", {"full", "lean"}) == "lean";
  if (spec.lean_stack && spec.backend != "sim") s.fail("network.stack", "the network stack is chosen in ns-3 runs only");
  spec.event_queue = s.get_string("network.event_queue", spec.event_queue, {"buckets", "heap", "map"});
  if (s.has("network.event_queue") && spec.backend != "sim")
    s.fail("network.event_queue", "the event queue is chosen in ns-3 runs only");
  if (!spec.auth.on && !spec.auth.swarm_secret.empty())
    s.fail("network.swarm_secret", "a swarm secret is checked by the handshake: set network.authenticate = true");
  auto window = [&](const std::string& name) -> std::optional<FaultWindow> {
    const std::string k = "faults." + name;
    if (!s.has(k)) return std::nullopt;
    FaultWindow w;
    w.at = s.get_duration(k + ".at", Duration::zero());
    w.duration = s.get_duration(k + ".duration", Duration::zero());
    if (w.duration <= Duration::zero()) s.fail(k + ".duration", "a fault window needs a positive duration");
    w.every = s.get_duration(k + ".every", Duration::zero());
    if (w.every != Duration::zero() && (w.every <= w.duration || w.every < std::chrono::seconds(1)))
      s.fail(k + ".every", "must be at least 1 s and longer than the window's duration");
    w.fraction = s.get_double(k + ".fraction", 0, 0, 1);
    if (w.fraction <= 0) s.fail(k + ".fraction", "the share of peers the fault strikes: above 0, at most 1");
    if (name == "latency_spike") {
      w.extra_latency = s.get_duration(k + ".extra", Duration::zero());
      if (w.extra_latency <= Duration::zero()) s.fail(k + ".extra", "the added one-way latency must be positive");
    }
    if (name == "bandwidth_drop") {
      w.bandwidth_factor = s.get_double(k + ".factor", 0, 0, 1);
      if (w.bandwidth_factor <= 0 || w.bandwidth_factor >= 1) s.fail(k + ".factor", "the bandwidth multiplier: above 0, below 1");
    }
    return w;
  };
  spec.inject.drop_reply = s.get_double("faults.inject.drop_reply", 0, 0, 1);
  spec.inject.delay_reply = s.get_double("faults.inject.delay_reply", 0, 0, 1);
  spec.inject.delay_max = s.get_duration("faults.inject.delay_max", spec.inject.delay_max);
  spec.inject.slow_handler = s.get_double("faults.inject.slow_handler", 0, 0, 1);
  spec.inject.slow_max = s.get_duration("faults.inject.slow_max", spec.inject.slow_max);
  spec.inject.early_timeout = s.get_double("faults.inject.early_timeout", 0, 0, 1);
  if (spec.inject.delay_max < Duration::zero() || spec.inject.slow_max < Duration::zero())
    s.fail("faults.inject", "delays must not be negative");
  spec.faults.partition = window("partition");
  spec.faults.latency_spike = window("latency_spike");
  spec.faults.bandwidth_drop = window("bandwidth_drop");
  spec.faults.stall = window("stall");

  const auto churn = s.get_string("churn.model", "none", {"none", "exponential", "weibull", "trace"});
  spec.churn.kind = churn == "none"          ? ChurnSpec::Kind::kNone
                    : churn == "exponential" ? ChurnSpec::Kind::kExponential
                    : churn == "weibull"     ? ChurnSpec::Kind::kWeibull
                                             : ChurnSpec::Kind::kTrace;
  if (spec.churn.kind == ChurnSpec::Kind::kTrace) {
    std::string path = s.get_string("churn.trace", "");
    if (path.empty()) s.fail("churn.trace", "the trace model needs a trace file");
    spec.churn.trace = read_churn_trace(path_beside(s, path), spec.peers);
  }
  spec.churn.mean_session = s.get_duration("churn.mean_session", spec.churn.mean_session);
  spec.churn.mean_downtime = s.get_duration("churn.mean_downtime", spec.churn.mean_downtime);
  spec.churn.weibull_shape = s.get_double("churn.weibull_shape", spec.churn.weibull_shape, 0.05, 20);
  spec.churn.keep_identity = s.get_bool("churn.keep_identity", spec.churn.keep_identity);
  spec.churn.keep_state = s.get_bool("churn.keep_state", spec.churn.keep_state);
  if (spec.churn.kind != ChurnSpec::Kind::kNone && spec.churn.mean_session <= Duration::zero())
    s.fail("churn.mean_session", "must be positive");

  spec.live_host = s.get_string("live.host", spec.live_host);
  if (!Endpoint::parse(spec.live_host + ":1")) s.fail("live.host", "'" + spec.live_host + "' is not an IPv4 address");
  spec.live_base_port = static_cast<std::uint16_t>(s.get_int("live.base_port", 0, 0, 65535));
  spec.live_emulated_latency = s.get_duration("live.emulated_latency", Duration::zero());
  // Live settings are read in both worlds (so that one file serves both) and used live only.
  spec.live_processes = s.get_bool("live.processes", false);
  if (spec.live_processes && !spec.auth.on)
    s.fail("network.authenticate", "live peer processes always prove their keys; turn it off only for peers the runner runs");
  if (spec.live_processes && spec.churn.keep_state)
    s.fail("churn.keep_state", "a live peer process that is killed restarts empty; kept state is for peers the runner runs");
  // Live, the runner applies loss, partitions and latency spikes at each peer's transport when
  // the peers run in its process, and stalls to peer processes (SIGSTOP, then SIGCONT); the rest
  // needs the network itself.
  if (spec.backend == "live" && spec.faults.any()) {
    const auto& f = spec.faults;
    if (spec.live_processes && (f.loss > 0 || f.partition || f.latency_spike))
      s.fail(f.loss > 0 ? "network.loss" : f.partition ? "faults.partition" : "faults.latency_spike",
             "loss, partitions and latency spikes reach live peers run in one process, not peer processes (live.processes)");
    if (f.nat > 0) s.fail("network.nat", "NAT is simulated by ns-3 only");
    if (f.stall && !spec.live_processes)
      s.fail("faults.stall", "a stalled peer is simulated by ns-3, or frozen live as a peer process (live.processes = true)");
    if (f.bandwidth_drop) s.fail("faults.bandwidth_drop", "bandwidth is simulated by ns-3 only");
  }

  // The workload: every name the registry knows is allowed, and its type reads its own keys.
  spec.workload = s.get_string("workload.kind", spec.workload, WorkloadRegistry::names());
  const WorkloadType& type = *WorkloadRegistry::find(spec.workload);
  spec.uses_dht = type.uses_dht;
  // LibTorch trainer and expert processes (training and dmoe as live.processes) run their DHT
  // nodes with the protocol's defaults and k = 8 unless dht.k says otherwise; the other dht keys
  // would not reach them, so they are refused there.
  const bool torch_processes =
      spec.backend == "live" && spec.live_processes && (spec.workload == "training" || spec.workload == "dmoe");
  if (spec.uses_dht) {
    auto& d = spec.dht;
    auto& c = d.config;
    if (torch_processes)
      for (const std::string& key : s.keys_in("dht"))
        if (key != "dht.k" && key != "dht.bootstrap_peers" && key != "dht.join_window")
          s.fail(key, "LibTorch trainer and expert processes run their DHT nodes with the protocol's defaults; of the protocol's "
                      "dht keys only dht.k reaches them");
    c.k = static_cast<std::size_t>(s.get_int("dht.k", torch_processes ? 8 : static_cast<std::int64_t>(c.k), 1, 64));
    c.alpha = static_cast<std::size_t>(s.get_int("dht.alpha", static_cast<std::int64_t>(c.alpha), 1, 32));
    c.depth_modulo = static_cast<int>(s.get_int("dht.depth_modulo", c.depth_modulo, 1, 16));
    c.rpc_timeout = s.get_duration("dht.rpc_timeout", c.rpc_timeout);
    c.refresh_period = s.get_duration("dht.refresh", c.refresh_period);
    c.lru_ping_after = s.get_duration("dht.lru_ping_after", c.lru_ping_after);
    c.replicate_period = s.get_duration("dht.replicate", c.replicate_period);
    auto& st = c.storage;
    st.max_records = static_cast<std::size_t>(s.get_int("dht.max_records", static_cast<std::int64_t>(st.max_records), 1, 100'000'000));
    st.max_bytes = static_cast<std::size_t>(
        s.get_int("dht.max_storage_bytes", static_cast<std::int64_t>(st.max_bytes), 4096, std::int64_t{1} << 40));
    st.source_bytes = static_cast<std::size_t>(
        s.get_int("dht.source_quota_bytes", static_cast<std::int64_t>(st.source_bytes), 1024, std::int64_t{1} << 40));
    st.ip_bytes = static_cast<std::size_t>(
        s.get_int("dht.ip_quota_bytes", static_cast<std::int64_t>(st.ip_bytes), 1024, std::int64_t{1} << 40));
    st.max_ttl = s.get_duration("dht.max_ttl", st.max_ttl);
    c.cache_on_lookup = s.get_bool("dht.cache", c.cache_on_lookup);
    c.store_along_max_bytes = static_cast<std::size_t>(
        s.get_int("dht.store_along", static_cast<std::int64_t>(c.store_along_max_bytes), 0, 1 << 20));
    c.bucket_ip_limit = static_cast<std::size_t>(s.get_int("dht.bucket_ip_limit", static_cast<std::int64_t>(c.bucket_ip_limit), 0, 64));
    c.bucket_subnet_limit = static_cast<std::size_t>(s.get_int("dht.bucket_subnet_limit", 0, 0, 64));
    c.lookup_ip_limit = static_cast<std::size_t>(s.get_int("dht.lookup_ip_limit", static_cast<std::int64_t>(c.lookup_ip_limit), 0, 64));
    c.lookup_subnet_limit = static_cast<std::size_t>(s.get_int("dht.lookup_subnet_limit", 0, 0, 64));
    c.disjoint_paths = static_cast<std::size_t>(s.get_int("dht.disjoint_paths", 1, 1, 8));
    d.schema = s.get_string_table("dht.schema", [](const std::string& pattern, const std::string& rule) {
      return optim::check_schema_rule(optim::SchemaRule{pattern, rule});
    });
    c.blacklist_base = s.get_duration("dht.blacklist", c.blacklist_base);
    c.join_refresh_buckets =
        static_cast<std::size_t>(s.get_int("dht.join_refresh", static_cast<std::int64_t>(c.join_refresh_buckets), 0, 160));
    d.bootstrap_peers = static_cast<std::uint32_t>(s.get_int("dht.bootstrap_peers", d.bootstrap_peers, 1, spec.peers));
    d.join_window = s.get_duration("dht.join_window", d.join_window);
  }
  if (spec.live_processes && spec.backend == "live") {
    const ProcessLauncher* launcher = WorkloadRegistry::launcher(spec.workload);
    if (!launcher) s.fail("live.processes", "the " + spec.workload + " workload has no live process swarm; it runs live in one process");
    if (spec.churn.kind != ChurnSpec::Kind::kNone && !launcher->churn)
      s.fail("churn.model", "a live " + spec.workload + " swarm of processes takes no churn; without live.processes it runs "
                            "live in one process, churn included");
  }
  if (const std::string map = s.get_string("live.netns", ""); !map.empty()) {
    spec.live_netns = read_netns_map(path_beside(s, map));
    const ProcessLauncher* launcher = WorkloadRegistry::launcher(spec.workload);
    if (!spec.live_processes || !launcher || !launcher->netns)
      s.fail("live.netns", "only live swarms of processes (live.processes = true) whose workload places peers in namespaces "
                           "(the dht) run peers in namespaces");
    if (spec.live_netns.size() < spec.peers)
      s.fail("live.netns", map + " names " + std::to_string(spec.live_netns.size()) + " namespaces for " +
                               std::to_string(spec.peers) + " peers");
  }
  spec.live_peers_per_process = static_cast<std::uint32_t>(s.get_int("live.peers_per_process", 1, 1, 1024));
  if (spec.live_peers_per_process > 1 && spec.backend == "live") {
    if (!spec.live_processes || spec.workload != "dht")
      s.fail("live.peers_per_process", "packs live DHT peer processes (live.processes = true, workload \"dht\")");
    if (spec.churn.kind != ChurnSpec::Kind::kNone || spec.faults.stall)
      s.fail("live.peers_per_process", "churn and stalls strike one peer's process; with several peers to a process they would strike all");
    if (!spec.live_netns.empty()) s.fail("live.peers_per_process", "a network namespace holds one peer's process");
  }
  spec.config = type.parse(s, spec);

  s.get_sweep();  // validated here too; `apiary sweep` runs it
  s.check_unused();
  spec.scenario_text = s.text();
  spec.scenario_source = s.source_name();
  return spec;
}

}  // namespace apiary
