#include "core/averaging/matchmaking.hpp"

#include <algorithm>
#include <map>
#include <set>

namespace apiary::averaging {

namespace {

// Earlier deadline first, then lower endpoint: the order in which peers lead.
bool ahead(const Declaration& a, const Declaration& b) {
  return a.deadline != b.deadline ? a.deadline < b.deadline : a.member.endpoint < b.member.endpoint;
}

std::string hex(std::uint64_t v) {
  static const char* d = "0123456789abcdef";
  std::string s(16, '0');
  for (int i = 15; i >= 0; --i, v >>= 4) s[static_cast<std::size_t>(i)] = d[v & 15];
  return s;
}

}  // namespace

struct Matchmaker::Search {
  std::string key;
  TensorSchema schema;
  std::uint64_t hash = 0;
  Member self;
  TimePoint deadline{};
  std::vector<Member> followers;
  bool following = false;
  bool declared = false;  // our declaration is stored
  bool assembled = false;
  bool failed = false;
  std::uint64_t epoch = 0;  // bumped when a leader disbands its followers to join a better leader
  Group group;
  Notifier changed;
};

Matchmaker::Matchmaker(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MatchmakingConfig config)
    : rt_(rt), rpc_(rpc), dht_(dht), cfg_(std::move(config)) {
  rpc_.serve<JoinRequest, JoinReply>(
      [this](const Endpoint& from, JoinRequest req) { return handle_join(from, std::move(req)); });
}

Matchmaker::~Matchmaker() {
  scope_.destroy_all();
  if (current_) {
    current_->failed = true;
    current_->changed.notify_all();
  }
}

Group Matchmaker::assemble(Search& s) {
  Group g;
  std::uint64_t h = s.hash ^ rt_.rng.next();
  for (char c : s.key) h = (h ^ static_cast<std::uint8_t>(c)) * 0x100000001b3ULL;
  h ^= (std::uint64_t{s.self.endpoint.ip} << 16) | s.self.endpoint.port;
  h ^= static_cast<std::uint64_t>(to_ns(s.deadline)) * 0x9e3779b97f4a7c15ULL;
  g.id = h;
  g.schema = s.schema;
  g.members.push_back(s.self);
  for (const auto& m : s.followers) g.members.push_back(m);
  s.group = g;
  s.assembled = true;
  rt_.observer.trace("avg.group.assembled", g.id, g.members.size());
  s.changed.notify_all();  // followers' join requests answer now
  return g;
}

Task<Result<Group>> Matchmaker::find_group(std::string key, TensorSchema schema, Member self) {
  if (current_) co_return Error{ErrorCode::kInvalidArgument, "already looking for a group under '" + current_->key + "'"};
  if (rt_.transport.authenticates() && !identity_)
    co_return Error{ErrorCode::kInvalidArgument,
                    "peers here prove their keys and follow only signed declarations: give the matchmaker this peer's identity"};
  if (cfg_.min_group_size < 1 || cfg_.target_group_size < cfg_.min_group_size)
    co_return Error{ErrorCode::kInvalidArgument, "need 1 <= min_group_size <= target_group_size"};
  auto sp = std::make_shared<Search>();
  Search& s = *sp;
  s.key = key;
  s.hash = schema.hash();
  s.schema = std::move(schema);
  self.endpoint = rt_.transport.local();
  s.self = self;
  s.deadline = rt_.now() + cfg_.budget;
  current_ = sp;
  const std::string dht_key = cfg_.prefix + ":" + key;

  dht::Record rec;
  rec.key = dht_key;
  rec.subkey = identity_ ? identity_->owner_tag() : self.endpoint.to_string();
  rec.value = Declaration{self, s.hash, s.deadline}.encode();
  rec.expiration = s.deadline;
  if (identity_) identity_->sign(rec);
  // Declare, and give the declaration (ours and, as everyone starts together, the others') up to
  // a third of the budget to land before the first read; under churn a store can wait out RPC
  // timeouts on departed peers, so it finishes in the background.
  scope_.spawn([](dht::DhtNode& dht, dht::Record r, std::shared_ptr<Search> search) -> Task<void> {
    co_await dht.store(std::move(r));
    search->declared = true;
    search->changed.notify_all();
  }(dht_, std::move(rec), sp));
  {
    std::function<bool()> landed = [&s] { return s.declared || s.assembled || s.failed; };
    co_await wait_until(rt_, s.changed, rt_.now() + cfg_.budget / 3, std::move(landed));
  }

  const Declaration mine{s.self, s.hash, s.deadline};
  std::set<Endpoint> tried;
  const bool authenticated = rt_.transport.authenticates();
  std::map<Endpoint, std::array<std::uint8_t, 32>> owners;  // who declared each endpoint (authenticated peers)
  std::set<std::array<std::uint8_t, 32>> misbound;  // owners whose declarations named another's endpoint
  std::optional<Error> fatal;
  while (!s.assembled && !s.failed && rt_.now() < s.deadline) {
    {
      dht::GetResult got = co_await dht_.get(dht_key, cfg_.read_holders);
      if (s.assembled || s.failed) break;
      std::vector<Declaration> ahead_of_me;
      for (const auto& r : got.records) {
        std::optional<Declaration> d;
        try {
          d = Declaration::decode(r.value);
        } catch (const wire::DecodeError&) {
          rt_.observer.count("avg.bad_declarations");
        }
        if (!d || d->member.endpoint == s.self.endpoint || tried.count(d->member.endpoint)) continue;
        if (authenticated) {
          // Only a declaration its owner signed, followed only to where that owner proves its key.
          const auto owner = r.subkey ? dht::owner_of_tag(*r.subkey) : std::nullopt;
          if (!owner) {
            rt_.observer.count("avg.unowned_declarations");
            continue;
          }
          if (misbound.count(*owner)) continue;
          // A key already proven at that endpoint that is not the owner's: not its declaration.
          if (auto proven = rt_.transport.peer_key(d->member.endpoint); proven && *proven != *owner) {
            rt_.observer.count("avg.declarations_unbound");
            misbound.insert(*owner);
            continue;
          }
          owners[d->member.endpoint] = *owner;
        }
        if (d->deadline <= rt_.now()) continue;
        if (excluded_ && excluded_(d->member.endpoint)) continue;
        // A client member cannot accept connections, so it never leads; it follows any leader.
        if (d->member.kind == MemberKind::kClient) continue;
        if (s.self.kind != MemberKind::kClient && !ahead(*d, mine)) continue;
        ahead_of_me.push_back(*d);
      }
      std::sort(ahead_of_me.begin(), ahead_of_me.end(), ahead);
      rt_.observer.log(LogLevel::kDebug, "avg.mm",
                       "'" + s.key + "': " + std::to_string(got.records.size()) + " declared, " +
                           std::to_string(ahead_of_me.size()) + " ahead untried, " +
                           std::to_string(s.followers.size()) + " following me");
      if (!ahead_of_me.empty() && s.followers.size() + 1 < cfg_.target_group_size) {
        // A better-placed leader exists: follow it. Followers gathered meanwhile are sent back to
        // look again; they will find the same leader.
        if (!s.followers.empty()) {
          rt_.observer.count("avg.groups_disbanded");
          s.followers.clear();
          ++s.epoch;
          s.changed.notify_all();
        }
        const Declaration leader = ahead_of_me.front();
        tried.insert(leader.member.endpoint);
        s.following = true;
        JoinRequest req{s.key, s.hash, s.self};
        const Duration wait = (leader.deadline - rt_.now()) + cfg_.poll + std::chrono::seconds(2);
        Result<JoinReply> r = co_await rpc_.call<JoinReply>(leader.member.endpoint, std::move(req), wait);
        s.following = false;
        if (!r.ok())
          rt_.observer.log(LogLevel::kDebug, "avg.mm",
                           "'" + s.key + "': " + leader.member.endpoint.to_string() + " refused: " + r.error().describe());
        if (r.ok() && authenticated && rt_.transport.peer_key(leader.member.endpoint) != owners[leader.member.endpoint]) {
          rt_.observer.count("avg.declarations_unbound");  // another key answers at the declared endpoint
          misbound.insert(owners[leader.member.endpoint]);
          tried.erase(leader.member.endpoint);  // its own peer's declaration may still be followed
          continue;
        }
        if (r.ok()) {
          if (!r->group.index_of(s.self.endpoint) || !(r->group.schema == s.schema)) {
            rt_.observer.count("avg.bad_groups");
            continue;
          }
          s.group = std::move(r->group);
          s.assembled = true;
          break;
        }
        if (r.error().code == ErrorCode::kInvalidArgument) {
          fatal = Error{ErrorCode::kInvalidArgument, "group under '" + s.key + "' refused us: " + r.error().message};
          break;
        }
        continue;  // refused or gone: try the next peer ahead
      }
    }
    if (s.self.kind != MemberKind::kClient && s.followers.size() + 1 >= cfg_.target_group_size) {
      assemble(s);
      break;
    }
    const TimePoint until = std::min(rt_.now() + cfg_.poll, s.deadline);
    const std::size_t target = cfg_.target_group_size;
    std::function<bool()> full = [&s, target] { return s.failed || s.followers.size() + 1 >= target; };
    co_await wait_until(rt_, s.changed, until, std::move(full));
  }
  if (!s.assembled && !fatal && !s.failed && s.self.kind != MemberKind::kClient &&
      s.followers.size() + 1 >= cfg_.min_group_size)
    assemble(s);
  if (!s.assembled) {
    s.failed = true;
    s.changed.notify_all();  // followers hear that there is no group
  }
  current_.reset();
  if (fatal) co_return *fatal;
  if (!s.assembled)
    co_return Error{ErrorCode::kTimeout, "no group of at least " + std::to_string(cfg_.min_group_size) +
                                             " formed under '" + s.key + "' within " + format_duration(cfg_.budget)};
  rt_.observer.count("avg.groups_joined");
  co_return s.group;
}

Task<Result<JoinReply>> Matchmaker::handle_join(Endpoint from, JoinRequest req) {
  std::shared_ptr<Search> sp = current_;
  if (!sp || sp->key != req.key) co_return Error{ErrorCode::kRejected, "not looking for a group under '" + req.key + "'"};
  Search& s = *sp;
  if (s.following || s.assembled || s.failed || s.self.kind == MemberKind::kClient)
    co_return Error{ErrorCode::kRejected, "not leading a group"};
  if (req.schema_hash != s.hash)
    co_return Error{ErrorCode::kInvalidArgument, "tensor schema mismatch: the group averages " + s.schema.describe() +
                                                     " (schema hash " + hex(s.hash) + "), the joining peer's schema hash is " +
                                                     hex(req.schema_hash)};
  if (excluded_ && excluded_(from)) {
    rt_.observer.count("avg.excluded_joins");
    co_return Error{ErrorCode::kRejected, "banned from this swarm's groups"};
  }
  Member m = req.member;
  m.endpoint = from;
  auto it = std::find_if(s.followers.begin(), s.followers.end(), [&](const Member& f) { return f.endpoint == from; });
  if (it == s.followers.end()) {
    if (s.followers.size() + 1 >= cfg_.target_group_size) co_return Error{ErrorCode::kRejected, "group is full"};
    s.followers.push_back(m);
  } else {
    *it = m;
  }
  s.changed.notify_all();
  const std::uint64_t epoch = s.epoch;
  while (!s.assembled && !s.failed && s.epoch == epoch) co_await s.changed.wait();
  if (s.epoch != epoch) co_return Error{ErrorCode::kRejected, "the leader disbanded to join a better-placed leader"};
  if (!s.assembled) co_return Error{ErrorCode::kRejected, "the leader could not form a group"};
  co_return JoinReply{s.group};
}

std::string GridPosition::key(std::uint64_t round) const {
  const std::size_t d = coords.empty() ? 1 : coords.size();
  const std::size_t skip = static_cast<std::size_t>(round % d);
  std::string k = "t" + std::to_string(round) + ".d" + std::to_string(skip);
  for (std::size_t i = 0; i < coords.size(); ++i) k += i == skip ? ".*" : "." + std::to_string(coords[i]);
  return k;
}

void GridPosition::update(std::uint64_t round, std::size_t rank_in_group) {
  if (coords.empty()) return;
  coords[static_cast<std::size_t>(round % coords.size())] = static_cast<std::uint32_t>(rank_in_group % side);
}

bool GridPosition::park(std::uint64_t round) {
  if (coords.empty()) return false;
  const std::size_t d = static_cast<std::size_t>(round % coords.size());
  if (coords[d] >= side) return false;
  for (auto& c : coords)
    if (c >= side) c -= side;
  coords[d] += side;
  return true;
}

bool GridPosition::parked() const {
  return std::any_of(coords.begin(), coords.end(), [&](std::uint32_t c) { return c >= side; });
}

GridPosition GridPosition::of_index(std::uint64_t index, std::uint32_t side, std::size_t dims) {
  GridPosition g;
  g.side = side;
  g.coords.assign(dims, 0);
  for (std::size_t i = dims; i-- > 0;) {
    g.coords[i] = static_cast<std::uint32_t>(index % side);
    index /= side;
  }
  return g;
}

}  // namespace apiary::averaging
