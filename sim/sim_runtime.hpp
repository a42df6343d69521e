#pragma once
// The runtime contract on ns-3: simulated time, ns-3 events as timers, and a transport in one of
// two stacks. The full stack: an ns-3 UDP socket of the peer's node. The lean stack: no node, no
// IP or UDP objects; the LeanChannel carries the message whole, timed as the datagrams the full
// stack would send (same sizes, same link model), straight to the receiving runtime.
//
// Full stack: messages travel as datagrams of at most kDatagramPayload bytes:
// the first carries the frame header and the message header as real bytes; the payload is sent
// as virtual (zero-filled, unallocated) bytes so ns-3 models its transfer time, while the data,
// if any, rides beside in a Sidecar keyed by (sender, stream). The channel is lossless and FIFO
// per sender/receiver pair, so reassembly needs no retransmission; a peer that is down silently
// drops what reaches it (the RPC layer reports timeouts).
#include <algorithm>
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <tuple>
#include <utility>
#include <vector>

#include <ns3/event-id.h>
#include <ns3/node.h>
#include <ns3/ptr.h>
#include <ns3/socket.h>

#include "core/runtime/flat_map.hpp"
#include "core/runtime/runtime.hpp"
#include "core/wire/frame.hpp"

namespace apiary::sim {

// Message contents that ride beside the packets (payload data, oversized headers). Entries are
// taken by the receiver; entries whose receiver died are swept after `ttl`.
class Sidecar {
 public:
  struct Entry {
    Bytes header;  // empty unless the header rides beside
    Payload payload;
    std::int64_t put_at_ns = 0;
  };
  using Key = std::tuple<std::uint32_t, std::uint16_t, std::uint32_t>;  // sender ip, port, stream
  void put(Key key, Entry e);
  std::optional<Entry> take(Key key);
  std::size_t size() const { return entries_.size(); }
  std::uint64_t swept() const { return swept_; }

 private:
  void sweep(std::int64_t now_ns);
  std::map<Key, Entry> entries_;
  std::int64_t ttl_ns_ = 600'000'000'000;  // 10 simulated minutes
  std::int64_t next_sweep_ns_ = 0;
  std::uint64_t swept_ = 0;
};

class LeanChannel;

class alignas(64) SimRuntime final : public Clock, public Timers, public Transport {
 public:
  static constexpr std::size_t kDatagramPayload = 60000;
  static constexpr std::size_t kInlineHeaderMax = 32768;
  static constexpr std::uint32_t kIpUdpHeaders = 28;  // IPv4 (20) and UDP (8) bytes per datagram

  // Full stack: a UDP socket on `node`.
  SimRuntime(ns3::Ptr<ns3::Node> node, Endpoint local, Sidecar& sidecar, TransportLimits limits = {});
  // Lean stack: messages through `channel`.
  SimRuntime(LeanChannel& channel, Endpoint local, TransportLimits limits = {});
  // Where transport counters and logs go (a NullObserver until set).
  void set_observer(Observer& observer) { observer_ = &observer; }
  // A random delay drawn per received message before the protocol sees it (every network hop
  // delayed at random, as in Learning@home's experiment); messages may overtake each other.
  void set_receive_delay(std::function<Duration()> draw) { receive_delay_ = std::move(draw); }
  ~SimRuntime() override;

  // Opens the socket (peer joins). Idempotent.
  void open();
  // Closes the socket and cancels every pending timer (peer leaves). Idempotent.
  void close();
  bool is_open() const { return open_; }
  std::size_t pending_timers() const { return timers_.size(); }
  // A stall (a frozen process): until `until` the peer handles nothing; datagrams that arrive and
  // timers that come due wait, in their order, and run when it ends.
  void stall_until(ns3::Time until);
  Duration frozen() const override;

  // Clock
  TimePoint now() const override;
  // Timers
  TimerId schedule(Duration delay, std::function<void()> fn) override;
  bool cancel(TimerId id) override;
  // Transport
  Endpoint local() const override { return local_; }
  void set_handler(TransportHandler* handler) override { handler_ = handler; }
  TransportHandler* handler() const override { return handler_; }
  void send(const Endpoint& to, Message message) override;

  // The sizes on the wire (IPv4 and UDP headers included) of the datagrams the full stack sends
  // for `message`: `each(bytes)` once per datagram, in order. Returns how many.
  template <typename F>
  static std::uint64_t for_each_datagram(const Message& message, F&& each);
  // Lean stack: a message the channel delivers now.
  void receive_whole(const Endpoint& from, Message message);

