// The authenticated handshake (core/auth) on the fake transport: who may talk, and what an
// attacker who replays, relays, forges or squats an endpoint gets (nothing).
#include <gtest/gtest.h>

#include "core/auth/handshake.hpp"
#include "core/wire/codec.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary::test {
namespace {

using namespace std::chrono_literals;

struct Inbox final : TransportHandler {
  std::vector<std::pair<Endpoint, Bytes>> got;
  std::vector<Error> errors;
  void on_message(const Endpoint& from, Message m) override { got.emplace_back(from, std::move(m.header)); }
  void on_peer_error(const Endpoint&, const Error& e) override { errors.push_back(e); }
};

Message data(std::uint8_t tag) { return Message{Bytes{1, tag}, {}}; }  // as an RPC request would begin

// A HELLO as anyone can write it: a key (one's own or another's) and a challenge.
Message hello_of(std::span<const std::uint8_t> key, std::span<const std::uint8_t> nonce) {
  Message m;
  wire::Writer w(m.header);
  w.u8(auth::AuthTransport::kHello);
  w.u8(auth::AuthTransport::kVersion);
  w.raw(key);
  w.raw(nonce);
  return m;
}

class Auth : public ::testing::Test {
 protected:
  Auth() : swarm(4) {
    for (std::size_t i = 0; i < 3; ++i) make(i, dht::Identity::from_seed(100 + i));
  }
  void make(std::size_t i, const dht::Identity& id, auth::AuthConfig cfg = {}) {
    auto& p = swarm[i];
    ids[i] = id;
    auths[i].reset();
    auths[i] = std::make_unique<auth::AuthTransport>(p, p, p, p.runtime().rng, p.runtime().observer, id, std::move(cfg));
    auths[i]->set_handler(&inbox[i]);
  }
  Endpoint at(std::size_t i) { return swarm[i].local(); }
  // Peers 0 and 2 each send peer 1 a message: peer 0's arrives, peer 2 is refused at the handshake.
  void expect_peer1_takes_0_and_refuses_2() {
    auths[0]->send(at(1), data(1));
    auths[2]->send(at(1), data(2));
    run();
    ASSERT_EQ(inbox[1].got.size(), 1u);
    EXPECT_EQ(inbox[1].got[0].first, at(0));
    ASSERT_FALSE(inbox[2].errors.empty());
    EXPECT_EQ(inbox[2].errors[0].code, ErrorCode::kRejected);
  }
  void run(Duration d = 1s) { swarm.net.run(d); }
  std::uint64_t count(const std::string& name) { return static_cast<std::uint64_t>(swarm.metrics.counter(name)); }
  // What raw peer 3 (an attacker without a handshake of its own) received.
  std::vector<std::pair<Endpoint, Bytes>> raw;
  struct Tap final : TransportHandler {
    explicit Tap(std::vector<std::pair<Endpoint, Bytes>>* to) : into(to) {}
    std::vector<std::pair<Endpoint, Bytes>>* into;
    void on_message(const Endpoint& from, Message m) override { into->emplace_back(from, std::move(m.header)); }
    void on_peer_error(const Endpoint&, const Error&) override {}
  } tap{&raw};

