#pragma once
// Authenticated peers. Before the first message to or from another peer, both prove that they hold
// the Ed25519 key their DHT id is the hash of: each sends a fresh challenge (a nonce) and signs the
// other's, together with both keys, so a proof can be neither replayed nor relayed to a third peer.
// From then on the peer's endpoint is bound to its key: what arrives from the endpoint is the key
// holder's, and `peer_key(endpoint)` says who that is (the DHT refuses any id but the key's hash).
//
// AuthTransport is a decorator over any Transport (ns-3 datagrams, live TCP, the fake world), so
// the handshake is the same code in every world; in ns-3 its messages cross the simulated network
// and the crypto's cost is modelled as simulated time (`AuthConfig::proof_cost`).
//
//   HELLO  key, nonce                  "here is my key; prove yours on this nonce"
//   PROOF  key, nonce, sig, mac, wait  sig = Ed25519 over (context, the nonce answered, own nonce,
//                                      own key, the verifier's key); mac = keyed BLAKE2b of the
//                                      same bytes under the swarm secret (zeros in an open swarm);
//                                      wait: whether the sender still waits for the other's proof
//   REFUSE reason                      "you may not join" (secret or authorizer)
//
// A initiates: HELLO(A) -> PROOF(B) -> PROOF(A), then A's queued messages. Two peers that begin at
// once each answer the other's HELLO with a PROOF. Messages wait (bounded) until the handshake
// ends; a handshake lost on a lossy network is resent, and one that does not end in
// `handshake_timeout` fails the waiting messages with a peer error (the RPC layer's calls fail).
// A peer that forgot a session (it restarted) answers data it cannot attribute with a HELLO, holds
// that data (bounded) until the sender has proved itself again, and delivers it then: a restart
// loses no message that a session's peer sent in good faith.
//
// Binding: an endpoint bound to one key is not taken over by another key while the first is alive
// (it was heard within `rebind_after` and the transport reported no error for it since): such a
// handshake is refused and counted (auth.rebind_refused). Over a transport with connections (live
// TCP, Message::link) a session is also bound to the connection its peer proved itself on: what
// arrives for the endpoint on another connection is held, not delivered, and makes this side ask
// the peer to prove itself again (a fresh challenge, at most once per `recheck_after`; the session
// stays up meanwhile). Held messages are delivered only if the proof then comes on their
// connection (the peer moved to a new one); otherwise they are dropped (auth.other_link_drops).
// So a process that claims a peer's endpoint (on the same host) can inject nothing under it.
//
// The handshake's bytes begin with a tag no RPC envelope uses (0xA1..0xA3), so data messages pass
// through unchanged. Nonces come from the peer's seeded Rng (simulations stay deterministic); a
// nonce need only be fresh, since every signature names both keys.
#include <array>
#include <cstdint>
#include <vector>
#include <functional>
#include <map>
#include <optional>
#include <set>
#include <string>

#include "core/dht/validate.hpp"
#include "core/runtime/runtime.hpp"

namespace apiary::auth {

using PublicKey = std::array<std::uint8_t, 32>;
using Nonce = std::array<std::uint8_t, 32>;

struct AuthConfig {
  // Non-empty: a swarm of those who know it; a peer whose proofs are not keyed with it is refused.
  std::string swarm_secret;
  // The work every peer's id must carry (dht::id_work: leading zero bits of the id's hash): a key
  // with less is refused at the handshake. 0: none.
  unsigned id_work_bits = 0;
  // An authorizer: whether a proven key may join (an allow list, a token check). Empty: any key.
  std::function<bool(const PublicKey&)> admit;
  Duration handshake_timeout = std::chrono::seconds(5);
  Duration resend_after = std::chrono::seconds(1);  // a handshake message unanswered this long goes again (then 2x)
  // Simulated time one proof costs to make and to check (an Ed25519 signature and verification,
  // and the hashes): ns-3 runs set it so the handshake's cost shows in simulated time; live, 0.
  Duration proof_cost{};
  // Simulations of very many peers: a proof's signature is a BLAKE2b tag keyed with the prover's
  // public key instead of an Ed25519 signature (a microsecond instead of 135 us per handshake).
  // Anyone who knows the key could make it, so it proves nothing against a peer that attacks the
  // handshake: for runs that study the protocols at scale, never for live peers. The messages,
  // their sizes and proof_cost stay the same.
  bool modelled_proofs = false;
  // An endpoint bound to a key takes another key only after this long without a word from the first
  // (or after a transport error for it): a peer that restarted with a new key.
  Duration rebind_after = std::chrono::seconds(30);
  // Messages for a bound endpoint on another connection than the one its key was proven on ask
  // the peer to prove itself again, at most this often (more such messages wait or are dropped).
  Duration recheck_after = std::chrono::seconds(1);
  std::uint64_t max_queued_bytes = 64ull << 20;  // per peer, what waits for its handshake
  // Per peer, what arrived before it proved itself (it still believes in a session this side
  // forgot, as after a restart): held until its proof, delivered then, dropped if none comes.
  std::uint64_t max_unproven_bytes = 1u << 20;
  std::uint64_t max_unproven_total = 64ull << 20;  // the same across all peers
  std::size_t max_sessions = 1u << 16;           // peers remembered; the longest silent goes first
};

class AuthTransport final : public Transport, public TransportHandler {
 public:
  AuthTransport(Transport& inner, Timers& timers, Clock& clock, Rng& rng, Observer& observer,
                const dht::Identity& identity, AuthConfig config = {});
  ~AuthTransport() override;
  AuthTransport(const AuthTransport&) = delete;
  AuthTransport& operator=(const AuthTransport&) = delete;

