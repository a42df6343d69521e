#include "core/optim/btard.hpp"

#include <sodium.h>

#include <algorithm>
#include <cmath>
#include <cstring>

#include "core/compression/codecs.hpp"

namespace apiary::optim {

using namespace averaging;

namespace {

constexpr std::uint32_t kCommit = 220, kReveal = 221, kCheck = 222, kAccuse = 223, kGradient = 224, kRows = 225;
constexpr std::size_t kMaxPieces = 1u << 16;
constexpr std::size_t kKeptRounds = 4;
constexpr std::size_t kMaxBans = 256;

Key read_key(wire::Reader& r) {
  Key k{};
  auto b = r.raw(k.size());
  std::copy(b.begin(), b.end(), k.begin());
  return k;
}

Key hash_of(std::span<const std::uint8_t> a, std::span<const std::uint8_t> b = {}) {
  Key out{};
  crypto_generichash_state st;
  crypto_generichash_init(&st, nullptr, 0, out.size());
  crypto_generichash_update(&st, a.data(), a.size());
  if (!b.empty()) crypto_generichash_update(&st, b.data(), b.size());
  crypto_generichash_final(&st, out.data(), out.size());
  return out;
}

std::span<const std::uint8_t> as_bytes(std::span<const float> v) {
  return {reinterpret_cast<const std::uint8_t*>(v.data()), v.size() * sizeof(float)};
}

}  // namespace

Rng batch_rng(std::uint64_t run_seed, const Key& key, std::uint64_t epoch, std::uint64_t batch) {
  std::uint64_t k = run_seed ^ 0x6274617264ULL;  // "btard"
  for (std::size_t i = 0; i < 8; ++i) k = (k << 8 | k >> 56) ^ key[i];
  return Rng(k).fork(epoch + 1).fork(batch + 1);
}

struct Btard::Peer {
  bool committed = false;
  Key key{};
  double weight = 0;
  Key seed_commit{};
  Key params{};             // hash of the parameters it computed on
  std::vector<Key> hashes;  // per piece, global order; empty: an auxiliary member
  bool revealed = false;
  Key seed{};
  bool checked = false;
  std::vector<double> s;  // per piece; NaN where it took no part
  std::vector<Key> got;   // per piece: the hash of the aggregate it got back (zeros: none)
  Key shared{};           // the shared seed as it saw it (its directions z)
};

struct Btard::Round {
  Group group;
  std::uint64_t epoch = 0;
  Layout layout;
  std::size_t me = 0;
  std::vector<float> mine;    // my committed gradient (empty: auxiliary)
  std::vector<float> params;  // the step's parameters
  std::vector<float> result;  // the aggregates I got back (my own values where got_mean is false)
  std::vector<bool> got_mean;
  Key seed{};
  Key params_hash{};  // of `params`
  Key shared{};
  bool over = false;
  std::vector<Peer> peers;
  // Every contribution to each piece of my part (global index), kept for disputes.
  std::map<std::size_t, std::pair<std::vector<float>, std::vector<double>>> rows;
  std::set<std::size_t> judged;  // targets whose accusation this member has judged
  Notifier changed;
  // Which reducer's part holds piece q (global index), and the piece; nullptr past the last one.
  std::pair<std::size_t, const Piece*> locate(std::size_t q) const {
    for (std::size_t j = 0; j < layout.pieces.size(); ++j) {
      if (q < layout.pieces[j].size()) return {j, &layout.pieces[j][q]};
      q -= layout.pieces[j].size();
    }
    return {layout.pieces.size(), nullptr};
  }
  const Piece* piece(std::size_t q) const { return locate(q).second; }
  std::size_t piece_size(std::size_t q) const { return piece(q) ? piece(q)->size() : 0; }
};

Btard::Btard(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity, std::string prefix, BtardConfig config,
             AllReduceConfig& allreduce)
    : rt_(rt),
      rpc_(rpc),
      dht_(dht),
      identity_(std::move(identity)),
      prefix_(std::move(prefix)),
      cfg_(std::move(config)),
      allreduce_(allreduce) {
  for (std::uint32_t m : {kCommit, kReveal, kCheck, kAccuse})
    rpc_.on(m, [this, m](Request in) -> Task<Result<Reply>> {
      on_message(m, in.from, in.body);
      co_return Reply{};
    });
  rpc_.on(kGradient, [this](Request in) -> Task<Result<Reply>> {
    Result<std::shared_ptr<Round>> r = shown_round(in, nullptr);
    if (!r.ok()) co_return r.error();
    const auto mine = as_bytes((*r)->mine);
    co_return Reply{{}, Payload::bytes(Bytes(mine.begin(), mine.end()))};
  });
  rpc_.on(kRows, [this](Request in) -> Task<Result<Reply>> {
    std::uint64_t piece = 0;
    Result<std::shared_ptr<Round>> found = shown_round(in, &piece);
    if (!found.ok()) co_return found.error();
    const auto& r = *found;
    auto it = r->rows.find(piece);
    if (it == r->rows.end()) co_return Error{ErrorCode::kInvalidArgument, "no contributions kept for that piece"};
    Bytes body;
    wire::Writer w(body);
    w.varint(it->second.second.size());
    for (double x : it->second.second) w.f64(x);
    const auto rows = as_bytes(it->second.first);
    co_return Reply{std::move(body), Payload::bytes(Bytes(rows.begin(), rows.end()))};
  });
  allreduce_.admit_piece = [this](std::uint64_t group, std::size_t sender, std::size_t piece, std::span<const std::uint8_t> body,
                                  double weight) { return admit(group, sender, piece, body, weight); };
  allreduce_.on_reduced = [this](std::uint64_t group, std::size_t piece, std::span<const float> rows, std::span<const double> w) {
    keep_rows(group, piece, rows, w);
  };
}

Btard::~Btard() { scope_.destroy_all(); }

// A request to show something of a step: its group (and a piece), from a member of it.
Result<std::shared_ptr<Btard::Round>> Btard::shown_round(const Request& in, std::uint64_t* piece) const {
  std::uint64_t group = 0;
  try {
    wire::Reader rd(in.body);
    group = rd.u64();
    if (piece) *piece = rd.varint();
    rd.expect_end();
  } catch (const wire::DecodeError& e) {
    return Error{ErrorCode::kBadMessage, e.what()};
  }
  auto r = round_of(group);
  if (!r || !r->group.index_of(in.from)) return Error{ErrorCode::kRejected, "not a member of that step"};
  return r;
}

std::shared_ptr<Btard::Round> Btard::round_of(std::uint64_t group) const {
  auto it = rounds_.find(group);
  return it == rounds_.end() ? nullptr : it->second;
}

bool Btard::banned(const Endpoint& e) const { return banned_endpoints_.count(e) > 0; }

bool Btard::banned_tag(const std::string& tag) const {
  for (const auto& k : banned_keys_)
    if (tag == dht::owner_tag_of(k)) return true;
  return false;
}

Key Btard::piece_hash(std::uint64_t group, std::size_t sender, std::size_t piece, std::span<const std::uint8_t> body) const {
  Bytes head;
  wire::Writer w(head);
  w.u64(group);
  w.varint(sender);
  w.varint(piece);
  return hash_of(head, body);
}

Key Btard::values_hash(const Round& r, std::size_t sender, std::size_t piece, std::span<const float> values) const {
  const auto codec = allreduce_.codec.for_tensor(r.group.schema.numel(r.piece(piece)->tensor));
  return piece_hash(r.group.id, sender, piece, compression::encode_body(values, codec));  // as it travels
}

void Btard::broadcast(const Round& r, std::uint32_t method, const Bytes& body) {
  for (std::size_t j = 0; j < r.group.members.size(); ++j)
    if (j != r.me) rpc_.notify(r.group.members[j].endpoint, method, body);
}

Task<void> Btard::wait_phase(std::shared_ptr<Round> r, std::function<bool()> done) {
  co_await wait_until(rt_, r->changed, rt_.now() + cfg_.phase_timeout, std::move(done));
}

Task<std::optional<Error>> Btard::commit(Group group, std::uint64_t epoch, std::span<const float> mine, double weight,
                                 std::span<const float> parameters) {
  const auto me = group.index_of(rt_.transport.local());
  if (!me) co_return Error{ErrorCode::kInvalidArgument, "not a member of the group"};
  auto layout = make_layout(group, allreduce_);
  if (!layout.ok()) co_return layout.error();
  if (!mine.empty() && mine.size() != group.schema.total())
    co_return Error{ErrorCode::kInvalidArgument, "gradient has " + std::to_string(mine.size()) + " values, the schema " +
                                                     std::to_string(group.schema.total())};
  if (layout->total_pieces() > kMaxPieces) co_return Error{ErrorCode::kInvalidArgument, "too many pieces to commit to"};
  auto r = std::make_shared<Round>();
  r->group = group;
  r->epoch = epoch;
  r->layout = std::move(*layout);
  r->me = *me;
  r->mine.assign(mine.begin(), mine.end());
  r->params.assign(parameters.begin(), parameters.end());
  r->peers.resize(group.members.size());
  for (auto& b : r->seed) b = static_cast<std::uint8_t>(rt_.rng.next());
  rounds_[group.id] = r;
  round_order_.push_back(group.id);
  while (round_order_.size() > kKeptRounds) {
    rounds_.erase(round_order_.front());
    round_order_.erase(round_order_.begin());
  }
  ++stats_.steps;

  Bytes body;
  wire::Writer w(body);
  w.u64(group.id);
  w.varint(epoch);
  w.raw(identity_.public_key);
  w.f64(mine.empty() ? 0.0 : weight);
  Bytes seed_head;
  wire::Writer sw(seed_head);
  sw.u64(group.id);
  w.raw(hash_of(seed_head, r->seed));
  r->params_hash = hash_of(as_bytes(parameters));
  w.raw(r->params_hash);
  const std::size_t total = mine.empty() ? 0 : r->layout.total_pieces();
  w.varint(total);
  std::size_t q = 0;
  for (const auto& part : r->layout.pieces)
    for (const Piece& pc : part) {
      w.raw(values_hash(*r, r->me, q++, mine.subspan(pc.begin, pc.size())));
    }
  const auto sig = identity_.sign_bytes(body);
  w.raw(sig);
  broadcast(*r, kCommit, body);
  apply(*r, kCommit, r->me, body);
  if (auto it = early_.find(group.id); it != early_.end()) {
    auto msgs = std::move(it->second);
    early_.erase(it);
    for (auto& [m, from, b] : msgs)
      if (auto i = group.index_of(from)) apply(*r, m, *i, b);
  }
  Round& round = *r;
  std::function<bool()> all = [&round] {
    for (std::size_t j = 0; j < round.peers.size(); ++j)
      if (!round.peers[j].committed) return false;
    return true;
  };
  co_await wait_phase(r, std::move(all));
  co_return std::nullopt;
}

std::optional<Endpoint> Btard::resync_source(std::uint64_t group) const {
  auto r = round_of(group);
  if (!r) return std::nullopt;
  std::map<Key, std::size_t> votes;
  for (std::size_t j = 0; j < r->peers.size(); ++j)
    if (r->peers[j].committed && !banned(r->group.members[j].endpoint)) ++votes[r->peers[j].params];
  std::size_t mine = votes.count(r->params_hash) ? votes.at(r->params_hash) : 0, best = 0;
  Key top{};
  for (const auto& [k, n] : votes)
    if (n > best) {
      best = n;
      top = k;
    }
  if (best <= mine) return std::nullopt;  // in sync with the plurality (or tied)
  for (std::size_t j = 0; j < r->peers.size(); ++j)
    if (j != r->me && r->peers[j].committed && r->peers[j].params == top && !banned(r->group.members[j].endpoint))
      return r->group.members[j].endpoint;
  return std::nullopt;
}

void Btard::abandon(std::uint64_t group) {
  if (auto r = round_of(group)) {
    r->over = true;
    r->changed.notify_all();
  }
}

void Btard::on_message(std::uint32_t method, const Endpoint& from, std::span<const std::uint8_t> body) {
  // A banned member's commitment and seed share are still read (a dispute checks the rows others
  // took from it; the others count its share in the seed); nothing else of it is.
  if (banned(from) && method != kCommit && method != kReveal) return;
  std::uint64_t group = 0;
  try {
    group = wire::Reader(body).u64();
  } catch (const wire::DecodeError&) {
    rt_.observer.count("btard.bad_messages");
    return;
  }
  if (auto r = round_of(group)) {
    if (auto i = r->group.index_of(from)) apply(*r, method, *i, body);
    else rt_.observer.count("btard.bad_messages");
    return;
  }
  // A round this member has not begun: keep a bounded number of messages for it.
  std::size_t held = 0;
  for (const auto& [g, v] : early_) held += v.size();
  if (held >= 4 * kMaxMembers || (!early_.count(group) && early_.size() >= 16)) {
    rt_.observer.count("btard.dropped_early");
    return;
  }
  early_[group].emplace_back(method, from, Bytes(body.begin(), body.end()));
}

void Btard::apply(Round& r, std::uint32_t method, std::size_t from, std::span<const std::uint8_t> body) {
  Peer& p = r.peers[from];
  std::string bad;
  try {
    wire::Reader rd(body);
    rd.u64();  // the group
    if (method == kCommit) {
      if (p.committed) return;  // the first commitment holds
      const std::uint64_t epoch = rd.varint();
      Peer c;
      c.key = read_key(rd);
      c.weight = rd.f64();
      c.seed_commit = read_key(rd);
      c.params = read_key(rd);
      const std::uint64_t n = rd.varint_max(kMaxPieces, "piece hashes");
      for (std::uint64_t i = 0; i < n; ++i) c.hashes.push_back(read_key(rd));
      const std::size_t signed_len = rd.position();
      auto sig = rd.raw(64);
      rd.expect_end();
      if (epoch != r.epoch) bad = "commitment for epoch " + std::to_string(epoch);
      else if (!std::isfinite(c.weight) || c.weight < 0) bad = "bad weight";
      else if (n != 0 && n != r.layout.total_pieces()) bad = "commitment to " + std::to_string(n) + " pieces";
      else if (n == 0 && c.weight != 0) bad = "a weight without pieces";
      else if (!dht::verify_signature(c.key, body.first(signed_len), sig)) bad = "commitment signature does not verify";
      if (bad.empty()) {
        c.committed = true;
        p = std::move(c);
      }
    } else if (method == kReveal) {
      const Key seed = read_key(rd);
      rd.expect_end();
      if (!p.committed || p.revealed) return;
      Bytes head;
      wire::Writer w(head);
      w.u64(r.group.id);
      if (hash_of(head, seed) != p.seed_commit) {
        ban(r, from, "revealed a seed share that differs from its commitment");
        return;
      }
      p.revealed = true;
      p.seed = seed;
    } else if (method == kCheck) {
      const Key shared = read_key(rd);
      const std::uint64_t n = rd.varint_max(kMaxPieces, "check values");
      std::vector<double> s(n);
      std::vector<Key> got(n);
      for (std::uint64_t i = 0; i < n; ++i) {
        s[i] = rd.f64();
        got[i] = read_key(rd);
      }
      rd.expect_end();
      if (!p.committed || p.checked) return;
      if (n != r.layout.total_pieces()) bad = "check values for " + std::to_string(n) + " pieces";
      else {
        p.checked = true;
        p.s = std::move(s);
        p.got = std::move(got);
        p.shared = shared;
      }
    } else if (method == kAccuse) {
      const std::uint64_t target = rd.varint();
      rd.expect_end();
      if (target >= r.peers.size() || target == from) bad = "accusation of member " + std::to_string(target);
      else if (!r.judged.count(target)) {  // an accusation of me too: I check my own gradient as the others do
        r.judged.insert(target);
        ++stats_.accusations;
        scope_.spawn(judge_accusation(round_of(r.group.id), from, target));
      }
    }
  } catch (const wire::DecodeError& e) {
    bad = e.what();
  }
  if (!bad.empty()) {
    rt_.observer.count("btard.bad_messages");
    rt_.observer.log(LogLevel::kInfo, "btard", "message " + std::to_string(method) + " from member " + std::to_string(from) + ": " + bad);
    return;
  }
  r.changed.notify_all();
}

std::string Btard::admit(std::uint64_t group, std::size_t sender, std::size_t piece, std::span<const std::uint8_t> body,
                         double weight) {
  auto r = round_of(group);
  if (!r) return "no commitments for this group";
  const Peer& p = r->peers[sender];
  std::string why;
  const std::size_t q = r->layout.first_piece(r->me) + piece;
  if (banned(r->group.members[sender].endpoint)) why = "the sender is banned";
  else if (!p.committed || p.hashes.empty()) why = "no commitment from the sender";
  else if (weight != p.weight) why = "weight differs from the committed one";
  else if (p.params != r->params_hash) why = "computed on other parameters than this reducer holds (out of sync)";
  else if (piece_hash(group, sender, q, body) != p.hashes[q]) why = "piece differs from its commitment";
  if (!why.empty()) {
    ++stats_.refused_pieces;
    rt_.observer.count("btard.refused_pieces");
    rt_.observer.log(LogLevel::kDebug, "btard", "refused piece " + std::to_string(q) + " of " +
                                                    r->group.members[sender].endpoint.to_string() + ": " + why);
  }
  return why;
}

void Btard::keep_rows(std::uint64_t group, std::size_t piece, std::span<const float> rows, std::span<const double> weights) {
  auto r = round_of(group);
  if (!r) return;
  r->rows[r->layout.first_piece(r->me) + piece] = {std::vector<float>(rows.begin(), rows.end()),
                                                   std::vector<double>(weights.begin(), weights.end())};
}

std::vector<float> Btard::direction(const Round& r, std::size_t piece) const {
  std::uint64_t s = 0;
  for (int i = 0; i < 8; ++i) s = (s << 8) | r.shared[static_cast<std::size_t>(i)];
  Rng rng = Rng(s).fork(piece + 1);
  std::vector<float> z(r.piece_size(piece));
  for (auto& x : z) x = static_cast<float>(rng.normal());
  return z;
}

// s = w min(1, tau / |g - x|) <g - x, z>: a member's term of CenteredClip's fixed-point equation.
static double check_value(std::span<const float> g, std::span<const float> x, std::span<const float> z, double w, double tau) {
  double d2 = 0, dot = 0;
  for (std::size_t k = 0; k < g.size(); ++k) {
    const double d = static_cast<double>(g[k]) - x[k];
    d2 += d * d;
    dot += d * z[k];
  }
  const double norm = std::sqrt(d2);
  const double c = norm > tau ? tau / norm : 1.0;
  return w * c * dot;
}

Task<void> Btard::verify(Group group, std::span<float> averaged, std::vector<bool> got_mean) {
  auto r = round_of(group.id);
  if (!r) co_return;
  Round& round = *r;
  round.result.assign(averaged.begin(), averaged.end());
  round.got_mean = std::move(got_mean);
  // A piece whose aggregate did not come back moves nobody: the members it failed for stay alike
  // (each one's own values there would set them apart).
  for (std::size_t q = 0; q < round.got_mean.size() && !averaged.empty(); ++q)
    if (!round.got_mean[q]) {
      const Piece& pc = *round.piece(q);
      std::fill_n(averaged.begin() + static_cast<std::ptrdiff_t>(pc.begin), pc.size(), 0.0f);
    }
  // 3. Reveal the seed shares.
  {
    Bytes body;
    wire::Writer w(body);
    w.u64(group.id);
    w.raw(round.seed);
    broadcast(round, kReveal, body);
    apply(round, kReveal, round.me, body);
  }
  std::function<bool()> revealed = [&round] {
    for (const auto& p : round.peers)
      if (p.committed && !p.revealed) return false;
    return !round.over;
  };
  co_await wait_phase(r, std::move(revealed));
  {
    Bytes all;
    wire::Writer w(all);
    w.u64(group.id);
    for (const auto& p : round.peers)
      if (p.revealed) w.raw(p.seed);
    round.shared = hash_of(all);
  }
  // 4. Check the aggregates of the pieces I took part in.
  const std::size_t total = round.layout.total_pieces();
  const double tau = allreduce_.aggregation.tau;
  {
    Bytes body;
    wire::Writer w(body);
    w.u64(group.id);
    w.raw(round.shared);
    w.varint(total);
    for (std::size_t q = 0; q < total; ++q) {
      double s = std::nan("");
      if (!round.mine.empty() && q < round.got_mean.size() && round.got_mean[q]) {
        const Piece& pc = *round.piece(q);
        const auto z = direction(round, q);
        s = check_value(std::span<const float>(round.mine).subspan(pc.begin, pc.size()),
                        std::span<const float>(round.result).subspan(pc.begin, pc.size()), z, check_weight(round.peers[round.me].weight),
                        tau);
      }
      w.f64(s);
      Key got{};
      if (std::isfinite(s)) {
        const Piece& pc = *round.piece(q);
        got = hash_of(as_bytes(std::span<const float>(round.result).subspan(pc.begin, pc.size())));
      }
      w.raw(got);
    }
    broadcast(round, kCheck, body);
    apply(round, kCheck, round.me, body);
  }
  std::function<bool()> checked = [&round] {
    for (const auto& p : round.peers)
      if (p.committed && !p.hashes.empty() && !p.checked) return false;
    return true;
  };
  co_await wait_phase(r, std::move(checked));
  for (std::size_t q = 0; q < total; ++q) {
    if (q >= round.got_mean.size() || !round.got_mean[q]) continue;  // I cannot judge what I did not get
    double sum = 0, abs = 0;
    for (const auto& p : round.peers)
      if (p.checked && p.shared == round.shared && std::isfinite(p.s[q])) {
        sum += p.s[q];
        abs += std::abs(p.s[q]);
      }
    if (!(std::abs(sum) <= cfg_.check_tolerance * abs + 1e-9)) {
      const Piece& pc = *round.piece(q);
      std::vector<float> x(round.result.begin() + static_cast<std::ptrdiff_t>(pc.begin),
                           round.result.begin() + static_cast<std::ptrdiff_t>(pc.end));
      co_await dispute(r, q, std::move(x), averaged.subspan(pc.begin, pc.size()));
    }
  }
  // 5. Validators, drawn from the shared seed among the members that contributed.
  std::vector<std::size_t> senders;
  for (std::size_t j = 0; j < round.peers.size(); ++j)
    if (round.peers[j].committed && !round.peers[j].hashes.empty() && !banned(group.members[j].endpoint)) senders.push_back(j);
  if (senders.size() >= 2) {
    std::uint64_t s = 0;
    for (int i = 8; i < 16; ++i) s = (s << 8) | round.shared[static_cast<std::size_t>(i)];
    Rng rng(s);
    for (std::uint32_t k = 0; k < cfg_.validators; ++k) {
      const std::size_t v = senders[rng.below(senders.size())];
      std::size_t t = senders[rng.below(senders.size() - 1)];
      if (t == v) t = senders.back();
      if (v != round.me) continue;
      ++stats_.validations;
      rt_.observer.count("btard.validations");
      scope_.spawn(validate(r, t));
    }
  }
}

Task<void> Btard::dispute(std::shared_ptr<Round> r, std::size_t q, std::vector<float> aggregate, std::span<float> out) {
  Round& round = *r;
  ++stats_.disputes;
  rt_.observer.count("btard.disputes");
  const std::size_t j = round.locate(q).first;
  if (j >= round.group.members.size() || banned(round.group.members[j].endpoint)) co_return;
  const std::size_t n = round.group.members.size();
  const std::size_t m = round.piece_size(q);
  std::vector<float> rows;
  std::vector<double> weights;
  if (j == round.me) {
    auto it = round.rows.find(q);
    if (it == round.rows.end()) co_return;
    rows = it->second.first;
    weights = it->second.second;
  } else {
    Bytes body;
    wire::Writer w(body);
    w.u64(round.group.id);
    w.varint(q);
    Task<Result<Reply>> call = rpc_.call(round.group.members[j].endpoint, kRows, std::move(body), {}, cfg_.fetch_timeout);
    Result<Reply> got = co_await std::move(call);
    if (!got.ok()) {
      // It may have left or crashed: no ban, but its unverified aggregate moves nothing.
      std::fill(out.begin(), out.end(), 0.0f);
      rt_.observer.count("btard.disputes_unanswered");
      co_return;
    }
    try {
      wire::Reader rd(got->body);
      const std::uint64_t k = rd.varint_max(kMaxMembers, "weights");
      for (std::uint64_t i = 0; i < k; ++i) weights.push_back(rd.f64());
      rd.expect_end();
    } catch (const wire::DecodeError&) {
      weights.clear();
    }
    const auto data = got->payload.data();
    if (weights.size() != n || data.size() != n * m * sizeof(float)) {
      ban(round, j, "showed malformed contributions to a piece whose check failed");
      co_return;
    }
    rows.resize(n * m);
    std::memcpy(rows.data(), data.data(), data.size());
  }
  // Every contribution that counted must be its sender's committed piece, with its weight.
  for (std::size_t i = 0; i < n; ++i) {
    if (weights[i] == 0) continue;
    const Peer& p = round.peers[i];
    if (!p.committed) continue;  // its commitment never reached me: I cannot tell
    const auto row = std::span<const float>(rows).subspan(i * m, m);
    if (p.hashes.empty() || weights[i] != p.weight || values_hash(round, i, q, row) != p.hashes[q]) {
      ban(round, j, "aggregated a contribution that member " + std::to_string(i) + " did not commit to");
      co_return;
    }
  }
  std::vector<float> expect(m);
  double wsum = 0;
  for (double w : weights) wsum += w;
  if (!(wsum > 0)) {
    ban(round, j, "answered a piece that nobody contributed to");
    co_return;
  }
  centered_clip(rows, weights, expect, allreduce_.aggregation);
  double diff = 0, scale = 0;
  for (std::size_t k = 0; k < m; ++k) {
    diff = std::max(diff, static_cast<double>(std::abs(expect[k] - aggregate[k])));
    scale = std::max(scale, static_cast<double>(std::abs(expect[k])));
  }
  if (!(diff <= 1e-5 * (1 + scale))) {
    ban(round, j, "returned a wrong aggregate");
    // The contributions are the committed ones: their aggregate replaces the wrong one.
    std::copy(expect.begin(), expect.end(), out.begin());
    rt_.observer.count("btard.aggregates_corrected");
    co_return;
  }
  // The aggregate is right: a false check value is the one that made the check fail.
  const Key mine_got = hash_of(as_bytes(aggregate));
  const auto z = direction(round, q);
  const double tau = allreduce_.aggregation.tau;
  for (std::size_t i = 0; i < n; ++i) {
    const Peer& p = round.peers[i];
    if (!p.checked || i == round.me) continue;
    const double claimed = p.s[q];
    if (weights[i] == 0) {
      // Left out (or weightless), its true value is 0 (or none): a member with weight 0 may still
      // have got the aggregate back.
      if (std::isfinite(claimed) && claimed != 0 && p.got[q] == mine_got && p.shared == round.shared)
        ban(round, i, "checked a piece it took no part in");
      continue;
    }
    if (!std::isfinite(claimed)) continue;  // it may not have got the aggregate back
    if (p.shared != round.shared) {
      // It saw other seed shares (one came late, or not at all): its directions are not mine.
      rt_.observer.count("btard.seed_views_differ");
      continue;
    }
    if (p.got[q] != mine_got) {
      // It says it got another aggregate: the reducer sent two (or it lies; without signed replies
      // nobody can tell which), so nobody is banned for it.
      rt_.observer.count("btard.aggregates_disagree");
      continue;
    }
    const double truth = check_value(std::span<const float>(rows).subspan(i * m, m), aggregate, z, check_weight(weights[i]), tau);
    if (!(std::abs(claimed - truth) <= 1e-6 * (std::abs(truth) + 1) + 1e-4 * std::abs(truth)))
      ban(round, i, "announced a false check value");
  }
}

Task<std::optional<std::string>> Btard::gradient_fault(std::shared_ptr<Round> r, std::size_t t) {
  Round& round = *r;
  const Peer& p = round.peers[t];
  if (!p.committed || p.hashes.empty()) co_return std::nullopt;  // nothing committed: nothing to judge
  // On other parameters than mine: I cannot recompute it (and no reducer in sync with me took it).
  if (p.params != round.params_hash) co_return std::nullopt;
  const std::size_t total = round.group.schema.total();
  // Accused myself, my gradient is at hand; the check below is the one every other member runs, so
  // an honest member whose gradient passes bans its false accuser as they do, and one whose
  // recomputation differs (beyond the tolerance) bans nobody.
  std::span<const float> g = round.mine;
  std::vector<float> fetched;
  if (t != round.me) {
    Bytes body;
    wire::Writer w(body);
    w.u64(round.group.id);
    Task<Result<Reply>> call = rpc_.call(round.group.members[t].endpoint, kGradient, std::move(body), {}, cfg_.fetch_timeout);
    Result<Reply> got = co_await std::move(call);
    if (!got.ok()) {  // it may have left or crashed: I cannot judge (and ban nobody)
      rt_.observer.count("btard.gradients_unanswered");
      co_return std::nullopt;
    }
    const auto data = got->payload.data();
    if (data.size() != total * sizeof(float)) co_return std::string("showed a gradient of the wrong size");
    fetched.resize(total);
    std::memcpy(fetched.data(), data.data(), data.size());
    g = fetched;
  }
  std::size_t q = 0;
  for (const auto& part : round.layout.pieces)
    for (const Piece& pc : part) {
      if (values_hash(round, t, q, g.subspan(pc.begin, pc.size())) != p.hashes[q])
        co_return std::string("showed a gradient that differs from its commitment");
      ++q;
    }
  if (!recompute_) co_return std::nullopt;
  Contribution c{p.key, round.epoch, p.weight, round.params};
  Task<std::optional<std::vector<float>>> again = recompute_(std::move(c));
  std::optional<std::vector<float>> expect = co_await std::move(again);
  if (!expect) co_return std::nullopt;  // cannot tell
  if (expect->size() != total) co_return std::string("committed to a weight no honest trainer has");
  double d2 = 0, e2 = 0;
  for (std::size_t k = 0; k < total; ++k) {
    const double d = static_cast<double>(g[k]) - (*expect)[k];
    d2 += d * d;
    e2 += static_cast<double>((*expect)[k]) * (*expect)[k];
  }
  const double rel = std::sqrt(d2) / (std::sqrt(e2) + 1e-30);
  if (rel <= cfg_.recompute_tolerance) co_return std::string{};
  co_return std::string("its gradient is " + std::to_string(rel) + " (relative) from the recomputation on its seeded batches");
}

Task<void> Btard::validate(std::shared_ptr<Round> r, std::size_t t) {
  Round& round = *r;
  const bool lie = cfg_.accuse_falsely && cfg_.accuse_falsely();
  std::string fault = "made up";
  if (lie) {
    ++stats_.false_accusations_sent;
  } else {
    Task<std::optional<std::string>> check = gradient_fault(r, t);
    std::optional<std::string> verdict = co_await std::move(check);
    fault = verdict.value_or("");
  }
  if (fault.empty() || banned(round.group.members[t].endpoint)) co_return;
  Bytes body;
  wire::Writer w(body);
  w.u64(round.group.id);
  w.varint(t);
  broadcast(round, kAccuse, body);
  rt_.observer.count("btard.accusations_sent");
  if (!lie) ban(round, t, fault);
  round.judged.insert(t);
}

Task<void> Btard::judge_accusation(std::shared_ptr<Round> r, std::size_t accuser, std::size_t target) {
  Round& round = *r;
  Task<std::optional<std::string>> check = gradient_fault(r, target);
  const std::optional<std::string> fault = co_await std::move(check);
  if (!fault) {  // on other parameters than mine, or nothing to recompute: I cannot judge, so I ban nobody
    rt_.observer.count("btard.accusations_unjudged");
    co_return;
  }
  if (fault->empty()) ban(round, accuser, "accused member " + std::to_string(target) + ", whose gradient checks out");
  else ban(round, target, *fault + " (accused)");
}

void Btard::ban(const Round& r, std::size_t member, std::string reason) {
  if (member >= r.group.members.size() || member == r.me) return;
  const Endpoint e = r.group.members[member].endpoint;
  const Key key = r.peers[member].key;
  if (banned(e)) return;
  banned_endpoints_.insert(e);
  if (r.peers[member].committed) banned_keys_.insert(key);
  bans_.push_back(Ban{key, e, r.epoch, reason});
  ++stats_.bans;
  rt_.observer.count("btard.bans");
  rt_.observer.trace("btard.ban", r.group.id, member);
  rt_.observer.log(LogLevel::kInfo, "btard", "banned " + e.to_string() + " at epoch " + std::to_string(r.epoch) + ": " + reason);
  if (r.peers[member].committed) scope_.spawn(publish_bans());
}

Task<void> Btard::publish_bans() {
  if (publishing_) {
    republish_ = true;
    co_return;
  }
  publishing_ = true;
  do {
    republish_ = false;
    dht::Record rec;
    rec.key = prefix_ + ":bans";
    rec.subkey = identity_.owner_tag();
    wire::Writer w(rec.value);
    std::size_t n = 0;
    for (const auto& b : bans_)
      if (banned_keys_.count(b.key)) ++n;
    n = std::min(n, kMaxBans);
    w.varint(n);
    std::size_t written = 0;
    for (const auto& b : bans_) {
      if (!banned_keys_.count(b.key) || written == n) continue;
      w.raw(b.key);
      w.str(b.endpoint.to_string());
      w.varint(b.epoch);
      ++written;
    }
    rec.expiration = rt_.now() + std::chrono::hours(24);
    identity_.sign(rec);
    co_await dht_.store(std::move(rec));
  } while (republish_);
  publishing_ = false;
}

Task<void> Btard::refresh_bans() {
  dht::GetResult got = co_await dht_.get(prefix_ + ":bans", 3);
  // Reporter keys are in their (signed) subkeys; a reporter this peer has banned counts for nothing.
  std::map<Key, std::set<std::string>> reporters;
  std::map<Key, std::pair<Endpoint, std::uint64_t>> where;
  for (const auto& rec : got.records) {
    if (!rec.subkey || banned_tag(*rec.subkey)) continue;
    try {
      wire::Reader rd(rec.value);
      const std::uint64_t n = rd.varint_max(kMaxBans, "bans");
      for (std::uint64_t i = 0; i < n; ++i) {
        const Key k = read_key(rd);
        const auto e = Endpoint::parse(rd.str(64));
        const std::uint64_t epoch = rd.varint();
        if (!e) continue;
        reporters[k].insert(*rec.subkey);
        where[k] = {*e, epoch};
      }
    } catch (const wire::DecodeError&) {
      rt_.observer.count("btard.bad_ban_lists");
    }
  }
  for (const auto& [k, who] : reporters) {
    if (who.size() < cfg_.ban_quorum || banned_keys_.count(k) || k == identity_.public_key) continue;
    banned_keys_.insert(k);
    banned_endpoints_.insert(where[k].first);
    bans_.push_back(Ban{k, where[k].first, where[k].second, "banned by " + std::to_string(who.size()) + " peers (DHT)"});
    rt_.observer.count("btard.bans_from_dht");
  }
}

}  // namespace apiary::optim
