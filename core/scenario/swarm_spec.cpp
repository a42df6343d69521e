#include "core/scenario/swarm_spec.hpp"

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

namespace {

// A path in a scenario is relative to the scenario file.
std::string beside(const Scenario& s, std::string path) {
  if (!path.empty() && path[0] != '/') {
    const auto slash = s.source_name().rfind('/');
    if (slash != std::string::npos) path = s.source_name().substr(0, slash + 1) + path;
  }
  return path;
}

void parse_averaging(Scenario& s, SwarmSpec& spec) {
  auto& a = spec.averaging;
  a.grouping = s.get_string("averaging.grouping", a.grouping, {"moshpit", "random", "gossip", "allreduce"});
  a.grid_side = static_cast<std::uint32_t>(s.get_int("averaging.grid_side", a.grid_side, 1, 1 << 20));
  a.grid_dims = static_cast<std::uint32_t>(s.get_int("averaging.grid_dims", a.grid_dims, 1, 16));
  a.placement = s.get_string("averaging.placement", a.placement, {"auto", "fill", "random"});
  a.group_size = static_cast<std::uint32_t>(s.get_int("averaging.group_size", a.group_size, 2, 4096));
  a.elements = static_cast<std::uint64_t>(s.get_int("averaging.elements", static_cast<std::int64_t>(a.elements), 1, std::int64_t{1} << 32));
  a.rounds = static_cast<std::uint32_t>(s.get_int("averaging.rounds", a.rounds, 1, 100000));
  a.start = s.get_duration("averaging.start", a.start);
  a.period = s.get_duration("averaging.period", a.period);
  if (a.period <= Duration::zero()) s.fail("averaging.period", "must be positive");
  a.fail_probability = s.get_double("averaging.fail_probability", a.fail_probability, 0, 1);
  a.target_variance = s.get_double("averaging.target_variance", a.target_variance, 0, 1e30);
  a.stop_at_target = s.get_bool("averaging.stop_at_target", a.stop_at_target);
  a.client_fraction = s.get_double("averaging.client_fraction", a.client_fraction, 0, 1);
  a.aux_fraction = s.get_double("averaging.aux_fraction", a.aux_fraction, 0, 1);
  if (a.client_fraction + a.aux_fraction >= 1) s.fail("averaging.aux_fraction", "client_fraction + aux_fraction must be below 1");
  auto& m = a.matchmaking;
  const std::int64_t natural = a.grouping == "moshpit" ? a.grid_side : a.grouping == "random" ? a.group_size : 2;
  m.target_group_size = static_cast<std::size_t>(s.get_int("averaging.target_group_size", natural, 1, 4096));
  m.min_group_size = static_cast<std::size_t>(s.get_int("averaging.min_group_size", 2, 1, 4096));
  if (m.min_group_size > m.target_group_size) s.fail("averaging.min_group_size", "must not exceed target_group_size");
  m.budget = s.get_duration("averaging.matchmaking_budget", std::chrono::seconds(3));
  m.poll = s.get_duration("averaging.poll", std::chrono::milliseconds(500));
  if (m.budget <= Duration::zero() || m.poll <= Duration::zero()) s.fail("averaging.poll", "budget and poll must be positive");
  auto& r = a.allreduce;
  r.piece_elements = static_cast<std::uint64_t>(s.get_int("averaging.piece_elements", static_cast<std::int64_t>(r.piece_elements), 1, 1 << 26));
  r.window = static_cast<std::uint32_t>(s.get_int("averaging.window", r.window, 1, 1024));
  r.min_part = static_cast<std::uint64_t>(s.get_int("averaging.min_part", static_cast<std::int64_t>(r.min_part), 0, std::int64_t{1} << 32));
  r.sender_timeout = s.get_duration("averaging.sender_timeout", r.sender_timeout);
  r.reducer_timeout = s.get_duration("averaging.reducer_timeout", r.reducer_timeout);
  if (r.reducer_timeout <= r.sender_timeout) s.fail("averaging.reducer_timeout", "must be longer than sender_timeout");
  const auto codec = s.get_string("averaging.codec", "float32",
                                  {"float32", "float16", "scaled-float16", "uniform8", "quantile8", "blockwise8"});
  for (int c = 0; c <= 5; ++c)
    if (codec == compression::to_string(static_cast<compression::Codec>(c))) r.codec.codec = static_cast<compression::Codec>(c);
  r.codec.min_elements = static_cast<std::uint64_t>(s.get_int("averaging.codec_min_elements", 0, 0, std::int64_t{1} << 40));
  if (a.start + a.period * a.rounds > spec.duration)
    s.fail("averaging.rounds", "the rounds end after the run does: start + rounds * period = " +
                                   format_duration(a.start + a.period * a.rounds) + " > duration " + format_duration(spec.duration));
}

void parse_training(Scenario& s, SwarmSpec& spec) {
  auto& t = spec.training;
  t.mode = s.get_string("training.mode", t.mode, {"collaborative", "diloco"});
  t.dataset_dir = beside(s, s.get_string("training.dataset_dir", t.dataset_dir));
  t.train_samples = static_cast<std::uint64_t>(s.get_int("training.train_samples", 0, 0, 60000));
  t.eval_samples = static_cast<std::uint64_t>(s.get_int("training.eval_samples", static_cast<std::int64_t>(t.eval_samples), 1, 10000));
  t.batch_size = static_cast<std::uint32_t>(s.get_int("training.batch_size", t.batch_size, 1, 1 << 16));
  t.target_batch = static_cast<std::uint64_t>(s.get_int("training.target_batch", static_cast<std::int64_t>(t.target_batch), 1, std::int64_t{1} << 40));
  t.steps = static_cast<std::uint32_t>(s.get_int("training.steps", t.steps, 1, 10'000'000));
  t.learning_rate = s.get_double("training.learning_rate", t.learning_rate, 0, 1e6);
  t.momentum = s.get_double("training.momentum", t.momentum, 0, 0.999);
  t.delayed_updates = s.get_bool("training.delayed_updates", t.delayed_updates);
  t.local_updates = s.get_bool("training.local_updates", t.local_updates);
  t.average_state_every = static_cast<std::uint32_t>(s.get_int("training.average_state_every", t.average_state_every, 0, 1'000'000));
  if (t.local_updates && t.average_state_every == 0)
    s.fail("training.average_state_every", "local updates need parameter averaging every N epochs (N >= 1)");
  t.inner_steps = static_cast<std::uint32_t>(s.get_int("training.inner_steps", t.inner_steps, 1, 10'000'000));
  t.outer_lr = s.get_double("training.outer_lr", t.outer_lr, 0, 1e6);
  t.outer_momentum = s.get_double("training.outer_momentum", t.outer_momentum, 0, 0.999);
  t.samples_per_second = s.get_distribution("training.samples_per_second", t.samples_per_second, "rate");
  if (t.samples_per_second.mean() <= 0) s.fail("training.samples_per_second", "must be positive");
  t.start = s.get_duration("training.start", t.start);
  t.eval_period = s.get_duration("training.eval_period", t.eval_period);
  t.progress_period = s.get_duration("training.progress_period", t.progress_period);
  if (t.eval_period <= Duration::zero()) s.fail("training.eval_period", "must be positive");
  if (t.progress_period <= Duration::zero()) s.fail("training.progress_period", "must be positive");
  t.target_loss = s.get_double("training.target_loss", t.target_loss, 0, 1e6);
  t.stop_at_target = s.get_bool("training.stop_at_target", t.stop_at_target);
  t.client_fraction = s.get_double("training.client_fraction", t.client_fraction, 0, 1);
  t.aux_fraction = s.get_double("training.aux_fraction", t.aux_fraction, 0, 1);
  if (t.client_fraction + t.aux_fraction >= 1) s.fail("training.aux_fraction", "client_fraction + aux_fraction must be below 1");
  if (t.mode == "diloco" && (t.aux_fraction > 0 || t.client_fraction > 0))
    s.fail("training.mode", "client and auxiliary peers take part in the collaborative mode only");
  if (spec.dht.bootstrap_peers + std::lround(t.aux_fraction * spec.peers) + std::lround(t.client_fraction * spec.peers) > spec.peers)
    s.fail("training.aux_fraction", "the DHT's bootstrap peers train as full peers; too few peers are left for the client and auxiliary fractions");
  t.max_wait = s.get_duration("training.max_wait", t.max_wait);
  t.hidden = static_cast<std::uint32_t>(s.get_int("training.hidden", t.hidden, 1, 1 << 16));
  t.eval_every = static_cast<std::uint32_t>(s.get_int("training.eval_every", t.eval_every, 0, 1 << 30));
  t.baseline = s.get_bool("training.baseline", t.baseline);
  auto& m = t.matchmaking;
  m.prefix = "mm";
  m.target_group_size = static_cast<std::size_t>(s.get_int("training.target_group_size", spec.peers, 1, 4096));
  m.min_group_size = static_cast<std::size_t>(s.get_int("training.min_group_size", 2, 1, 4096));
  if (m.min_group_size > m.target_group_size) s.fail("training.min_group_size", "must not exceed target_group_size");
  m.budget = s.get_duration("training.matchmaking_budget", std::chrono::seconds(5));
  m.poll = s.get_duration("training.matchmaking_poll", std::chrono::milliseconds(250));
  if (m.budget <= Duration::zero() || m.poll <= Duration::zero()) s.fail("training.matchmaking_poll", "budget and poll must be positive");
  auto& r = t.allreduce;
  r.min_part = static_cast<std::uint64_t>(s.get_int("training.min_part", 256, 0, std::int64_t{1} << 32));
  r.sender_timeout = s.get_duration("training.sender_timeout", std::chrono::seconds(5));
  r.reducer_timeout = s.get_duration("training.reducer_timeout", std::chrono::seconds(15));
  if (r.reducer_timeout <= r.sender_timeout) s.fail("training.reducer_timeout", "must be longer than sender_timeout");
  const auto codec = s.get_string("training.codec", "float32",
                                  {"float32", "float16", "scaled-float16", "uniform8", "quantile8", "blockwise8"});
  for (int c = 0; c <= 5; ++c)
    if (codec == compression::to_string(static_cast<compression::Codec>(c))) r.codec.codec = static_cast<compression::Codec>(c);
  r.codec.min_elements = static_cast<std::uint64_t>(s.get_int("training.codec_min_elements", 0, 0, std::int64_t{1} << 40));
}

void parse_dmoe_live(Scenario& s, SwarmSpec& spec) {
  auto& d = spec.dmoe_live;
  d.servers = static_cast<std::uint32_t>(s.get_int("dmoe.servers", d.servers, 1, 256));
  d.grid_side = static_cast<std::uint32_t>(s.get_int("dmoe.grid_side", d.grid_side, 1, 256));
  d.grid_dims = static_cast<std::uint32_t>(s.get_int("dmoe.grid_dims", d.grid_dims, 1, 4));
  d.dim = s.get_int("dmoe.dim", d.dim, 1, 1 << 16);
  d.hidden = s.get_int("dmoe.hidden", d.hidden, 1, 1 << 16);
  d.k = static_cast<std::uint32_t>(s.get_int("dmoe.k", d.k, 1, 256));
  d.k_min = static_cast<std::uint32_t>(s.get_int("dmoe.k_min", d.k_min, 0, 256));
  if (d.k_min > d.k) s.fail("dmoe.k_min", "must not exceed dmoe.k");
  d.routing = s.get_string("dmoe.routing", d.routing, {"batch", "sample", "switch"});
  d.grace = s.get_duration("dmoe.grace", d.grace);
  d.forward_timeout = s.get_duration("dmoe.forward_timeout", d.forward_timeout);
  d.backward_timeout = s.get_duration("dmoe.backward_timeout", d.backward_timeout);
  d.fail_probability = s.get_double("dmoe.fail_probability", d.fail_probability, 0, 1);
  d.codec = s.get_string("dmoe.codec", d.codec, {"float32", "float16", "scaled-float16", "uniform8", "quantile8", "blockwise8"});
  d.steps = static_cast<std::uint32_t>(s.get_int("dmoe.steps", d.steps, 1, 10'000'000));
  d.batch_size = static_cast<std::uint32_t>(s.get_int("dmoe.batch_size", d.batch_size, 1, 1 << 16));
  d.eval_every = static_cast<std::uint32_t>(s.get_int("dmoe.eval_every", d.eval_every, 0, 1 << 30));
  d.eval_samples = static_cast<std::uint64_t>(s.get_int("dmoe.eval_samples", static_cast<std::int64_t>(d.eval_samples), 1, 10000));
  d.train_samples = static_cast<std::uint64_t>(s.get_int("dmoe.train_samples", 0, 0, 60000));
  d.learning_rate = s.get_double("dmoe.learning_rate", d.learning_rate, 0, 1e6);
  d.dataset_dir = beside(s, s.get_string("dmoe.dataset_dir", d.dataset_dir));
  d.baseline = s.get_bool("dmoe.baseline", d.baseline);
}

void parse_dmoe_sim(Scenario& s, SwarmSpec& spec) {
  auto& d = spec.dmoe_sim;
  d.mode = s.get_string("dmoe.mode", d.mode, {"dmoe", "model-parallel"});
  d.servers = static_cast<std::uint32_t>(s.get_int("dmoe.servers", d.servers, 1, 100000));
  if (d.servers >= spec.peers) s.fail("dmoe.servers", "leaves no peer to train: peers = " + std::to_string(spec.peers));
  d.layers = static_cast<std::uint32_t>(s.get_int("dmoe.layers", d.layers, 1, 1024));
  d.grid_side = static_cast<std::uint32_t>(s.get_int("dmoe.grid_side", d.grid_side, 1, 4096));
  d.grid_dims = static_cast<std::uint32_t>(s.get_int("dmoe.grid_dims", d.grid_dims, 1, 4));
  d.k = static_cast<std::uint32_t>(s.get_int("dmoe.k", d.k, 1, 256));
  d.k_min = static_cast<std::uint32_t>(s.get_int("dmoe.k_min", d.k_min, 1, 256));
  if (d.k_min > d.k) s.fail("dmoe.k_min", "must not exceed dmoe.k");
  d.batch_size = static_cast<std::uint32_t>(s.get_int("dmoe.batch_size", d.batch_size, 1, 1 << 20));
  d.hidden = static_cast<std::uint32_t>(s.get_int("dmoe.hidden", d.hidden, 1, 1 << 20));
  d.concurrency = static_cast<std::uint32_t>(s.get_int("dmoe.concurrency", d.concurrency, 1, 4096));
  d.forward_speed = s.get_distribution("dmoe.forward_speed", d.forward_speed, "rate");
  d.backward_speed = s.get_distribution("dmoe.backward_speed", d.backward_speed, "rate");
  d.timeout = s.get_duration("dmoe.timeout", d.timeout);
  d.grace = s.get_duration("dmoe.grace", d.grace);
  d.start = s.get_duration("dmoe.start", d.start);
  d.fail_probability = s.get_double("dmoe.fail_probability", d.fail_probability, 0, 1);
}

}  // namespace

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
    spec.latency_matrix = read_latency_matrix(beside(s, matrix));

  const auto churn = s.get_string("churn.model", "none", {"none", "exponential", "weibull", "trace"});
  spec.churn.kind = churn == "none"          ? ChurnSpec::Kind::kNone
                    : churn == "exponential" ? ChurnSpec::Kind::kExponential
                    : churn == "weibull"     ? ChurnSpec::Kind::kWeibull
                                             : ChurnSpec::Kind::kTrace;
  if (spec.churn.kind == ChurnSpec::Kind::kTrace) {
    std::string path = s.get_string("churn.trace", "");
    if (path.empty()) s.fail("churn.trace", "the trace model needs a trace file");
    spec.churn.trace = read_churn_trace(beside(s, path), spec.peers);
  }
  spec.churn.mean_session = s.get_duration("churn.mean_session", spec.churn.mean_session);
  spec.churn.mean_downtime = s.get_duration("churn.mean_downtime", spec.churn.mean_downtime);
  spec.churn.weibull_shape = s.get_double("churn.weibull_shape", spec.churn.weibull_shape, 0.05, 20);
  if (spec.churn.kind != ChurnSpec::Kind::kNone && spec.churn.mean_session <= Duration::zero())
    s.fail("churn.mean_session", "must be positive");

  if (s.has("network.hop_delay")) spec.hop_delay = s.get_distribution("network.hop_delay", Distribution::fixed(0), "duration");
  spec.workload = s.get_string("workload.kind", spec.workload, {"ping", "dht", "averaging", "training", "dmoe"});
  if (spec.workload == "dmoe" && spec.backend == "live") parse_dmoe_live(s, spec);
  if (spec.workload == "dmoe" && spec.backend != "live") parse_dmoe_sim(s, spec);
  if (spec.workload == "dht" || spec.workload == "averaging" || spec.workload == "training" || spec.workload == "dmoe") {
    auto& d = spec.dht;
    auto& c = d.config;
    c.k = static_cast<std::size_t>(s.get_int("dht.k", static_cast<std::int64_t>(c.k), 1, 64));
    c.alpha = static_cast<std::size_t>(s.get_int("dht.alpha", static_cast<std::int64_t>(c.alpha), 1, 32));
    c.depth_modulo = static_cast<int>(s.get_int("dht.depth_modulo", c.depth_modulo, 1, 16));
    c.rpc_timeout = s.get_duration("dht.rpc_timeout", c.rpc_timeout);
    c.refresh_period = s.get_duration("dht.refresh", c.refresh_period);
    c.replicate_period = s.get_duration("dht.replicate", c.replicate_period);
    c.max_records = static_cast<std::size_t>(s.get_int("dht.max_records", static_cast<std::int64_t>(c.max_records), 1, 100'000'000));
    c.cache_on_lookup = s.get_bool("dht.cache", c.cache_on_lookup);
    c.blacklist_base = s.get_duration("dht.blacklist", c.blacklist_base);
    c.join_refresh_buckets = static_cast<std::size_t>(s.get_int("dht.join_refresh", static_cast<std::int64_t>(c.join_refresh_buckets), 0, 160));
    d.bootstrap_peers = static_cast<std::uint32_t>(s.get_int("dht.bootstrap_peers", d.bootstrap_peers, 1, spec.peers));
    d.join_window = s.get_duration("dht.join_window", d.join_window);
    d.start = s.get_duration("workload.start", d.start);
    d.store_rate = s.get_rate("workload.store_rate", d.store_rate);
    d.get_rate = s.get_rate("workload.get_rate", d.get_rate);
    d.ttl = s.get_duration("workload.ttl", d.ttl);
    if (d.ttl <= Duration::zero()) s.fail("workload.ttl", "must be positive");
    d.value_size = s.get_bytes("workload.value_size", d.value_size);
    d.keys = static_cast<std::uint32_t>(s.get_int("workload.keys", d.keys, 1, 10'000'000));
    d.concurrency = static_cast<std::uint32_t>(s.get_int("workload.concurrency", d.concurrency, 1, 4096));
    if (d.value_size > c.limits.max_value) s.fail("workload.value_size", "larger than the DHT's value limit (64KiB)");
  }
  if (spec.workload == "averaging") parse_averaging(s, spec);
  if (spec.workload == "training") parse_training(s, spec);
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
  spec.live_emulated_latency = s.get_duration("live.emulated_latency", Duration::zero());
  if (const std::string map = s.get_string("live.netns", ""); !map.empty()) {
    spec.live_netns = read_netns_map(beside(s, map));
    if (spec.backend != "live" || spec.workload != "dht")
      s.fail("live.netns", "only live DHT swarms (backend = \"live\", workload.kind = \"dht\") run peers in namespaces");
    if (spec.live_netns.size() < spec.peers)
      s.fail("live.netns", map + " names " + std::to_string(spec.live_netns.size()) + " namespaces for " +
                               std::to_string(spec.peers) + " peers");
  }

  // Live, churn runs in the in-process swarm (ping, averaging) and in live training (a trace);
  // the multi-process DHT and DMoE runners have none, and silently ignoring it would mislead.
  if (spec.backend == "live" && spec.churn.kind != ChurnSpec::Kind::kNone &&
      (spec.workload == "dht" || spec.workload == "dmoe"))
    s.fail("churn.model", "live " + spec.workload + " swarms take no churn (it runs in ns-3, and live for the ping, "
                                                   "averaging and training workloads)");

  s.get_sweep();  // validated here too; `apiary sweep` runs it
  s.check_unused();
  spec.scenario_text = s.text();
  spec.scenario_source = s.source_name();
  return spec;
}

}  // namespace apiary

