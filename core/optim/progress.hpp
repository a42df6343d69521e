#pragma once
// Collaborative training, step 1: progress tracking through the DHT.
//
// Every peer publishes, under its own signed subkey of one DHT key, the global step (epoch) it is
// on, how many samples it has accumulated toward that step and its recent throughput. Any peer
// reads all of them and aggregates: the swarm's epoch is the highest epoch reported; the samples
// toward it are the sum over the peers on that epoch; from the summed throughput it estimates
// when the target batch size will be reached, and so when to begin matchmaking for the
// averaging round (just in time, not early). A peer whose epoch is behind knows it must catch up
// (download state) before contributing.
#include <optional>
#include <string>
#include <vector>

#include "core/dht/node.hpp"
#include "core/dht/validate.hpp"

namespace apiary::optim {

struct PeerProgress {
  std::uint64_t epoch = 0;
  std::uint64_t samples = 0;      // accumulated toward `epoch`'s step
  double samples_per_second = 0;  // recent throughput
  TimePoint reported{};
  bool client = false;  // cannot accept connections (matters for averaging roles)
  Bytes encode() const;
  static std::optional<PeerProgress> decode(std::span<const std::uint8_t> bytes);
};

struct SwarmProgress {
  std::uint64_t epoch = 0;          // the swarm's global step: the highest reported
  std::uint64_t samples = 0;        // accumulated toward it by the peers on it
  double samples_per_second = 0;    // their summed throughput
  std::size_t peers = 0;            // peers on the epoch (fresh reports)
  std::size_t behind = 0;           // fresh reports on an older epoch
  bool ready = false;               // samples >= target batch size
  TimePoint eta{};                  // estimated time the target is reached (now if ready)
  TimePoint fetched{};              // when the reports were read
};

// Pure aggregation: reports older than `stale` before `now`, or dated more than `stale` after it,
// are ignored; so are reports on epochs above `max_epoch`. A report counts at most target_batch
// samples, and (with three reports or more) at most ten times the median throughput: one lying
// report can make a step come early, not freeze the swarm or make it wait forever.
SwarmProgress aggregate(const std::vector<PeerProgress>& reports, std::uint64_t target_batch, TimePoint now,
                        Duration stale, std::uint64_t max_epoch = UINT64_MAX);

// The highest epoch this peer can believe, from the other peers' fresh epochs: the (tolerate+1)-th
// highest of them (so `tolerate` peers claiming a far epoch move nobody), never below this peer's
// own; with no more than `tolerate` other reports, the highest (a small swarm cannot outvote a
// liar, and a peer behind must still catch up). The swarm may be one step past it: a peer that
// has just stepped is there before the others.
std::uint64_t trusted_epoch(std::vector<std::uint64_t> others, std::uint64_t own, std::size_t tolerate);

// What a progress-poisoning attacker writes under `key` (attack.hpp), each claiming epoch
// `claimed` with every sample: a plain value that expires after 23 hours, an entry under the
// subkey "mallory", the same signed by `sybil` but never expiring, and `sybil`'s signed report.
std::vector<dht::Record> poisoned_progress(const std::string& key, const dht::Identity& sybil, TimePoint now,
                                           std::uint64_t claimed);

struct ProgressConfig {
  std::string prefix = "run";                   // DHT key: prefix + ":progress"
  std::uint64_t target_batch = 4096;            // samples per global step
  Duration ttl = std::chrono::seconds(60);      // a report's lifetime in the DHT
  Duration stale = std::chrono::seconds(30);    // reports older than this are ignored
  Duration matchmaking_lead = std::chrono::seconds(5);  // begin matchmaking this long before the ETA
  std::size_t read_holders = 3;
  std::size_t tolerate = 1;  // peers whose epoch claims may be lies (training.progress_tolerate)
};

class ProgressTracker {
 public:
  ProgressTracker(Runtime& rt, dht::DhtNode& dht, dht::Identity identity, ProgressConfig config = {});
  // Publishes this peer's progress under its signed subkey.
  Task<bool> publish(PeerProgress mine);
  // Reads and aggregates everybody's progress.
  Task<SwarmProgress> fetch();
  // When to begin matchmaking for the step: matchmaking_lead before the ETA, not before `now`
  // (`now` if ready). The caller reads the clock once and compares with the same `now`: on a live
  // clock two reads differ, and `matchmaking_time(p) <= rt.now()` may read them in either order.
  TimePoint matchmaking_time(const SwarmProgress& p, TimePoint now) const;
  std::string key() const { return cfg_.prefix + ":progress"; }
  const dht::Identity& identity() const { return identity_; }
  // Reports whose subkey (the reporter's owner tag) this says to ignore count for nothing (banned peers).
  void set_ignored(std::function<bool(const std::string& owner_tag)> ignored) { ignored_ = std::move(ignored); }

 private:
  Runtime& rt_;
  dht::DhtNode& dht_;
  dht::Identity identity_;
  ProgressConfig cfg_;
  std::function<bool(const std::string&)> ignored_;
  std::optional<std::uint64_t> published_epoch_;  // this peer's last report
};

}  // namespace apiary::optim
