#include <utility>
#include "real/live_dht.hpp"

#include <boost/asio.hpp>
#include <cstdio>
#include <filesystem>
#include <fcntl.h>
#include <signal.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#include <fstream>
#include <sstream>

#include "core/auth/handshake.hpp"
#include "core/optim/schema.hpp"
#include "core/runtime/metrics.hpp"
#include "real/live_node.hpp"
#include "real/live_runtime.hpp"
#include "real/asio_timer.hpp"
#include "real/exit_codes.hpp"
#include "real/processes.hpp"
#include "harness/churn.hpp"
#include "harness/fault_schedule.hpp"
#include "harness/workloads/dht.hpp"

namespace apiary::real {

namespace asio = boost::asio;

namespace {

struct IoContext {
  asio::io_context io;
};

// One live node (server or client) on its own io_context, run by the caller.
struct LiveNode : IoContext, LiveNodeStack {
  LiveNode(Endpoint listen, const dht::Identity& identity, dht::DhtConfig cfg, bool verbose, Duration delay = {},
           auth::AuthConfig auth_config = {}, bool dial_back = false, const std::vector<optim::SchemaRule>& schema = {})
      : LiveNodeStack(io, identity, LiveNodeOptions{listen, std::move(cfg), verbose, delay, std::move(auth_config), dial_back, schema}) {}
  // Runs the io_context until `t` completes or the deadline passes.
  template <class T>
  std::optional<T> run(Task<T> t, std::chrono::milliseconds deadline) {
    t.start();
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (!t.done() && std::chrono::steady_clock::now() < end) {
      io.run_one_for(std::chrono::milliseconds(20));
      throw_if_interrupted();
    }
    if (!t.done()) return std::nullopt;
    return t.result();
  }
};

}  // namespace

int run_live_peer(const LivePeerOptions& o) {
  std::vector<optim::SchemaRule> schema;
  for (const auto& r : o.schema) schema.push_back(optim::parse_schema_rule(r));  // a bad rule: an error before we start
  if (o.count < 1 || o.count > 1024) throw std::invalid_argument("--count must be in [1, 1024]");
  raise_open_files_limit();  // a peer holds up to LiveOptions::max_connections sockets
  const Endpoint listen = parse_endpoint_or_throw(o.listen, "--listen");
  if (o.count > 1 && listen.port != 0) throw std::invalid_argument("--count above 1 needs --listen IPV4:0 (a free port for each peer)");
  const LiveNodeOptions options{listen, o.config, o.verbose, Duration(static_cast<std::int64_t>(o.delay_ms * 1e6)),
                                auth_config_from(o.swarm_secret_file, o.id_work_bits), o.dial_back, schema};
  asio::io_context io;
  std::vector<std::unique_ptr<LiveNodeStack>> peers;
  std::string ready;
  for (std::uint32_t j = 0; j < o.count; ++j) {
    const std::string file = o.identity_file.empty() || j == 0 ? o.identity_file : o.identity_file + "." + std::to_string(j);
    const auto identity = identity_from(file, o.id_work_bits);
    peers.push_back(std::make_unique<LiveNodeStack>(io, identity, options));
    const std::string where = peers.back()->rt->local().to_string();
    std::printf("apiary peer %s listening on %s\n", identity.id().hex().c_str(), where.c_str());
    ready += identity.id().hex() + " " + where + "\n";
  }
  std::fflush(stdout);
  if (!o.ready_file.empty()) write_file_atomically(o.ready_file, ready);
  std::vector<Endpoint> seeds;
  for (const auto& j : o.join) seeds.push_back(parse_endpoint_or_throw(j, "--join"));
  // A peer told to join that reaches nobody does not carry on as a swarm of its own; a process
  // whose peers all failed to join exits (one that failed alone is reported and idles).
  std::size_t join_failures = 0;
  for (auto& p : peers) {
    if (!seeds.empty())
      p->node->spawn_join(seeds, [&, id = p->node->id().hex()](std::size_t contacts) {
        if (contacts == 0) {
          ++join_failures;
          std::fprintf(stderr, "apiary peer %s: could not join\n", id.c_str());
        }
        if (o.verbose) std::fprintf(stderr, "joined: %zu contacts\n", contacts);
      });
    p->node->start_maintenance();
  }
  const auto join_failed = [&] { return join_failures == peers.size(); };
  asio::signal_set signals(io, SIGINT, SIGTERM);
  bool stop = false;
  signals.async_wait([&](boost::system::error_code, int) { stop = true; });
  while (!stop && !join_failed()) io.run_one_for(std::chrono::milliseconds(200));
  if (join_failed()) {
    std::string list;
    for (const auto& j : o.join) list += (list.empty() ? "" : ", ") + j;
    std::fprintf(stderr, "apiary peer: could not join: no answer from %s\n", list.c_str());
    return kExitNoSwarm;
  }
  return 0;
}

namespace {
template <class F>
DhtClientResult with_client(const DhtClientOptions& o, F body) {
  DhtClientResult out;
  dht::DhtConfig cfg = o.config;
  cfg.client_mode = true;
  cfg.refresh_period = Duration::zero();
  cfg.replicate_period = Duration::zero();
  const auto identity = identity_from(o.identity_file, o.id_work_bits);
  LiveNode n(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 0}, identity, cfg, false, {}, auth_config_from(o.swarm_secret_file, o.id_work_bits));
  std::vector<Endpoint> seeds;
  for (const auto& v : o.via) seeds.push_back(parse_endpoint_or_throw(v, "--via"));
  auto joined = n.run(n.node->bootstrap(seeds), o.deadline);
  if (!joined || *joined == 0) {
    out.error = "could not reach any peer through --via";
    return out;
  }
  body(n, identity, out);
  return out;
}
}  // namespace

