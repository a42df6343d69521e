#pragma once
// The runtime contract on real sockets: a steady clock, Boost.Asio timers, and a TCP transport
// with one reused connection per peer pair. now() is wall-clock time (nanoseconds since the Unix
// epoch), so expiration times agree across processes and machines (to NTP accuracy); timers run
// on the steady clock, immune to wall-clock jumps. A connection opens with a HELLO frame naming the
// sender's listening endpoint, so the other side can answer on it. Messages are framed as in
// core/wire/frame.hpp; payloads over one part (256 KiB) are streamed part by part, interleaved
// round-robin with other streams, and small messages go first, so a 64 MiB transfer does not
// hold up a ping. Malformed input closes the offending connection and is counted
// (transport.bad_frames); the peer keeps serving. Everything runs on one io_context thread.
//
// Asio stays out of this header (pimpl) so protocol tests and tools compile fast.
#include <chrono>
#include <memory>

#include "core/runtime/runtime.hpp"

namespace boost::asio {
class io_context;
}

namespace apiary::real {

struct LiveOptions {
  Endpoint listen{Endpoint::ipv4(127, 0, 0, 1), 0};  // port 0: pick a free one
  TransportLimits limits;
  // The resource manager (any peer may be hostile): connections in all, and inbound ones per
  // remote IP address; when all are taken (or all of an address's), the inbound connection idle
  // longest (at least evict_idle_after; one that never said HELLO before any that did) makes
  // room, among all (or that address's), else the new one is refused. An inbound connection must
  // name itself (HELLO) within handshake_timeout; any connection with nothing read, written or
  // queued for idle_timeout is closed (ours are dialled again when needed). Unfinished messages
  // may hold max_unfinished_total bytes across connections (limits.max_unfinished_bytes per
  // connection): over it, the connection holding most is closed. An accept that fails (no file
  // descriptors left) is retried after a back-off that doubles up to a second, not at once.
  std::size_t max_connections = 4096;
  std::size_t max_connections_per_ip = 1024;
  Duration evict_idle_after = std::chrono::seconds(1);
  Duration handshake_timeout = std::chrono::seconds(10);
  Duration idle_timeout = std::chrono::minutes(5);
  std::uint64_t max_unfinished_total = 1ull << 30;
  // Send to a peer only over a connection dialled to it, never back over one it opened (unless it
  // is known by its real address, behind NAT). Always so between peers on one host, where any
  // process can claim another's port; with dial_back also across hosts, so that a process sharing
  // a peer's address (its host, its NAT) cannot relay between that peer and this one. Costs a
  // connection per direction, and the first answer to a new peer waits for a dial.
  bool dial_back = false;
  // Emulated one-way latency: every received message is handed to the protocol this much later
  // (order kept). For experiments on a kernel without tc netem; 0 delivers at once.
  Duration emulated_delay{};
};

class LiveRuntime final : public Clock, public Timers, public Transport {
 public:
  LiveRuntime(boost::asio::io_context& io, LiveOptions options);
  ~LiveRuntime() override;
  LiveRuntime(const LiveRuntime&) = delete;
  LiveRuntime& operator=(const LiveRuntime&) = delete;

  // Binds and listens; throws std::system_error if the address is taken. local() is valid after.
  void open();
  // Closes the listener and every connection, cancels every timer. Idempotent.
  void close();
  std::size_t connections() const;
  std::size_t pending_timers() const;
  void set_observer(Observer& observer);
  // Changes the emulated one-way latency of messages received from now on (a slow peer in tests).
  void set_emulated_delay(Duration d);

  TimePoint now() const override;
  TimerId schedule(Duration delay, std::function<void()> fn) override;
  bool cancel(TimerId id) override;
  Endpoint local() const override;
  void set_handler(TransportHandler* handler) override;
  TransportHandler* handler() const override;
  void send(const Endpoint& to, Message message) override;

 private:
  struct Impl;
  std::shared_ptr<Impl> impl_;
};

}  // namespace apiary::real
