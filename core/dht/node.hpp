#pragma once
// A Kademlia DHT node on the runtime contract: serves ping/store/find, performs iterative
// alpha-parallel lookups (many keys in one traversal), stores to the k nearest peers, caches on
// the lookup path, keeps its routing table fresh, replicates and republishes under churn, and
// backs off from peers that do not answer. The same code runs in ns-3 and live.
#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <vector>

#include "core/dht/protocol.hpp"
#include "core/dht/storage.hpp"
#include "core/dht/validate.hpp"
#include "core/runtime/rpc.hpp"

namespace apiary::dht {

struct DhtConfig {
  std::size_t k = 20;
  std::size_t alpha = 3;
  // Lookups for gets and stores over this many disjoint paths (S/Kademlia): the starting peers are
  // dealt out among the paths, no peer is asked by two, the answers are merged. 1: one path.
  std::size_t disjoint_paths = 1;
  int depth_modulo = 5;
  Duration rpc_timeout = std::chrono::seconds(2);
  StorageLimits storage;  // size, quotas and the longest lifetime of what this node keeps
  Duration refresh_period = std::chrono::minutes(30);    // 0: no bucket refresh
  Duration replicate_period = std::chrono::minutes(10);  // 0: no replication/republish
  // A full bucket pings its least-recently-seen contact before a newcomer may take its place only
  // if that contact has not been heard from for this long (0: every time, as the Kademlia paper
  // does). Each new contact met would otherwise cost a ping once buckets are full: at small k and
  // many peers, most of a swarm's messages. The newcomer waits among the replacements.
  Duration lru_ping_after = Duration::zero();
  std::size_t join_refresh_buckets = 160;  // buckets filled after joining (dht.join_refresh)
  std::size_t bucket_ip_limit = 2;  // contacts of one IP address per bucket (0: any; 127.0.0.1 exempt)
  // Contacts of one /24 per bucket (0: any; 127.0.0.1 exempt). Off by default: ns-3 numbers its
  // peers from 10.0.0.1 up, 254 to a /24; on the internet, 2 or 3 (libp2p's practice).
  std::size_t bucket_subnet_limit = 0;
  // Peers of one IP address (of one /24) a lookup takes as candidates for a key, over all its
  // paths (0: any; 127.0.0.1 exempt). Ids ground next to a key and run from one host then hold at
  // most this many of the key's k nearest places: the others stay with honest peers, which a store
  // reaches and a get finds. The /24 limit is off by default for the reason above.
  std::size_t lookup_ip_limit = 2;
  std::size_t lookup_subnet_limit = 0;
  bool client_mode = false;  // send requests, serve none, stay out of others' tables
  bool cache_on_lookup = true;
  // A store hands records of at most this many bytes (encoded) to the peers its lookup asks among
  // the key's k nearest known then, inside the FIND requests; only the final k nearest that were
  // not asked that way get a STORE. A store then costs about one lookup instead of a lookup and k
  // more requests; a few peers near the key but not among the final k get a copy too. Bigger
  // records go only to the final k (each FIND would carry them). 0 (the default for now): a
  // lookup, then STOREs. Off by default until its effect on live training is understood: with it
  // on, stores end sooner, steps gather fewer samples, and a loaded live BTARD run banned its
  // attackers later once (docs/results.md); the DHT benchmarks turn it on (1024).
  std::size_t store_along_max_bytes = 0;
  Duration blacklist_base = std::chrono::seconds(5);
  Duration blacklist_max = std::chrono::minutes(5);
  Limits limits;
};

struct LookupResult {
  std::vector<Record> records;   // for gets: the valid records found (latest wins)
  std::vector<Contact> nearest;  // the k nearest peers that answered, nearest first
  int hops = 0;                  // hops to the value (get) or to the nearest peer (find)
  int queried = 0;               // peers asked
};

// A store's lookup: the records it hands along to the peers it asks, and what each answered
// (by the peer's id: record index, outcome).
struct StoreAlong {
  const std::vector<Record>* records = nullptr;
  std::map<DhtId, std::vector<std::pair<std::size_t, StoreOutcome>>> answered;
};

struct GetResult {
  bool found = false;
  std::vector<Record> records;
  int hops = 0;
  Duration latency{};
};

// What the peers a record was sent to (and this peer, if among the nearest) answered. A peer counts
// once however many ids it answers for.
struct StoreTally {
  std::size_t stored = 0;       // accepted, and hold the record now (or already held this very record)
  std::size_t stale = 0;        // refused: they hold a newer record under the key (or subkey)
  std::size_t refused = 0;      // refused for another reason (outcomes says which)
  std::size_t unreachable = 0;  // no answer
  std::array<std::size_t, kStoreOutcomes> outcomes{};  // answers by StoreOutcome code
  void count(StoreOutcome o);
};

struct StoreResult {
  std::size_t replicas = 0;  // peers (or self) that accepted and hold the record; never a refusal
  Duration latency{};
  std::size_t stale = 0, refused = 0, unreachable = 0;  // the others, by reason
  std::array<std::size_t, kStoreOutcomes> outcomes{};
  // "2 expires too late, 1 no room": the refusals other than stale, by reason ("" when none).
  std::string why_refused() const;
};

class DhtNode {
 public:
  DhtNode(Runtime& rt, Rpc& rpc, DhtId self, DhtConfig config = {},
          std::vector<std::shared_ptr<Validator>> validators = {});
  ~DhtNode();
  DhtNode(const DhtNode&) = delete;
  DhtNode& operator=(const DhtNode&) = delete;

