#pragma once
// The runtime contract: everything a protocol may use to touch the world. Each peer gets its own
// set, passed in by reference; nothing is global. Two implementations exist: sim/ (ns-3: simulated
// time and ns-3 UDP sockets) and real/ (Boost.Asio: steady clock and TCP). Both are
// single-threaded per peer: callbacks never run concurrently with each other.
#include <array>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>

#include "core/runtime/endpoint.hpp"
#include "core/runtime/error.hpp"
#include "core/runtime/observer.hpp"
#include "core/runtime/payload.hpp"
#include "core/runtime/rng.hpp"
#include "core/runtime/time.hpp"

namespace apiary {

class Clock {
 public:
  virtual ~Clock() = default;
  virtual TimePoint now() const = 0;
  // How long this peer has been frozen so far (a simulated stall: its timers and messages
  // waited, so no timeout of its own could fire). Zero for a peer that never froze.
  virtual Duration frozen() const { return Duration::zero(); }
};

using TimerId = std::uint64_t;  // 0 is never a valid id

class Timers {
 public:
  virtual ~Timers() = default;
  // Runs `fn` once after `delay` (>= 0). Timers due at the same instant fire in the order they
  // were scheduled.
  virtual TimerId schedule(Duration delay, std::function<void()> fn) = 0;
  // Cancels a pending timer; returns false if it already fired, was cancelled, or is unknown.
  virtual bool cancel(TimerId id) = 0;
};

// What a transport tells its owner.
class TransportHandler {
 public:
  virtual ~TransportHandler() = default;
  // A whole message from `from` (the sender's listening endpoint).
  virtual void on_message(const Endpoint& from, Message message) = 0;
  // Messages to `peer` could not be delivered (connection refused/reset, peer unreachable).
  // Silence is also possible: a transport may drop messages without notice (a dead host), which
  // the RPC layer turns into timeouts.
  virtual void on_peer_error(const Endpoint& peer, const Error& error) = 0;
  // Asked by a transport that reads payload bytes itself (live TCP) when a message from `from`
  // (on connection `link`, as Message::link) with this header and a payload of `size` bytes
  // begins to arrive: memory of exactly `size` bytes to write the payload into, or an empty
  // target for a buffer of the transport's own. The message is then delivered with a payload
  // that views the target. The bytes are written as they arrive, before the message is whole and
  // whether or not it ever is.
  virtual PayloadTarget place_payload(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> header,
                                      std::uint64_t size) {
    (void)from, (void)link, (void)header, (void)size;
    return {};
  }
};

struct TransportLimits {
  std::uint64_t max_header = 1u << 20;       // 1 MiB
  std::uint64_t max_payload = 1ull << 30;    // 1 GiB
  std::uint32_t max_streams_in_flight = 64;  // per connection
  // Bytes buffered for messages that have begun and not ended, per connection (what a peer that
  // starts many large messages and never finishes them can make a node hold).
  std::uint64_t max_unfinished_bytes = 1ull << 30;
};

// Delivery contract: messages to one destination arrive in order, whole or not at all. Large
// payloads are streamed in parts and interleave with small messages.
class Transport {
 public:
  virtual ~Transport() = default;
  virtual Endpoint local() const = 0;
  virtual void set_handler(TransportHandler* handler) = 0;
  virtual TransportHandler* handler() const = 0;
  virtual void send(const Endpoint& to, Message message) = 0;
  // A transport that authenticates its peers (core/auth) says so, and which Ed25519 public key
  // the peer at `peer` proved it holds (nullopt before it has). Others authenticate nobody.
  virtual bool authenticates() const { return false; }
  virtual std::optional<std::array<std::uint8_t, 32>> peer_key(const Endpoint& peer) const {
    (void)peer;
    return std::nullopt;
  }
};

class FaultInjector;  // core/runtime/faults.hpp

struct Runtime {
  Clock& clock;
  Timers& timers;
  Transport& transport;
  Rng& rng;
  Observer& observer;
  FaultInjector* faults = nullptr;  // seeded fault injection; null: none (the default)
  TimePoint now() const { return clock.now(); }
};

}  // namespace apiary
