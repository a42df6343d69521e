#include "core/dht/node.hpp"

#include <algorithm>

#include "core/runtime/flat_map.hpp"

namespace apiary::dht {

namespace {
StoreOutcome outcome_of(Storage::Outcome o) {
  switch (o) {
    case Storage::Outcome::kStored: return StoreOutcome::kStored;
    case Storage::Outcome::kStale: return StoreOutcome::kStale;
    case Storage::Outcome::kExpired: return StoreOutcome::kExpired;
    case Storage::Outcome::kTooLate: return StoreOutcome::kTooLate;
    case Storage::Outcome::kShadows: return StoreOutcome::kShadows;
    case Storage::Outcome::kNoRoom: return StoreOutcome::kNoRoom;
  }
  return StoreOutcome::kInvalid;
}

// By StoreOutcome code: its name in counters, and how it reads.
struct OutcomeText {
  const char* name;
  const char* text;
};
constexpr std::array<OutcomeText, kStoreOutcomes> kOutcomeTexts{{{"stored", "stored"},
                                                                  {"stale", "stale"},
                                                                  {"expired", "expired"},
                                                                  {"invalid", "invalid"},
                                                                  {"too_late", "expires too late"},
                                                                  {"shadows", "would hide an owner's subkeys"},
                                                                  {"no_room", "no room"}}};
}  // namespace

const char* describe(StoreOutcome o) {
  const auto code = static_cast<std::size_t>(o);
  return code < kOutcomeTexts.size() ? kOutcomeTexts[code].text : "unknown";
}

const char* name_of(StoreOutcome o) {
  const auto code = static_cast<std::size_t>(o);
  return code < kOutcomeTexts.size() ? kOutcomeTexts[code].name : "unknown";
}

void StoreTally::count(StoreOutcome o) {
  const auto code = static_cast<std::size_t>(o);
  if (code < outcomes.size()) {
    ++outcomes[code];
  } else {
    ++outcomes[static_cast<std::size_t>(StoreOutcome::kInvalid)];  // a code this build does not know
    o = StoreOutcome::kInvalid;
  }
  ++(o == StoreOutcome::kStored ? stored : o == StoreOutcome::kStale ? stale : refused);
}

std::string StoreResult::why_refused() const {
  std::string out;
  for (std::size_t code = 0; code < outcomes.size(); ++code) {
    const auto o = static_cast<StoreOutcome>(code);
    if (o == StoreOutcome::kStored || o == StoreOutcome::kStale || outcomes[code] == 0) continue;
    if (!out.empty()) out += ", ";
    out += std::to_string(outcomes[code]) + " " + describe(o);
  }
  return out;
}

struct DhtNode::Traversal {
  struct Key {
    DhtId target;
    FlatSet<std::pair<DhtId, std::uint32_t>> cands;  // (distance to target, index in pool)
    std::vector<Record> records;
    FlatSet<DhtId> holders;  // answered peers that returned a value
    int value_hop = 0;
    bool done = false;
    std::vector<std::size_t> store;  // a store's lookup: the records (in along->records) under this key
  };
  StoreAlong* along = nullptr;
  bool want_values = false;
  bool fill_buckets = false;
  std::size_t min_holders = 1;
  std::vector<Key> keys;
  // Sorted vectors, not trees: a lookup builds them up from a few dozen entries (a join's refresh
  // of every far bucket, a few thousand) and drops them; see FlatMap on references.
  std::vector<Candidate> pool;                // every candidate met, in that order
  FlatMap<DhtId, std::uint32_t> contacts;    // id -> index in pool
  FlatMap<Endpoint, DhtId> endpoints;  // one candidate per endpoint: one peer cannot pose as many
  // The candidate's index in pool; a new one if the id is new.
  std::uint32_t add(const Contact& c, int hop) {
    auto [at, fresh] = contacts.try_emplace(c.id, static_cast<std::uint32_t>(pool.size()));
    if (fresh) pool.push_back(Candidate{c, hop});
    return at->second;
  }
  int queried = 0;
  // Disjoint paths: which path each contact belongs to (shared by the paths of one lookup); a
  // contact another path holds is not taken, so no peer is asked by two paths.
  std::size_t path = 0;
  FlatMap<DhtId, std::size_t>* owner = nullptr;
  // Candidates taken per IP address and per /24, for each key (shared by the paths of one lookup).
  struct Addresses {
    FlatMap<std::uint32_t, std::size_t> ip, subnet;
  };
  std::vector<Addresses> own_addresses;
  std::vector<Addresses>* addresses = &own_addresses;
  Notifier own_changed;
  Notifier* changed = &own_changed;  // the paths of one lookup share one
};

DhtNode::DhtNode(Runtime& rt, Rpc& rpc, DhtId self, DhtConfig config,
                 std::vector<std::shared_ptr<Validator>> validators)
    : rt_(rt),
      rpc_(rpc),
      self_(self),
      cfg_(config),
      validators_(std::move(validators)),
      table_(self, config.k, config.depth_modulo, config.bucket_ip_limit, config.bucket_subnet_limit, config.lru_ping_after),
      storage_(config.storage),
      created_(rt.now()) {
  if (cfg_.client_mode) return;  // a client serves nothing
  rpc_.serve<PingRequest, PingReply>([this](const Endpoint& from, PingRequest req) -> Task<Result<PingReply>> {
    if (auto refused = unbound(req.from.id, from)) co_return *refused;
    if (!req.from.client) learn(Contact{req.from.id, from}, req.from.newcomer);
    rt_.observer.count("dht.served.ping");
    co_return PingReply{self_};
  });
  rpc_.serve<StoreRequest, StoreReply>([this](const Endpoint& from, StoreRequest req) -> Task<Result<StoreReply>> {
    if (auto refused = unbound(req.from.id, from)) co_return *refused;
    if (!req.from.client) learn(Contact{req.from.id, from}, req.from.newcomer);
    rt_.observer.count("dht.served.store");
    StoreReply reply{self_, {}};
    const TimePoint now = rt_.now();
    for (const auto& r : req.records) reply.outcomes.push_back(static_cast<std::uint8_t>(accept(r, from, now)));
    co_return reply;
  });
  rpc_.serve<FindRequest, FindReply>([this](const Endpoint& from, FindRequest req) -> Task<Result<FindReply>> {
    if (auto refused = unbound(req.from.id, from)) co_return *refused;
    if (!req.from.client) learn(Contact{req.from.id, from}, req.from.newcomer);
    rt_.observer.count("dht.served.find");
    FindReply reply{self_, {}};
    const TimePoint now = rt_.now();
    for (const auto& key : req.keys) {
      FindReply::Entry e;
      e.records = storage_.get(key, now);
      if (e.records.size() > cfg_.limits.max_values_per_key) e.records.resize(cfg_.limits.max_values_per_key);
      e.nearest = table_.nearest(key, std::min(cfg_.k, cfg_.limits.max_contacts), req.from.id);
      reply.entries.push_back(std::move(e));
    }
    if (!req.store.empty()) rt_.observer.count("dht.served.store_along");
    for (const auto& r : req.store) {
      if (table_.knows_nearer(DhtId::of_key(r.key), cfg_.k)) {
        rt_.observer.count("dht.store_along_declined");
        reply.stored.push_back(FindReply::kDeclined);
      } else {
        reply.stored.push_back(static_cast<std::uint8_t>(accept(r, from, now)));
      }
    }
    co_return reply;
  });
}

DhtNode::~DhtNode() { scope_.destroy_all(); }

StoreOutcome DhtNode::accept(const Record& r, const Endpoint& from, TimePoint now) {
  if (auto why = check_record(r)) {
    rt_.observer.count("dht.store_rejected");
    rt_.observer.log(LogLevel::kDebug, "dht", "rejected record '" + r.key + "' from " + from.to_string() + ": " + *why);
    return StoreOutcome::kInvalid;
  }
  const auto o = storage_.store(r, now, from);
  if (o == Storage::Outcome::kStored || o == Storage::Outcome::kStale) refreshed_[{r.key, r.subkey}] = now;
  if (o != Storage::Outcome::kStored && o != Storage::Outcome::kStale) {
    rt_.observer.count(std::string("dht.store_refused.") + name_of(outcome_of(o)));
    rt_.observer.log(LogLevel::kDebug, "dht", "refused record '" + r.key + "' from " + from.to_string() + ": " +
                                                  describe(outcome_of(o)));
  }
  return outcome_of(o);
}

bool DhtNode::bound(const DhtId& id, const Endpoint& at) const {
  if (!rt_.transport.authenticates()) return true;
  const auto key = rt_.transport.peer_key(at);
  return key && DhtId::hash(*key) == id;
}

std::optional<Error> DhtNode::unbound(const DhtId& id, const Endpoint& from) const {
  if (bound(id, from)) return std::nullopt;
  rt_.observer.count("dht.unbound_ids");
  return Error{ErrorCode::kRejected, "the id " + id.hex().substr(0, 16) + "... is not the hash of the key " +
                                         from.to_string() + " proved"};
}

std::optional<std::string> DhtNode::check_record(const Record& r) const {
  if (r.key.size() > cfg_.limits.max_key) return "key too long";
  if (r.subkey && r.subkey->size() > cfg_.limits.max_subkey) return "subkey too long";
  if (r.value.size() > cfg_.limits.max_value) return "value too large";
  return validate(validators_, r);
}

bool DhtNode::blacklisted(const Endpoint& e) const {
  auto it = blacklist_.find(e);
  return it != blacklist_.end() && it->second.until > rt_.now();
}

void DhtNode::punish(const Contact& c) {
  auto& b = blacklist_[c.endpoint];
  b.step = b.step == Duration::zero() ? cfg_.blacklist_base : std::min(cfg_.blacklist_max, b.step * 2);
  b.until = rt_.now() + b.step;
  table_.remove(c.id);
  rt_.observer.count("dht.peer_failures");
}

void DhtNode::learn(const Contact& c, bool newcomer) {
  if (c.id == self_ || !c.endpoint.valid()) return;
  auto r = table_.add(c, rt_.now());
  if (r.kind == RoutingTable::Added::kRefused) {
    rt_.observer.count("dht.contacts_refused.same_endpoint");
    return;
  }
  blacklist_.erase(c.endpoint);
  // A peer new to us, or one that says it (re)joined lately (a restarted peer we still knew),
  // gets the records it should hold — at most once per replication period.
  // (Nothing to remember while we hold no records: most peers of a big swarm, most of the time.)
  if ((r.kind == RoutingTable::Added::kAdded || newcomer) && !cfg_.client_mode && storage_.size() > 0) {
    // Remembered by the id's first 64 bits (16 bytes a peer, in a sorted vector: a table's worth
    // of peers at a million peers); two ids that share them share one entry.
    const std::uint64_t tag = c.id.words()[0];
    auto it = std::lower_bound(handed_.begin(), handed_.end(), tag, [](const auto& h, std::uint64_t t) { return h.first < t; });
    // (With replication off, still at most once per newcomer window, not on every message.)
    const Duration every = cfg_.replicate_period > Duration::zero() ? cfg_.replicate_period : kNewcomerWindow;
    const bool known = it != handed_.end() && it->first == tag;
    if (!known || rt_.now() - it->second > every) {
      if (known)
        it->second = rt_.now();
      else
        handed_.insert(it, {tag, rt_.now()});
      hand_over(c);
    }
  }
  if (r.kind == RoutingTable::Added::kFull && r.ping_first && !checking_.count(r.ping_first->id)) {
    checking_.insert(r.ping_first->id);
    rt_.observer.count("dht.lru_checks");
    scope_.spawn(check_lru(*r.ping_first));
  }
}

void DhtNode::hand_over(const Contact& c) {
  // A newcomer that is among the k nearest known peers of a record we hold gets a copy now,
  // not at the next replication round: under churn this is what keeps records findable.
  std::vector<Record> give;
  if (storage_.size() == 0) return;
  const DhtId nearer = table_.nearer_mask(c.id);
  storage_.for_each(rt_.now(), [&](const DhtId& id, const Record& r) {
    if (give.size() >= cfg_.limits.max_keys_per_request) return;
    // Only the holder nearest to the key (as far as it knows) hands over, so a newcomer gets one
    // copy rather than one from each of the k holders; and only if the newcomer is among the k
    // nearest peers of the key.
    if (RoutingTable::any_in(id, self_, nearer)) return;
    const auto near = table_.nearest(id, cfg_.k);
    if (near.size() < cfg_.k || !((near.back().id ^ id) < (c.id ^ id))) give.push_back(r);
  });
  if (give.empty()) return;
  rt_.observer.count("dht.handovers");
  rpc_.notify(c.endpoint, StoreRequest{me(), std::move(give)});
}

Task<void> DhtNode::check_lru(Contact lru) {
  auto r = co_await ping(lru.endpoint);
  checking_.erase(lru.id);
  if (r.ok() && r->id == lru.id && bound(r->id, lru.endpoint)) {
    table_.add(lru, rt_.now());  // alive: stays, now most recently seen
  } else {
    table_.remove(lru.id);  // dead: the freshest replacement takes its place
    rt_.observer.count("dht.evicted_lru");
  }
}

Task<Result<PingReply>> DhtNode::ping(Endpoint to) {
  PingRequest req{me()};
  co_return co_await rpc_.call<PingReply>(to, std::move(req), cfg_.rpc_timeout);
}

Task<std::size_t> DhtNode::bootstrap(std::vector<Endpoint> seeds) {
  if (seeds_.empty()) seeds_ = seeds;  // to join again if every contact is lost
  std::vector<Task<bool>> pings;
  for (const auto& s : seeds)
    pings.push_back([](DhtNode* self, Endpoint e) -> Task<bool> {
      auto r = co_await self->ping(e);
      const bool ok = r.ok() && self->bound(r->id, e);
      if (ok) self->learn(Contact{r->id, e});
      co_return ok;
    }(this, s));
  co_await when_all(std::move(pings));
  if (table_.size() > 0) {
    std::vector<DhtId> self_target{self_};
    co_await lookup(std::move(self_target), false);
    // As in Kademlia's join, refresh the buckets far from us (a random id in each), in one
    // traversal that stops per bucket once it holds k/2 contacts: without contacts in every
    // subtree, lookups can stall in local minima (seen at 10,000+ peers).
    auto targets = table_.far_bucket_targets(cfg_.join_refresh_buckets, rt_.rng);
    if (!targets.empty()) co_await lookup(std::move(targets), false, true);
  }
  rt_.observer.trace("dht.bootstrapped", table_.size());
  co_return table_.size();
}

Task<std::map<DhtId, LookupResult>> DhtNode::lookup(std::vector<DhtId> targets, bool want_values,
                                                    bool fill_buckets, std::size_t min_holders,
                                                    bool cache_values, StoreAlong* along) {
  // A node that lost every contact (a frozen process whose calls all timed out at once, a network
  // that went away) joins again through its seeds. A client needs this most: nobody calls it, so
  // nothing else would ever refill its table.
  Traversal t;
  t.want_values = want_values;
  t.min_holders = std::max<std::size_t>(1, min_holders);
  t.fill_buckets = fill_buckets;
  t.along = along && along->records ? along : nullptr;
  for (int attempt = 0; attempt < 2; ++attempt) {
    const TimePoint now = rt_.now();
    t.own_addresses.assign(targets.size(), {});
    for (const auto& target : targets) {
      Traversal::Key key;
      key.target = target;
      table_.touch_bucket(target, now);
      for (const auto& c : table_.nearest(target, cfg_.k)) {
        if (blacklisted(c.endpoint)) continue;
        if (auto [at, fresh] = t.endpoints.try_emplace(c.endpoint, c.id); !fresh && at->second != c.id) continue;
        if (!take_address(t, t.keys.size(), c.endpoint)) continue;
        key.cands.insert({c.id ^ target, t.add(c, 1)});
      }
      if (t.along)
        for (std::size_t r = 0; r < t.along->records->size(); ++r)
          if (DhtId::of_key((*t.along->records)[r].key) == target) key.store.push_back(r);
      t.keys.push_back(std::move(key));
    }
    if (!t.contacts.empty() || rejoining_ || seeds_.empty()) break;
    rejoining_ = true;
    rt_.observer.count("dht.rejoins");
    for (const auto& s : seeds_) blacklist_.erase(s);
    std::vector<Endpoint> seeds = seeds_;
    co_await bootstrap(std::move(seeds));
    rejoining_ = false;
    t.keys.clear();
  }
  // With d disjoint paths (S/Kademlia), the starting candidates are dealt out among d traversals
  // that never share a peer; their answers are merged. One peer (or a few colluding) on one path
  // cannot steer the others.
  const std::size_t d = fill_buckets ? 1 : std::max<std::size_t>(1, cfg_.disjoint_paths);
  std::vector<Traversal*> paths;
  std::vector<std::unique_ptr<Traversal>> more;  // paths 0..d-1 when d > 1 (t only starts them)
  FlatMap<DhtId, std::size_t> owner;
  if (d == 1) {
    paths.push_back(&t);
  } else {
    for (std::size_t p = 0; p < d; ++p) {
      auto tp = std::make_unique<Traversal>();
      tp->want_values = t.want_values;
      tp->min_holders = t.min_holders;
      tp->path = p;
      tp->owner = &owner;
      tp->addresses = &t.own_addresses;
      tp->changed = &t.own_changed;
      tp->along = t.along;
      for (const auto& key : t.keys) {
        Traversal::Key k;
        k.target = key.target;
        k.store = key.store;
        tp->keys.push_back(std::move(k));
      }
      paths.push_back(tp.get());
      more.push_back(std::move(tp));
    }
    std::size_t dealt = 0;
    for (std::size_t i = 0; i < t.keys.size(); ++i)
      for (const auto& [dist, index] : t.keys[i].cands) {
        const Candidate& c = t.pool[index];
        auto [at, fresh] = owner.try_emplace(c.contact.id, dealt % d);
        if (fresh) ++dealt;
        Traversal& tp = *paths[at->second];
        tp.keys[i].cands.insert({dist, tp.add(c.contact, c.hop)});
        tp.endpoints.try_emplace(c.contact.endpoint, c.contact.id);
      }
    // A path may know no peer at all for a key (fewer candidates than paths): nothing to do there.
    for (auto& tp : paths)
      for (auto& key : tp->keys) key.done = key.cands.empty();
  }
  {
    // The workers run until every key is done; then the lookup returns at once and the workers
    // still waiting on slow or dead peers are destroyed, which cancels their calls. (Waiting for
    // them would make every get pay an RPC timeout whenever a dead peer was in flight.)
    std::vector<Task<void>> workers;
    for (auto& tp : paths)
      for (std::size_t i = 0; i < std::max<std::size_t>(1, cfg_.alpha); ++i) workers.push_back(lookup_worker(*tp));
    for (auto& w : workers) w.start();
    auto finished = [&] {
      const bool keys_done = std::all_of(paths.begin(), paths.end(), [](const auto& tp) {
        return std::all_of(tp->keys.begin(), tp->keys.end(), [](const auto& k) { return k.done; });
      });
      return keys_done || std::all_of(workers.begin(), workers.end(), [](const auto& w) { return w.done(); });
    };
    while (!finished()) co_await t.own_changed.wait();
    // We were woken from inside a worker: let it reach its next suspension before destroying it.
    co_await sleep_on(rt_.timers, Duration::zero());
  }

  std::map<DhtId, LookupResult> out;
  for (std::size_t i = 0; i < t.keys.size(); ++i) {
    const DhtId target = t.keys[i].target;
    LookupResult res;
    int max_hop = 0, value_hop = 0;
    std::vector<std::pair<DhtId, std::pair<Contact, int>>> answered;  // (distance, (contact, hop))
    std::set<DhtId> holders;
    for (auto& tp : paths) {
      Traversal::Key& key = tp->keys[i];
      res.queried += tp->queried;
      for (const auto& [dist, index] : key.cands) {
        const auto& c = tp->pool[index];
        if (c.state == Candidate::kAnswered) answered.push_back({dist, {c.contact, c.hop}});
      }
      for (auto& rec : key.records) {  // the latest record per subkey, across paths
        auto same = std::find_if(res.records.begin(), res.records.end(), [&](const Record& x) { return x.subkey == rec.subkey; });
        if (same == res.records.end())
          res.records.push_back(std::move(rec));
        else if (same->expiration < rec.expiration)
          *same = std::move(rec);
      }
      holders.insert(key.holders.begin(), key.holders.end());
      if (key.value_hop > 0 && (value_hop == 0 || key.value_hop < value_hop)) value_hop = key.value_hop;
    }
    std::sort(answered.begin(), answered.end(), [](const auto& a, const auto& b) { return a.first < b.first; });
    for (const auto& [dist, ch] : answered) {
      res.nearest.push_back(ch.first);
      max_hop = std::max(max_hop, ch.second);
      if (res.nearest.size() >= cfg_.k) break;
    }
    res.hops = res.records.empty() ? max_hop : value_hop;
    // Cache on the lookup path: the nearest answering peer that lacked the value gets a copy.
    if (want_values && cache_values && cfg_.cache_on_lookup && !res.records.empty()) {
      for (const auto& c : res.nearest) {
        if (holders.count(c.id)) continue;
        StoreRequest req{me(), res.records};
        if (req.records.size() > cfg_.limits.max_keys_per_request) req.records.resize(cfg_.limits.max_keys_per_request);
        rt_.observer.count("dht.cache_stores");
        rpc_.notify(c.endpoint, req);
        break;
      }
    }
    out.emplace(target, std::move(res));
  }
  co_return out;
}

// A key's value search may end early: at the first holder for a plain get (min_holders = 1), as
// Kademlia does. A dictionary read (min_holders > 1) needs `min_holders` holders AND the
// `min_holders` nearest peers still standing to have answered. Stopping at the first holders met
// would let a reader whose path passes peers at the edge of the storers' nearest sets (each of
// which heard only some writers) read only those, poll after poll; the nearest peers are the
// ones every writer stores to.
bool DhtNode::take_address(Traversal& t, std::size_t key, const Endpoint& at) const {
  if (at.shared_local()) return true;
  auto& counts = (*t.addresses)[key];
  auto& ip = counts.ip[at.ip];
  auto& subnet = counts.subnet[at.ip >> 8];
  if ((cfg_.lookup_ip_limit > 0 && ip >= cfg_.lookup_ip_limit) ||
      (cfg_.lookup_subnet_limit > 0 && subnet >= cfg_.lookup_subnet_limit))
    return false;
  ++ip, ++subnet;
  return true;
}

bool DhtNode::values_done(const Traversal& t, std::size_t index) {
  const Traversal::Key& key = t.keys[index];
  if (!t.want_values || key.holders.size() < t.min_holders) return false;
  if (t.min_holders <= 1) return true;
  std::size_t seen = 0;
  for (const auto& [dist, at] : key.cands) {
    const auto& c = t.pool[at];
    if (c.state == Candidate::kFailed) continue;
    if (c.state != Candidate::kAnswered) return false;
    if (++seen >= t.min_holders) return true;
  }
  return true;
}

bool DhtNode::among_nearest(const Traversal& t, std::size_t key, const DhtId& id) const {
  std::size_t seen = 0;
  for (const auto& [dist, index] : t.keys[key].cands) {
    const Candidate& c = t.pool[index];
    if (c.state == Candidate::kFailed) continue;
    if (c.contact.id == id) return true;
    if (++seen >= cfg_.k) return false;
  }
  return false;
}

Task<void> DhtNode::lookup_worker(Traversal& t) {
  for (;;) {
    std::optional<std::uint32_t> pick;
    bool active = false;
    for (auto& key : t.keys) {
      if (key.done) continue;
      std::size_t seen = 0;
      bool inflight = false;
      std::optional<std::uint32_t> first_new;
      for (const auto& [dist, index] : key.cands) {
        const auto& c = t.pool[index];
        if (c.state == Candidate::kFailed) continue;
        if (seen++ >= cfg_.k) break;
        if (c.state == Candidate::kNew && !first_new) first_new = index;
        if (c.state == Candidate::kInFlight) inflight = true;
      }
      if (!first_new && !inflight) {
        key.done = true;  // the k nearest non-failed candidates have all answered
        continue;
      }
      active = true;
      if (first_new && !pick) pick = first_new;
    }
    if (!pick) {
      if (!active) {
        t.changed->notify_all();
        co_return;
      }
      co_await t.changed->wait();
      continue;
    }
    const std::uint32_t picked = *pick;
    Candidate& cand = t.pool[picked];
    cand.state = Candidate::kInFlight;
    ++t.queried;
    const Contact contact = cand.contact;
    const int hop = cand.hop;
    FindRequest req{me(), {}, {}};
    std::vector<std::size_t> asked, handed;  // keys asked; records handed along (indices)
    for (std::size_t i = 0; i < t.keys.size() && req.keys.size() < cfg_.limits.max_keys_per_request; ++i) {
      auto& key = t.keys[i];
      if (key.done || !key.cands.count({contact.id ^ key.target, picked})) continue;
      req.keys.push_back(key.target);
      asked.push_back(i);
      if (key.store.empty() || !among_nearest(t, i, contact.id)) continue;
      for (auto r : key.store) {
        if (req.store.size() >= cfg_.limits.max_keys_per_request) break;
        req.store.push_back((*t.along->records)[r]);
        handed.push_back(r);
      }
    }
    auto r = co_await rpc_.call<FindReply>(contact.endpoint, std::move(req), cfg_.rpc_timeout);
    Candidate& c = t.pool[picked];  // (taken again: the pool may have grown meanwhile)
    if (r.ok() && !handed.empty() && r->id == contact.id && r->stored.size() == handed.size()) {
      auto& got = t.along->answered[contact.id];
      for (std::size_t j = 0; j < handed.size(); ++j)
        if (r->stored[j] != FindReply::kDeclined) got.emplace_back(handed[j], static_cast<StoreOutcome>(r->stored[j]));
    }
    if (!r.ok() || r->id != contact.id || !bound(r->id, contact.endpoint) || r->entries.size() != asked.size()) {
      c.state = Candidate::kFailed;
      punish(contact);
      for (auto i : asked)  // a nearer peer gone may leave the nearest that answered enough
        if (values_done(t, i)) t.keys[i].done = true;
    } else {
      c.state = Candidate::kAnswered;
      learn(contact);
      const TimePoint now = rt_.now();
      for (std::size_t j = 0; j < asked.size(); ++j) {
        auto& key = t.keys[asked[j]];
        auto& entry = r->entries[j];
        bool got = false;
        for (auto& rec : entry.records) {
          if (rec.expiration <= now || DhtId::of_key(rec.key) != key.target || check_record(rec)) {
            rt_.observer.count("dht.invalid_values_seen");
            continue;
          }
          got = true;
          auto same = std::find_if(key.records.begin(), key.records.end(),
                                   [&](const Record& x) { return x.subkey == rec.subkey; });
          if (same == key.records.end())
            key.records.push_back(std::move(rec));
          else if (same->expiration < rec.expiration)
            *same = std::move(rec);
        }
        if (got) {
          key.holders.insert(contact.id);
          if (key.value_hop == 0) key.value_hop = hop;
        }
        for (const auto& n : entry.nearest) {
          if (n.id == self_ || !n.endpoint.valid() || blacklisted(n.endpoint)) continue;
          if (auto [at, fresh] = t.endpoints.try_emplace(n.endpoint, n.id); !fresh && at->second != n.id) {
            rt_.observer.count("dht.candidates_refused.same_endpoint");
            continue;
          }
          if (t.owner) {  // disjoint paths: a contact belongs to the first path that heard of it
            auto [at, fresh] = t.owner->try_emplace(n.id, t.path);
            if (!fresh && at->second != t.path) continue;
          }
          const auto known = t.contacts.find(n.id);
          const bool listed = known != t.contacts.end() && key.cands.count({n.id ^ key.target, known->second});
          if (!listed && !take_address(t, asked[j], n.endpoint)) {
            rt_.observer.count("dht.candidates_refused.address_limit");
            continue;
          }
          key.cands.insert({n.id ^ key.target, t.add(n, hop + 1)});
          // Refresh: fill our bucket from what we hear, unless peers prove who they are: then a
          // contact is admitted only once it has answered itself (as it does when queried).
          if (t.fill_buckets && !rt_.transport.authenticates()) learn(n);
        }
        if (values_done(t, asked[j])) key.done = true;
        if (t.fill_buckets && table_.bucket_size(key.target) >= std::max<std::size_t>(1, cfg_.k / 2))
          key.done = true;
      }
    }
    t.changed->notify_all();
  }
}

Task<std::vector<StoreTally>> DhtNode::store_many(std::vector<Record> records) {
  std::vector<DhtId> targets;
  for (const auto& r : records) targets.push_back(DhtId::of_key(r.key));
  std::sort(targets.begin(), targets.end());
  targets.erase(std::unique(targets.begin(), targets.end()), targets.end());
  // Small records travel along the lookup's FINDs (DhtConfig::store_along_max_bytes).
  std::vector<Record> along_records;
  std::vector<std::size_t> along_index;  // along_records[j] is records[along_index[j]]
  for (std::size_t i = 0; i < records.size(); ++i) {
    Bytes encoded;
    wire::Writer w(encoded);
    records[i].encode(w);
    if (encoded.size() > cfg_.store_along_max_bytes) continue;
    along_records.push_back(records[i]);
    along_index.push_back(i);
  }
  StoreAlong along;
  along.records = along_records.empty() ? nullptr : &along_records;
  auto found = co_await lookup(targets, false, false, 1, true, &along);
  // What the peers asked along the way answered, by peer id and record.
  std::map<std::pair<DhtId, std::size_t>, StoreOutcome> answered;
  for (const auto& [peer, outcomes] : along.answered)
    for (const auto& [j, o] : outcomes) answered.try_emplace({peer, along_index[j]}, o);

  std::vector<StoreTally> replicas(records.size());
  std::map<DhtId, std::pair<Contact, std::vector<std::size_t>>> plan;
  // One request per endpoint: a peer that answers for many ids (made up next to the key) is one replica.
  std::map<Endpoint, DhtId> by_endpoint;
  const TimePoint now = rt_.now();
  for (std::size_t i = 0; i < records.size(); ++i) {
    const DhtId id = DhtId::of_key(records[i].key);
    const auto& nearest = found[id].nearest;
    const bool self_near = nearest.size() < cfg_.k || ((self_ ^ id) < (nearest.back().id ^ id));
    if (self_near && !cfg_.client_mode) {
      if (check_record(records[i]))
        replicas[i].count(StoreOutcome::kInvalid);
      else
        replicas[i].count(outcome_of(storage_.store(records[i], now)));
    }
    for (const auto& c : nearest) {
      if (c.endpoint == rt_.transport.local()) continue;
      const DhtId& holder = by_endpoint.try_emplace(c.endpoint, c.id).first->second;
      if (auto a = answered.find({holder, i}); a != answered.end()) {  // it has it from the lookup
        replicas[i].count(a->second);
        answered.erase(a);  // counted once
        continue;
      }
      auto& p = plan[holder];
      if (!p.second.empty() && p.second.back() == i) continue;
      if (p.second.empty()) p.first = c;
      p.second.push_back(i);
    }
  }
  std::vector<Task<int>> sends;
  for (auto& [id, p] : plan) {
    sends.push_back([](DhtNode* self, Contact c, std::vector<std::size_t> idx,
                       const std::vector<Record>* recs, std::vector<StoreTally>* reps) -> Task<int> {
      StoreRequest req{self->me(), {}};
      for (auto i : idx) req.records.push_back((*recs)[i]);
      auto r = co_await self->rpc_.call<StoreReply>(c.endpoint, std::move(req), self->cfg_.rpc_timeout);
      if (!r.ok() || r->id != c.id || !self->bound(r->id, c.endpoint)) {
        self->punish(c);
        for (auto i : idx) ++(*reps)[i].unreachable;
        co_return 0;
      }
      for (std::size_t j = 0; j < idx.size(); ++j) {
        StoreTally& t = (*reps)[idx[j]];
        // A reply that answers fewer records than were sent refuses the rest.
        t.count(j < r->outcomes.size() ? static_cast<StoreOutcome>(r->outcomes[j]) : StoreOutcome::kInvalid);
      }
      co_return 1;
    }(this, p.first, p.second, &records, &replicas));
  }
  co_await when_all(std::move(sends));
  co_return replicas;
}

Task<std::vector<std::size_t>> DhtNode::store_all(std::vector<Record> records) {
  for (const auto& r : records) published_[{r.key, r.subkey}] = r;
  std::vector<StoreTally> tallies = co_await store_many(std::move(records));
  std::vector<std::size_t> stored;
  for (const auto& t : tallies) stored.push_back(t.stored);
  co_return stored;
}

Task<StoreResult> DhtNode::store(Record record) {
  const TimePoint t0 = rt_.now();
  published_[{record.key, record.subkey}] = record;
  std::vector<Record> one{std::move(record)};
  std::vector<StoreTally> reps = co_await store_many(std::move(one));
  const StoreTally& t = reps[0];
  co_return StoreResult{t.stored, rt_.now() - t0, t.stale, t.refused, t.unreachable, t.outcomes};
}

Task<GetResult> DhtNode::get(std::string key, std::size_t min_holders) {
  std::vector<std::string> keys{key};
  auto all = co_await get_many(std::move(keys), min_holders);
  co_return std::move(all.begin()->second);
}

Task<std::map<std::string, GetResult>> DhtNode::get_many(std::vector<std::string> keys, std::size_t min_holders) {
  const TimePoint t0 = rt_.now();
  std::map<std::string, GetResult> out;
  std::map<std::string, std::vector<Record>> local;
  std::vector<DhtId> targets;
  for (const auto& key : keys) {
    if (out.count(key)) continue;
    auto& o = out[key];
    auto& mine = local[key];
    for (auto& r : storage_.get(DhtId::of_key(key), t0))
      if (!check_record(r)) mine.push_back(std::move(r));
    if (!mine.empty() && min_holders <= 1) {
      o.found = true;
      o.records = std::move(mine);
      continue;
    }
    targets.push_back(DhtId::of_key(key));
  }
  if (targets.empty()) co_return out;
  // One traversal for every key still wanted; a key we hold counts as one holder already.
  bool all_local = true;
  for (const auto& id : targets)
    for (const auto& [key, recs] : local)
      if (DhtId::of_key(key) == id && recs.empty()) all_local = false;
  const std::size_t remote = std::max<std::size_t>(1, all_local ? min_holders - 1 : min_holders);
  auto res = co_await lookup(std::move(targets), true, false, remote, /*cache_values=*/min_holders <= 1);
  for (auto& [key, o] : out) {
    auto it = res.find(DhtId::of_key(key));
    if (it == res.end()) continue;
    auto& lr = it->second;
    for (auto& rec : local[key]) {  // merge our own copy: latest expiration per subkey
      auto same = std::find_if(lr.records.begin(), lr.records.end(), [&](const Record& x) { return x.subkey == rec.subkey; });
      if (same == lr.records.end())
        lr.records.push_back(std::move(rec));
      else if (same->expiration < rec.expiration)
        *same = std::move(rec);
    }
    o.found = !lr.records.empty();
    o.records = std::move(lr.records);
    o.hops = lr.hops;
    o.latency = rt_.now() - t0;
  }
  co_return out;
}

void DhtNode::spawn_get(std::string key, std::function<void(const GetResult&)> done) {
  scope_.spawn([](DhtNode* self, std::string k, std::function<void(const GetResult&)> d) -> Task<void> {
    auto r = co_await self->get(std::move(k));
    d(r);
  }(this, std::move(key), std::move(done)));
}

void DhtNode::spawn_join(std::vector<Endpoint> seeds, std::function<void(std::size_t)> done) {
  scope_.spawn([](DhtNode* self, std::vector<Endpoint> s, std::function<void(std::size_t)> d) -> Task<void> {
    auto n = co_await self->bootstrap(std::move(s));
    d(n);
  }(this, std::move(seeds), std::move(done)));
}

void DhtNode::spawn_store(Record record, std::function<void(const StoreResult&)> done) {
  scope_.spawn([](DhtNode* self, Record rec, std::function<void(const StoreResult&)> d) -> Task<void> {
    auto r = co_await self->store(std::move(rec));
    d(r);
  }(this, std::move(record), std::move(done)));
}

void DhtNode::start_maintenance() {
  if (cfg_.refresh_period > Duration::zero()) scope_.spawn(refresh_loop());
  // A client holds nothing of others', but republishes what it published itself.
  if (cfg_.replicate_period > Duration::zero()) scope_.spawn(replicate_loop());
}

Task<void> DhtNode::refresh_loop() {
  for (;;) {
    const auto jitter = Duration(static_cast<std::int64_t>(rt_.rng.uniform(0.8, 1.2) *
                                                           static_cast<double>(cfg_.refresh_period.count())));
    co_await sleep_on(rt_.timers, jitter);
    auto targets = table_.stale_bucket_targets(rt_.now() - cfg_.refresh_period, rt_.rng);
    if (targets.size() > 8) targets.resize(8);  // bound the work of one refresh
    if (targets.empty()) continue;
    rt_.observer.count("dht.refreshes");
    co_await lookup(std::move(targets), false);
  }
}

Task<void> DhtNode::replicate_loop() {
  for (;;) {
    const auto jitter = Duration(static_cast<std::int64_t>(rt_.rng.uniform(0.8, 1.2) *
                                                           static_cast<double>(cfg_.replicate_period.count())));
    co_await sleep_on(rt_.timers, jitter);
    const TimePoint now = rt_.now();
    // Republish what this node published itself (a full lookup finds new nearest peers).
    std::vector<Record> mine;
    for (auto it = published_.begin(); it != published_.end();) {
      if (it->second.expiration <= now) {
        it = published_.erase(it);
      } else {
        mine.push_back(it->second);
        ++it;
      }
    }
    for (std::size_t i = 0; i < mine.size(); i += cfg_.limits.max_keys_per_request) {
      std::vector<Record> batch(mine.begin() + static_cast<std::ptrdiff_t>(i),
                                mine.begin() + static_cast<std::ptrdiff_t>(std::min(mine.size(), i + cfg_.limits.max_keys_per_request)));
      co_await store_many(std::move(batch));
    }
    // Replicate what it holds to the k nearest peers it knows (no lookup: cheap, local view).
    std::map<DhtId, std::pair<Contact, std::vector<Record>>> plan;
    const TimePoint recent = rt_.now() - cfg_.replicate_period * 7 / 10;
    std::map<std::pair<std::string, std::optional<std::string>>, TimePoint> still_held;
    for (auto& r : storage_.all(rt_.now())) {
      auto it = refreshed_.find({r.key, r.subkey});
      const bool pushed_to_us = it != refreshed_.end() && it->second > recent;
      still_held[{r.key, r.subkey}] = pushed_to_us ? it->second : rt_.now();
      if (pushed_to_us) continue;  // a peer replicated it to us lately; it reached the others too
      const DhtId id = DhtId::of_key(r.key);
      for (const auto& c : table_.nearest(id, cfg_.k)) {
        auto& p = plan[c.id];
        p.first = c;
        if (p.second.size() < cfg_.limits.max_keys_per_request) p.second.push_back(r);
      }
    }
    std::erase_if(handed_, [&](const auto& h) { return rt_.now() - h.second > cfg_.replicate_period; });
    refreshed_ = std::move(still_held);  // we pushed the rest now; forget what we no longer hold
    rt_.observer.count("dht.replications");
    for (auto& [id, p] : plan) {
      rpc_.notify(p.first.endpoint, StoreRequest{me(), std::move(p.second)});
    }
  }
}

}  // namespace apiary::dht