DhtFloodResult dht_client_flood(const DhtClientOptions& o, const DhtFloodOptions& f) {
  DhtFloodResult out;
  if (o.via.empty()) {
    out.error = "--via names no peer";
    return out;
  }
  const Endpoint victim = parse_endpoint_or_throw(o.via.front(), "--via");
  dht::DhtConfig cfg = o.config;
  cfg.client_mode = true;
  const auto identity = dht::Identity::generate_with_work(o.id_work_bits);
  LiveNode n(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 0}, identity, cfg, false, {}, auth_config_from(o.swarm_secret_file, o.id_work_bits));
  const Bytes value(f.value_bytes, 'x');
  const auto t0 = std::chrono::steady_clock::now();
  const TimePoint expiration = n.rt->now() + f.ttl;
  const dht::Sender me{identity.id(), true, false};  // a made-up id is refused: ids are bound to keys
  for (std::uint64_t at = 0; at < f.records;) {
    std::vector<Task<Result<dht::StoreReply>>> calls;
    for (std::size_t m = 0; m < f.in_flight && at < f.records; ++m) {
      dht::StoreRequest req{me, {}};
      for (std::size_t j = 0; j < f.per_message && at < f.records; ++j, ++at) {
        req.records.push_back(dht::Record{f.prefix + std::to_string(at), std::nullopt, value, expiration, {}});
        out.bytes += value.size();
      }
      out.sent += req.records.size();
      calls.push_back(n.rpc->call<dht::StoreReply>(victim, std::move(req), std::chrono::seconds(30)));
    }
    auto replies = n.run(when_all(std::move(calls)), std::chrono::seconds(120));
    if (!replies) {
      out.error = "the peer did not answer within 120 s";
      break;
    }
    for (auto& r : *replies) {
      if (!r.ok()) {
        ++out.unanswered;
        continue;
      }
      for (auto code : r->outcomes) ++out.outcomes[dht::name_of(static_cast<dht::StoreOutcome>(code))];
    }
  }
  out.seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
  return out;
}

std::uint64_t raise_open_files_limit() {
  rlimit lim{};
  if (getrlimit(RLIMIT_NOFILE, &lim) != 0) return 0;
  if (lim.rlim_cur < lim.rlim_max) {
    lim.rlim_cur = lim.rlim_max;
    setrlimit(RLIMIT_NOFILE, &lim);
    getrlimit(RLIMIT_NOFILE, &lim);
  }
  return lim.rlim_cur;
}

