#include "core/optim/progress.hpp"

#include <cmath>

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

SwarmProgress aggregate(const std::vector<PeerProgress>& reports, std::uint64_t target_batch, TimePoint now,
                        Duration stale) {
  SwarmProgress s;
  for (const auto& r : reports)
    if (now - r.reported <= stale) s.epoch = std::max(s.epoch, r.epoch);
  for (const auto& r : reports) {
    if (now - r.reported > stale) continue;
    if (r.epoch < s.epoch) {
      ++s.behind;
      continue;
    }
    ++s.peers;
    s.samples += r.samples;
    s.samples_per_second += r.samples_per_second;
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
  dht::StoreResult r = co_await dht_.store(std::move(rec));
  co_return r.replicas > 0;
}

Task<SwarmProgress> ProgressTracker::fetch() {
  dht::GetResult got = co_await dht_.get(key(), cfg_.read_holders);
  std::vector<PeerProgress> reports;
  for (const auto& rec : got.records) {
    if (ignored_ && rec.subkey && ignored_(*rec.subkey)) continue;
    if (auto p = PeerProgress::decode(rec.value)) reports.push_back(*p);
  }
  SwarmProgress swarm = aggregate(reports, cfg_.target_batch, rt_.now(), cfg_.stale);
  swarm.fetched = rt_.now();
  co_return swarm;
}

TimePoint ProgressTracker::matchmaking_time(const SwarmProgress& p, TimePoint now) const {
  if (p.ready || p.eta == TimePoint::max()) return p.ready ? now : TimePoint::max();
  return std::max(now, p.eta - cfg_.matchmaking_lead);
}

}  // namespace apiary::optim
