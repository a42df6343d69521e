// The runtime contract, checked once, in both worlds: ns-3 and live sockets.
#include <gtest/gtest.h>

#include "core/runtime/rpc.hpp"
#include "core/runtime/task.hpp"
#include "tests/conformance/worlds.hpp"

namespace apiary::test {
namespace {

using namespace std::chrono_literals;

struct Echo {
  static constexpr std::uint32_t kMethod = 20;
  std::string text;
  Payload payload;
  void encode(wire::Writer& w) const { w.str(text); }
  static Echo decode(wire::Reader& r) { return Echo{r.str(4096), {}}; }
};
struct Hold {  // the server waits `ms` before answering
  static constexpr std::uint32_t kMethod = 21;
  std::int64_t ms = 0;
  void encode(wire::Writer& w) const { w.i64(ms); }
  static Hold decode(wire::Reader& r) { return Hold{r.i64()}; }
};

template <class W>
class Conformance : public ::testing::Test {
 protected:
  void SetUp() override {
    for (int i = 0; i < 3; ++i) {
      world.add_peer();
      rpc.push_back(std::make_unique<Rpc>(world.runtime(i)));
      Runtime& rt = world.runtime(i);
      rpc.back()->template serve<Echo, Echo>(
          [](const Endpoint& from, Echo e) -> Task<Result<Echo>> {
            e.text += " via " + from.to_string();
            co_return e;
          });
      rpc.back()->template serve<Hold, Hold>([&rt](const Endpoint&, Hold h) -> Task<Result<Hold>> {
        co_await sleep_on(rt.timers, std::chrono::milliseconds(h.ms));
        co_return h;
      });
    }
  }
  void TearDown() override {
    scope.destroy_all();
    rpc.clear();
  }
  // Runs `t` to completion in the world (bounded by `limit` of world time).
  template <class T>
  T run(Task<T> t, Duration limit = 10s) {
    return run_in(world, scope, std::move(t), limit);
  }
  Duration now(std::size_t i) { return world.runtime(i).now().time_since_epoch(); }

