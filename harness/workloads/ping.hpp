#pragma once
// The ping-storm workload: every peer sends pings to uniformly random other peers as a Poisson
// process, optionally with a bulk payload that the target echoes back. It exercises the whole
// runtime contract (timers, RPC, timeouts, dead peers, streaming) and measures the transport:
// round-trip times, success and failure counts, bytes moved.
#include <cstdint>
#include <vector>

#include "core/runtime/rpc.hpp"
#include "core/runtime/task.hpp"
#include "harness/workload.hpp"

namespace apiary {

struct PingRequest {
  static constexpr std::uint32_t kMethod = 1;
  std::uint64_t nonce = 0;
  bool echo = false;  // send the payload back
  Payload payload;
  void encode(wire::Writer& w) const {
    w.u64(nonce);
    w.u8(echo ? 1 : 0);
  }
  static PingRequest decode(wire::Reader& r) {
    PingRequest p;
    p.nonce = r.u64();
    const auto e = r.u8();
    if (e > 1) throw wire::DecodeError("ping echo flag must be 0 or 1");
    p.echo = e == 1;
    return p;
  }
};

struct PingResponse {
  std::uint64_t nonce = 0;
  Payload payload;
  void encode(wire::Writer& w) const { w.u64(nonce); }
  static PingResponse decode(wire::Reader& r) { return PingResponse{r.u64(), {}}; }
};

struct PingConfig {
  Duration mean_interval = std::chrono::milliseconds(1000);  // per peer
  Duration timeout = std::chrono::seconds(2);
  std::uint64_t payload_bytes = 0;
  bool echo_payload = false;
  bool real_payload = false;  // real bytes (checked on echo) instead of size-only
  std::uint32_t max_outstanding = 256;
};

// The ping workload's settings ([workload] rate, timeout, payload, echo, ...).
struct PingWorkloadConfig final : WorkloadConfig {
  PingConfig ping;
};

// Serves pings; and, once start() is called, sends them.
class PingApp {
 public:
  // `directory` is every peer's endpoint (the swarm's membership); the app never pings itself.
  PingApp(Runtime& rt, Rpc& rpc, const std::vector<Endpoint>& directory, PingConfig config);
  ~PingApp() { stop(); }
  void start();
  void stop() { scope_.destroy_all(); }
  std::uint32_t outstanding() const { return outstanding_; }

 private:
  Task<void> loop();
  Task<void> ping_one(Endpoint target);

  Runtime& rt_;
  Rpc& rpc_;
  const std::vector<Endpoint>& directory_;
  PingConfig cfg_;
  std::uint32_t outstanding_ = 0;
  std::uint64_t next_nonce_ = 1;
  TaskScope scope_;
};

}  // namespace apiary