DhtHoldResult dht_client_hold(const DhtClientOptions& o, const DhtHoldOptions& h) {
  DhtHoldResult out;
  if (o.via.empty()) {
    out.error = "--via names no peer";
    return out;
  }
  raise_open_files_limit();
  const Endpoint victim = parse_endpoint_or_throw(o.via.front(), "--via");
  dht::DhtConfig cfg = o.config;
  cfg.client_mode = true;
  auto auth = auth_config_from(o.swarm_secret_file, o.id_work_bits);
  // Sequential pings from `n`; the latencies (ms) of those answered, and the first one's.
  auto pings = [&](LiveNode& n, const dht::Identity& id, std::size_t calls, double* first) {
    std::vector<double> ms;
    for (std::size_t i = 0; i < calls; ++i) {
      const auto t0 = std::chrono::steady_clock::now();
      auto r = n.run(n.rpc->call<dht::PingReply>(victim, dht::PingRequest{dht::Sender{id.id(), true, false}}, std::chrono::seconds(5)),
                     std::chrono::seconds(10));
      const double t = std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
      if (i == 0 && first) *first = t;
      if (r && r->ok()) ms.push_back(t);
    }
    return ms;
  };
  auto p50 = [](std::vector<double> v) {
    if (v.empty()) return 0.0;
    std::nth_element(v.begin(), v.begin() + static_cast<std::ptrdiff_t>(v.size() / 2), v.end());
    return v[v.size() / 2];
  };
  const auto me = dht::Identity::generate_with_work(o.id_work_bits);
  LiveNode n(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 0}, me, cfg, false, {}, auth);
  pings(n, me, 3, nullptr);  // connection and handshake made: what follows is the steady state
  auto before = pings(n, me, h.calls, nullptr);
  out.answered_before = before.size();
  out.p50_before_ms = p50(before);
  std::vector<std::unique_ptr<asio::ip::tcp::socket>> held;
  for (std::size_t i = 0; i < h.connections; ++i) {
    auto sock = std::make_unique<asio::ip::tcp::socket>(n.io);
    boost::system::error_code ec;
    if (h.source_addresses > 0) {
      sock->open(asio::ip::tcp::v4(), ec);
      if (!ec) sock->bind({asio::ip::address_v4(Endpoint::ipv4(127, 0, 0, static_cast<std::uint8_t>(2 + i % h.source_addresses))), 0}, ec);
    }
    if (!ec) sock->connect({asio::ip::address_v4(victim.ip), victim.port}, ec);
    if (ec) {
      ++out.failed_to_open;
      continue;
    }
    held.push_back(std::move(sock));
  }
  out.opened = held.size();
  // Let the peer accept them all (and, being full, evict what it evicts) before measuring.
  n.io.restart();
  n.io.run_for(std::chrono::milliseconds(1500));
  auto during = pings(n, me, h.calls, nullptr);
  out.answered_during = during.size();
  out.p50_during_ms = p50(during);
  const auto newcomer = dht::Identity::generate_with_work(o.id_work_bits);
  LiveNode fresh(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 0}, newcomer, cfg, false, {}, auth);
  auto late = pings(fresh, newcomer, h.calls + 1, &out.first_new_ms);
  if (!late.empty()) late.erase(late.begin());  // the first one also connected and proved itself
  out.answered_new = late.size();
  out.p50_new_ms = p50(late);
  for (auto& sock : held) {
    sock->non_blocking(true);
    std::uint8_t b;
    boost::system::error_code ec;
    sock->read_some(asio::buffer(&b, 1), ec);
    out.still_open += ec == asio::error::would_block;
  }
  return out;
}

