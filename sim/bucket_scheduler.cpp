#include "sim/bucket_scheduler.hpp"

#include <algorithm>
#include <bit>
#include <stdexcept>

namespace ns3 {

NS_OBJECT_ENSURE_REGISTERED(ApiaryBucketScheduler);

namespace {

// The heaps' order: the event that runs later sorts lower (std::*_heap keep the greatest on top).
bool later(const Scheduler::Event& a, const Scheduler::Event& b) {
  if (a.key.m_ts != b.key.m_ts) return a.key.m_ts > b.key.m_ts;
  return a.key.m_uid > b.key.m_uid;
}

void heap_push(std::vector<Scheduler::Event>& h, const Scheduler::Event& ev) {
  h.push_back(ev);
  std::push_heap(h.begin(), h.end(), later);
}

Scheduler::Event heap_pop(std::vector<Scheduler::Event>& h) {
  std::pop_heap(h.begin(), h.end(), later);
  const Scheduler::Event ev = h.back();
  h.pop_back();
  return ev;
}

// Takes the event with `uid` out of `v` (a heap if `heap`); false if it is not there.
bool erase_uid(std::vector<Scheduler::Event>& v, std::uint32_t uid, bool heap) {
  auto it = std::find_if(v.begin(), v.end(), [uid](const Scheduler::Event& e) { return e.key.m_uid == uid; });
  if (it == v.end()) return false;
  v.erase(it);
  if (heap) std::make_heap(v.begin(), v.end(), later);
  return true;
}

}  // namespace

TypeId ApiaryBucketScheduler::GetTypeId() {
  static TypeId tid = TypeId("ns3::ApiaryBucketScheduler")
                          .SetParent<Scheduler>()
                          .SetGroupName("Core")
                          .AddConstructor<ApiaryBucketScheduler>();
  return tid;
}

ApiaryBucketScheduler::ApiaryBucketScheduler() : ring_(kBuckets), occupied_(kBuckets / 64, 0) {}

ApiaryBucketScheduler::~ApiaryBucketScheduler() = default;

void ApiaryBucketScheduler::set_occupied(std::size_t s, bool on) {
  const std::uint64_t bit = std::uint64_t{1} << (s % 64);
  if (on)
    occupied_[s / 64] |= bit;
  else
    occupied_[s / 64] &= ~bit;
}

std::size_t ApiaryBucketScheduler::next_occupied() const {
  // Every ring bucket lies in (cur_, cur_ + kBuckets): scan the slots after cur_'s, wrapping.
  const std::size_t start = (slot(cur_) + 1) % kBuckets;
  std::size_t w = start / 64;
  std::uint64_t bits = occupied_[w] & (~std::uint64_t{0} << (start % 64));
  for (std::size_t n = 0; n <= kBuckets / 64; ++n) {
    if (bits) return w * 64 + static_cast<std::size_t>(std::countr_zero(bits));
    w = (w + 1) % (kBuckets / 64);
    bits = occupied_[w];
  }
  return kBuckets;
}

void ApiaryBucketScheduler::file(const Event& ev) {
  const std::uint64_t b = bucket(ev);
  if (b <= cur_) {
    heap_push(near_, ev);
  } else if (b - cur_ < kBuckets) {
    const std::size_t s = slot(b);
    ring_[s].push_back(ev);
    set_occupied(s, true);
  } else {
    heap_push(far_, ev);
  }
}

void ApiaryBucketScheduler::Insert(const Event& ev) {
  if (size_ == 0) cur_ = bucket(ev);  // nothing pending: start the ring at this event
  file(ev);
  ++size_;
}

bool ApiaryBucketScheduler::IsEmpty() const { return size_ == 0; }

Scheduler::Event ApiaryBucketScheduler::PeekNext() const {
  if (near_.empty()) throw std::logic_error("ApiaryBucketScheduler: PeekNext on an empty queue");
  return near_.front();
}

void ApiaryBucketScheduler::advance() {
  const std::size_t s = next_occupied();
  std::uint64_t next = UINT64_MAX;
  if (s != kBuckets) next = cur_ + ((s + kBuckets - slot(cur_)) % kBuckets);
  if (!far_.empty()) next = std::min(next, bucket(far_.front()));
  if (next == UINT64_MAX) return;  // nothing left
  cur_ = next;
  const std::size_t cs = slot(cur_);
  if (occupied_[cs / 64] & (std::uint64_t{1} << (cs % 64))) {
    near_.swap(ring_[cs]);  // near_ was empty: the bucket's vector becomes the heap
    std::vector<Event>().swap(ring_[cs]);  // and near_'s old buffer goes: a slot holds memory only while filled
    set_occupied(cs, false);
    std::make_heap(near_.begin(), near_.end(), later);
  }
  // The ring now reaches further: events of the overflow that fall inside it move in.
  while (!far_.empty() && bucket(far_.front()) - cur_ < kBuckets) file(heap_pop(far_));
}

Scheduler::Event ApiaryBucketScheduler::RemoveNext() {
  if (near_.empty()) throw std::logic_error("ApiaryBucketScheduler: RemoveNext on an empty queue");
  const Event ev = heap_pop(near_);
  --size_;
  if (near_.empty() && size_ > 0) advance();
  // The event to run after this one is likely near_'s top now. Its object was made when it was
  // scheduled, often long before, and with many peers is in no cache: start loading its first
  // lines (a message in flight spans three) while this one runs.
  if (!near_.empty()) {
    const auto* next = reinterpret_cast<const char*>(near_.front().impl);
    __builtin_prefetch(next);
    __builtin_prefetch(next + 64);
    __builtin_prefetch(next + 128);
  }
  return ev;
}

void ApiaryBucketScheduler::Remove(const Event& ev) {
  const std::uint64_t b = bucket(ev);
  bool found;
  if (b <= cur_) {
    found = erase_uid(near_, ev.key.m_uid, true);
  } else if (b - cur_ < kBuckets) {
    const std::size_t s = slot(b);
    found = erase_uid(ring_[s], ev.key.m_uid, false);
    if (ring_[s].empty()) set_occupied(s, false);
  } else {
    found = erase_uid(far_, ev.key.m_uid, true);
  }
  if (!found) throw std::logic_error("ApiaryBucketScheduler: Remove of an event that is not pending");
  --size_;
  if (near_.empty() && size_ > 0) advance();
}

}  // namespace ns3
