// The RPC layer and the task type against the recording fake transport.
#include <gtest/gtest.h>

#include <algorithm>
#include <optional>
#include <set>

#include "core/runtime/faults.hpp"
#include "core/runtime/rpc.hpp"
#include "core/runtime/task.hpp"
#include "harness/workloads/ping.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary {
namespace {

using namespace std::chrono_literals;
using test::FakeSwarm;

struct Echo {
  static constexpr std::uint32_t kMethod = 10;
  std::string text;
  void encode(wire::Writer& w) const { w.str(text); }
  static Echo decode(wire::Reader& r) { return Echo{r.str(1024)}; }
};
struct Slow {
  static constexpr std::uint32_t kMethod = 11;
  std::int64_t ms = 0;
  void encode(wire::Writer& w) const { w.i64(ms); }
  static Slow decode(wire::Reader& r) { return Slow{r.i64()}; }
};

template <class T>
T drive(test::FakeNet& net, Task<T> t) {
  t.start();
  net.run(1h, [&] { return t.done(); });
  EXPECT_TRUE(t.done());
  return t.result();
}

TEST(Task, SleepAndWhenAllRunConcurrentlyInVirtualTime) {
  FakeSwarm s(1);
  auto& rt = s[0].runtime();
  auto worker = [&rt](int ms) -> Task<int> {
    co_await sleep_on(rt.timers, std::chrono::milliseconds(ms));
    co_return ms;
  };
  auto all = [&]() -> Task<std::vector<int>> {
    std::vector<Task<int>> v;
    for (int ms : {30, 10, 20}) v.push_back(worker(ms));
    co_return co_await when_all(std::move(v));
  };
  const TimePoint t0 = s.net.now();
  auto r = drive(s.net, all());
  EXPECT_EQ(r, (std::vector<int>{30, 10, 20}));
  EXPECT_EQ(s.net.now() - t0, 30ms);  // concurrent, not 60ms
}

TEST(Task, ExceptionsPropagateToTheAwaiter) {
  FakeSwarm s(1);
  auto thrower = []() -> Task<int> {
    throw std::runtime_error("boom");
    co_return 1;
  };
  auto outer = [&]() -> Task<std::string> {
    try {
      co_await thrower();
    } catch (const std::runtime_error& e) {
      co_return std::string(e.what());
    }
    co_return std::string("no");
  };
  EXPECT_EQ(drive(s.net, outer()), "boom");
}

TEST(Task, DestroyingAScopeCancelsItsTimers) {
  FakeSwarm s(1);
  auto& rt = s[0].runtime();
  int resumed = 0;
  {
    TaskScope scope;
    for (int i = 0; i < 5; ++i)
      scope.spawn([](Runtime& r, int& n) -> Task<void> {
        co_await sleep_on(r.timers, 1s);
        ++n;
      }(rt, resumed));
    EXPECT_EQ(scope.size(), 5u);
    EXPECT_EQ(s[0].pending_timers(), 5u);
  }
  EXPECT_EQ(s[0].pending_timers(), 0u);
  s.net.run();
  EXPECT_EQ(resumed, 0);
}

class RpcTest : public ::testing::Test {
 protected:
  RpcTest() : s(3), a(s[0].runtime()), b(s[1].runtime()) {
    b.serve<Echo, Echo>([](const Endpoint& from, Echo e) -> Task<Result<Echo>> {
      co_return Echo{e.text + " from " + from.to_string()};
    });
    b.serve<Slow, Slow>([this](const Endpoint&, Slow req) -> Task<Result<Slow>> {
      co_await sleep_on(s[1].runtime().timers, std::chrono::milliseconds(req.ms));
      co_return req;
    });
  }
  FakeSwarm s;
  Rpc a, b;
};

TEST_F(RpcTest, RoundTrip) {
  auto r = drive(s.net, a.call<Echo>(s[1].local(), Echo{"hi"}, 1s));
  ASSERT_TRUE(r.ok()) << r.error().describe();
  EXPECT_EQ(r->text, "hi from 10.0.0.1:7000");
  EXPECT_EQ(a.pending_calls(), 0u);
  EXPECT_EQ(s[0].pending_timers(), 0u);  // the timeout timer was cancelled
}

TEST_F(RpcTest, TimeoutSaysSo) {
  const TimePoint t0 = s.net.now();
  auto r = drive(s.net, a.call<Slow>(s[1].local(), Slow{500}, 100ms));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  EXPECT_EQ(s.net.now() - t0, 100ms);
  s.net.run();  // the late reply arrives and is counted, not delivered
  EXPECT_EQ(s.metrics.counter("rpc.late_replies"), 1);
}

TEST_F(RpcTest, UnknownMethodIsAnErrorReply) {
  auto r = drive(s.net, a.call(s[1].local(), 999, {}, {}, 1s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kUnknownMethod);
}

TEST_F(RpcTest, MalformedRequestBodyGetsBadMessage) {
  Bytes body = {0xff};  // a varint length with no end
  auto r = drive(s.net, a.call(s[1].local(), Echo::kMethod, body, {}, 1s));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kBadMessage);
  EXPECT_EQ(s.metrics.counter("rpc.bad_requests"), 1);
}

TEST_F(RpcTest, GarbageEnvelopeIsCountedAndDropped) {
  b.on_message(s[0].local(), Message{Bytes{0x77, 0x01}, {}});
  b.on_message(s[0].local(), Message{Bytes{}, {}});
  EXPECT_EQ(s.metrics.counter("rpc.bad_messages"), 2);
  auto r = drive(s.net, a.call<Echo>(s[1].local(), Echo{"still"}, 1s));
  EXPECT_TRUE(r.ok());
}

TEST_F(RpcTest, DeadPeerTimesOutOrIsRefused) {
  s[1].up = false;
  auto r = drive(s.net, a.call<Echo>(s[1].local(), Echo{"x"}, 200ms));
  ASSERT_FALSE(r.ok());
  EXPECT_EQ(r.error().code, ErrorCode::kTimeout);
  s[0].refuse_dead = true;
  const TimePoint t0 = s.net.now();
  auto r2 = drive(s.net, a.call<Echo>(s[1].local(), Echo{"x"}, 200ms));
  ASSERT_FALSE(r2.ok());
  EXPECT_EQ(r2.error().code, ErrorCode::kUnreachable);
  EXPECT_LT(s.net.now() - t0, 200ms);  // refused: fails fast, before the timeout
}

TEST_F(RpcTest, ManyConcurrentCallsWithTimeouts) {
  auto many = [&]() -> Task<std::vector<bool>> {
    std::vector<Task<bool>> calls;
    for (int i = 0; i < 300; ++i)
      calls.push_back([](Rpc& rpc, Endpoint to, int k) -> Task<bool> {
        // Every third call asks for more time than its timeout allows.
        auto r = co_await rpc.call<Slow>(to, Slow{k % 3 == 0 ? 300 : 10}, 100ms);
        co_return r.ok();
      }(a, s[1].local(), i));
    co_return co_await when_all(std::move(calls));
  };
  auto r = drive(s.net, many());
  int ok = 0;
  for (std::size_t i = 0; i < r.size(); ++i) {
    EXPECT_EQ(r[i], i % 3 != 0) << i;
    ok += r[i];
  }
  EXPECT_EQ(ok, 200);
  EXPECT_EQ(a.pending_calls(), 0u);
}

TEST_F(RpcTest, DestroyingACallerMidCallLeavesNothingPending) {
  {
    TaskScope scope;
    scope.spawn([](Rpc& rpc, Endpoint to) -> Task<void> {
      auto r = co_await rpc.call<Slow>(to, Slow{1000}, 5s);
      (void)r;
    }(a, s[1].local()));
    s.net.run(10ms);
    EXPECT_EQ(a.pending_calls(), 1u);
  }
  EXPECT_EQ(a.pending_calls(), 0u);
  EXPECT_EQ(s[0].pending_timers(), 0u);
}

TEST(PingWorkload, PingsFlowAndEchoRealPayloads) {
  FakeSwarm s(4);
  std::vector<Endpoint> dir;
  for (auto& p : s.peers) dir.push_back(p->local());
  std::vector<std::unique_ptr<Rpc>> rpcs;
  std::vector<std::unique_ptr<PingApp>> apps;
  PingConfig cfg;
  cfg.mean_interval = 100ms;
  cfg.payload_bytes = 1000;
  cfg.echo_payload = true;
  cfg.real_payload = true;
  for (auto& p : s.peers) {
    rpcs.push_back(std::make_unique<Rpc>(p->runtime()));
    apps.push_back(std::make_unique<PingApp>(p->runtime(), *rpcs.back(), dir, cfg));
    apps.back()->start();
  }
  s.net.run(10s);
  const auto sent = s.metrics.counter("ping.sent");
  EXPECT_GT(sent, 300);  // 4 peers x 10/s x 10s = 400 expected
  EXPECT_LT(sent, 500);
  EXPECT_EQ(s.metrics.counter("ping.corrupt"), 0);
  EXPECT_GE(s.metrics.counter("ping.ok"), sent - 4);  // at most one in flight per peer at the end
  EXPECT_EQ(s.metrics.quantile("ping.rtt_ns", 0.5), 10e6);  // 2 x 5 ms fake latency
  apps.clear();
  for (auto& r : rpcs) r->shutdown();
}

}  // namespace
}  // namespace apiary