  FakeSwarm swarm;
  std::array<dht::Identity, 4> ids;
  std::array<std::unique_ptr<auth::AuthTransport>, 4> auths;
  std::array<Inbox, 4> inbox;
};

// Over a transport with connections, a session is bound to the one its peer proved itself on. A
// message for the peer's endpoint on another connection (someone on its host claiming its port) is
// held, not delivered; the peer is asked to prove itself again, does so on its own connection,
// and the held message is dropped. Neither side's session goes down meanwhile, and the proofs
// stop there (no side answers a finished side's proof). The peer's own later messages flow.
TEST_F(Auth, AMessageOnAnotherConnectionIsDroppedAndTheSessionStaysUp) {
  auths[0]->send(at(1), data(1));
  run();
  ASSERT_TRUE(auths[0]->established(at(1)) && auths[1]->established(at(0)));
  ASSERT_EQ(inbox[1].got.size(), 1u);
  const auto made = count("auth.proofs_made");
  Message injected = data(7);
  injected.link = 5;  // not the connection peer 0 proved itself on (this transport's: 0)
  auths[1]->on_message(at(0), std::move(injected));
  EXPECT_TRUE(auths[1]->established(at(0)));
  for (int i = 0; i < 20; ++i) {
    swarm.net.run(10ms);
    EXPECT_TRUE(auths[0]->established(at(1)) && auths[1]->established(at(0))) << "a session went down at step " << i;
  }
  run(10s);
  EXPECT_EQ(inbox[1].got.size(), 1u) << "the message from another connection was delivered";
  EXPECT_EQ(count("auth.other_link_drops"), 1u);
  EXPECT_EQ(count("auth.rechecks"), 1u);
  EXPECT_EQ(count("auth.proofs_made") - made, 1u);  // peer 0 proved itself again, once; nothing more
  auths[0]->send(at(1), data(2));
  run();
  ASSERT_EQ(inbox[1].got.size(), 2u);
  EXPECT_EQ(inbox[1].got[1].second, (Bytes{1, 2}));
  // Many such messages: at most one recheck a second (recheck_after), each then dropped.
  for (int i = 0; i < 50; ++i) {
    Message m = data(8);
    m.link = 6;
    auths[1]->on_message(at(0), std::move(m));
  }
  run(3s);
  EXPECT_EQ(count("auth.rechecks"), 2u);
  EXPECT_EQ(count("auth.other_link_drops"), 51u);
  EXPECT_EQ(inbox[1].got.size(), 2u);
  // A HELLO in peer 0's name with a challenge of its own: peer 1 proves itself to it (to peer 0,
  // which has no use for the proof) and that is all: finished sides do not answer each other's
  // proofs, so no exchange of proofs starts that would never end.
  Message hello = hello_of(ids[0].public_key, std::array<std::uint8_t, 32>{7});
  const auto before = count("auth.proofs_made");
  auths[1]->on_message(at(0), std::move(hello));
  run(10s);
  EXPECT_EQ(count("auth.proofs_made") - before, 1u);
  EXPECT_TRUE(auths[0]->established(at(1)) && auths[1]->established(at(0)));
}

TEST_F(Auth, MessagesFlowOnlyAfterBothProveTheirKeys) {
  for (std::uint8_t k = 0; k < 3; ++k) auths[0]->send(at(1), data(k));
  EXPECT_FALSE(auths[0]->established(at(1)));
  run();
  ASSERT_EQ(inbox[1].got.size(), 3u);
  for (std::uint8_t k = 0; k < 3; ++k) EXPECT_EQ(inbox[1].got[k].second, (Bytes{1, k}));  // in order
  EXPECT_EQ(auths[1]->peer_key(at(0)), ids[0].public_key);
  EXPECT_EQ(auths[0]->peer_key(at(1)), ids[1].public_key);
  // HELLO, PROOF, PROOF: three handshake messages, then the data.
  EXPECT_EQ(count("auth.proofs_made"), 2u);
  EXPECT_EQ(count("auth.proofs_checked"), 2u);
  EXPECT_EQ(swarm[0].sent.size(), 2u + 3u);
  EXPECT_EQ(swarm[1].sent.size(), 1u);
  // And later messages go at once, both ways.
  auths[1]->send(at(0), data(9));
  run();
  ASSERT_EQ(inbox[0].got.size(), 1u);
  EXPECT_EQ(count("auth.handshakes_started"), 1u);
}

TEST_F(Auth, PeersThatBeginAtOnceBothFinish) {
  auths[0]->send(at(1), data(1));
  auths[1]->send(at(0), data(2));
  run();
  ASSERT_EQ(inbox[0].got.size(), 1u);
  ASSERT_EQ(inbox[1].got.size(), 1u);
  EXPECT_TRUE(auths[0]->established(at(1)));
  EXPECT_TRUE(auths[1]->established(at(0)));
}

TEST_F(Auth, AReplayedOrForgedProofIsUseless) {
  auths[0]->send(at(1), data(1));
  run();
  Bytes proof;  // peer 0's genuine proof to peer 1, as it crossed the wire
  for (const auto& [to, m] : swarm[0].sent)
    if (to == at(1) && m.header[0] == auth::AuthTransport::kProof) proof = m.header;
  ASSERT_FALSE(proof.empty());
  // The attacker (raw peer 3) says it is peer 0, then replays peer 0's proof, then forges one.
  swarm[3].set_handler(&tap);
  Message hello = hello_of(ids[0].public_key, std::array<std::uint8_t, 32>{});
  swarm[3].send(at(1), std::move(hello));
  run();
  swarm[3].send(at(1), Message{proof, {}});
  Bytes forged = proof;
  forged[100] ^= 1;  // inside the signature
  swarm[3].send(at(1), Message{forged, {}});
  swarm[3].send(at(1), data(7));
  run();
  EXPECT_EQ(count("auth.bad_proofs"), 2u);
  EXPECT_FALSE(auths[1]->established(at(3)));
  EXPECT_EQ(auths[1]->peer_key(at(3)), std::nullopt);
  ASSERT_EQ(inbox[1].got.size(), 1u);  // peer 0's message only, not the attacker's
  EXPECT_EQ(inbox[1].got[0].first, at(0));
  run(6s);  // the attacker never proves itself: what it sent is dropped with the handshake
  EXPECT_EQ(inbox[1].got.size(), 1u);
  EXPECT_EQ(count("auth.unauthenticated_drops"), 1u);
}

// Modelled proofs (simulations of very many peers): peers that model them talk; a proof whose
// tag is off by a bit is refused; a signing peer and a modelling one never agree.
TEST_F(Auth, ModelledProofsEstablishAndAWrongTagOrASignedProofIsRefused) {
  auth::AuthConfig modelled;
  modelled.modelled_proofs = true;
  for (std::size_t i = 0; i < 2; ++i) make(i, ids[i], modelled);
  auths[0]->send(at(1), data(1));
  run();
  ASSERT_EQ(inbox[1].got.size(), 1u);
  EXPECT_TRUE(auths[1]->established(at(0)));
  EXPECT_EQ(count("auth.bad_proofs"), 0u);
  Bytes proof;
  for (const auto& [to, m] : swarm[0].sent)
    if (to == at(1) && m.header[0] == auth::AuthTransport::kProof) proof = m.header;
  ASSERT_FALSE(proof.empty());
  // A fresh challenge from the attacker's endpoint in peer 0's name, answered with peer 0's proof
  // with one bit of its tag changed.
  swarm[3].set_handler(&tap);
  swarm[3].send(at(1), hello_of(ids[0].public_key, std::array<std::uint8_t, 32>{}));
  run();
  proof[100] ^= 1;
  swarm[3].send(at(1), Message{proof, {}});
  run();
  EXPECT_GE(count("auth.bad_proofs"), 1u);
  EXPECT_FALSE(auths[1]->established(at(3)));
  // Peer 2 signs its proofs: peer 1, which models them, does not accept its signature.
  const auto bad = count("auth.bad_proofs");
  auths[2]->send(at(1), data(2));
  run(6s);
  EXPECT_GT(count("auth.bad_proofs"), bad);
  EXPECT_FALSE(auths[1]->established(at(2)));
  EXPECT_EQ(inbox[1].got.size(), 1u);
}

TEST_F(Auth, WhatAnUnprovenPeerSendsIsHeldWithinBoundsAndDroppedWithItsHandshake) {
  auth::AuthConfig tight;
  tight.max_unproven_bytes = 1000;
  tight.max_unproven_total = 250;  // across all peers
  make(1, ids[1], tight);
  swarm[3].set_handler(&tap);
  for (int k = 0; k < 10; ++k) swarm[3].send(at(1), Message{Bytes(100, 1), {}});  // RPC-like bytes, never proven
  run();
  EXPECT_EQ(count("auth.unauthenticated_drops"), 8u);  // two fit under the total, the rest do not
  EXPECT_TRUE(inbox[1].got.empty());
  run(6s);  // the handshake the attacker never finishes times out: what it held goes too
  EXPECT_EQ(count("auth.unauthenticated_drops"), 10u);
  EXPECT_TRUE(inbox[1].got.empty());
  auths[0]->send(at(1), data(1));  // and an honest peer is served as ever
  run();
  EXPECT_EQ(inbox[1].got.size(), 1u);
}

TEST_F(Auth, AProofRelayedFromAnotherPeerNamesTheWrongVerifier) {
  // Peer 1 wants to talk to the attacker's endpoint; the attacker passes peer 1's challenge on to
  // peer 0 and peer 0's proof back, to pass as peer 0. The proof names the attacker as verifier.
  swarm[3].set_handler(&tap);
  auths[1]->send(at(3), data(1));
  run();
  ASSERT_FALSE(raw.empty());
  const Bytes challenge = raw.back().second;  // peer 1's HELLO: tag, version, key, nonce
  ASSERT_EQ(challenge[0], auth::AuthTransport::kHello);
  const auto attacker = dht::Identity::from_seed(666);
  Message relay = hello_of(attacker.public_key, std::span<const std::uint8_t>(challenge.data() + 2 + 32, 32));
  raw.clear();
  swarm[3].send(at(0), std::move(relay));
  run();
  Bytes proof;
  for (const auto& [from, m] : raw)
    if (from == at(0) && m[0] == auth::AuthTransport::kProof) proof = m;
  ASSERT_FALSE(proof.empty()) << "peer 0 answers a HELLO with a proof";
  swarm[3].send(at(1), Message{proof, {}});
  run();
  EXPECT_EQ(count("auth.bad_proofs"), 1u);
  EXPECT_EQ(auths[1]->peer_key(at(3)), std::nullopt);
  run(6s);
  ASSERT_FALSE(inbox[1].errors.empty());  // the message to the attacker failed; it was never sent
  EXPECT_EQ(inbox[1].errors.back().code, ErrorCode::kTimeout);
}

TEST_F(Auth, ASwarmSecretKeepsStrangersOut) {
  auth::AuthConfig club;
  club.swarm_secret = "hive-42";
  make(0, ids[0], club);
  make(1, ids[1], club);
  auth::AuthConfig wrong;
  wrong.swarm_secret = "guess";
  make(2, ids[2], wrong);
  auths[0]->send(at(1), data(1));
  auths[2]->send(at(1), data(2));
  auths[1]->send(at(2), data(3));
  run();
  ASSERT_EQ(inbox[1].got.size(), 1u);
  EXPECT_EQ(inbox[1].got[0].first, at(0));
  EXPECT_TRUE(inbox[2].got.empty());
  EXPECT_GE(count("auth.refused.secret"), 2u);
  ASSERT_FALSE(inbox[2].errors.empty());
  EXPECT_EQ(inbox[2].errors[0].code, ErrorCode::kRejected);
  ASSERT_FALSE(inbox[1].errors.empty());
  EXPECT_EQ(inbox[1].errors[0].code, ErrorCode::kRejected);
}

TEST_F(Auth, AnAuthorizerDecidesWhoJoins) {
  auth::AuthConfig only;
  const auto allowed = ids[0].public_key;
  only.admit = [allowed](const auth::PublicKey& k) { return k == allowed; };
  make(1, ids[1], only);
  ASSERT_NO_FATAL_FAILURE(expect_peer1_takes_0_and_refuses_2());
  EXPECT_EQ(count("auth.refused.not_admitted"), 1u);
}

TEST_F(Auth, AnIdWithoutTheSwarmsWorkIsRefused) {
  auth::AuthConfig work;
  work.id_work_bits = 8;
  const auto a = dht::Identity::with_work(1, 8), b = dht::Identity::with_work(2, 8);
  ASSERT_GE(dht::id_work(a.public_key), 8u);
  ASSERT_LT(dht::id_work(ids[2].public_key), 8u);  // peer 2's key was drawn without the work
  make(0, a, work);
  make(1, b, work);
  make(2, ids[2], work);
  ASSERT_NO_FATAL_FAILURE(expect_peer1_takes_0_and_refuses_2());
  EXPECT_NE(inbox[2].errors[0].message.find("bits of work"), std::string::npos) << inbox[2].errors[0].message;
  EXPECT_EQ(count("auth.refused.id_work"), 1u);
}

TEST_F(Auth, AnEndpointBoundToAKeyIsNotTakenOverWhileItsPeerLives) {
  auths[0]->send(at(1), data(1));
  run();
  ASSERT_EQ(auths[1]->peer_key(at(0)), ids[0].public_key);
  // Peer 0 comes back at once with another key: refused while the first is fresh.
  make(0, dht::Identity::from_seed(999));
  auths[0]->send(at(1), data(2));
  run(6s);
  EXPECT_GE(count("auth.rebind_refused"), 1u);
  EXPECT_EQ(inbox[1].got.size(), 1u);
  ASSERT_FALSE(inbox[0].errors.empty());
  EXPECT_EQ(inbox[0].errors[0].code, ErrorCode::kTimeout);
  // Once the first key has been silent for rebind_after (30 s), the endpoint is the new key's.
  run(30s);
  auths[0]->send(at(1), data(3));
  run();
  ASSERT_EQ(inbox[1].got.size(), 2u);
  EXPECT_EQ(inbox[1].got[1].second, (Bytes{1, 3}));
  EXPECT_EQ(auths[1]->peer_key(at(0)), dht::Identity::from_seed(999).public_key);
  EXPECT_EQ(count("auth.rebinds"), 1u);
}

TEST_F(Auth, APeerThatForgotItsSessionsIsAskedToProveItselfAgainAndLosesNothing) {
  auths[0]->send(at(1), data(1));
  run();
  make(1, ids[1]);  // peer 1 restarts (same key), its sessions gone
  auths[0]->send(at(1), data(2));  // held: peer 1 cannot tell who sent it until peer 0 proves it
  auths[0]->send(at(1), data(3));
  run();
  ASSERT_EQ(inbox[1].got.size(), 3u);  // the first, before the restart, and both after
  EXPECT_EQ(inbox[1].got[1].second, (Bytes{1, 2}));
  EXPECT_EQ(inbox[1].got[2].second, (Bytes{1, 3}));
  EXPECT_EQ(auths[1]->peer_key(at(0)), ids[0].public_key);
  EXPECT_EQ(count("auth.unauthenticated_drops"), 0u);
  auths[0]->send(at(1), data(4));
  run();
  EXPECT_EQ(inbox[1].got.size(), 4u);
}

TEST_F(Auth, ALostHandshakeIsResentAndAHopelessOneFails) {
  swarm[1].up = false;  // peer 1 hears nothing for 1.5 s
  auths[0]->send(at(1), data(1));
  run(1500ms);
  swarm[1].up = true;
  run(2s);
  ASSERT_EQ(inbox[1].got.size(), 1u);
  EXPECT_GE(count("auth.resends"), 1u);
  swarm[2].up = false;
  auths[0]->send(at(2), data(2));
  run(6s);
  ASSERT_EQ(inbox[0].errors.size(), 1u);
  EXPECT_EQ(inbox[0].errors[0].code, ErrorCode::kTimeout);
  EXPECT_EQ(count("auth.handshake_timeouts"), 1u);
}

TEST_F(Auth, TheProofsCostIsPaidInSimulatedTime) {
  auth::AuthConfig slow;
  slow.proof_cost = 50ms;
  make(0, ids[0], slow);
  make(1, ids[1], slow);
  auths[0]->send(at(1), data(1));
  // HELLO 5 ms; peer 1's proof made (50 ms) and sent (5 ms); peer 0 checks it and makes its own
  // (50 ms), and only then do its proof and the data leave (5 ms): 115 ms, against 15 without cost.
  run(112ms);
  EXPECT_TRUE(inbox[1].got.empty());
  run(1s);
  ASSERT_EQ(inbox[1].got.size(), 1u);
  EXPECT_NEAR(swarm.metrics.series().at("auth.handshake_ms").front(), 60.0, 1e-6);  // peer 0 verified peer 1 at 60 ms
}

}  // namespace
}  // namespace apiary::test