  W world;
  std::vector<std::unique_ptr<Rpc>> rpc;
  TaskScope scope;
};

TYPED_TEST_SUITE(Conformance, Worlds, WorldNames);

TYPED_TEST(Conformance, TimersFireInOrderAndCancelledOnesNever) {
  auto& rt = this->world.runtime(0);
  std::vector<int> order;
  const auto t0 = rt.now();  // before scheduling: deadlines count from the schedule call
  rt.timers.schedule(30ms, [&] { order.push_back(30); });
  rt.timers.schedule(10ms, [&] { order.push_back(10); });
  const TimerId gone = rt.timers.schedule(15ms, [&] { order.push_back(15); });
  rt.timers.schedule(20ms, [&] { order.push_back(20); });
  rt.timers.schedule(20ms, [&] { order.push_back(21); });  // same instant: scheduling order
  EXPECT_TRUE(rt.timers.cancel(gone));
  EXPECT_FALSE(rt.timers.cancel(gone));
  EXPECT_TRUE(this->world.run_until([&] { return order.size() == 4; }, 1s));
  EXPECT_EQ(order, (std::vector<int>{10, 20, 21, 30}));
  EXPECT_GE(rt.now() - t0, 30ms);
  EXPECT_EQ(this->world.pending_timers(0), 0u);
}

TYPED_TEST(Conformance, RpcRoundTrip) {
  auto r = this->run(this->rpc[0]->template call<Echo>(this->world.endpoint(1), Echo{"hello", {}}, 2s));
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->text, "hello via " + this->world.endpoint(0).to_string());
}

TYPED_TEST(Conformance, RpcTimeout) {
  const auto t0 = this->now(0);
  auto r = this->run(this->rpc[0]->template call<Hold>(this->world.endpoint(1), Hold{3000}, 200ms));
  const auto elapsed = this->now(0) - t0;
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_GE(elapsed, 200ms);
  EXPECT_LT(elapsed, 1500ms);
}

TYPED_TEST(Conformance, DeadPeerGivesAnErrorWithinTheTimeout) {
  this->world.kill(2);
  const auto t0 = this->now(0);
  auto r = this->run(this->rpc[0]->template call<Echo>(this->world.endpoint(2), Echo{"anyone?", {}}, 300ms));
  ASSERT_FALSE(r.ok());
  EXPECT_TRUE(r.error().code == ErrorCode::kTimeout || r.error().code == ErrorCode::kUnreachable)
      << r.error().describe();
  EXPECT_LT(this->now(0) - t0, 1500ms);
}

TYPED_TEST(Conformance, UnknownMethodIsReported) {
  auto r = this->run(this->rpc[0]->call(this->world.endpoint(1), 4242, {}, {}, 2s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnknownMethod);
}

TYPED_TEST(Conformance, LargePayloadArrivesIntactWhileSmallCallsProceed) {
  Bytes data(8u << 20);
  Rng rng(3);
  for (auto& b : data) b = static_cast<std::uint8_t>(rng.next());
  const Payload big = Payload::bytes(data);
  auto both = [&]() -> Task<std::pair<bool, int>> {
    std::vector<Task<bool>> calls;
    calls.push_back([](Rpc& r, Endpoint to, Payload p, const Bytes& expect) -> Task<bool> {
      Echo req{"big", p};
      auto res = co_await r.call<Echo>(to, std::move(req), 30s);
      co_return res.ok() && res->payload.size() == expect.size() &&
          std::equal(expect.begin(), expect.end(), res->payload.data().begin());
    }(*this->rpc[0], this->world.endpoint(1), big, data));
    for (int i = 0; i < 10; ++i)
      calls.push_back([](Rpc& r, Endpoint to) -> Task<bool> {
        Echo req{"small", {}};
        auto res = co_await r.call<Echo>(to, std::move(req), 30s);
        co_return res.ok() && res->payload.size() == 0;
      }(*this->rpc[2], this->world.endpoint(1)));
    auto ok = co_await when_all(std::move(calls));
    co_return std::make_pair(ok[0], static_cast<int>(std::count(ok.begin() + 1, ok.end(), true)));
  };
  auto [big_ok, small_ok] = this->run(both(), 60s);
  EXPECT_TRUE(big_ok);
  EXPECT_EQ(small_ok, 10);
}

// A caller may lend memory for a reply's payload: live TCP receives the reply straight into it,
// ns-3 hands over its own buffer; either way the caller gets the bytes, and lent memory of the
// wrong size is left alone.
TYPED_TEST(Conformance, ReplyPayloadMayBeReceivedIntoLentMemory) {
  Bytes data((3u << 20) + 5);
  Rng rng(5);
  for (auto& b : data) b = static_cast<std::uint8_t>(rng.next());
  const Payload big = Payload::bytes(data);
  for (const std::size_t size : {data.size(), data.size() - 1}) {
    auto lent = std::make_shared<Bytes>(size, 0);
    auto r = this->run(this->rpc[0]->template call<Echo>(this->world.endpoint(1), Echo{"big", big}, 30s,
                                                         PayloadTarget{lent, {lent->data(), lent->size()}}),
                       60s);
    ASSERT_TRUE(r.ok()) << r.error().describe();
    ASSERT_EQ(r->payload.size(), data.size());
    EXPECT_TRUE(std::equal(data.begin(), data.end(), r->payload.data().begin()));
    const bool placed = r->payload.data().data() == lent->data();
    const bool live = std::is_same_v<TypeParam, LiveWorld>;
    EXPECT_EQ(placed, live && size == data.size()) << "size " << size;
    if (!placed) {
      EXPECT_EQ(*lent, Bytes(size, 0)) << "size " << size;
    }
  }
}

TYPED_TEST(Conformance, GarbageBytesAreCountedAndThePeerKeepsServing) {
  Bytes junk(300);
  Rng rng(9);
  for (auto& b : junk) b = static_cast<std::uint8_t>(rng.next());
  this->world.send_garbage(1, junk);
  // Sockets see a bad frame; the fake transport and the lean stack, which carry whole messages,
  // a bad envelope.
  const bool whole = std::is_same_v<TypeParam, FakeWorld> || std::is_same_v<TypeParam, LeanWorld>;
  const char* counted = whole ? "rpc.bad_messages" : "transport.bad_frames";
  EXPECT_TRUE(this->world.run_until([&] { return this->world.metrics.counter(counted) >= 1; }, 2s));
  auto r = this->run(this->rpc[0]->template call<Echo>(this->world.endpoint(1), Echo{"still there?", {}}, 2s));
  EXPECT_TRUE(r.ok()) << r.error().describe();
}

// Live only: a peer we dial that answers with a HELLO of its own breaks the protocol on a
// connection we opened, so the calls waiting on it fail then, not at their 30 s timeout.
TEST(LiveTransport, HelloFromTheDialledSideFailsPendingCallsAtOnce) {
  LiveWorld world;
  world.add_peer();
  Rpc rpc(world.runtime(0));
  const Endpoint hostile = world.hello_answering_listener();
  std::optional<Result<Echo>> got;
  TaskScope scope;
  scope.spawn([](Rpc& r, Endpoint to, std::optional<Result<Echo>>& out) -> Task<void> {
    Echo hello{"anyone?", {}};  // (g++ 12: no temporaries inside a co_await expression)
    Task<Result<Echo>> call = r.call<Echo>(to, std::move(hello), 30s);
    Result<Echo> res = co_await std::move(call);
    out.emplace(std::move(res));
  }(rpc, hostile, got));
  ASSERT_TRUE(world.run_until([&] { return got.has_value(); }, 5s)) << "the call waited for its timeout";
  EXPECT_FALSE(got->ok());
  EXPECT_EQ(got->error().code, ErrorCode::kUnreachable) << got->error().describe();
  EXPECT_GE(world.metrics.counter("transport.bad_frames"), 1);
  scope.destroy_all();
}

TYPED_TEST(Conformance, ManyConcurrentCallsWithMixedTimeouts) {
  auto many = [&]() -> Task<int> {
    std::vector<Task<bool>> calls;
    for (int i = 0; i < 200; ++i)
      calls.push_back([](Rpc& r, Endpoint to, int k) -> Task<bool> {
        auto res = co_await r.call<Hold>(to, Hold{k % 4 == 0 ? 2000 : 20}, 500ms);
        co_return res.ok();
      }(*this->rpc[0], this->world.endpoint(1 + i % 2), i));
    auto ok = co_await when_all(std::move(calls));
    co_return static_cast<int>(std::count(ok.begin(), ok.end(), true));
  };
  EXPECT_EQ(this->run(many(), 5s), 150);
  EXPECT_EQ(this->rpc[0]->pending_calls(), 0u);
}

TYPED_TEST(Conformance, StopAndRestartLeaksNoTimersAndServesAgain) {
  // Peer 1 has handlers in flight (holding timers) when it stops.
  this->scope.spawn([](Rpc& r, Endpoint to) -> Task<void> {
    auto res = co_await r.call<Hold>(to, Hold{5000}, 10s);
    (void)res;
  }(*this->rpc[0], this->world.endpoint(1)));
  EXPECT_TRUE(this->world.run_until([&] { return this->rpc[1]->running_handlers() == 1; }, 2s));
  EXPECT_GT(this->world.pending_timers(1), 0u);
  this->rpc[1]->shutdown();
  this->world.kill(1);
  EXPECT_EQ(this->rpc[1]->running_handlers(), 0u);
  EXPECT_EQ(this->world.pending_timers(1), 0u);
  this->scope.destroy_all();

  // Restart: a fresh protocol stack on the same endpoint. Let the others notice the old
  // connections closing first (live: their EOFs), as a restarted process takes a moment anyway.
  this->world.run_until([] { return false; }, 100ms);
  this->world.revive(1);
  this->rpc[1] = std::make_unique<Rpc>(this->world.runtime(1));
  this->rpc[1]->template serve<Echo, Echo>([](const Endpoint&, Echo e) -> Task<Result<Echo>> { co_return e; });
  auto r = this->run(this->rpc[0]->template call<Echo>(this->world.endpoint(1), Echo{"back", {}}, 2s));
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->text, "back");
}

// Live only: repeated RPCs between two peers reuse one TCP connection, in both directions.
// Between hosts a pair of peers shares one connection, whoever dialled it. On one host each sends
// over a connection it dialled to the other's port (a port named in a HELLO there is a claim any
// local process can make): two connections, and still no more however many calls.
std::pair<std::size_t, std::size_t> connections_after_calls(bool hosts_apart) {
  LiveWorld world;
  world.own_addresses = hosts_apart;
  world.add_peer();
  world.add_peer();
  Rpc a(world.runtime(0)), b(world.runtime(1));
  for (Rpc* r : {&a, &b})
    r->serve<Echo, Echo>([](const Endpoint&, Echo e) -> Task<Result<Echo>> { co_return e; });
  auto calls = [&]() -> Task<int> {
    int ok = 0;
    for (int i = 0; i < 20; ++i) {
      Echo ea{"a", {}}, eb{"b", {}};
      ok += (co_await a.call<Echo>(world.endpoint(1), std::move(ea), 2s)).ok();
      ok += (co_await b.call<Echo>(world.endpoint(0), std::move(eb), 2s)).ok();
    }
    co_return ok;
  };
  auto t = calls();
  t.start();
  EXPECT_TRUE(world.run_until([&] { return t.done(); }, 10s));
  EXPECT_EQ(t.result(), 40);
  return {world.connections(0), world.connections(1)};
}

TEST(LiveTransport, ReusesOneConnectionPerPeerPairAcrossHosts) {
  EXPECT_EQ(connections_after_calls(true), std::make_pair(std::size_t{1}, std::size_t{1}));
}

TEST(LiveTransport, OnOneHostEachPeerDialsTheOther) {
  EXPECT_EQ(connections_after_calls(false), std::make_pair(std::size_t{2}, std::size_t{2}));
}

// Emulated latency (for kernels without tc netem): every received message is held back by the
// delay, in order. A round trip therefore takes at least twice the delay (a lower bound only:
// upper bounds on wall time are not tested on a shared machine).
TEST(LiveTransport, EmulatedDelayHoldsEveryMessageInOrder) {
  LiveWorld world;
  world.emulated_delay = 30ms;
  world.add_peer();
  world.add_peer();
  Rpc a(world.runtime(0)), b(world.runtime(1));
  std::vector<std::string> seen;
  b.serve<Echo, Echo>([&](const Endpoint&, Echo e) -> Task<Result<Echo>> {
    seen.push_back(e.text);
    co_return e;
  });
  auto calls = [&]() -> Task<Duration> {
    const TimePoint t0 = world.runtime(0).now();
    for (int i = 0; i < 3; ++i) {
      Echo e{"m" + std::to_string(i), {}};
      auto r = co_await a.call<Echo>(world.endpoint(1), std::move(e), 2s);
      EXPECT_TRUE(r.ok());
    }
    co_return world.runtime(0).now() - t0;
  };
  auto t = calls();
  t.start();
  ASSERT_TRUE(world.run_until([&] { return t.done(); }, 10s));
  EXPECT_GE(t.result(), 3 * 60ms);
  EXPECT_EQ(seen, (std::vector<std::string>{"m0", "m1", "m2"}));
}

}  // namespace
}  // namespace apiary::test

