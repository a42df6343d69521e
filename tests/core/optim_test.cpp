// Collaborative training: progress tracking through the DHT.
#include <gtest/gtest.h>

#include "core/optim/progress.hpp"
#include "tests/support/fake_dht.hpp"

using namespace apiary;
using namespace apiary::optim;
using namespace std::chrono_literals;

TEST(Progress, AggregatesTheSwarmsEpochSamplesAndEta) {
  const TimePoint now = TimePoint(100s);
  std::vector<PeerProgress> r{
      {3, 40, 10.0, now - 1s, false},
      {3, 30, 20.0, now - 2s, true},
      {2, 500, 50.0, now - 1s, false},  // behind: its samples count for nothing
      {4, 999, 99.0, now - 60s, false},  // stale: ignored, so epoch 4 is not the swarm's
  };
  auto s = aggregate(r, 100, now, 30s);
  EXPECT_EQ(s.epoch, 3u);
  EXPECT_EQ(s.samples, 70u);
  EXPECT_EQ(s.peers, 2u);
  EXPECT_EQ(s.behind, 1u);
  EXPECT_FALSE(s.ready);
  EXPECT_DOUBLE_EQ(s.samples_per_second, 30.0);
  EXPECT_EQ(s.eta, now + 1s);  // 30 samples left at 30 per second
  r[0].samples = 80;
  s = aggregate(r, 100, now, 30s);
  EXPECT_TRUE(s.ready);
  EXPECT_EQ(s.eta, now);
  EXPECT_EQ(aggregate({{1, 0, 0.0, now, false}}, 100, now, 30s).eta, TimePoint::max());
  EXPECT_FALSE(PeerProgress::decode(Bytes{1, 2}).has_value());
}

TEST(Progress, PeersPublishUnderSignedSubkeysAndEveryoneSeesTheSum) {
  dht::DhtConfig cfg;
  cfg.k = 6;
  cfg.refresh_period = Duration::zero();
  cfg.replicate_period = Duration::zero();
  test::FakeDhtSwarm s(10, cfg, {std::make_shared<dht::SignatureValidator>()}, 400);
  s.join_all();
  ProgressConfig pc;
  pc.target_batch = 1000;
  pc.matchmaking_lead = 2s;
  std::vector<std::unique_ptr<ProgressTracker>> trackers;
  for (std::size_t i = 0; i < 10; ++i)
    trackers.push_back(std::make_unique<ProgressTracker>(s.fake[i].runtime(), *s.nodes[i], dht::Identity::from_seed(900 + i), pc));
  for (std::size_t i = 0; i < 5; ++i) {
    PeerProgress p{7, 100 * (i + 1), 50.0, {}, false};
    EXPECT_TRUE(s.run(trackers[i]->publish(p)));
  }
  EXPECT_TRUE(s.run(trackers[5]->publish(PeerProgress{6, 300, 50.0, {}, false})));  // a peer behind
  auto seen = s.run(trackers[9]->fetch());
  EXPECT_EQ(seen.epoch, 7u);
  EXPECT_EQ(seen.samples, 100u + 200 + 300 + 400 + 500);
  EXPECT_EQ(seen.peers, 5u);
  EXPECT_EQ(seen.behind, 1u);
  EXPECT_TRUE(seen.ready);
  EXPECT_EQ(trackers[9]->matchmaking_time(seen), s.fake[9].runtime().now());

  // A peer cannot overwrite another's entry: a record under peer 0's owner tag signed by peer 1's
  // key is refused everywhere, so the sum stays as it was.
  dht::Record forged;
  forged.key = trackers[0]->key();
  forged.subkey = dht::Identity::from_seed(900).owner_tag();
  forged.value = PeerProgress{7, 100000, 1.0, s.fake[1].runtime().now(), false}.encode();
  forged.expiration = s.fake[1].runtime().now() + 1min;
  dht::Identity::from_seed(901).sign(forged);
  auto stored = s.run(s.nodes[1]->store(forged));
  EXPECT_EQ(stored.replicas, 0u);
  EXPECT_EQ(s.run(trackers[8]->fetch()).samples, 1500u);
}
