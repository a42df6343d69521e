#include "sim/sim_runtime.hpp"

#include <algorithm>

#include <ns3/inet-socket-address.h>
#include <ns3/ipv4-address.h>
#include <ns3/packet.h>
#include <ns3/simulator.h>
#include <ns3/udp-socket-factory.h>

#include "core/wire/frame.hpp"
#include "sim/lean_channel.hpp"

namespace apiary::sim {

using namespace ns3;

namespace {
enum Flags : std::uint8_t { kHeaderBeside = 1, kPayloadBeside = 2 };
std::int64_t now_ns() { return Simulator::Now().GetNanoSeconds(); }
}  // namespace

void Sidecar::put(Key key, Entry e) {
  e.put_at_ns = now_ns();
  if (e.put_at_ns >= next_sweep_ns_) sweep(e.put_at_ns);
  entries_.insert_or_assign(key, std::move(e));
}

std::optional<Sidecar::Entry> Sidecar::take(Key key) {
  auto it = entries_.find(key);
  if (it == entries_.end()) return std::nullopt;
  Entry e = std::move(it->second);
  entries_.erase(it);
  return e;
}

void Sidecar::sweep(std::int64_t now) {
  for (auto it = entries_.begin(); it != entries_.end();) {
    if (now - it->second.put_at_ns > ttl_ns_) {
      it = entries_.erase(it);
      ++swept_;
    } else {
      ++it;
    }
  }
  next_sweep_ns_ = now + ttl_ns_ / 4;
}

SimRuntime::SimRuntime(Ptr<Node> node, Endpoint local, Sidecar& sidecar, TransportLimits limits)
    : local_(local), limits_(limits), node_(node), sidecar_(&sidecar) {}

SimRuntime::SimRuntime(LeanChannel& channel, Endpoint local, TransportLimits limits)
    : lean_(&channel), local_(local), limits_(limits) {}

SimRuntime::~SimRuntime() { close(); }

void SimRuntime::open() {
  if (open_) return;
  if (!lean_) {
    socket_ = Socket::CreateSocket(node_, UdpSocketFactory::GetTypeId());
    if (socket_->Bind(InetSocketAddress(Ipv4Address(local_.ip), local_.port)) != 0)
      throw std::runtime_error("sim: cannot bind " + local_.to_string());
    socket_->SetRecvCallback(MakeCallback(&SimRuntime::on_readable, this));
  }
  open_ = true;
}

void SimRuntime::close() {
  if (alarm_ns_ != kNoAlarm) Simulator::Cancel(alarm_);
  alarm_ns_ = kNoAlarm;
  timers_.clear();  // held timers (run_held) find nothing
  due_.clear();
  incoming_.clear();
  open_ = false;
  if (socket_) {
    socket_->SetRecvCallback(MakeNullCallback<void, Ptr<Socket>>());
    socket_->Close();
    socket_ = nullptr;
  }
}

TimePoint SimRuntime::now() const { return time_from_ns(now_ns()); }

void SimRuntime::stall_until(Time until) {
  const Time now = Simulator::Now();
  if (!stalls_.empty() && now < stalled_until_)
    stalls_.back().second = std::max(stalls_.back().second, until);  // already frozen: longer
  else if (until > now)
    stalls_.emplace_back(now, until);
  stalled_until_ = std::max(stalled_until_, until);
}

Duration SimRuntime::frozen() const {
  const Time now = Simulator::Now();
  std::int64_t ns = 0;
  for (const auto& [begin, end] : stalls_)
    if (begin < now) ns += (std::min(end, now) - begin).GetNanoSeconds();
  return Duration(ns);
}

class SimRuntime::Dispatch {
 public:
  explicit Dispatch(SimRuntime& rt) : rt_(rt) { ++rt_.dispatching_; }
  ~Dispatch() {
    if (--rt_.dispatching_ == 0) rt_.set_alarm();
  }
  Dispatch(const Dispatch&) = delete;
  Dispatch& operator=(const Dispatch&) = delete;