DhtClientResult dht_client_store(const DhtClientOptions& o, const std::string& key,
                                 const std::string& value, std::optional<std::string> subkey,
                                 std::chrono::seconds ttl) {
  return with_client(o, [&](LiveNode& n, const dht::Identity& identity, DhtClientResult& out) {
    dht::Record r;
    r.key = key;
    r.subkey = std::move(subkey);
    r.value.assign(value.begin(), value.end());
    r.expiration = n.rt->now() + ttl;
    if (!o.identity_file.empty()) identity.sign(r);
    auto res = n.run(n.node->store(r), o.deadline);
    if (!res) {
      out.error = "store did not finish before the deadline";
      return;
    }
    out.replicas = res->replicas;
    out.stale = res->stale;
    out.refused = res->refused;
    out.refused_why = res->why_refused();
    out.unreachable = res->unreachable;
    out.latency_ms = static_cast<double>(res->latency.count()) / 1e6;
    out.ok = res->replicas > 0;
    if (!out.ok)
      out.error = "no peer accepted the record (" + std::to_string(res->stale) + " hold a newer one, " + std::to_string(res->refused) +
                  " refused it" + (res->refused ? " (" + out.refused_why + ")" : std::string()) + ", " +
                  std::to_string(res->unreachable) + " did not answer)";
  });
}

DhtClientResult dht_client_get(const DhtClientOptions& o, const std::string& key) {
  return with_client(o, [&](LiveNode& n, const dht::Identity&, DhtClientResult& out) {
    auto res = n.run(n.node->get(key), o.deadline);
    if (!res) {
      out.error = "get did not finish before the deadline";
      return;
    }
    out.ok = res->found;
    out.not_found = !res->found;
    out.records = res->records;
    out.hops = res->hops;
    out.latency_ms = static_cast<double>(res->latency.count()) / 1e6;
    if (!out.ok) out.error = "not found: the swarm answered and holds no record under '" + key + "'";
  });
}

}  // namespace apiary::real

// ---- the multi-process live swarm ------------------------------------------------------------

namespace apiary::real {

RunInfo run_live_dht_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  const auto& ops = spec.workload_config<DhtWorkloadConfig>();
  const auto wall0 = std::chrono::steady_clock::now();
  const TempDir tmp("apiary-live-dht");  // before the children: they go first
  const auto& dir = tmp.path();
  ChildProcesses children;
  // A process makes its peers' ids one after another (each costing about 16 us x 2^id_work_bits)
  // before it announces them.
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::seconds(60) +
                        std::chrono::microseconds(std::int64_t{64} << spec.auth.id_work_bits) * spec.live_peers_per_process;
  // Peer i binds its namespace's address when peers have namespaces (live.netns), else live.host.
  auto host_of = [&](std::uint32_t i) { return spec.live_netns.empty() ? spec.live_host : spec.live_netns[i].address; };
  auto netns_of = [&](std::uint32_t i) { return spec.live_netns.empty() ? std::string() : spec.live_netns[i].netns; };
  // Peer 0, the seed, runs alone; the others `live.peers_per_process` to a process (one each by
  // default). A process is named by its first peer: its identity files and ready file.
  const std::uint32_t per = spec.live_peers_per_process;
  auto count_of = [&](std::uint32_t first) { return first == 0 ? 1u : std::min(per, spec.peers - first); };
  auto peer_args = [&](std::uint32_t i) {
    std::vector<std::string> a{"apiary", "peer", "--listen", host_of(i) + ":0", "--identity",
                               (dir / ("id" + std::to_string(i))).string(), "--ready-file",
                               (dir / ("ready" + std::to_string(i))).string(), "--k",
                               std::to_string(spec.dht.config.k)};
    if (count_of(i) > 1) a.insert(a.end(), {"--count", std::to_string(count_of(i))});
    if (spec.live_emulated_latency > Duration::zero())
      a.insert(a.end(), {"--delay-ms", std::to_string(to_seconds(spec.live_emulated_latency) * 1e3)});
    if (!spec.auth.swarm_secret.empty()) a.insert(a.end(), {"--swarm-secret-file", (dir / "secret").string()});
    if (spec.auth.id_work_bits > 0) a.insert(a.end(), {"--id-work-bits", std::to_string(spec.auth.id_work_bits)});
    return a;
  };
  // The "<id> <endpoint>" lines of the process whose first peer is `first`, one per peer.
  auto ready_lines = [&](std::uint32_t first, std::chrono::steady_clock::time_point until) {
    std::istringstream f(wait_for_file((dir / ("ready" + std::to_string(first))).string(), until, "live peer " + std::to_string(first)));
    std::vector<std::pair<std::string, std::string>> lines;
    std::string id, ep;
    while (f >> id >> ep) lines.emplace_back(id, ep);
    if (lines.size() != count_of(first))
      throw std::runtime_error("live peer " + std::to_string(first) + " announced " + std::to_string(lines.size()) + " peers, not " +
                               std::to_string(count_of(first)));
    return lines;
  };
  auto ready_line = [&](std::uint32_t i, std::chrono::steady_clock::time_point until) { return ready_lines(i, until).front(); };
  std::vector<std::string> first_id(spec.peers);
  std::vector<std::string> endpoints;
  auto read_ready = [&](std::uint32_t first) {
    for (auto& [id, ep] : ready_lines(first, deadline)) {
      first_id[endpoints.size()] = id;
      endpoints.push_back(ep);
    }
  };
  std::vector<pid_t> pids(spec.peers, 0);  // each peer's process
  if (!spec.auth.swarm_secret.empty()) write_file_atomically((dir / "secret").string(), spec.auth.swarm_secret);
  pids[0] = children.spawn_self(peer_args(0), (dir / "peer0.log").string(), netns_of(0));
  read_ready(0);
  const std::string seed = endpoints.front();
  std::vector<std::uint32_t> incarnations(spec.peers, 0);
  auto start_peer = [&](std::uint32_t i) {  // the process whose first peer is i
    auto a = peer_args(i);
    a.push_back("--join");
    a.push_back(seed);
    const std::string log = (dir / ("peer" + std::to_string(i) + "-" + std::to_string(incarnations[i]++) + ".log")).string();
    const pid_t pid = children.spawn_self(a, log, netns_of(i));
    for (std::uint32_t j = i; j < i + count_of(i); ++j) pids[j] = pid;
  };
  std::uint32_t processes = 1;
  for (std::uint32_t i = 1; i < spec.peers; i += per, ++processes) start_peer(i);
  for (std::uint32_t i = 1; i < spec.peers; i += per) read_ready(i);

