#include "real/live_node.hpp"

#include <cstdio>
#include <filesystem>
#include <fstream>
#include <functional>
#include <sstream>
#include <stdexcept>

#include "real/live_runtime.hpp"

namespace apiary::real {

namespace {

void stderr_log(void*, std::uint32_t, LogLevel level, std::string_view component, std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "[%s] %.*s: %.*s\n", names[static_cast<int>(level)], static_cast<int>(component.size()),
               component.data(), static_cast<int>(msg.size()), msg.data());
}

}  // namespace

LiveNodeStack::LiveNodeStack(boost::asio::io_context& io, const dht::Identity& identity, const LiveNodeOptions& o) {
  LiveOptions lo;
  lo.listen = o.listen;
  lo.emulated_delay = o.delay;
  lo.dial_back = o.dial_back;
  rt = std::make_unique<LiveRuntime>(io, lo);
  rt->open();
  observer = std::make_unique<PeerObserver>(metrics, *rt, 0);
  observer->set_log_sink(&stderr_log, nullptr, o.verbose ? LogLevel::kDebug : LogLevel::kWarn);
  rt->set_observer(*observer);
  rng = Rng(std::hash<std::string>{}(identity.id().hex()) ^ static_cast<std::uint64_t>(to_ns(rt->now())));
  auth = std::make_unique<auth::AuthTransport>(*rt, *rt, *rt, rng, *observer, identity, o.auth);
  runtime = std::make_unique<Runtime>(Runtime{*rt, *rt, *auth, rng, *observer});
  rpc = std::make_unique<Rpc>(*runtime);
  node = std::make_unique<dht::DhtNode>(*runtime, *rpc, identity.id(), o.dht, optim::standard_validators(o.schema));
}

LiveNodeStack::~LiveNodeStack() {
  node.reset();
  rpc.reset();
  auth.reset();
  rt->close();
}

dht::Identity identity_from(const std::string& path, unsigned bits) {
  if (path.empty()) return dht::Identity::generate_with_work(bits);
  if (std::filesystem::exists(path)) {
    auto id = dht::Identity::load(path);
    if (dht::id_work(id.public_key) < bits)
      throw std::runtime_error(path + ": its key's id carries " + std::to_string(dht::id_work(id.public_key)) +
                               " bits of work; the swarm asks " + std::to_string(bits));
    return id;
  }
  auto id = dht::Identity::generate_with_work(bits);
  id.save(path);
  return id;
}

auth::AuthConfig auth_config_from(const std::string& secret_file, unsigned id_work_bits) {
  auth::AuthConfig c;
  c.id_work_bits = id_work_bits;
  if (secret_file.empty()) return c;
  std::ifstream f(secret_file, std::ios::binary);
  if (!f) throw std::runtime_error("--swarm-secret-file: cannot read '" + secret_file + "'");
  std::ostringstream text;
  text << f.rdbuf();
  c.swarm_secret = text.str();
  while (!c.swarm_secret.empty() && (c.swarm_secret.back() == '\n' || c.swarm_secret.back() == '\r')) c.swarm_secret.pop_back();
  if (c.swarm_secret.empty()) throw std::runtime_error("--swarm-secret-file: '" + secret_file + "' is empty");
  return c;
}

Endpoint parse_endpoint_or_throw(const std::string& text, const char* what) {
  auto e = Endpoint::parse(text);
  if (!e) throw std::invalid_argument(std::string(what) + " '" + text + "' is not IPV4:PORT");
  return *e;
}

}  // namespace apiary::real