namespace apiary {
namespace {

// Sixty echo calls in a row, each with a 2 s timeout: for each, its error (if any) and how long it
// took in ms.
std::vector<std::pair<std::optional<ErrorCode>, long long>> sixty_calls(test::FakeSwarm& s, Rpc& client) {
  std::vector<std::pair<std::optional<ErrorCode>, long long>> out;
  auto many = [&]() -> Task<int> {
    for (int i = 0; i < 60; ++i) {
      const TimePoint t0 = s.net.now();
      Echo e{"x"};
      Task<Result<Echo>> call = client.call<Echo>(s[1].local(), std::move(e), std::chrono::seconds(2));
      Result<Echo> r = co_await std::move(call);
      const long long ms = (s.net.now() - t0) / std::chrono::milliseconds(1);
      out.emplace_back(r.ok() ? std::nullopt : std::optional<ErrorCode>(r.error().code), ms);
    }
    co_return 0;
  };
  auto t = many();
  t.start();
  s.net.run(std::chrono::hours(1), [&] { return t.done(); });
  EXPECT_TRUE(t.done());
  return out;
}

// Seeded fault injection at the RPC's points: a dropped reply is the caller's timeout, a delayed
// one arrives late by at most delay_max, and the same seed makes the same decisions.
std::vector<std::string> calls_under(FaultPlan plan, std::uint64_t seed) {
  test::FakeSwarm s(2);
  Rpc client(s[0].runtime()), server(s[1].runtime());
  server.serve<Echo, Echo>([](const Endpoint&, Echo e) -> Task<Result<Echo>> { co_return e; });
  FaultInjector injector(plan, Rng(seed), s[1].runtime().observer);
  s[1].runtime().faults = &injector;
  std::vector<std::string> outcome;  // "ok <ms>" or the error
  for (const auto& [error, ms] : sixty_calls(s, client))
    outcome.push_back(error ? std::string(to_string(*error)) : "ok " + std::to_string(ms));
  return outcome;
}

TEST(Rpc, InjectedFaultsDropAndDelayRepliesBySeed) {
  const auto clean = calls_under(FaultPlan{}, 1);
  EXPECT_EQ(std::count(clean.begin(), clean.end(), "ok 10"), 60) << "no plan, no fault: 2 x 5 ms every time";

  FaultPlan drop;
  drop.drop_reply = 0.5;
  const auto dropped = calls_under(drop, 1);
  const auto timeouts = std::count(dropped.begin(), dropped.end(), std::string(to_string(ErrorCode::kTimeout)));
  EXPECT_GT(timeouts, 15);
  EXPECT_LT(timeouts, 45);
  EXPECT_EQ(timeouts + std::count(dropped.begin(), dropped.end(), "ok 10"), 60);
  EXPECT_EQ(calls_under(drop, 1), dropped) << "the same seed, the same faults";
  EXPECT_NE(calls_under(drop, 2), dropped);

  FaultPlan late;
  late.delay_reply = 1;
  late.delay_max = std::chrono::milliseconds(500);
  std::set<std::string> distinct;
  for (const auto& o : calls_under(late, 3)) {
    ASSERT_EQ(o.rfind("ok ", 0), 0u) << o;
    const int ms = std::stoi(o.substr(3));
    EXPECT_GE(ms, 10);
    EXPECT_LE(ms, 510);
    distinct.insert(o);
  }
  EXPECT_GT(distinct.size(), 30u) << "delays are drawn, not fixed";
}

// A caller's timeout timer that fires early gives up on a peer that would have answered in time:
// the call fails as a timeout before its timeout, and the same seed fails the same calls.
std::vector<std::string> early_timeouts(double p, std::uint64_t seed) {
  test::FakeSwarm s(2);
  Rpc client(s[0].runtime()), server(s[1].runtime());
  Runtime& srt = s[1].runtime();
  server.serve<Echo, Echo>([&srt](const Endpoint&, Echo e) -> Task<Result<Echo>> {
    co_await sleep_on(srt.timers, std::chrono::seconds(1));
    co_return e;
  });
  FaultPlan plan;
  plan.early_timeout = p;
  FaultInjector injector(plan, Rng(seed), s[0].runtime().observer);
  s[0].runtime().faults = &injector;
  std::vector<std::string> outcome;  // "ok <ms>" or "<error> <ms>"
  for (const auto& [error, ms] : sixty_calls(s, client))
    outcome.push_back((error ? std::string(to_string(*error)) + " " : std::string("ok ")) + std::to_string(ms));
  return outcome;
}

TEST(Rpc, InjectedEarlyTimeoutsFailCallsBeforeTheirTimeout) {
  for (const auto& o : early_timeouts(0, 1)) EXPECT_EQ(o, "ok 1010");
  const auto early = early_timeouts(0.5, 1);
  int failed = 0;
  for (const auto& o : early) {
    if (o == "ok 1010") continue;
    ASSERT_EQ(o.rfind("timeout ", 0), 0u) << o;
    EXPECT_LT(std::stoi(o.substr(8)), 1010) << "only a timer that fired before the reply fails the call";
    ++failed;
  }
  EXPECT_GT(failed, 5);   // about half the draws fire early, and about half of those before 1.01 s
  EXPECT_LT(failed, 30);
  EXPECT_EQ(early_timeouts(0.5, 1), early) << "the same seed, the same faults";
}

}  // namespace
}  // namespace apiary