  // The client: a client-mode node that enters through a few peers.
  dht::DhtConfig cfg = spec.dht.config;
  cfg.client_mode = true;
  cfg.refresh_period = Duration::zero();
  cfg.replicate_period = Duration::zero();
  auth::AuthConfig client_auth;
  client_auth.swarm_secret = spec.auth.swarm_secret;
  client_auth.id_work_bits = spec.auth.id_work_bits;
  LiveNode client(Endpoint{Endpoint::parse(spec.live_host + ":1")->ip, 0}, dht::Identity::with_work(spec.seed, spec.auth.id_work_bits), cfg,
                  false, spec.live_emulated_latency, client_auth);
  // Churn, as the runner applies it, on the peer processes: "down" is SIGKILL, "up" a fresh
  // process that joins through the seed again, under its old identity unless the scenario says
  // otherwise (churn.keep_identity = false). Run time 0 is now, with every peer up.
  const auto origin = std::chrono::steady_clock::now();
  ChurnDriver churn(spec, metrics,
                    ChurnDriver::Hooks{
                        [&](Duration t, std::function<void()> fn) { run_at(client.io, origin + t, std::move(fn)); },
                        [&] { return std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - origin); },
                        [&](std::uint32_t i) { return pids[i] != 0; },
                        [&](std::uint32_t i) {
                          std::filesystem::remove(dir / ("ready" + std::to_string(i)));
                          start_peer(i);
                        },
                        [&](std::uint32_t i) {
                          children.kill_now(pids[i]);
                          pids[i] = 0;
                          if (!spec.churn.keep_identity) std::filesystem::remove(dir / ("id" + std::to_string(i)));
                        }});
  churn.begin(std::max<std::uint32_t>(1, spec.dht.bootstrap_peers), spec.dht.join_window);
  // Stalled peers (faults.stall): their processes are frozen for the window.
  FaultHooks stalls;
  stalls.at = [&](Duration t, std::function<void()> fn) { run_at(client.io, origin + t, std::move(fn)); };
  stalls.stall = [&](std::uint32_t i, bool on) { children.freeze(pids[i], on); };
  schedule_fault_windows(spec, metrics, spec.duration, stalls);
  // Let the swarm settle (joins, first lookups) for the join window.
  for (const auto settled = std::chrono::steady_clock::now() + spec.dht.join_window; std::chrono::steady_clock::now() < settled;) {
    client.io.run_one_for(std::chrono::milliseconds(20));
    throw_if_interrupted();
  }
  std::vector<Endpoint> via;
  for (std::size_t i = 0; i < std::min<std::size_t>(3, endpoints.size()); ++i) via.push_back(*Endpoint::parse(endpoints[i]));
  if (!client.run(client.node->bootstrap(via), std::chrono::seconds(10)))
    throw std::runtime_error("live DHT: the client could not join");

  const std::uint32_t n = ops.keys;
  auto key_of = [&](std::uint32_t i) { return "live-" + std::to_string(spec.seed) + "-" + std::to_string(i); };
  auto value_of = [&](std::uint32_t i) {
    Bytes v(ops.value_size);
    for (std::size_t j = 0; j < v.size(); ++j) v[j] = static_cast<std::uint8_t>(i * 131 + j);
    return v;
  };
  double store_seconds = 0, get_seconds = 0;
  for (int phase = 0; phase < 2; ++phase) {
    std::uint32_t next = 0, done = 0;
    auto worker = [&]() -> Task<int> {
      while (next < n) {
        const std::uint32_t i = next++;
        if (phase == 0) {
          dht::Record r;
          r.key = key_of(i);
          r.value = value_of(i);
          r.expiration = client.rt->now() + ops.ttl;
          auto res = co_await client.node->store(std::move(r));
          metrics.count(res.replicas > 0 ? "dht.store.ok" : "dht.store.failed", 1);
          metrics.sample("dht.store.latency_ns", static_cast<double>(res.latency.count()));
          metrics.sample("dht.store.replicas", static_cast<double>(res.replicas));
        } else {
          auto res = co_await client.node->get(key_of(i), ops.get_holders);
          const bool ok = res.found && res.records[0].value == value_of(i);
          metrics.count(ok ? "dht.get.ok" : "dht.get.failed", 1);
          metrics.sample("dht.get.latency_ns", static_cast<double>(res.latency.count()));
          metrics.sample("dht.get.hops", static_cast<double>(res.hops));
        }
        ++done;
        if (progress) progress(0.5 * phase + 0.5 * done / n);
      }
      co_return 0;
    };
    auto all = [&]() -> Task<int> {
      std::vector<Task<int>> ws;
      for (std::uint32_t w = 0; w < ops.concurrency; ++w) ws.push_back(worker());
      co_await when_all(std::move(ws));
      co_return 0;
    };
    const auto t0 = std::chrono::steady_clock::now();
    if (!client.run(all(), std::chrono::duration_cast<std::chrono::milliseconds>(spec.duration)))
      throw std::runtime_error("live DHT workload did not finish within the scenario's duration");
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    (phase == 0 ? store_seconds : get_seconds) = secs;
  }
  // Did the peers that came back come back as themselves? (Their new ready files name their ids.)
  for (std::uint32_t i = 1; i < spec.peers; ++i)
    if (incarnations[i] > 1 && pids[i] != 0) {
      const auto [id, ep] = ready_line(i, std::chrono::steady_clock::now() + std::chrono::seconds(10));
      metrics.count(id == first_id[i] ? "churn.same_identity" : "churn.new_identity", 1);
    }
  RunInfo info;
  info.backend = "live";
  info.figures["store_ops_per_second"] = n / store_seconds;
  info.figures["get_ops_per_second"] = n / get_seconds;
  info.figures["processes"] = processes;
  info.run_seconds = store_seconds + get_seconds;
  client.node.reset();
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return info;
}

namespace {
const bool kLauncher = (WorkloadRegistry::add_launcher("dht", {run_live_dht_swarm, true, true}), true);
}  // namespace

}  // namespace apiary::real
