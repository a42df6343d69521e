#pragma once
// Live DHT processes: `apiary peer` (a long-running DHT node on a real socket) and
// `apiary dht store|get` (a short-lived client-mode node that talks to a running swarm).
#include <cstdint>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/dht/node.hpp"
#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"

namespace apiary::real {

struct LivePeerOptions {
  std::string listen = "127.0.0.1:0";
  std::vector<std::string> join;
  std::string identity_file;  // created if missing, so the peer id survives restarts
  dht::DhtConfig config;
  std::string ready_file;     // if set, "<id> <endpoint>\n" is written here once listening
  bool verbose = false;
  double delay_ms = 0;        // emulated one-way latency on every message received
  std::string swarm_secret_file;  // the swarm's secret: only peers that know it are admitted
  unsigned id_work_bits = 0;      // the work every id must carry (dht::id_work); ours is made so
  bool dial_back = false;         // LiveOptions::dial_back: answer peers only over connections we dialled
  std::vector<std::string> schema;  // "PATTERN=RULE" rules for the swarm's own keys (core/optim/schema.hpp)
  // Peers this process hosts, on one thread, each with its own socket, identity and DHT node (as
  // OpenDHT packs DhtRunners into one process). Peer j > 0 keeps its identity in
  // "<identity_file>.<j>"; the ready file gets one line per peer.
  std::uint32_t count = 1;
};

// Runs until SIGINT/SIGTERM. Returns the process exit code; throws on bad options.
int run_live_peer(const LivePeerOptions& options);

struct DhtClientOptions {
  std::vector<std::string> via;  // peers to enter the swarm through
  dht::DhtConfig config;
  std::string identity_file;     // sign as this owner (for [owner:...] keys)
  std::chrono::milliseconds deadline{10000};
  std::string swarm_secret_file;  // the swarm's secret, if it has one
  unsigned id_work_bits = 0;      // the swarm's id work: this client's key is made to carry it
};

struct DhtClientResult {
  bool ok = false;
  std::size_t replicas = 0;                         // store: peers that accepted and hold the record
  std::size_t stale = 0, refused = 0, unreachable = 0;  // store: the others, by reason
  std::string refused_why;  // store: the refusals by reason ("1 expires too late, 2 no room")
  std::vector<dht::Record> records;
  bool not_found = false;  // get: the swarm was reached and holds no record under the key
  double latency_ms = 0;
  int hops = 0;
  std::string error;
};

DhtClientResult dht_client_store(const DhtClientOptions& o, const std::string& key,
                                 const std::string& value, std::optional<std::string> subkey,
                                 std::chrono::seconds ttl);
DhtClientResult dht_client_get(const DhtClientOptions& o, const std::string& key);

// An attack client for experiments on hostile peers (docs/threat-model.md): sends `records`
// unsigned records straight to the first --via peer, `per_message` per store request and
// `in_flight` requests at a time, keys "<prefix><n>", values of `value_bytes`, expiring after `ttl`.
struct DhtFloodOptions {
  std::uint64_t records = 1000;
  std::size_t value_bytes = 1;
  std::size_t per_message = 64;
  std::size_t in_flight = 16;
  std::string prefix = "flood";
  std::chrono::seconds ttl{23 * 3600};
};
struct DhtFloodResult {
  std::uint64_t sent = 0, bytes = 0, unanswered = 0;
  std::map<std::string, std::uint64_t> outcomes;  // what the peer answered, by outcome name
  double seconds = 0;
  std::string error;
};
DhtFloodResult dht_client_flood(const DhtClientOptions& o, const DhtFloodOptions& f);

// An attack client and its measurement: honest pings to one peer (the first --via), then
// `connections` TCP connections opened to it and held without a byte, then the same pings again
// from the same client and from a client that connects only now. Latencies are of whole calls.
struct DhtHoldOptions {
  std::size_t connections = 4100;
  // The connections come from this many loopback addresses (127.0.0.2, .3, ...), round robin; 0:
  // from the system's choice (127.0.0.1, as the honest clients).
  std::size_t source_addresses = 0;
  std::size_t calls = 200;
};
struct DhtHoldResult {
  std::size_t opened = 0, failed_to_open = 0, still_open = 0;  // the held connections
  std::size_t answered_before = 0, answered_during = 0, answered_new = 0;
  double p50_before_ms = 0, p50_during_ms = 0, p50_new_ms = 0, first_new_ms = 0;
  std::string error;
};
DhtHoldResult dht_client_hold(const DhtClientOptions& o, const DhtHoldOptions& h);

// Raises this process's soft limit on open files to its hard limit (a peer that serves thousands
// of connections needs them); returns the limit now in force.
std::uint64_t raise_open_files_limit();

// A live DHT swarm of separate processes on this machine (live.processes = true, registered as
// the dht workload's process launcher): N `apiary peer` processes join through the first, then an
// in-process client stores `workload.keys` keys and gets them all back, `workload.concurrency` at
// a time, measuring success, latency and throughput.
RunInfo run_live_dht_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress);

}  // namespace apiary::real