namespace apiary {

dht::Identity swarm_identity(const SwarmSpec& spec, std::uint32_t index) {
  return dht::Identity::from_seed(spec.seed * 1000003ULL + index);
}

PeerStack::PeerStack(Runtime& rt, const SwarmSpec& spec, const std::vector<Endpoint>& directory,
                     std::uint32_t index, const AveragingDriver* avg_driver, const TrainingDriver* train_driver)
    : rt_(rt), spec_(spec), directory_(directory), index_(index), rpc_(std::make_unique<Rpc>(rt)) {
  if (spec.workload == "ping") {
    ping_ = std::make_unique<PingApp>(rt, *rpc_, directory, spec.ping);
  } else {
    std::vector<std::shared_ptr<dht::Validator>> validators{std::make_shared<dht::SignatureValidator>()};
    dht_ = std::make_unique<dht::DhtNode>(rt, *rpc_, swarm_identity(spec, index).id(),
                                          spec.dht.config, std::move(validators));
  }
  if (spec.workload == "averaging") {
    if (!avg_driver) throw std::logic_error("the averaging workload needs its driver");
    avg_ = std::make_unique<AveragingApp>(rt, *rpc_, dht_.get(), spec.averaging, avg_driver->kind_of(index),
                                          avg_driver->initial_position(index));
    avg_->values() = avg_driver->initial_values(index);
  }
  if (spec.workload == "dmoe" && spec.backend == "sim") {
    const auto& d = spec.dmoe_sim;
    if (index < d.servers) {
      Rng speed(spec.seed ^ 0x64736e6f6465ULL);
      Rng mine = speed.fork(index + 1);
      const double fwd = std::max(1.0, d.forward_speed.sample(mine)), bwd = std::max(1.0, d.backward_speed.sample(mine));
      dmoe_server_ = std::make_unique<DmoeServerApp>(rt, *rpc_, *dht_, d, index, fwd, bwd);
    } else {
      dmoe_trainer_ = std::make_unique<DmoeTrainerApp>(rt, *rpc_, *dht_, d, directory);
    }
  }
  if (spec.workload == "training") {
    if (!train_driver) throw std::logic_error("the training workload needs its driver");
    train_ = std::make_unique<TrainingApp>(rt, *rpc_, *dht_, swarm_identity(spec, index), *train_driver, index);
  }
}

void PeerStack::begin_training(bool newcomer) {
  if (!train_) return;
  if (joined_)
    train_->start(newcomer);
  else
    pending_training_ = newcomer;
}

void PeerStack::start() {
  if (ping_) {
    ping_->start();
    return;
  }
  if (avg_ && spec_.averaging.grouping != "moshpit") {  // static groups: no DHT needed
    joined_ = true;
    return;
  }
  std::vector<Endpoint> seeds;
  for (std::uint32_t i = 0; i < spec_.dht.bootstrap_peers && i < directory_.size(); ++i)
    if (i != index_) seeds.push_back(directory_[i]);
  dht_->spawn_join(std::move(seeds), [this](std::size_t contacts) {
    joined_ = true;
    rt_.observer.count("dht.joins");
    rt_.observer.sample("dht.join.contacts", static_cast<double>(contacts));
    dht_->start_maintenance();
    if (dmoe_server_) dmoe_server_->start();
    if (dmoe_trainer_) {
      const Duration wait = std::max(Duration::zero(), TimePoint(spec_.dmoe_sim.start) - rt_.now());
      scope_.spawn([](Runtime& rt, DmoeTrainerApp* t, Duration delay) -> Task<void> {
        co_await sleep_on(rt.timers, delay);
        t->start();
      }(rt_, dmoe_trainer_.get(), wait));
    }
    if (train_ && pending_training_) {
      train_->start(*pending_training_);
      pending_training_.reset();
    }
  });
}

PeerStack::~PeerStack() {
  rpc_->shutdown();  // no handler runs after this
  scope_.destroy_all();
  avg_.reset();
  train_.reset();
  dmoe_trainer_.reset();
  dmoe_server_.reset();
  dht_.reset();
  ping_.reset();
  rpc_.reset();
}

}  // namespace apiary