  const PublicKey& key() const { return identity_.public_key; }
  // Whether messages flow with `peer` now (both proofs made and checked).
  bool established(const Endpoint& peer) const;
  std::size_t sessions() const { return sessions_.size(); }

  // Transport
  Endpoint local() const override { return inner_.local(); }
  void set_handler(TransportHandler* handler) override { handler_ = handler; }
  TransportHandler* handler() const override { return handler_; }
  void send(const Endpoint& to, Message message) override;
  std::optional<std::array<std::uint8_t, 32>> peer_key(const Endpoint& peer) const override;
  bool authenticates() const override { return true; }

  // TransportHandler (the inner transport's)
  void on_message(const Endpoint& from, Message message) override;
  void on_peer_error(const Endpoint& peer, const Error& error) override;
  PayloadTarget place_payload(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> header,
                              std::uint64_t size) override;

  static constexpr std::uint8_t kHello = 0xA1, kProof = 0xA2, kRefuse = 0xA3;
  static constexpr std::uint8_t kVersion = 1;

 private:
  struct Session {
    Nonce mine{};                        // the challenge this side sent
    std::optional<PublicKey> theirs;     // the key the peer claims (proven once verified)
    Nonce their_nonce{};                 // the peer's challenge (known once `theirs` is)
    bool verified = false;               // the peer signed `mine`
    std::optional<Nonce> proven;         // the peer's nonce in the last proof of its we checked
    std::optional<Nonce> proved_for;     // the peer's nonce this side last signed
    std::optional<PublicKey> bound;      // the last key proven at this endpoint
    // (Vectors, not deques: an empty deque allocates, and a simulated peer holds hundreds of sessions.)
    std::vector<Message> queue;          // waiting for the handshake
    std::uint64_t queued_bytes = 0;
    std::vector<Message> unproven;       // arrived before the peer proved itself
    std::uint64_t unproven_bytes = 0;
    TimerId timer = 0;                   // resend / timeout
    TimePoint started{};                 // of the handshake in progress
    bool in_progress = false;
    TimePoint ready_at{};                // with proof_cost: when our proof has gone (data follows it)
    TimePoint heard{};                   // last message from the peer
    bool errored = false;                // a transport error since it was last heard
    std::uint64_t link = 0;              // the connection the peer last proved itself on (Message::link)
    bool rechecking = false;             // asking an up peer to prove itself again (another connection spoke)
    TimePoint rechecked{};               // when that was last asked
    bool up() const { return verified && proved_for && *proved_for == their_nonce; }
  };

  Session& session(const Endpoint& peer);
  void begin(const Endpoint& peer, Session& s);
  void send_hello(const Endpoint& peer, const Session& s);
  void send_proof(const Endpoint& peer, Session& s);
  void send_refuse(const Endpoint& peer, const std::string& why);
  void arm(const Endpoint& peer, Session& s);
  void on_timer(Endpoint peer);
  void fail(const Endpoint& peer, Session& s, const Error& e);
  void flush(const Endpoint& peer, Session& s);
  bool may_bind(const Session& s, const PublicKey& key) const;
  // Why this key may not join (work, authorizer), counted; nullopt if it may.
  std::optional<std::string> refusal(const PublicKey& key);
  void on_hello(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> body);
  void on_proof(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> body);
  // Holds a message that arrived before its sender proved itself on its connection.
  void hold(Session& s, Message m);
  // Asks an up peer to prove itself again, if not asked within recheck_after.
  void recheck(const Endpoint& peer, Session& s);
  void on_refuse(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> body);
  Bytes transcript(const Nonce& answered, const Nonce& own, const PublicKey& prover, const PublicKey& verifier) const;
  std::array<std::uint8_t, 32> mac(const Bytes& transcript) const;
  // AuthConfig::modelled_proofs: the tag that stands for `key`'s signature over `transcript`.
  static std::array<std::uint8_t, 64> modelled_signature(const PublicKey& key, const Bytes& transcript);
  // A HELLO or a PROOF as far as they agree: tag, version, our key, our challenge.
  Message opening(std::uint8_t tag, const Session& s) const;
  Nonce fresh_nonce();
  void evict_if_full();
  // Sends `m` to `peer` at `at` (now or later), behind whatever was put off to that instant before.
  void send_at(const Endpoint& peer, TimePoint at, Message m);

  Transport& inner_;
  Timers& timers_;
  Clock& clock_;
  Rng& rng_;
  Observer& observer_;
  dht::Identity identity_;
  AuthConfig cfg_;
  std::optional<std::array<std::uint8_t, 32>> secret_key_;  // BLAKE2b of the swarm secret, if any
  TransportHandler* handler_ = nullptr;
  std::map<Endpoint, Session> sessions_;
  std::set<TimerId> delayed_;  // sends put off by proof_cost
  std::uint64_t unproven_total_ = 0;
};

// A peer's runtime with its transport authenticated: what a stack is built on.
struct AuthenticatedRuntime {
  AuthenticatedRuntime(Runtime& rt, const dht::Identity& identity, AuthConfig config = {})
      : transport(rt.transport, rt.timers, rt.clock, rt.rng, rt.observer, identity, std::move(config)),
        runtime{rt.clock, rt.timers, transport, rt.rng, rt.observer, rt.faults} {}
  AuthTransport transport;
  Runtime runtime;
};

}  // namespace apiary::auth