 private:
  struct Incoming {
    Bytes header;
    std::uint64_t total = 0;
    std::uint64_t received = 0;
    std::uint8_t flags = 0;
  };
  struct Split;
  // While the peer is frozen (stall_until): `resume` runs when the stall ends (events held back
  // keep their arrival order). Callers: `if (stalled_now()) return resume_after_stall(...)`.
  bool stalled_now() const { return ns3::Simulator::Now() < stalled_until_; }
  void resume_after_stall(std::function<void()> resume);
  void on_readable(ns3::Ptr<ns3::Socket> socket);
  // Timers: one ns-3 event per peer (the alarm) rings when its earliest timer is due; a timer
  // cancelled before then never reaches ns-3's queue. While a handler of this peer runs, the
  // alarm is set once, when it returns (a handler typically sets a far timeout, then a nearer one).
  struct Due {
    std::int64_t at_ns;
    TimerId id;
    // due_'s heap order: the timer due later (then the one scheduled later) sorts lower.
    static bool later(const Due& a, const Due& b) { return a.at_ns != b.at_ns ? a.at_ns > b.at_ns : a.id > b.id; }
  };
  class Dispatch;  // marks a handler of this peer running
  void set_alarm();
  void on_alarm();
  void run_held(TimerId id);  // a timer that came due during a stall, at its end
  void on_datagram_when_awake(const Endpoint& from, ns3::Ptr<ns3::Packet> packet);
  void on_datagram(const Endpoint& from, ns3::Ptr<ns3::Packet> packet);
  void deliver(const Endpoint& from, std::uint32_t stream, Incoming& in);
  void hand_over(const Endpoint& from, Message msg);
  static Sidecar::Key sidecar_key(const Endpoint& from, std::uint32_t stream) {
    return {from.ip, from.port, stream};
  }

  // What a delivery reads comes first, in the object's first two cache lines: with a million
  // peers the receiver of a message is in no cache, and each line it touches costs a trip to memory.
  LeanChannel* lean_ = nullptr;  // lean stack
  TransportHandler* handler_ = nullptr;
  Observer* observer_ = &null_observer_;
  Endpoint local_;
  ns3::Time stalled_until_{0};
  bool open_ = false;
  std::function<Duration()> receive_delay_;
  TransportLimits limits_;
  ns3::Ptr<ns3::Node> node_;  // full stack
  Sidecar* sidecar_ = nullptr;
  NullObserver null_observer_;
  ns3::Ptr<ns3::Socket> socket_;
  FlatMap<TimerId, std::function<void()>> timers_;  // scheduled, neither run nor cancelled
  std::vector<Due> due_;  // min-heap of (at_ns, id); a cancelled timer's entry leaves when it surfaces
  ns3::EventId alarm_;
  std::int64_t alarm_ns_ = kNoAlarm;  // when alarm_ rings
  static constexpr std::int64_t kNoAlarm = INT64_MAX;
  int dispatching_ = 0;  // handlers of this peer running (nested: a handler may deliver to itself)
  std::vector<std::pair<ns3::Time, ns3::Time>> stalls_;  // [begin, end) of each stall
  TimerId next_timer_ = 1;
  std::uint32_t next_stream_ = 1;
  std::map<Endpoint, std::map<std::uint32_t, Incoming>> incoming_;
};

// How the full stack cuts a message into datagrams. The BEGIN datagram carries the frame header,
// the message header's length, the header itself unless it travels beside (then its bytes count
// as virtual bytes ahead of the payload's), and the first `first_part` bytes of the rest; PART
// datagrams carry up to kDatagramPayload bytes each from there on.
struct SimRuntime::Split {
  bool header_beside;
  std::uint64_t header_len, total, real_header, first_part;
  explicit Split(const Message& message)
      : header_beside(message.header.size() > kInlineHeaderMax),
        header_len(message.header.size()),
        total(message.payload.size() + (header_beside ? header_len : 0)),
        real_header(header_beside ? 0 : header_len),
        first_part(std::min<std::uint64_t>(total, kDatagramPayload > real_header ? kDatagramPayload - real_header : 0)) {}
  // part(offset, bytes) for each PART datagram, in order; returns how many.
  template <typename F>
  std::uint64_t for_each_part(F&& part) const {
    std::uint64_t n = 0;
    for (std::uint64_t off = first_part; off < total; off += kDatagramPayload, ++n)
      part(off, std::min<std::uint64_t>(kDatagramPayload, total - off));
    return n;
  }
};

template <typename F>
std::uint64_t SimRuntime::for_each_datagram(const Message& message, F&& each) {
  const Split split(message);
  constexpr std::uint64_t kFrame = wire::kFrameHeaderSize;  // a BEGIN or PART frame's header
  each(kIpUdpHeaders + kFrame + 4 + split.real_header + split.first_part);
  return 1 + split.for_each_part([&](std::uint64_t, std::uint64_t bytes) { each(kIpUdpHeaders + kFrame + bytes); });
}

}  // namespace apiary::sim