namespace apiary::test {
namespace {

// Keeps every message it is handed, in order.
struct Collector final : TransportHandler {
  std::vector<Message> got;
  void on_message(const Endpoint&, Message m) override { got.push_back(std::move(m)); }
  void on_peer_error(const Endpoint&, const Error&) override {}
};

// Live TCP writes the small messages queued for one peer together (fewer system calls and
// segments): a burst of them, with large ones among them, arrives whole and in order, in fewer
// writes than messages.
TEST(LiveTransport, QueuedSmallMessagesLeaveTogetherAndArriveInOrder) {
  LiveWorld world;
  world.add_peer();
  world.add_peer();
  Collector sink;
  world.runtime(1).transport.set_handler(&sink);
  Rng rng(11);
  std::vector<Message> sent;
  for (int i = 0; i < 300; ++i) {
    Message m;
    m.header = Bytes{static_cast<std::uint8_t>(i), static_cast<std::uint8_t>(i >> 8)};
    // Mostly small ones; every 50th a payload of 300 KiB (written in parts, after the small ones
    // queued before it); some sizes cross the 64 KiB a write gathers.
    const std::size_t size = i % 50 == 49 ? 300u << 10 : i % 7 == 0 ? 40u << 10 : rng.below(200);
    Bytes p(size);
    for (auto& b : p) b = static_cast<std::uint8_t>(rng.next());
    m.payload = Payload::bytes(std::move(p));
    sent.push_back(m);
  }
  for (auto& m : sent) world.runtime(0).transport.send(world.endpoint(1), m);
  ASSERT_TRUE(world.run_until([&] { return sink.got.size() == sent.size(); }, 10s)) << sink.got.size();
  // Each arrives once and intact; the small ones in the order sent (large ones may be overtaken
  // by small ones, by design).
  std::vector<int> small_order, expect_small;
  std::vector<int> seen(sent.size(), 0);
  for (const Message& m : sink.got) {
    ASSERT_EQ(m.header.size(), 2u);
    const int i = m.header[0] | (m.header[1] << 8);
    ASSERT_LT(i, static_cast<int>(sent.size()));
    ++seen[static_cast<std::size_t>(i)];
    const Payload& want = sent[static_cast<std::size_t>(i)].payload;
    ASSERT_EQ(m.payload.size(), want.size()) << i;
    ASSERT_TRUE(std::equal(want.data().begin(), want.data().end(), m.payload.data().begin())) << i;
    if (want.size() <= wire::kPartSize) small_order.push_back(i);
  }
  for (std::size_t i = 0; i < sent.size(); ++i)
    if (sent[i].payload.size() <= wire::kPartSize) expect_small.push_back(static_cast<int>(i));
  EXPECT_EQ(seen, std::vector<int>(sent.size(), 1));
  EXPECT_EQ(small_order, expect_small);
  const auto writes = world.metrics.counter("transport.writes");
  EXPECT_LT(writes, world.metrics.counter("transport.messages_sent") / 2) << writes << " writes";
  world.runtime(1).transport.set_handler(nullptr);
}

}  // namespace
}  // namespace apiary::test