 private:
  SimRuntime& rt_;
};

TimerId SimRuntime::schedule(Duration delay, std::function<void()> fn) {
  const TimerId id = next_timer_++;
  const std::int64_t at = Simulator::Now().GetNanoSeconds() + std::max<std::int64_t>(0, delay.count());
  timers_.try_emplace(id, std::move(fn));  // ids only grow: an append
  due_.push_back({at, id});
  std::push_heap(due_.begin(), due_.end(), Due::later);
  if (at < alarm_ns_ && dispatching_ == 0) set_alarm();
  return id;
}

void SimRuntime::set_alarm() {
  while (!due_.empty() && timers_.find(due_.front().id) == timers_.end()) {  // cancelled
    std::pop_heap(due_.begin(), due_.end(), Due::later);
    due_.pop_back();
  }
  if (due_.empty() || due_.front().at_ns >= alarm_ns_) return;  // rings in time (or nothing to ring for)
  if (alarm_ns_ != kNoAlarm) Simulator::Cancel(alarm_);
  alarm_ns_ = due_.front().at_ns;
  alarm_ = Simulator::Schedule(NanoSeconds(alarm_ns_) - Simulator::Now(), &SimRuntime::on_alarm, this);
}

void SimRuntime::on_alarm() {
  alarm_ns_ = kNoAlarm;
  Dispatch dispatch(*this);  // the alarm is set again after the timer's function (or now, if none runs)
  while (!due_.empty()) {
    const Due d = due_.front();
    auto it = timers_.find(d.id);
    if (it != timers_.end() && d.at_ns > Simulator::Now().GetNanoSeconds()) return;  // not yet
    std::pop_heap(due_.begin(), due_.end(), Due::later);
    due_.pop_back();
    if (it == timers_.end()) continue;  // cancelled
    // One timer per ns-3 event, as if each had its own: the next one due now rings after the
    // events already queued for this instant.
    if (stalled_now()) {  // frozen: it runs when the stall ends, still cancellable until then
      Simulator::Schedule(stalled_until_ - Simulator::Now(), &SimRuntime::run_held, this, d.id);
      continue;
    }
    auto fn = std::move(it->second);
    timers_.erase(it);
    fn();
    return;
  }
}

void SimRuntime::run_held(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return;  // cancelled meanwhile
  if (stalled_now()) {  // the stall was made longer
    Simulator::Schedule(stalled_until_ - Simulator::Now(), &SimRuntime::run_held, this, id);
    return;
  }
  Dispatch dispatch(*this);
  auto fn = std::move(it->second);
  timers_.erase(it);
  fn();
}

bool SimRuntime::cancel(TimerId id) {
  auto it = timers_.find(id);
  if (it == timers_.end()) return false;
  timers_.erase(it);  // its entry in due_ goes when it surfaces
  return true;
}

void SimRuntime::send(const Endpoint& to, Message message) {
  if (!open_) return;  // a stopped peer sends nothing
  if (lean_) {
    observer_->count("transport.messages_sent");
    observer_->count("transport.bytes_sent", static_cast<std::int64_t>(message.wire_size()));
    const auto datagrams = lean_->transmit(local_, to, std::move(message));
    observer_->count("transport.datagrams_sent", static_cast<std::int64_t>(datagrams));
    return;
  }
  const std::uint32_t stream = next_stream_++;
  const Split split(message);
  std::uint8_t flags = (split.header_beside ? kHeaderBeside : 0) | (message.payload.has_data() ? kPayloadBeside : 0);
  if (flags != 0) {
    Sidecar::Entry e;
    if (split.header_beside) e.header = message.header;
    e.payload = message.payload;
    sidecar_->put(sidecar_key(local_, stream), std::move(e));
  }
  // BEGIN datagram: real frame header, real message header (unless beside), first part of the rest.
  const auto real_header = static_cast<std::uint32_t>(split.real_header);
  wire::FrameHeader fh{wire::FrameType::kBegin, flags, stream, 4 + real_header, split.total};
  auto head = wire::encode_frame_header(fh);
  Bytes buf(head.begin(), head.end());
  wire::Writer w(buf);
  w.u32(static_cast<std::uint32_t>(split.header_len));
  if (!split.header_beside) w.raw(message.header);
  Ptr<Packet> p = Create<Packet>(buf.data(), static_cast<std::uint32_t>(buf.size()));
  if (split.first_part) p->AddAtEnd(Create<Packet>(static_cast<std::uint32_t>(split.first_part)));
  const InetSocketAddress dst(Ipv4Address(to.ip), to.port);
  socket_->SendTo(p, 0, dst);
  const std::uint64_t datagrams = 1 + split.for_each_part([&](std::uint64_t off, std::uint64_t bytes) {
    auto ph = wire::encode_part_header(stream, off, 0);
    Ptr<Packet> part = Create<Packet>(ph.data(), static_cast<std::uint32_t>(ph.size()));
    part->AddAtEnd(Create<Packet>(static_cast<std::uint32_t>(bytes)));
    socket_->SendTo(part, 0, dst);
  });
  observer_->count("transport.messages_sent");
  observer_->count("transport.datagrams_sent", static_cast<std::int64_t>(datagrams));
  observer_->count("transport.bytes_sent", static_cast<std::int64_t>(message.wire_size()));
}

void SimRuntime::resume_after_stall(std::function<void()> resume) {
  Simulator::Schedule(stalled_until_ - Simulator::Now(), std::move(resume));
}

void SimRuntime::on_readable(Ptr<Socket> socket) {
  Address from_addr;
  while (Ptr<Packet> p = socket->RecvFrom(from_addr)) {
    auto inet = InetSocketAddress::ConvertFrom(from_addr);
    on_datagram_when_awake(Endpoint{inet.GetIpv4().Get(), inet.GetPort()}, p);
    if (!socket_) return;  // the handler stopped this peer
  }
}

void SimRuntime::on_datagram_when_awake(const Endpoint& from, Ptr<Packet> packet) {
  if (stalled_now()) return resume_after_stall([this, from, packet] { on_datagram_when_awake(from, packet); });
  if (!socket_) return;  // it left meanwhile
  on_datagram(from, packet);
}

void SimRuntime::on_datagram(const Endpoint& from, Ptr<Packet> packet) {
  const std::uint32_t size = packet->GetSize();
  try {
    std::uint8_t head[wire::kFrameHeaderSize];
    if (size < wire::kFrameHeaderSize) throw wire::DecodeError("datagram shorter than a frame header");
    packet->CopyData(head, wire::kFrameHeaderSize);
    const auto fh = wire::decode_frame_header({head, wire::kFrameHeaderSize});
    auto& streams = incoming_[from];
    if (fh.type == wire::FrameType::kBegin) {
      if (fh.length < 4 || fh.length > size - wire::kFrameHeaderSize)
        throw wire::DecodeError("BEGIN frame length out of range");
      if (fh.extra > limits_.max_payload) throw wire::DecodeError("payload over limit");
      if (streams.size() >= limits_.max_streams_in_flight)
        throw wire::DecodeError("too many streams in flight");
      if (streams.count(fh.stream)) throw wire::DecodeError("stream begun twice");
      Bytes real(wire::kFrameHeaderSize + fh.length);
      packet->CopyData(real.data(), static_cast<std::uint32_t>(real.size()));
      wire::Reader r({real.data() + wire::kFrameHeaderSize, fh.length});
      const std::uint32_t header_len = r.u32();
      if (header_len > limits_.max_header) throw wire::DecodeError("message header over limit");
      Incoming in;
      in.flags = fh.flags;
      in.total = fh.extra;
      if (!(fh.flags & kHeaderBeside)) {
        auto h = r.raw(header_len);
        in.header.assign(h.begin(), h.end());
        r.expect_end();
      }
      in.received = size - wire::kFrameHeaderSize - fh.length;
      if (in.received > in.total) throw wire::DecodeError("payload part beyond declared size");
      auto [it, ok] = streams.emplace(fh.stream, std::move(in));
      if (it->second.received == it->second.total) deliver(from, fh.stream, it->second);
    } else if (fh.type == wire::FrameType::kPart) {
      auto it = streams.find(fh.stream);
      if (it == streams.end()) throw wire::DecodeError("part for unknown stream");
      if (fh.extra != it->second.received) throw wire::DecodeError("part out of order");
      it->second.received += size - wire::kFrameHeaderSize - fh.length;
      if (it->second.received > it->second.total)
        throw wire::DecodeError("payload part beyond declared size");
      if (it->second.received == it->second.total) deliver(from, fh.stream, it->second);
    } else {
      throw wire::DecodeError("unexpected frame type on a datagram socket");
    }
  } catch (const wire::DecodeError& e) {
    incoming_.erase(from);
    observer_->count("transport.bad_frames");
    observer_->log(LogLevel::kWarn, "transport",
                  "bad datagram from " + from.to_string() + ": " + e.what());
  }
}

void SimRuntime::deliver(const Endpoint& from, std::uint32_t stream, Incoming& in) {
  Message msg;
  msg.header = std::move(in.header);
  const std::uint64_t total = in.total;
  const std::uint8_t flags = in.flags;
  auto& streams = incoming_[from];
  streams.erase(stream);
  if (streams.empty()) incoming_.erase(from);
  if (flags & (kHeaderBeside | kPayloadBeside)) {
    auto e = sidecar_->take(sidecar_key(from, stream));
    if (!e) {
      observer_->count("transport.lost_sidecar");
      return;
    }
    if (flags & kHeaderBeside) msg.header = std::move(e->header);
    msg.payload = std::move(e->payload);
  } else {
    msg.payload = Payload::size_only(total);
  }
  hand_over(from, std::move(msg));
}

void SimRuntime::receive_whole(const Endpoint& from, Message message) {
  if (stalled_now())
    return resume_after_stall([this, from, m = std::make_shared<Message>(std::move(message))] { receive_whole(from, std::move(*m)); });
  if (!open_) return;  // it left meanwhile
  // The limits the full stack's frame reader enforces, on the message as a whole.
  const char* bad = message.header.size() > limits_.max_header     ? "message header over limit"
                    : message.payload.size() > limits_.max_payload ? "payload over limit"
                                                                   : nullptr;
  if (bad) {
    observer_->count("transport.bad_frames");
    observer_->log(LogLevel::kWarn, "transport", "bad message from " + from.to_string() + ": " + bad);
    return;
  }
  hand_over(from, std::move(message));
}

void SimRuntime::hand_over(const Endpoint& from, Message msg) {
  observer_->count("transport.messages_received");
  if (receive_delay_) {
    auto m = std::make_shared<Message>(std::move(msg));
    Simulator::Schedule(NanoSeconds(std::max<std::int64_t>(0, receive_delay_().count())), [this, from, m] {
      Dispatch dispatch(*this);
      if (handler_) handler_->on_message(from, std::move(*m));
    });
    return;
  }
  Dispatch dispatch(*this);
  if (handler_) handler_->on_message(from, std::move(msg));
}

}  // namespace apiary::sim
