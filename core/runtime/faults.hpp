#pragma once
// Fault injection at chosen points of protocol code, decided by a seeded stream per peer: in
// ns-3 the same seed gives the same faults, so a failure found by a seed replays exactly; live,
// the stream is the same but requests arrive in the machine's order. Each request draws all its
// decisions at once, so one point's setting never shifts another's faults.
// Off by default: Runtime::faults is null, and each point costs one pointer test.
//
// The points (in Rpc, so every protocol meets them):
//   a request's handler starts late (slow_handler: probability, up to slow_max),
//   a reply is never sent (drop_reply: the caller sees its timeout),
//   a reply is sent late (delay_reply: probability, up to delay_max),
//   a call's timeout timer fires early (early_timeout: probability; it fires after a uniform share
//   of the timeout, so the caller gives up on a peer that would have answered in time).
#include <cstdint>

#include "core/runtime/observer.hpp"
#include "core/runtime/rng.hpp"
#include "core/runtime/time.hpp"

namespace apiary {

struct FaultPlan {
  double drop_reply = 0;
  double delay_reply = 0;
  Duration delay_max = std::chrono::seconds(1);
  double slow_handler = 0;
  Duration slow_max = std::chrono::seconds(1);
  double early_timeout = 0;
  bool any() const { return drop_reply > 0 || delay_reply > 0 || slow_handler > 0 || early_timeout > 0; }
};

class FaultInjector {
 public:
  FaultInjector(FaultPlan plan, Rng rng, Observer& observer) : plan_(plan), rng_(rng), observer_(observer) {}
  // Each decision draws from the stream whatever the plan says.
  bool drop_reply() {
    const bool drop = rng_.uniform(0, 1) < plan_.drop_reply;
    if (drop) observer_.count("faults.injected.drop_reply");
    return drop;
  }
  Duration reply_delay() { return draw(plan_.delay_reply, plan_.delay_max, "faults.injected.delay_reply"); }
  Duration handler_delay() { return draw(plan_.slow_handler, plan_.slow_max, "faults.injected.slow_handler"); }
  // The delay a call's timeout timer really gets: `timeout`, or a uniform share of it.
  Duration timeout(Duration timeout) {
    const bool early = rng_.uniform(0, 1) < plan_.early_timeout;
    const double share = rng_.uniform(0, 1);
    if (!early) return timeout;
    observer_.count("faults.injected.early_timeout");
    return Duration(static_cast<std::int64_t>(share * static_cast<double>(timeout.count())));
  }
  const FaultPlan& plan() const { return plan_; }

 private:
  Duration draw(double p, Duration max, const char* counter) {
    const bool hit = rng_.uniform(0, 1) < p;
    const double share = rng_.uniform(0, 1);
    if (!hit) return Duration::zero();
    observer_.count(counter);
    return Duration(static_cast<std::int64_t>(share * static_cast<double>(max.count())));
  }
  FaultPlan plan_;
  Rng rng_;
  Observer& observer_;
};

}  // namespace apiary
