// The bucketed event queue runs events in ns-3's order (time, then uid): against an ordered set
// under random scheduling, cancelling and running, and whole scenarios give the same event trace
// with it as with ns-3's binary heap and its map.
#include <gtest/gtest.h>

#include <random>
#include <set>
#include <utility>

#include <ns3/object.h>

#include "sim/bucket_scheduler.hpp"
#include "sim/sim_host.hpp"
#include "tests/support/dht_churn_scenario.hpp"

namespace apiary {
namespace {

using Key = std::pair<std::uint64_t, std::uint32_t>;  // (time, uid)

ns3::Scheduler::Event event(std::uint64_t ts, std::uint32_t uid) {
  ns3::Scheduler::Event ev;
  ev.impl = nullptr;  // never run here
  ev.key.m_ts = ts;
  ev.key.m_uid = uid;
  ev.key.m_context = 0;
  return ev;
}

TEST(BucketScheduler, RunsEventsInTimeThenUidOrderUnderRandomOperations) {
  auto q = ns3::CreateObject<ns3::ApiaryBucketScheduler>();
  std::set<Key> ref;
  std::mt19937_64 rng(11);
  const std::uint64_t bucket = std::uint64_t{1} << ns3::ApiaryBucketScheduler::kShift;
  const std::uint64_t ring = bucket * ns3::ApiaryBucketScheduler::kBuckets;
  // Delays as a simulation makes them: now, within the bucket being run, within the ring, beyond
  // it (far and very far), and again exactly the time of an event already pending (a tie).
  std::uint64_t now = 0;
  auto delay = [&]() -> std::uint64_t {
    switch (rng() % 7) {
      case 0: return 0;
      case 1: return rng() % bucket;
      case 2: return rng() % (4 * bucket);
      case 3: return rng() % ring;
      case 4: return ring + rng() % (3 * ring);
      case 5: return rng() % (1000 * ring);
      default:
        if (ref.empty()) return 0;
        return (rng() % 2 ? ref.begin()->first : std::prev(ref.end())->first) - now;
    }
  };
  std::uint32_t uid = 0;
  std::size_t ran = 0, removed = 0, overflowed = 0;
  for (int step = 0; step < 200000; ++step) {
    const auto op = rng() % 10;
    if (op < 5 || ref.empty()) {
      const std::uint64_t ts = now + delay();
      q->Insert(event(ts, ++uid));
      ref.insert({ts, uid});
    } else if (op < 9) {
      ASSERT_EQ(q->PeekNext().key.m_ts, ref.begin()->first);
      const auto ev = q->RemoveNext();
      ASSERT_EQ(Key(ev.key.m_ts, ev.key.m_uid), *ref.begin()) << "at step " << step;
      ASSERT_GE(ev.key.m_ts, now);
      now = ev.key.m_ts;
      ref.erase(ref.begin());
      ++ran;
    } else {  // cancel one pending event at random (ns-3's Simulator::Remove)
      auto it = ref.begin();
      std::advance(it, static_cast<long>(rng() % std::min<std::size_t>(ref.size(), 64)));
      if (rng() % 2) it = std::prev(ref.end());
      q->Remove(event(it->first, it->second));
      ref.erase(it);
      ++removed;
    }
    ASSERT_EQ(q->IsEmpty(), ref.empty());
    ASSERT_EQ(q->size(), ref.size());
    overflowed = std::max(overflowed, q->overflow_size());
  }
  while (!ref.empty()) {
    const auto ev = q->RemoveNext();
    ASSERT_EQ(Key(ev.key.m_ts, ev.key.m_uid), *ref.begin());
    ref.erase(ref.begin());
  }
  EXPECT_TRUE(q->IsEmpty());
  // The mix reached every part of the queue.
  EXPECT_GT(ran, 50000u);
  EXPECT_GT(removed, 10000u);
  EXPECT_GT(overflowed, 100u);
  EXPECT_THROW(q->Remove(event(now + 1, ++uid)), std::logic_error);
}

TEST(BucketScheduler, ScenariosGiveTheSameTraceWithEveryEventQueue) {
  auto spec = test::dht_churn_spec({"seed=3", "duration=6min", "network.stack=lean"});
  std::map<std::string, std::uint64_t> hashes;
  for (const char* queue : {"buckets", "heap", "map"}) {
    spec.event_queue = queue;
    Metrics m;
    sim::run_sim_swarm(spec, m);
    EXPECT_GT(m.counter("dht.get.ok"), 300) << queue;
    EXPECT_GT(m.counter("churn.leaves"), 50) << queue;
    hashes[queue] = m.trace_hash();
  }
  EXPECT_EQ(hashes["buckets"], hashes["heap"]);
  EXPECT_EQ(hashes["buckets"], hashes["map"]);
}

}  // namespace
}  // namespace apiary
