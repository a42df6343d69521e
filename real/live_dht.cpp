#include <utility>
#include "real/live_dht.hpp"

#include <boost/asio.hpp>
#include <cstdio>
#include <filesystem>
#include <fstream>

#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"

namespace apiary::real {

namespace asio = boost::asio;

namespace {

Endpoint parse_or_throw(const std::string& text, const char* what) {
  auto e = Endpoint::parse(text);
  if (!e) throw std::invalid_argument(std::string(what) + " '" + text + "' is not IPV4:PORT");
  return *e;
}

dht::Identity identity_from(const std::string& path) {
  if (path.empty()) return dht::Identity::generate();
  if (std::filesystem::exists(path)) return dht::Identity::load(path);
  auto id = dht::Identity::generate();
  id.save(path);
  return id;
}

void stderr_log(void*, std::uint32_t, LogLevel level, std::string_view component, std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "[%s] %.*s: %.*s\n", names[static_cast<int>(level)],
               static_cast<int>(component.size()), component.data(), static_cast<int>(msg.size()), msg.data());
}

// One live node (server or client) on its own io_context.
struct LiveNode {
  asio::io_context io;
  Metrics metrics;
  std::unique_ptr<LiveRuntime> rt;
  std::unique_ptr<PeerObserver> observer;
  Rng rng{0};
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<Rpc> rpc;
  std::unique_ptr<dht::DhtNode> node;

  LiveNode(Endpoint listen, const dht::Identity& identity, dht::DhtConfig cfg, bool verbose) {
    LiveOptions o;
    o.listen = listen;
    rt = std::make_unique<LiveRuntime>(io, o);
    rt->open();
    observer = std::make_unique<PeerObserver>(metrics, *rt, 0);
    observer->set_log_sink(&stderr_log, nullptr, verbose ? LogLevel::kDebug : LogLevel::kWarn);
    rt->set_observer(*observer);
    rng = Rng(std::hash<std::string>{}(identity.id().hex()) ^ static_cast<std::uint64_t>(to_ns(rt->now())));
    runtime = std::make_unique<Runtime>(Runtime{*rt, *rt, *rt, rng, *observer});
    rpc = std::make_unique<Rpc>(*runtime);
    std::vector<std::shared_ptr<dht::Validator>> validators{std::make_shared<dht::SignatureValidator>()};
    node = std::make_unique<dht::DhtNode>(*runtime, *rpc, identity.id(), cfg, validators);
  }
  ~LiveNode() {
    node.reset();
    rpc.reset();
    rt->close();
  }
  // Runs the io_context until `t` completes or the deadline passes.
  template <class T>
  std::optional<T> run(Task<T> t, std::chrono::milliseconds deadline) {
    t.start();
    const auto end = std::chrono::steady_clock::now() + deadline;
    while (!t.done() && std::chrono::steady_clock::now() < end) io.run_one_for(std::chrono::milliseconds(20));
    if (!t.done()) return std::nullopt;
    return t.result();
  }
};

}  // namespace

int run_live_peer(const LivePeerOptions& o) {
  const auto identity = identity_from(o.identity_file);
  LiveNode n(parse_or_throw(o.listen, "--listen"), identity, o.config, o.verbose);
  std::vector<Endpoint> seeds;
  for (const auto& j : o.join) seeds.push_back(parse_or_throw(j, "--join"));
  std::printf("apiary peer %s listening on %s\n", identity.id().hex().c_str(), n.rt->local().to_string().c_str());
  std::fflush(stdout);
  if (!o.ready_file.empty()) {
    std::ofstream f(o.ready_file + ".tmp");
    f << identity.id().hex() << " " << n.rt->local().to_string() << "\n";
    f.close();
    std::filesystem::rename(o.ready_file + ".tmp", o.ready_file);
  }
  bool joined = seeds.empty();
  if (!seeds.empty())
    n.node->spawn_join(seeds, [&](std::size_t contacts) {
      joined = true;
      if (o.verbose) std::fprintf(stderr, "joined: %zu contacts\n", contacts);
    });
  n.node->start_maintenance();
  asio::signal_set signals(n.io, SIGINT, SIGTERM);
  bool stop = false;
  signals.async_wait([&](boost::system::error_code, int) { stop = true; });
  while (!stop) n.io.run_one_for(std::chrono::milliseconds(200));
  (void)joined;
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
  const auto identity = o.identity_file.empty() ? dht::Identity::generate() : dht::Identity::load(o.identity_file);
  LiveNode n(Endpoint{Endpoint::ipv4(127, 0, 0, 1), 0}, identity, cfg, false);
  std::vector<Endpoint> seeds;
  for (const auto& v : o.via) seeds.push_back(parse_or_throw(v, "--via"));
  auto joined = n.run(n.node->bootstrap(seeds), o.deadline);
  if (!joined || *joined == 0) {
    out.error = "could not reach any peer through --via";
    return out;
  }
  body(n, identity, out);
  return out;
}
}  // namespace

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
    out.latency_ms = static_cast<double>(res->latency.count()) / 1e6;
    out.ok = res->replicas > 0;
    if (!out.ok) out.error = "no peer accepted the record";
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
    out.records = res->records;
    out.hops = res->hops;
    out.latency_ms = static_cast<double>(res->latency.count()) / 1e6;
    if (!out.ok) out.error = "not found";
  });
}

}  // namespace apiary::real
