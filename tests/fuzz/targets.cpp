#include "tests/fuzz/targets.hpp"

#include <memory>
#include <stdexcept>

#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"
#include "core/averaging/protocol.hpp"
#include "core/averaging/state.hpp"
#include "core/compression/codecs.hpp"
#include "core/dht/node.hpp"
#include "core/dht/protocol.hpp"
#include "core/dht/validate.hpp"
#include "core/moe/protocol.hpp"
#include "core/moe/server.hpp"
#include "core/optim/btard.hpp"
#include "core/optim/progress.hpp"
#include "core/runtime/rpc.hpp"
#include "core/wire/frame.hpp"
#include "harness/workloads/ping.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary::fuzz {

namespace {

using Input = std::span<const std::uint8_t>;
using Seeds = std::vector<std::vector<std::uint8_t>>;

// A decoder that reads a message from a wire::Reader: what it rejects, it rejects by throwing.
template <class F>
void guarded(F&& f) {
  try {
    f();
  } catch (const wire::DecodeError&) {
  } catch (const std::invalid_argument&) {
  }
}

template <class M>
void message(Input in) {
  guarded([&] {
    wire::Reader r(in);
    (void)M::decode(r);
  });
}

template <class M>
Bytes encoded(const M& m) {
  Bytes b;
  wire::Writer w(b);
  m.encode(w);
  return b;
}

dht::Record record() {
  dht::Record r;
  r.key = "model.progress";
  r.subkey = "peer-1";
  r.value = {1, 2, 3, 4};
  r.expiration = time_from_ns(3'600'000'000'000);
  return r;
}

dht::Sender sender() { return dht::Sender{dht::DhtId::of_key("fuzz"), false, true}; }

averaging::Member member() { return averaging::Member{Endpoint{Endpoint::ipv4(10, 0, 0, 2), 7000}, averaging::MemberKind::kFull, 0.5}; }

averaging::Group group() {
  averaging::Group g;
  g.id = 42;
  g.members = {member(), averaging::Member{Endpoint{Endpoint::ipv4(10, 0, 0, 3), 7000}, averaging::MemberKind::kClient, 1}};
  g.schema = averaging::TensorSchema{{{4}, {2, 3}}};
  return g;
}

moe::TensorShape shape() { return moe::TensorShape{{2, 4}}; }

Bytes floats(std::size_t n) {
  std::vector<float> v(n);
  for (std::size_t i = 0; i < n; ++i) v[i] = 0.25f * static_cast<float>(i);
  return compression::encode_body(v, compression::Codec::kFloat32);
}

// ---- whole envelopes, to a peer that serves everything ------------------------------------

// An expert "ffn" of width 4 that answers with its inputs (or the output gradients).
class EchoExperts final : public moe::ExpertBackend {
 public:
  std::optional<moe::ExpertInfo> info(const std::string& uid) override {
    if (uid != "ffn") return std::nullopt;
    return moe::ExpertInfo{4, 4, false, "echo"};
  }
  Task<void> run(const std::string&, bool backward, std::vector<moe::ExpertJob*> jobs) override {
    for (auto* j : jobs) j->reply = moe::TensorReply{j->input, backward ? j->output_grads() : j->inputs(), j->codec};
    co_return;
  }
};

// Peer 1, the fuzzer's side: counts the answers it gets, to show the envelopes reach handlers.
struct AnswerCounter final : TransportHandler {
  std::uint64_t answers = 0, errors = 0;
  void on_message(const Endpoint&, Message m) override {
    ++answers;
    errors += !m.header.empty() && m.header[0] == 3 ? 1 : 0;
  }
  void on_peer_error(const Endpoint&, const Error&) override {}
  PayloadTarget place_payload(const Endpoint&, std::uint64_t, std::span<const std::uint8_t>, std::uint64_t) override { return {}; }
};

struct ServingPeer {
  ServingPeer() { swarm[1].set_handler(&counter); }
  ~ServingPeer() { rpc.shutdown(); }
  test::FakeSwarm swarm{2};
  AnswerCounter counter;
  Rpc rpc{swarm[0].runtime()};
  dht::DhtNode dht{swarm[0].runtime(), rpc, dht::DhtId::of_key("server"), dht::DhtConfig{},
                   {std::make_shared<dht::SignatureValidator>()}};
  averaging::Averager averager{swarm[0].runtime(), rpc};
  averaging::Matchmaker matchmaker{swarm[0].runtime(), rpc, dht};
  averaging::StateSharer state{swarm[0].runtime(), rpc, &dht, "fuzz", [] {
                                 averaging::ModelState s;
                                 s.epoch = 3;
                                 s.schema = averaging::TensorSchema{{{4}}};
                                 s.tensors = {1, 2, 3, 4};
                                 return std::optional<averaging::ModelState>(s);
                               }};
  EchoExperts experts;
  moe::ExpertServer expert_server{swarm[0].runtime(), rpc, experts};
};

std::uint64_t answers_so_far = 0, errors_so_far = 0;

// [header length: 1 byte][header][payload]: the payload is a message's bulk part (tensors).
// Each input goes to a fresh peer, so that a finding replays from its input alone (a peer kept
// for the whole run also slowed down 30x as its state grew).
void envelope(Input in) {
  if (in.empty()) return;
  auto peer = std::make_unique<ServingPeer>();
  const std::size_t h = std::min<std::size_t>(in[0], in.size() - 1);
  Bytes header(in.begin() + 1, in.begin() + 1 + static_cast<std::ptrdiff_t>(h));
  Bytes payload(in.begin() + 1 + static_cast<std::ptrdiff_t>(h), in.end());
  Message m{std::move(header), payload.empty() ? Payload{} : Payload::bytes(std::move(payload))};
  peer->rpc.on_message(peer->swarm[1].local(), std::move(m));
  // Every handler answers or gives up within this (a join waits for the matchmaking budget).
  peer->swarm.net.run(std::chrono::seconds(30), [&] { return peer->counter.answers > 0; });
  answers_so_far += peer->counter.answers;
  errors_so_far += peer->counter.errors;
}

// A member of a BTARD step whose commitments went out, receiving one message from another member
// of its group: byte 0 picks the method (commit, reveal, check, accuse, show gradient, show a
// piece's contributions), the rest is the message's body.
struct BtardPeer {
  BtardPeer() {
    swarm[1].set_handler(&counter);
    swarm[2].set_handler(&counter);
    allreduce.aggregation.rule = averaging::AggregationRule::kCenteredClip;
    allreduce.min_part = 16;
  }
  ~BtardPeer() { rpc.shutdown(); }
  test::FakeSwarm swarm{3};
  AnswerCounter counter;
  Rpc rpc{swarm[0].runtime()};
  dht::DhtNode dht{swarm[0].runtime(), rpc, dht::DhtId::of_key("btard"), dht::DhtConfig{},
                   {std::make_shared<dht::SignatureValidator>()}};
  averaging::AllReduceConfig allreduce;
  optim::Btard btard{swarm[0].runtime(), rpc, dht, dht::Identity::from_seed(1), "fuzz", optim::BtardConfig{}, allreduce};
};

constexpr std::uint64_t kBtardGroup = 77;

averaging::Group btard_group() {
  averaging::Group g;
  g.id = kBtardGroup;
  for (std::uint8_t i = 1; i <= 3; ++i) g.members.push_back({Endpoint{Endpoint::ipv4(10, 0, 0, i), 7000}});
  g.schema = averaging::TensorSchema{{{64}}};
  return g;
}

void btard_message(Input in) {
  if (in.empty()) return;
  auto peer = std::make_unique<BtardPeer>();
  const std::vector<float> mine(64, 0.5f), params(64, 0.25f);
  Task<std::optional<Error>> commit = peer->btard.commit(btard_group(), 0, mine, 32, params);
  commit.start();
  Bytes header;
  wire::Writer w(header);
  w.u8(1);  // a request
  w.varint(9);
  w.varint(220 + in[0] % 6);
  w.raw(in.subspan(1));
  peer->rpc.on_message(peer->swarm[1].local(), Message{std::move(header), {}});
  peer->swarm.net.run(std::chrono::seconds(30), [&] { return peer->counter.answers > 0; });
}

Seeds btard_seeds() {
  // A commitment by member 2 (signed by its own key), a reveal, a check and an accusation for the
  // group, and requests to see member 1's gradient and a piece's contributions.
  const auto key = dht::Identity::from_seed(2);
  Bytes commit;
  wire::Writer c(commit);
  c.u64(kBtardGroup);
  c.varint(0);
  c.raw(key.public_key);
  c.f64(32);
  c.raw(std::vector<std::uint8_t>(64, 7));  // seed commitment, parameter hash
  c.varint(3);
  c.raw(std::vector<std::uint8_t>(96, 9));  // one hash per piece
  const auto sig = key.sign_bytes(commit);
  c.raw(sig);
  auto with = [](std::uint8_t method, const Bytes& body) {
    std::vector<std::uint8_t> out{static_cast<std::uint8_t>(method - 220)};
    out.insert(out.end(), body.begin(), body.end());
    return out;
  };
  Bytes reveal, check, accuse, gradient, rows;
  wire::Writer(reveal).u64(kBtardGroup);
  wire::Writer(reveal).raw(std::vector<std::uint8_t>(32, 1));
  wire::Writer ck(check);
  ck.u64(kBtardGroup);
  ck.raw(std::vector<std::uint8_t>(32, 2));
  ck.varint(3);
  for (int i = 0; i < 3; ++i) {
    ck.f64(0.5);
    ck.raw(std::vector<std::uint8_t>(32, 3));
  }
  wire::Writer(accuse).u64(kBtardGroup);
  wire::Writer(accuse).varint(0);
  wire::Writer(gradient).u64(kBtardGroup);
  wire::Writer(rows).u64(kBtardGroup);
  wire::Writer(rows).varint(0);
  return {with(220, commit), with(221, reveal), with(222, check), with(223, accuse), with(224, gradient), with(225, rows)};
}

template <class M>
std::vector<std::uint8_t> request(const M& m, const Bytes& payload = {}) {
  Bytes header;
  wire::Writer w(header);
  w.u8(1);  // a request
  w.varint(7);
  w.varint(M::kMethod);
  m.encode(w);
  std::vector<std::uint8_t> out{static_cast<std::uint8_t>(header.size())};
  if (header.size() > 255) throw std::logic_error("seed header too long");
  out.insert(out.end(), header.begin(), header.end());
  out.insert(out.end(), payload.begin(), payload.end());
  return out;
}

Seeds envelope_seeds() {
  averaging::PieceRequest piece;
  piece.group = 42;
  averaging::JoinRequest join{"t0.d0.*.1", group().schema.hash(), member()};
  moe::ForwardRequest fwd{"ffn", shape(), 0, {}, 0};
  moe::BackwardRequest bwd{"ffn", shape(), shape(), 0, {}, 0, 32};
  return {request(dht::PingRequest{sender()}),
          request(dht::StoreRequest{sender(), {record()}}),
          request(dht::FindRequest{sender(), {dht::DhtId::of_key("model.progress")}}),
          request(piece, floats(6)),
          request(averaging::CancelNotice{42}),
          request(join),
          request(averaging::StateRequest{"fuzz"}),
          request(fwd, floats(8)),
          request(bwd, floats(16)),
          request(moe::InfoRequest{"ffn"}),
          {3, 3, 9, 4, 3, 'b', 'a', 'd'},  // an error reply nobody asked for
          {2, 2, 9, 0}};                   // a response nobody asked for
}

template <class M>
Target message_target(std::string name, Bytes seed) {
  static Bytes s;
  s = std::move(seed);
  return Target{std::move(name), &message<M>, [] { return Seeds{s}; }};
}

std::vector<Target> make_targets() {
  std::vector<Target> t;
  t.push_back({"stream-frames",
               [](Input in) {
                 guarded([&] {
                   TransportLimits lim;
                   lim.max_payload = 1 << 20;
                   wire::FrameDecoder d(lim);
                   std::vector<wire::FrameDecoder::Event> ev;
                   d.feed(in, ev);
                 });
               },
               [] {
                 auto begin = wire::encode_begin_prefix(1, 3, 5, 5);
                 begin.insert(begin.end(), {1, 7, 0, 1, 2, 3, 4, 5});
                 return Seeds{wire::encode_hello(Endpoint{0x7f000001, 4000}), begin};
               }});
  t.push_back({"datagram-header", [](Input in) { guarded([&] { (void)wire::decode_frame_header(in); }); },
               [] { return Seeds{wire::encode_begin_prefix(1, 3, 5, 5)}; }});
  t.push_back({"tensor-codecs",
               [](Input in) { guarded([&] { (void)compression::decode(in, 1 << 20); }); },
               [] {
                 std::vector<float> v{0.5f, -1.f, 2.f, 3.5f, 0.f, 7.f};
                 Seeds s;
                 for (int c = 0; c <= 5; ++c) s.push_back(compression::encode(v, static_cast<compression::Codec>(c)));
                 return s;
               }});
  t.push_back({"dht-record",
               [](Input in) {
                 guarded([&] {
                   wire::Reader r(in);
                   (void)dht::Record::decode(r, dht::kDefaultLimits);
                 });
               },
               [] {
                 Bytes b;
                 wire::Writer w(b);
                 record().encode(w);
                 return Seeds{b};
               }});
  t.push_back({"progress-record", [](Input in) { (void)optim::PeerProgress::decode(in); },
               [] { return Seeds{optim::PeerProgress{12, 4096, 350.5, time_from_ns(5'000'000'000), true}.encode()}; }});
  t.push_back({"matchmaking-declaration",
               [](Input in) { guarded([&] { (void)averaging::Declaration::decode(in); }); },
               [] { return Seeds{averaging::Declaration{member(), 99, time_from_ns(7'000'000'000)}.encode()}; }});
  t.push_back(message_target<PingRequest>("ping", encoded(PingRequest{})));
  t.push_back(message_target<dht::PingRequest>("dht-ping", encoded(dht::PingRequest{sender()})));
  t.push_back(message_target<dht::StoreRequest>("dht-store", encoded(dht::StoreRequest{sender(), {record()}})));
  t.push_back(message_target<dht::StoreReply>("dht-store-reply", encoded(dht::StoreReply{sender().id, {0, 1, 3}})));
  t.push_back(message_target<dht::FindRequest>("dht-find", encoded(dht::FindRequest{sender(), {sender().id}})));
  {
    dht::FindReply reply;
    reply.id = sender().id;
    reply.entries.push_back({{record()}, {dht::Contact{sender().id, member().endpoint}}});
    t.push_back(message_target<dht::FindReply>("dht-find-reply", encoded(reply)));
  }
  t.push_back(message_target<averaging::Member>("avg-member", encoded(member())));
  t.push_back(message_target<averaging::Group>("avg-group", encoded(group())));
  {
    averaging::PieceRequest piece;
    piece.group = 42;
    piece.piece = 3;
    t.push_back(message_target<averaging::PieceRequest>("avg-piece", encoded(piece)));
  }
  t.push_back(message_target<averaging::PieceReply>("avg-piece-reply", encoded(averaging::PieceReply{})));
  t.push_back(message_target<averaging::CancelNotice>("avg-cancel", encoded(averaging::CancelNotice{42})));
  t.push_back(message_target<averaging::JoinRequest>("avg-join", encoded(averaging::JoinRequest{"k", 5, member()})));
  t.push_back(message_target<averaging::JoinReply>("avg-join-reply", encoded(averaging::JoinReply{group()})));
  t.push_back(message_target<averaging::StateRequest>("state-request", encoded(averaging::StateRequest{"fuzz"})));
  {
    averaging::StateReply s;
    s.epoch = 9;
    s.schema = group().schema;
    s.extra = {1, 2, 3};
    t.push_back(message_target<averaging::StateReply>("state-reply", encoded(s)));
  }
  t.push_back(message_target<moe::ForwardRequest>("moe-forward", encoded(moe::ForwardRequest{"ffn", shape(), 1, {}, 0})));
  t.push_back(
      message_target<moe::BackwardRequest>("moe-backward", encoded(moe::BackwardRequest{"ffn", shape(), shape(), 1, {}, 0, 32})));
  t.push_back(message_target<moe::InfoRequest>("moe-info", encoded(moe::InfoRequest{"ffn"})));
  t.push_back(message_target<moe::ExpertInfo>("moe-expert-info", encoded(moe::ExpertInfo{4, 4, true, "ffn"})));
  t.push_back(message_target<moe::TensorReply>("moe-tensor-reply", encoded(moe::TensorReply{shape(), {}, 1})));
  t.push_back({"rpc-envelope-to-every-server", &envelope, &envelope_seeds});
  t.push_back({"btard-messages", &btard_message, &btard_seeds});
  return t;
}

}  // namespace

std::pair<std::uint64_t, std::uint64_t> envelope_answers() {
  return {answers_so_far, errors_so_far};
}

const std::vector<Target>& targets() {
  static const std::vector<Target> all = make_targets();
  return all;
}

void run_one(std::span<const std::uint8_t> in) {
  if (in.empty()) return;
  const auto& all = targets();
  all[in[0] % all.size()].run(in.subspan(1));
}

}  // namespace apiary::fuzz