  const DhtId& id() const { return self_; }
  RoutingTable& table() { return table_; }
  Storage& storage() { return storage_; }
  const DhtConfig& config() const { return cfg_; }

  // Pings the seeds, then looks up its own id to fill its table. Returns contacts known.
  Task<std::size_t> bootstrap(std::vector<Endpoint> seeds);
  // Iterative lookup of many targets in one traversal.
  // With fill_buckets, a target's traversal ends as soon as the bucket covering it holds k/2
  // contacts: what a bucket refresh needs, at a fraction of a full lookup's cost.
  // With want_values, a key's traversal ends once `min_holders` peers returned values for it
  // (their records merged, latest per subkey) and, when min_holders > 1, the min_holders nearest
  // peers have answered; or once the k nearest have all answered. With
  // cache_values (and DhtConfig::cache_on_lookup) the nearest answering peer that lacked a found
  // value is sent a copy.
  // With `along`, each FIND to a peer among a key's k nearest known then carries the key's
  // records from along->records, and the peers' outcomes are kept in along->answered.
  Task<std::map<DhtId, LookupResult>> lookup(std::vector<DhtId> targets, bool want_values,
                                             bool fill_buckets = false, std::size_t min_holders = 1,
                                             bool cache_values = true, StoreAlong* along = nullptr);
  Task<StoreResult> store(Record record);
  // Gets a key's records. min_holders = 1: the first copy found (a local one first). A dictionary
  // that many peers write to (matchmaking declarations) is better read from several holders,
  // merged: each holder may have heard of only some subkeys. Such reads (min_holders > 1) are
  // never cached on the lookup path: a merged snapshot of a dictionary still being written would
  // be served later as if it were whole, and a reader whose lookups end at that peer would never
  // see the declarations that came after it.
  Task<GetResult> get(std::string key, std::size_t min_holders = 1);
  // Many keys in one traversal (each as get() would return it).
  Task<std::map<std::string, GetResult>> get_many(std::vector<std::string> keys, std::size_t min_holders = 1);
  // Stores many records in one traversal; replicas per record. Republished like store().
  Task<std::vector<std::size_t>> store_all(std::vector<Record> records);
  // Starts bucket refresh, replication and republish loops.
  void start_maintenance();

  // Fire-and-forget forms for drivers: the operation runs in this node's own scope (so it dies
  // with the node under churn) and `done` is called only if it completes.
  void spawn_get(std::string key, std::function<void(const GetResult&)> done);
  void spawn_join(std::vector<Endpoint> seeds, std::function<void(std::size_t)> done);
  void spawn_store(Record record, std::function<void(const StoreResult&)> done);

 private:
  struct Candidate {
    Contact contact;
    int hop = 1;
    enum State { kNew, kInFlight, kAnswered, kFailed } state = kNew;
  };
  struct Traversal;

  Task<Result<PingReply>> ping(Endpoint to);
  Task<void> lookup_worker(Traversal& t);
  // Whether `id` is among the k nearest candidates of the lookup's key `key` that have not failed.
  bool among_nearest(const Traversal& t, std::size_t key, const DhtId& id) const;
  static bool values_done(const Traversal& t, std::size_t key);
  // Counts a new candidate for the lookup's key `key` at `at` against the limits per address;
  // false if over them.
  bool take_address(Traversal& t, std::size_t key, const Endpoint& at) const;
  void learn(const Contact& c, bool newcomer = false);
  // Whether `id` may speak from `at`: any id, unless the transport authenticates peers; then only
  // the hash of the key the peer at `at` proved (core/auth).
  bool bound(const DhtId& id, const Endpoint& at) const;
  std::optional<Error> unbound(const DhtId& id, const Endpoint& from) const;  // the refusal, counted
  void hand_over(const Contact& c);
  Task<void> check_lru(Contact lru);
  bool blacklisted(const Endpoint& e) const;
  void punish(const Contact& c);
  Sender me() const {
    return Sender{self_, cfg_.client_mode, rt_.now() - created_ < kNewcomerWindow};
  }
  Task<std::vector<StoreTally>> store_many(std::vector<Record> records);
  Task<void> refresh_loop();
  Task<void> replicate_loop();
  std::optional<std::string> check_record(const Record& r) const;
  // A record a peer sent to be stored (in a STORE or along a FIND): checked, stored, counted.
  StoreOutcome accept(const Record& r, const Endpoint& from, TimePoint now);

  Runtime& rt_;
  Rpc& rpc_;
  DhtId self_;
  DhtConfig cfg_;
  std::vector<std::shared_ptr<Validator>> validators_;
  RoutingTable table_;
  Storage storage_;
  struct Backoff {
    TimePoint until;
    Duration step;
  };
  std::map<Endpoint, Backoff> blacklist_;
  std::vector<Endpoint> seeds_;  // the join's seeds: to join again with no usable contact left
  bool rejoining_ = false;
  std::set<DhtId> checking_;  // LRU contacts being pinged
  std::map<std::pair<std::string, std::optional<std::string>>, Record> published_;
  // When each held record last arrived in a store: a record another peer pushed to us recently
  // need not be pushed again by us (Kademlia's replication optimisation).
  std::map<std::pair<std::string, std::optional<std::string>>, TimePoint> refreshed_;
  std::vector<std::pair<std::uint64_t, TimePoint>> handed_;  // (id's first 64 bits, when we last handed it records), sorted
  TimePoint created_;
  // How long after (re)joining a node asks the peers it meets for the records it should hold.
  static constexpr Duration kNewcomerWindow = std::chrono::minutes(2);
  TaskScope scope_;
};

}  // namespace apiary::dht
