#include "core/workloads/ping.hpp"

#include <algorithm>

namespace apiary {

PingApp::PingApp(Runtime& rt, Rpc& rpc, const std::vector<Endpoint>& directory, PingConfig config)
    : rt_(rt), rpc_(rpc), directory_(directory), cfg_(config) {
  rpc_.serve<PingRequest, PingResponse>(
      [this](const Endpoint&, PingRequest req) -> Task<Result<PingResponse>> {
        rt_.observer.count("ping.served");
        PingResponse resp{req.nonce, {}};
        if (req.echo) resp.payload = req.payload;
        co_return resp;
      });
}

void PingApp::start() { scope_.spawn(loop()); }

Task<void> PingApp::loop() {
  const double mean_ns = static_cast<double>(cfg_.mean_interval.count());
  for (;;) {
    co_await sleep_on(rt_.timers, Duration(static_cast<std::int64_t>(rt_.rng.exponential(mean_ns))));
    if (directory_.size() < 2) continue;
    Endpoint target = rt_.transport.local();
    while (target == rt_.transport.local()) target = directory_[rt_.rng.below(directory_.size())];
    if (outstanding_ >= cfg_.max_outstanding) {
      rt_.observer.count("ping.skipped_backlog");
      continue;
    }
    scope_.spawn(ping_one(target));
  }
}

Task<void> PingApp::ping_one(Endpoint target) {
  ++outstanding_;
  struct Guard {
    std::uint32_t& n;
    ~Guard() { --n; }
  } guard{outstanding_};
  PingRequest req;
  req.nonce = next_nonce_++;
  req.echo = cfg_.echo_payload;
  if (cfg_.payload_bytes) {
    if (cfg_.real_payload) {
      Bytes data(cfg_.payload_bytes);
      for (std::size_t i = 0; i < data.size(); ++i) data[i] = static_cast<std::uint8_t>(req.nonce + i);
      req.payload = Payload::bytes(std::move(data));
    } else {
      req.payload = Payload::size_only(cfg_.payload_bytes);
    }
  }
  const TimePoint t0 = rt_.now();
  rt_.observer.count("ping.sent");
  rt_.observer.count("ping.bytes_sent", static_cast<std::int64_t>(req.payload.size() + 9));
  PingRequest sent = req;  // kept to check the echo; the call takes its own by move
  auto r = co_await rpc_.call<PingResponse>(target, std::move(req), cfg_.timeout);
  req = std::move(sent);
  if (!r.ok()) {
    rt_.observer.count(std::string("ping.failed.") + to_string(r.error().code));
    co_return;
  }
  if (r->nonce != req.nonce ||
      (req.echo && (r->payload.size() != req.payload.size() ||
                    (cfg_.real_payload && !std::equal(r->payload.data().begin(),
                                                      r->payload.data().end(),
                                                      req.payload.data().begin()))))) {
    rt_.observer.count("ping.corrupt");
    co_return;
  }
  rt_.observer.count("ping.ok");
  rt_.observer.sample("ping.rtt_ns", static_cast<double>(to_ns(rt_.now() - t0)));
}

}  // namespace apiary
