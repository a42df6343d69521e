#pragma once
// An ns-3 event queue for simulations with millions of pending events: events are filed by time
// into buckets of 2^kShift time units (about a millisecond at ns-3's nanosecond resolution) on a
// ring of kBuckets; the bucket being run is a small binary heap, and events beyond the ring wait
// in an overflow heap until the ring reaches them.
//
// Why: a binary heap over all pending events (a million peers keep millions of timers) walks
// about twenty levels per event taken out, the lower ones out of every cache; here an event is
// appended to its bucket's vector when scheduled, and sorted among the few thousand events of its
// bucket when the bucket comes up, in memory that stays in cache. The order is ns-3's own (time,
// then the event's uid), so a run gives the same event trace as with any other ns-3 scheduler.
//
// Only sim/ includes ns-3; this header is never seen by core/.
#include <cstdint>
#include <vector>

#include <ns3/scheduler.h>

namespace ns3 {

class ApiaryBucketScheduler final : public Scheduler {
 public:
  static constexpr unsigned kShift = 20;      // bucket width: 2^20 time units (1.05 ms in ns)
  static constexpr std::size_t kBuckets = 4096;  // the ring spans 4.4 s in ns

  static TypeId GetTypeId();
  ApiaryBucketScheduler();
  ~ApiaryBucketScheduler() override;

  void Insert(const Event& ev) override;
  bool IsEmpty() const override;
  Event PeekNext() const override;
  Event RemoveNext() override;
  void Remove(const Event& ev) override;

  // For tests and the cost report: where the pending events are.
  std::size_t size() const { return size_; }
  std::size_t overflow_size() const { return far_.size(); }

 private:
  static std::uint64_t bucket(const Event& ev) { return ev.key.m_ts >> kShift; }
  static std::size_t slot(std::uint64_t b) { return static_cast<std::size_t>(b) & (kBuckets - 1); }
  void file(const Event& ev);  // into near_, the ring or far_, by bucket
  void advance();              // near_ is empty: bring up the next bucket that holds events
  void set_occupied(std::size_t s, bool on);
  // The next occupied ring slot after slot(cur_), or kBuckets if none.
  std::size_t next_occupied() const;

  std::vector<Event> near_;               // min-heap: the events of buckets <= cur_
  std::vector<std::vector<Event>> ring_;  // ring_[slot(b)]: events of bucket b, cur_ < b < cur_ + kBuckets
  std::vector<std::uint64_t> occupied_;   // a bit per ring slot: its vector holds events
  std::vector<Event> far_;                // min-heap: events of buckets >= cur_ + kBuckets
  std::uint64_t cur_ = 0;                 // the bucket near_ holds
  std::size_t size_ = 0;
};

}  // namespace ns3
