#include "core/optim/progress.hpp"

#include <algorithm>
#include <cmath>
#include <functional>
#include <limits>

namespace apiary::optim {

Bytes PeerProgress::encode() const {
  Bytes b;
  wire::Writer w(b);
  w.varint(epoch);
  w.varint(samples);
  w.f64(samples_per_second);
  w.i64(to_ns(reported));
  w.u8(client ? 1 : 0);
  return b;
}

std::optional<PeerProgress> PeerProgress::decode(std::span<const std::uint8_t> bytes) {
  try {
    wire::Reader r(bytes);
    PeerProgress p;
    p.epoch = r.varint();
    p.samples = r.varint();
    p.samples_per_second = r.f64();
    p.reported = TimePoint(Duration(r.i64()));
    const auto c = r.u8();
    r.expect_end();
    if (c > 1 || !std::isfinite(p.samples_per_second) || p.samples_per_second < 0) return std::nullopt;
    p.client = c == 1;
    return p;
  } catch (const wire::DecodeError&) {
    return std::nullopt;
  }
}

namespace {
// A report counts while it is at most `stale` old, and (clocks differ) at most `stale` ahead.
bool fresh(const PeerProgress& r, TimePoint now, Duration stale) {
  return now - r.reported <= stale && r.reported - now <= stale;
}
}  // namespace

SwarmProgress aggregate(const std::vector<PeerProgress>& reports, std::uint64_t target_batch, TimePoint now,
                        Duration stale, std::uint64_t max_epoch) {
  SwarmProgress s;
  std::vector<const PeerProgress*> current;
  for (const auto& r : reports)
    if (fresh(r, now, stale) && r.epoch <= max_epoch) current.push_back(&r);
  double rate_cap = std::numeric_limits<double>::infinity();
  if (current.size() >= 3) {
    std::vector<double> rates;
    for (const auto* r : current) rates.push_back(r->samples_per_second);
    std::nth_element(rates.begin(), rates.begin() + static_cast<std::ptrdiff_t>(rates.size() / 2), rates.end());
    if (rates[rates.size() / 2] > 0) rate_cap = 10 * rates[rates.size() / 2];
  }
  for (const auto* r : current) s.epoch = std::max(s.epoch, r->epoch);
  for (const auto* r : current) {
    if (r->epoch < s.epoch) {
      ++s.behind;
      continue;
    }
    ++s.peers;
    s.samples += std::min(r->samples, target_batch);
    s.samples_per_second += std::min(r->samples_per_second, rate_cap);
  }
  s.ready = s.samples >= target_batch;
  if (s.ready) {
    s.eta = now;
  } else if (s.samples_per_second > 0) {
    const double left = static_cast<double>(target_batch - s.samples) / s.samples_per_second;
    s.eta = now + Duration(static_cast<std::int64_t>(left * 1e9));
  } else {
    s.eta = TimePoint::max();
  }
  return s;
}

std::uint64_t trusted_epoch(std::vector<std::uint64_t> others, std::uint64_t own, std::size_t tolerate) {
  if (others.empty()) return own;
  std::sort(others.begin(), others.end(), std::greater<>());
  const std::uint64_t believed = others.size() <= tolerate ? others.front() : others[tolerate];
  return std::max(own, believed);
}

std::vector<dht::Record> poisoned_progress(const std::string& key, const dht::Identity& sybil, TimePoint now,
                                           std::uint64_t claimed) {
  const Bytes lie = PeerProgress{claimed, UINT64_MAX / 2, 1e12, now, false}.encode();
  std::vector<dht::Record> out;
  out.push_back(dht::Record{key, std::nullopt, lie, now + std::chrono::hours(23), {}});
  out.push_back(dht::Record{key, std::string("mallory"), lie, now + std::chrono::hours(23), {}});
  dht::Record forever{key, sybil.owner_tag(), lie, TimePoint::max(), {}};
  sybil.sign(forever);
  out.push_back(std::move(forever));
  dht::Record report{key, sybil.owner_tag(), lie, now + std::chrono::minutes(1), {}};
  sybil.sign(report);
  out.push_back(std::move(report));
  return out;
}

ProgressTracker::ProgressTracker(Runtime& rt, dht::DhtNode& dht, dht::Identity identity, ProgressConfig config)
    : rt_(rt), dht_(dht), identity_(std::move(identity)), cfg_(std::move(config)) {}

Task<bool> ProgressTracker::publish(PeerProgress mine) {
  mine.reported = rt_.now();
  dht::Record rec;
  rec.key = key();
  rec.subkey = identity_.owner_tag();  // only this peer can write its entry
  rec.value = mine.encode();
  rec.expiration = rt_.now() + cfg_.ttl;
  identity_.sign(rec);
  published_epoch_ = mine.epoch;
  dht::StoreResult r = co_await dht_.store(std::move(rec));
  co_return r.replicas > 0;
}

Task<SwarmProgress> ProgressTracker::fetch() {
  dht::GetResult got = co_await dht_.get(key(), cfg_.read_holders);
  const TimePoint now = rt_.now();
  const std::string mine = identity_.owner_tag();
  std::vector<PeerProgress> reports;
  std::vector<std::uint64_t> others;
  std::optional<std::uint64_t> own = published_epoch_;
  for (const auto& rec : got.records) {
    // Only a peer's own signed entry speaks for it (the schema refuses anything else, but a
    // record may come from a node that installed none).
    if (!rec.subkey || !rec.owned() || rec.subkey->rfind("[owner:", 0) != 0) continue;
    if (ignored_ && ignored_(*rec.subkey)) continue;
    auto p = PeerProgress::decode(rec.value);
    if (!p) continue;
    reports.push_back(*p);
    if (*rec.subkey == mine)
      own = std::max(own.value_or(0), p->epoch);
    else if (fresh(*p, now, cfg_.stale))
      others.push_back(p->epoch);
  }
  const std::uint64_t believed = trusted_epoch(std::move(others), own.value_or(0), cfg_.tolerate);
  const std::uint64_t cap = believed == UINT64_MAX ? believed : believed + 1;
  SwarmProgress swarm = aggregate(reports, cfg_.target_batch, now, cfg_.stale, cap);
  swarm.fetched = now;
  co_return swarm;
}

TimePoint ProgressTracker::matchmaking_time(const SwarmProgress& p, TimePoint now) const {
  if (p.ready || p.eta == TimePoint::max()) return p.ready ? now : TimePoint::max();
  return std::max(now, p.eta - cfg_.matchmaking_lead);
}

}  // namespace apiary::optim
