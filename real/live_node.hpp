#pragma once
// One live peer's stack on an io_context that its owner runs: the socket runtime, the handshake
// (every peer proves its key), the RPC layer and the DHT node. Used by the live tools (`apiary
// peer`, `apiary dht`) and by the Python package, which runs the io_context on its own thread.
// Asio stays out of this header.
#include <memory>
#include <string>
#include <vector>

#include "core/auth/handshake.hpp"
#include "core/dht/node.hpp"
#include "core/optim/schema.hpp"
#include "core/runtime/metrics.hpp"
#include "core/runtime/rpc.hpp"

namespace boost::asio {
class io_context;
}

namespace apiary::real {

class LiveRuntime;

struct LiveNodeOptions {
  Endpoint listen{Endpoint::ipv4(127, 0, 0, 1), 0};
  dht::DhtConfig dht;
  bool verbose = false;       // log at debug level (else warnings and errors) to stderr
  Duration delay{};           // LiveOptions::emulated_delay
  auth::AuthConfig auth;
  bool dial_back = false;     // LiveOptions::dial_back
  std::vector<optim::SchemaRule> schema;  // the swarm's own key rules, beside the standard validators
};

struct LiveNodeStack {
  // Opens the listener (throws std::system_error if the address is taken).
  LiveNodeStack(boost::asio::io_context& io, const dht::Identity& identity, const LiveNodeOptions& o);
  ~LiveNodeStack();
  LiveNodeStack(const LiveNodeStack&) = delete;
  LiveNodeStack& operator=(const LiveNodeStack&) = delete;

  Metrics metrics;
  std::unique_ptr<LiveRuntime> rt;
  std::unique_ptr<PeerObserver> observer;
  Rng rng{0};
  std::unique_ptr<auth::AuthTransport> auth;
  std::unique_ptr<Runtime> runtime;
  std::unique_ptr<Rpc> rpc;
  std::unique_ptr<dht::DhtNode> node;
};

// An identity with `bits` of id work: a fresh one when `path` is empty; else the one saved there,
// created (and saved) when the file is new. A saved key with less work than `bits` is an error
// (the swarm would refuse it).
dht::Identity identity_from(const std::string& path, unsigned bits);

// The handshake's settings: the swarm secret read from a file (never from the command line, where
// other users of the machine could read it), the id work every key must carry.
auth::AuthConfig auth_config_from(const std::string& secret_file, unsigned id_work_bits);

// `text` as IPV4:PORT, or std::invalid_argument naming `what`.
Endpoint parse_endpoint_or_throw(const std::string& text, const char* what);

}  // namespace apiary::real
