#include "core/auth/handshake.hpp"

#include <sodium.h>

#include <algorithm>
#include <cstring>
#include <utility>

#include "core/wire/codec.hpp"

namespace apiary::auth {

namespace {

constexpr std::string_view kContext = "apiary-auth-v1";
constexpr std::size_t kMaxReason = 200;

template <std::size_t N>
std::array<std::uint8_t, N> take(wire::Reader& r) {
  std::array<std::uint8_t, N> a{};
  const auto s = r.raw(N);
  std::copy(s.begin(), s.end(), a.begin());
  return a;
}

}  // namespace

AuthTransport::AuthTransport(Transport& inner, Timers& timers, Clock& clock, Rng& rng, Observer& observer,
                             const dht::Identity& identity, AuthConfig config)
    : inner_(inner), timers_(timers), clock_(clock), rng_(rng), observer_(observer), identity_(identity), cfg_(std::move(config)) {
  if (!cfg_.swarm_secret.empty()) {
    // The secret is hashed to a key once, so a secret of any length keys BLAKE2b.
    secret_key_.emplace();
    crypto_generichash(secret_key_->data(), secret_key_->size(), reinterpret_cast<const unsigned char*>(cfg_.swarm_secret.data()),
                       cfg_.swarm_secret.size(), nullptr, 0);
  }
  inner_.set_handler(this);
}

AuthTransport::~AuthTransport() {
  for (const auto id : delayed_) timers_.cancel(id);
  for (auto& [peer, s] : sessions_)
    if (s.timer) timers_.cancel(s.timer);
  if (inner_.handler() == this) inner_.set_handler(nullptr);
}

bool AuthTransport::established(const Endpoint& peer) const {
  auto it = sessions_.find(peer);
  return it != sessions_.end() && it->second.up();
}

std::optional<std::array<std::uint8_t, 32>> AuthTransport::peer_key(const Endpoint& peer) const {
  auto it = sessions_.find(peer);
  if (it == sessions_.end() || !it->second.up()) return std::nullopt;
  return it->second.theirs;
}

Nonce AuthTransport::fresh_nonce() {
  Nonce n{};
  for (std::size_t i = 0; i < n.size(); i += 8) {
    const std::uint64_t v = rng_.next();
    std::memcpy(n.data() + i, &v, 8);
  }
  return n;
}

AuthTransport::Session& AuthTransport::session(const Endpoint& peer) {
  auto it = sessions_.find(peer);
  if (it != sessions_.end()) return it->second;
  evict_if_full();
  Session& s = sessions_[peer];
  s.mine = fresh_nonce();
  s.heard = clock_.now();
  return s;
}

void AuthTransport::evict_if_full() {
  if (sessions_.size() < cfg_.max_sessions) return;
  // The longest silent session that is not handshaking goes (ties: the lowest endpoint).
  auto victim = sessions_.end();
  for (auto it = sessions_.begin(); it != sessions_.end(); ++it)
    if (!it->second.in_progress && (victim == sessions_.end() || it->second.heard < victim->second.heard)) victim = it;
  if (victim == sessions_.end()) victim = sessions_.begin();
  if (victim->second.timer) timers_.cancel(victim->second.timer);
  observer_.count("auth.sessions_evicted");
  unproven_total_ -= victim->second.unproven_bytes;
  sessions_.erase(victim);
}

void AuthTransport::send(const Endpoint& to, Message message) {
  Session& s = session(to);
  if (s.up()) {
    send_at(to, s.ready_at, std::move(message));
    return;
  }
  const std::uint64_t size = message.wire_size();
  if (s.queued_bytes + size > cfg_.max_queued_bytes) {
    observer_.count("auth.queue_full_drops");
    return;  // as a full socket would: the RPC layer's timeout reports it
  }
  s.queued_bytes += size;
  s.queue.push_back(std::move(message));
  if (!s.in_progress) begin(to, s);
}

void AuthTransport::begin(const Endpoint& peer, Session& s) {
  s.in_progress = true;
  s.started = clock_.now();
  observer_.count("auth.handshakes_started");
  send_hello(peer, s);
  arm(peer, s);
}

Message AuthTransport::opening(std::uint8_t tag, const Session& s) const {
  Message m;
  wire::Writer w(m.header);
  w.u8(tag);
  w.u8(kVersion);
  w.raw(identity_.public_key);
  w.raw(s.mine);
  return m;
}

void AuthTransport::send_hello(const Endpoint& peer, const Session& s) { inner_.send(peer, opening(kHello, s)); }

Bytes AuthTransport::transcript(const Nonce& answered, const Nonce& own, const PublicKey& prover,
                                const PublicKey& verifier) const {
  Bytes t;
  wire::Writer w(t);
  w.raw({reinterpret_cast<const std::uint8_t*>(kContext.data()), kContext.size()});
  w.raw(answered);
  w.raw(own);
  w.raw(prover);
  w.raw(verifier);
  return t;
}

std::array<std::uint8_t, 64> AuthTransport::modelled_signature(const PublicKey& key, const Bytes& t) {
  std::array<std::uint8_t, 64> out{};
  crypto_generichash(out.data(), out.size(), t.data(), t.size(), key.data(), key.size());
  return out;
}

std::array<std::uint8_t, 32> AuthTransport::mac(const Bytes& t) const {
  std::array<std::uint8_t, 32> out{};
  if (!secret_key_) return out;
  crypto_generichash(out.data(), out.size(), t.data(), t.size(), secret_key_->data(), secret_key_->size());
  return out;
}

void AuthTransport::send_proof(const Endpoint& peer, Session& s) {
  s.proved_for = s.their_nonce;
  const Bytes t = transcript(s.their_nonce, s.mine, identity_.public_key, *s.theirs);
  Message m = opening(kProof, s);
  wire::Writer w(m.header);
  w.raw(cfg_.modelled_proofs ? modelled_signature(identity_.public_key, t) : identity_.sign_bytes(t));
  w.raw(mac(t));
  // Whether we still wait for the peer's proof: only then does a proof of its that we have seen
  // before mean ours was lost (and ask for ours again). A finished side says so, so that two
  // finished sides never answer each other's proofs forever.
  w.u8(s.verified && !s.rechecking ? 0 : 1);
  observer_.count("auth.proofs_made");
  // The signature takes proof_cost of this peer's time: the proof, and whatever follows it, goes
  // out then.
  s.ready_at = clock_.now() + cfg_.proof_cost;
  send_at(peer, s.ready_at, std::move(m));
}

void AuthTransport::send_at(const Endpoint& peer, TimePoint at, Message m) {
  const TimePoint now = clock_.now();
  // What was put off to `at` for this peer has gone if `at` has passed (or nothing is put off).
  if (at < now || (at == now && delayed_.empty())) {
    inner_.send(peer, std::move(m));
    return;
  }
  // Held in a shared box (timers take copyable callbacks); timers due at one instant fire in the
  // order they were scheduled, so what was put off first leaves first.
  auto held = std::make_shared<Message>(std::move(m));
  auto id = std::make_shared<TimerId>(0);
  *id = timers_.schedule(std::max(at - now, Duration::zero()), [this, peer, held, id] {
    delayed_.erase(*id);
    inner_.send(peer, std::move(*held));
  });
  delayed_.insert(*id);
}

void AuthTransport::send_refuse(const Endpoint& peer, const std::string& why) {
  Message m;
  wire::Writer w(m.header);
  w.u8(kRefuse);
  w.u8(kVersion);
  w.str(why.substr(0, kMaxReason));
  inner_.send(peer, std::move(m));
}

void AuthTransport::arm(const Endpoint& peer, Session& s) {
  if (s.timer) timers_.cancel(s.timer);
  // Each resend waits twice as long as the last (1 s, 2 s, ...), never past the timeout.
  const Duration since = clock_.now() - s.started;
  Duration next = cfg_.resend_after;
  while (next <= since) next = next * 2 + cfg_.resend_after;  // at 1 s, 3 s, 7 s, ...: gaps 1, 2, 4
  const Duration until_timeout = s.started + cfg_.handshake_timeout - clock_.now();
  s.timer = timers_.schedule(std::max(Duration::zero(), std::min(next - since, until_timeout)), [this, peer] { on_timer(peer); });
}

void AuthTransport::on_timer(Endpoint peer) {
  auto it = sessions_.find(peer);
  if (it == sessions_.end()) return;
  Session& s = it->second;
  s.timer = 0;
  if (!s.in_progress) return;
  if (clock_.now() - s.started >= cfg_.handshake_timeout) {
    observer_.count("auth.handshake_timeouts");
    fail(peer, s, Error{ErrorCode::kTimeout, "no authenticated handshake with " + peer.to_string()});
    return;
  }
  observer_.count("auth.resends");
  if (s.theirs && !s.rechecking)  // we know the peer's challenge: our proof is what it waits for
    send_proof(peer, s);
  else
    send_hello(peer, s);
  arm(peer, s);
}

void AuthTransport::fail(const Endpoint& peer, Session& s, const Error& e) {
  if (s.timer) timers_.cancel(s.timer);
  s.timer = 0;
  s.in_progress = false;
  s.rechecking = false;
  s.verified = false;
  s.proved_for.reset();
  s.queue = {};
  s.queued_bytes = 0;
  if (!s.unproven.empty()) observer_.count("auth.unauthenticated_drops", static_cast<std::int64_t>(s.unproven.size()));
  s.unproven = {};
  unproven_total_ -= s.unproven_bytes;
  s.unproven_bytes = 0;
  s.mine = fresh_nonce();  // the next attempt is a new handshake
  if (handler_) handler_->on_peer_error(peer, e);
}

void AuthTransport::flush(const Endpoint& peer, Session& s) {
  if (s.timer) timers_.cancel(s.timer);
  s.timer = 0;
  s.rechecking = false;
  if (s.in_progress) {
    s.in_progress = false;
    observer_.count("auth.handshakes_done");
    observer_.sample("auth.handshake_ms", to_seconds(clock_.now() - s.started) * 1e3);
  }
  std::vector<Message> unproven = std::exchange(s.unproven, {});
  unproven_total_ -= s.unproven_bytes;
  s.unproven_bytes = 0;
  std::vector<Message> queue = std::exchange(s.queue, {});
  s.queued_bytes = 0;
  // Checking the peer's proof took proof_cost too: what waited leaves after it, behind our proof.
  s.ready_at = std::max(s.ready_at, clock_.now() + cfg_.proof_cost);
  for (auto& m : queue) send_at(peer, s.ready_at, std::move(m));
  // What the peer sent before it proved itself is its own, if it came on the connection the proof
  // came on: delivered now, in order (last: the handler may send, and so make or drop sessions).
  const std::uint64_t link = s.link;
  for (auto& m : unproven) {
    if (m.link != link) {
      observer_.count("auth.other_link_drops");
      continue;
    }
    if (handler_) handler_->on_message(peer, std::move(m));
  }
}

void AuthTransport::hold(Session& s, Message m) {
  const std::uint64_t size = m.wire_size();
  if (s.unproven_bytes + size <= cfg_.max_unproven_bytes && unproven_total_ + size <= cfg_.max_unproven_total) {
    s.unproven_bytes += size;
    unproven_total_ += size;
    s.unproven.push_back(std::move(m));
  } else {
    observer_.count("auth.unauthenticated_drops");
  }
}

void AuthTransport::recheck(const Endpoint& peer, Session& s) {
  if (s.in_progress) return;
  if (s.rechecked != TimePoint{} && clock_.now() - s.rechecked < cfg_.recheck_after) {
    // Asked lately: ask again once the interval is over (what waits meanwhile stays held).
    if (!s.timer)
      s.timer = timers_.schedule(s.rechecked + cfg_.recheck_after - clock_.now(), [this, peer] {
        auto it = sessions_.find(peer);
        if (it == sessions_.end()) return;
        it->second.timer = 0;
        if (!it->second.unproven.empty() && it->second.up()) recheck(peer, it->second);
      });
    return;
  }
  observer_.count("auth.rechecks");
  s.rechecked = clock_.now();
  s.rechecking = true;
  s.mine = fresh_nonce();  // the peer's next proof must answer this
  begin(peer, s);
}

std::optional<std::string> AuthTransport::refusal(const PublicKey& key) {
  if (cfg_.id_work_bits > 0 && dht::id_work(key) < cfg_.id_work_bits) {
    observer_.count("auth.refused.id_work");
    return "this swarm's ids carry " + std::to_string(cfg_.id_work_bits) + " bits of work; yours " +
           std::to_string(dht::id_work(key));
  }
  if (cfg_.admit && !cfg_.admit(key)) {
    observer_.count("auth.refused.not_admitted");
    return std::string("this swarm does not admit your key");
  }
  return std::nullopt;
}

bool AuthTransport::may_bind(const Session& s, const PublicKey& key) const {
  if (!s.bound || *s.bound == key) return true;
  return s.errored || clock_.now() - s.heard >= cfg_.rebind_after;
}

void AuthTransport::on_hello(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> body) {
  wire::Reader r(body);
  const auto key = take<32>(r);
  const auto nonce = take<32>(r);
  r.expect_end();
  if (auto why = refusal(key)) {
    send_refuse(from, *why);
    return;
  }
  Session& s = session(from);
  if (!may_bind(s, key)) {
    observer_.count("auth.rebind_refused");
    return;
  }
  if (s.up() && s.theirs == key) {
    // The peer asks us to prove ourselves again (its recheck, or it restarted and forgot us): we
    // do, over its new challenge, and our session stays up (a peer that tore its side down at
    // every such HELLO could be kept from ever finishing). On another connection than the one it
    // proved itself on, the HELLO may be someone else's: the peer is asked to prove itself again
    // too, and shows where it is now.
    s.their_nonce = nonce;
    send_proof(from, s);
    if (link != s.link) {
      observer_.count("auth.other_link_hellos");
      recheck(from, s);
    }
    return;
  }
  if (s.up() || (s.theirs && *s.theirs != key)) {
    // The peer lost its session (it restarted) or another key speaks from its endpoint: a new
    // handshake, with a new challenge of ours.
    s.verified = false;
    s.proved_for.reset();
    s.mine = fresh_nonce();
  }
  s.theirs = key;
  s.their_nonce = nonce;
  if (!s.in_progress) {
    s.in_progress = true;
    s.started = clock_.now();
    observer_.count("auth.handshakes_answered");
  }
  send_proof(from, s);
  arm(from, s);
}

void AuthTransport::on_proof(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> body) {
  wire::Reader r(body);
  const auto key = take<32>(r);
  const auto nonce = take<32>(r);
  const auto sig = take<64>(r);
  const auto tag = take<32>(r);
  const bool waiting = r.u8() != 0;
  r.expect_end();
  auto it = sessions_.find(from);
  if (it == sessions_.end()) {
    observer_.count("auth.unsolicited_proofs");  // no challenge of ours to answer
    return;
  }
  Session& s = it->second;
  if (!may_bind(s, key)) {
    observer_.count("auth.rebind_refused");
    return;
  }
  if (s.up() && !s.rechecking && s.theirs == key && s.proven == nonce) {
    // A proof we have checked before. The peer sent it again, waiting for ours (lost): prove
    // ourselves again, over the connection it proved itself on. It never moves the session.
    if (waiting && link == s.link) send_proof(from, s);
    return;
  }
  const Bytes t = transcript(s.mine, nonce, key, identity_.public_key);
  if (secret_key_ && sodium_memcmp(mac(t).data(), tag.data(), tag.size()) != 0) {
    observer_.count("auth.refused.secret");
    send_refuse(from, "proof not keyed with this swarm's secret");
    fail(from, s, Error{ErrorCode::kRejected, from.to_string() + " does not know this swarm's secret"});
    return;
  }
  const bool signed_ok = cfg_.modelled_proofs ? sig.size() == 64 && sodium_memcmp(modelled_signature(key, t).data(), sig.data(), 64) == 0
                                              : dht::verify_signature(key, t, sig);
  if (!signed_ok) {
    observer_.count("auth.bad_proofs");
    return;  // a forged or replayed proof: the handshake goes on (and times out) without it
  }
  if (auto why = refusal(key)) {
    send_refuse(from, *why);
    fail(from, s, Error{ErrorCode::kRejected, from.to_string() + "'s key may not join: " + *why});
    return;
  }
  observer_.count("auth.proofs_checked");
  if (s.bound && *s.bound != key) observer_.count("auth.rebinds");
  s.theirs = key;
  s.their_nonce = nonce;
  s.verified = true;
  s.proven = nonce;
  s.bound = key;
  s.errored = false;
  s.heard = clock_.now();
  s.link = link;
  if (!s.proved_for || *s.proved_for != nonce) send_proof(from, s);
  flush(from, s);
}

void AuthTransport::on_refuse(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> body) {
  wire::Reader r(body);
  const std::string why = r.str(kMaxReason);
  r.expect_end();
  auto it = sessions_.find(from);
  // Only a refusal of a handshake in progress counts, or one from the connection the peer proved
  // itself on (it refused our latest proof): one out of the blue could end a live session.
  if (it == sessions_.end() || (!it->second.in_progress && !(it->second.up() && link == it->second.link))) return;
  observer_.count("auth.refused_by_peer");
  fail(from, it->second, Error{ErrorCode::kRejected, from.to_string() + " refused us: " + why});
}

void AuthTransport::on_message(const Endpoint& from, Message message) {
  const auto& h = message.header;
  if (!h.empty() && h[0] >= kHello && h[0] <= kRefuse) {
    // No co_return or early exits inside the try: decoding errors only.
    try {
      if (h.size() < 2 || h[1] != kVersion) throw wire::DecodeError("unknown handshake version");
      const std::span<const std::uint8_t> body(h.data() + 2, h.size() - 2);
      if (h[0] == kHello) on_hello(from, message.link, body);
      else if (h[0] == kProof) on_proof(from, message.link, body);
      else on_refuse(from, message.link, body);
    } catch (const wire::DecodeError&) {
      observer_.count("auth.bad_handshakes");
    }
    return;
  }
  auto it = sessions_.find(from);
  if (it == sessions_.end() || !it->second.up()) {
    // From a peer we have no session with (we restarted, or it never proved itself): held until
    // it proves itself (asked to, unless a handshake with it is under way), up to a bound.
    Session& s = session(from);
    hold(s, std::move(message));
    if (!s.in_progress) begin(from, s);
    return;
  }
  if (message.link != it->second.link) {
    // On another connection than the one the peer proved itself on: held until it proves itself
    // there (it moved), dropped if it proves itself elsewhere (someone else spoke for it).
    observer_.count("auth.other_link_messages");
    hold(it->second, std::move(message));
    recheck(from, it->second);
    return;
  }
  it->second.heard = clock_.now();
  it->second.errored = false;
  if (handler_) handler_->on_message(from, std::move(message));
}

void AuthTransport::on_peer_error(const Endpoint& peer, const Error& error) {
  auto it = sessions_.find(peer);
  if (it != sessions_.end()) {
    Session& s = it->second;
    s.errored = true;
    if (s.in_progress) {
      fail(peer, s, error);
      return;
    }
    // The connection is gone; whoever answers at the endpoint next proves itself again.
    s.verified = false;
    s.proved_for.reset();
    s.mine = fresh_nonce();
  }
  if (handler_) handler_->on_peer_error(peer, error);
}

PayloadTarget AuthTransport::place_payload(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> header,
                                           std::uint64_t size) {
  // Only a proven peer's payload goes where the layer above wants it, and only from the
  // connection it proved itself on.
  auto it = sessions_.find(from);
  if (!handler_ || it == sessions_.end() || !it->second.up() || it->second.link != link) return {};
  return handler_->place_payload(from, link, header, size);
}

}  // namespace apiary::auth
