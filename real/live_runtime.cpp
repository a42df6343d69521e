#include <utility>  // before asio: Boost 1.74's awaitable.hpp needs std::exchange
#include "real/live_runtime.hpp"

#include <arpa/inet.h>
#include <ifaddrs.h>
#include <netinet/in.h>

#include <algorithm>
#include <array>
#include <deque>
#include <map>

#include <boost/asio.hpp>

#include "core/wire/frame.hpp"

namespace apiary::real {

namespace asio = boost::asio;

namespace {

// Whether `ip` is an address of one of this host's interfaces (a connection from it comes from
// this host, whatever address it was made to).
bool is_local_address(std::uint32_t ip) {
  ifaddrs* list = nullptr;
  if (getifaddrs(&list) != 0) return false;
  bool found = false;
  for (ifaddrs* a = list; a && !found; a = a->ifa_next)
    if (a->ifa_addr && a->ifa_addr->sa_family == AF_INET)
      found = ntohl(reinterpret_cast<const sockaddr_in*>(a->ifa_addr)->sin_addr.s_addr) == ip;
  freeifaddrs(list);
  return found;
}

}  // namespace
using asio::ip::tcp;

namespace {
const std::array<std::uint8_t, wire::kPartSize>& zeros() {
  static const std::array<std::uint8_t, wire::kPartSize> z{};
  return z;
}
tcp::endpoint to_asio(const Endpoint& e) { return {asio::ip::address_v4(e.ip), e.port}; }
}  // namespace

struct LiveRuntime::Impl : std::enable_shared_from_this<Impl> {
  struct OutMsg {
    std::uint32_t stream = 0;
    Bytes header;
    Payload payload;
    std::uint64_t offset = 0;
    bool begun = false;
  };

  struct Connection : std::enable_shared_from_this<Connection> {
    Connection(Impl& o, tcp::socket s) : owner(o), sock(std::move(s)), decoder(o.opts.limits), link(++o.links) {
      // A payload may go straight to where its receiver wants it (an RPC reply into a tensor);
      // only once the peer has named itself, so replies can be matched to the calls made to it.
      decoder.set_placement([this](std::span<const std::uint8_t> header, std::uint64_t size) {
        if (!owner.handler || !peer.valid()) return PayloadTarget{};
        return owner.handler->place_payload(peer, link, header, size);
      });
    }
    Connection(const Connection&) = delete;  // the placement above holds `this`
    Impl& owner;
    tcp::socket sock;
    Endpoint peer;  // the remote's listening endpoint; unknown (port 0) until its HELLO
    bool open = true;
    wire::FrameDecoder decoder;
    std::array<std::uint8_t, 64 * 1024> rbuf{};
    bool after_payload = false;  // the last read ended a payload frame
    std::deque<OutMsg> small, bulk;
    Bytes hello;  // written first on an outbound connection
    // We dialled `peer`: a protocol error on this connection fails the calls waiting on `peer` at
    // once. (On an inbound connection `peer` is only what the remote claimed, so its errors must
    // not fail calls to that endpoint: they go over our own connection to it.)
    bool outbound = false;
    std::uint64_t link;  // this connection's number, in every message it delivers (Message::link)
    std::uint32_t remote_ip = 0;  // inbound: the address it came from (for the per-IP limit)
    bool same_host = false;       // inbound: from this very host (both ends have one address)
    std::chrono::steady_clock::time_point created = std::chrono::steady_clock::now(), last_active = created;
    std::uint64_t unfinished = 0;  // the decoder's unfinished bytes, as last counted
    bool writing = false;
    bool connected = false;
    std::uint32_t next_stream = 1;
    // Buffers of the write in flight, and how many small messages it carries (whole).
    Bytes frame_prefix;
    std::size_t small_in_write = 0;
    std::vector<asio::const_buffer> bufs;
  };

  Impl(asio::io_context& io_, LiveOptions o) : io(io_), opts(o), local(o.listen) {}

  asio::io_context& io;
  LiveOptions opts;
  Endpoint local;
  std::unique_ptr<tcp::acceptor> acceptor;
  TransportHandler* handler = nullptr;
  NullObserver null_observer;
  Observer* observer = &null_observer;
  std::map<Endpoint, std::shared_ptr<Connection>> by_peer;
  std::map<Connection*, std::shared_ptr<Connection>> all;
  std::uint64_t links = 0;  // connections made so far (their numbers)
  // The resource manager's state (LiveOptions).
  std::map<std::uint32_t, std::size_t> inbound_per_ip;
  std::uint64_t unfinished_total = 0;
  std::unique_ptr<asio::steady_timer> sweeper, accept_retry;
  Duration accept_backoff{};
  // Timers: one asio timer per peer, armed for the earliest entry of an ordered queue, so
  // timers due at the same instant fire in the order they were scheduled.
  using Steady = std::chrono::steady_clock;
  std::map<std::pair<Steady::time_point, TimerId>, std::function<void()>> queue;
  std::map<TimerId, Steady::time_point> due_of;
  TimerId next_timer = 1;
  std::unique_ptr<asio::steady_timer> wake;
  Steady::time_point armed_for = Steady::time_point::max();

  static TimePoint clock_now() {
    return TimePoint(std::chrono::duration_cast<Duration>(
        std::chrono::system_clock::now().time_since_epoch()));
  }
  void arm() {
    if (queue.empty()) return;
    const auto first = queue.begin()->first.first;
    if (first >= armed_for) return;  // already armed early enough
    armed_for = first;
    if (!wake) wake = std::make_unique<asio::steady_timer>(io);
    wake->expires_at(first);
    wake->async_wait([self = weak_from_this()](boost::system::error_code ec) {
      if (ec) return;
      auto me = self.lock();
      if (!me) return;
      me->armed_for = Steady::time_point::max();
      me->fire_due();
    });
  }
  void deliver(const Endpoint& from, Message m) {
    if (opts.emulated_delay <= Duration::zero()) {
      if (handler) handler->on_message(from, std::move(m));
      return;
    }
    const TimerId id = next_timer++;
    const auto due = Steady::now() + opts.emulated_delay;
    auto msg = std::make_shared<Message>(std::move(m));
    queue.emplace(std::make_pair(due, id), [this, from, msg] {
      if (handler) handler->on_message(from, std::move(*msg));
    });
    due_of.emplace(id, due);
    arm();
  }
  void fire_due() {
    const auto t = Steady::now();
    // Take due entries one at a time: a callback may schedule or cancel others.
    while (!queue.empty() && queue.begin()->first.first <= t) {
      auto node = queue.extract(queue.begin());
      due_of.erase(node.key().second);
      node.mapped()();
    }
    arm();
  }

  void accept_loop() {
    if (!acceptor) return;
    acceptor->async_accept([self = weak_from_this()](boost::system::error_code ec, tcp::socket s) {
      auto me = self.lock();
      if (!me || !me->acceptor) return;
      if (ec) {
        if (ec == asio::error::operation_aborted) return;
        // Out of file descriptors (or another transient failure): retrying at once would spin.
        me->observer->count("transport.accept_errors");
        me->accept_backoff = std::clamp<Duration>(2 * me->accept_backoff, std::chrono::milliseconds(10), std::chrono::seconds(1));
        if (!me->accept_retry) me->accept_retry = std::make_unique<asio::steady_timer>(me->io);
        me->accept_retry->expires_after(me->accept_backoff);
        me->accept_retry->async_wait([self](boost::system::error_code wait_ec) {
          auto again = self.lock();
          if (!wait_ec && again) again->accept_loop();
        });
        return;
      }
      me->accept_backoff = Duration::zero();
      me->admit(std::move(s));
      me->accept_loop();
    });
  }

  void admit(tcp::socket s) {
    boost::system::error_code ec;
    const auto remote = s.remote_endpoint(ec);
    if (ec) return;
    const std::uint32_t ip = remote.address().is_v4() ? remote.address().to_v4().to_uint() : 0;
    // An address at its limit makes room the same way, from its own connections: a newcomer that
    // shares an address with an attacker (one host, one NAT) still gets in.
    if (auto it = inbound_per_ip.find(ip);
        it != inbound_per_ip.end() && it->second >= opts.max_connections_per_ip && !evict_idle_inbound(ip)) {
      observer->count("transport.rejected_connections.per_ip");
      return;
    }
    if (all.size() >= opts.max_connections && !evict_idle_inbound()) {
      observer->count("transport.rejected_connections");
      return;
    }
    s.set_option(tcp::no_delay(true), ec);
    auto c = std::make_shared<Connection>(*this, std::move(s));
    c->connected = true;
    c->remote_ip = ip;
    const auto near = c->sock.local_endpoint(ec);
    c->same_host = (!ec && near.address() == remote.address()) || is_local_address(ip);
    ++inbound_per_ip[ip];
    all.emplace(c.get(), c);
    read_loop(c);
  }

  // Closes the inbound connection that has been idle longest, if it has been idle long enough:
  // one that never named itself before any that did (a peer that said HELLO is worth keeping).
  // With `from`, only among that address's connections.
  bool evict_idle_inbound(std::optional<std::uint32_t> from = std::nullopt) {
    std::shared_ptr<Connection> oldest;
    const auto worse = [](const Connection& a, const Connection& b) {
      if (a.peer.valid() != b.peer.valid()) return !a.peer.valid();
      return a.last_active < b.last_active;
    };
    for (const auto& [p, c] : all)
      if (!c->outbound && (!from || c->remote_ip == *from) && (!oldest || worse(*c, *oldest))) oldest = c;
    if (!oldest || Steady::now() - oldest->last_active < opts.evict_idle_after) return false;
    observer->count("transport.evicted_connections");
    drop(oldest, "evicted: idle while the node was full", false);
    return true;
  }

  void start_sweeper() {
    if (!sweeper) sweeper = std::make_unique<asio::steady_timer>(io);
    const Duration period = std::clamp<Duration>(std::min(opts.handshake_timeout, opts.idle_timeout) / 4,
                                                 std::chrono::milliseconds(10), std::chrono::seconds(1));
    sweeper->expires_after(period);
    sweeper->async_wait([self = weak_from_this()](boost::system::error_code ec) {
      auto me = self.lock();
      if (ec || !me || !me->acceptor) return;
      me->sweep();
      me->start_sweeper();
    });
  }

  // Closes inbound connections that never named themselves, and connections with nothing to do.
  void sweep() {
    const auto now = Steady::now();
    std::vector<std::pair<std::shared_ptr<Connection>, bool>> doomed;  // (connection, silent at the handshake)
    for (const auto& [p, c] : all) {
      if (!c->outbound && !c->peer.valid() && now - c->created >= opts.handshake_timeout)
        doomed.emplace_back(c, true);
      else if (!c->writing && c->small.empty() && c->bulk.empty() && c->decoder.streams_in_flight() == 0 &&
               now - c->last_active >= opts.idle_timeout)
        doomed.emplace_back(c, false);
    }
    for (auto& [c, silent] : doomed) {
      observer->count(silent ? "transport.handshake_timeouts" : "transport.idle_closed");
      drop(c, silent ? "no HELLO in time" : "idle", false);
    }
  }

  // After a read: the bytes unfinished messages hold, on this connection and in all; over the total,
  // the connection holding most goes. False if `c` itself went.
  bool account(const std::shared_ptr<Connection>& c) {
    c->last_active = Steady::now();
    const std::uint64_t u = c->decoder.unfinished_bytes();
    unfinished_total = unfinished_total - c->unfinished + u;
    c->unfinished = u;
    while (unfinished_total > opts.max_unfinished_total) {
      std::shared_ptr<Connection> most;
      for (const auto& [p, x] : all)
        if (!most || x->unfinished > most->unfinished) most = x;
      if (!most || most->unfinished == 0) break;
      observer->count("transport.unfinished_shed");
      observer->log(LogLevel::kWarn, "transport", "closing connection from " + remote_text(*most) + ": its unfinished messages hold " +
                                                      std::to_string(most->unfinished) + " bytes");
      drop(most, "unfinished messages over the node's limit", most->outbound);
    }
    return c->open;
  }

  // Framing bytes (and small messages) are read into rbuf and fed to the decoder; payload bytes
  // are read straight into their message's buffer (the decoder's direct sink). Right after a
  // payload frame, rbuf takes only the next frame header: the next frame is likely another part
  // of a bulk stream, whose bytes should not be copied out of rbuf.
  static constexpr std::size_t kReadAfterPayload = wire::kFrameHeaderSize;

  void read_loop(const std::shared_ptr<Connection>& c) {
    const auto sink = c->decoder.direct_sink();
    if (!sink.empty()) {
      c->sock.async_read_some(asio::buffer(sink.data(), sink.size()), [self = weak_from_this(), c](
                                                                           boost::system::error_code ec, std::size_t n) {
        auto me = self.lock();
        if (!me || !c->open) return;
        if (ec) {
          me->drop(c, "connection closed: " + ec.message());
          return;
        }
        std::vector<wire::FrameDecoder::Event> events;
        c->decoder.filled(n, events);
        c->after_payload = true;
        if (me->account(c) && me->dispatch(c, events)) me->read_loop(c);
      });
      return;
    }
    const std::size_t want = c->after_payload ? kReadAfterPayload : c->rbuf.size();
    c->after_payload = false;
    c->sock.async_read_some(asio::buffer(c->rbuf.data(), want), [self = weak_from_this(), c](
                                                                     boost::system::error_code ec, std::size_t n) {
      auto me = self.lock();
      if (!me || !c->open) return;
      if (ec) {
        me->drop(c, "connection closed: " + ec.message());
        return;
      }
      std::vector<wire::FrameDecoder::Event> events;
      try {
        c->decoder.feed({c->rbuf.data(), n}, events);
      } catch (const wire::DecodeError& e) {
        me->observer->count("transport.bad_frames");
        me->observer->log(LogLevel::kWarn, "transport",
                          "closing connection from " + me->remote_text(*c) + ": " + e.what());
        me->drop(c, std::string("protocol error: ") + e.what(), /*notify=*/c->outbound);
        return;
      }
      if (me->account(c) && me->dispatch(c, events)) me->read_loop(c);
    });
  }

  // Hands decoded messages to the protocol; false if the connection was dropped meanwhile.
  bool dispatch(const std::shared_ptr<Connection>& c, std::vector<wire::FrameDecoder::Event>& events) {
    for (auto& ev : events) {
      if (!c->open) return false;
      if (ev.is_hello) {
        if (c->peer.valid() || !ev.hello.valid()) {
          observer->count("transport.bad_frames");
          drop(c, "unexpected HELLO", /*notify=*/c->outbound);
          return false;
        }
        c->peer = ev.hello;
        // A HELLO names the endpoint its sender listens on. Named from another address than the
        // connection's, it may be someone else's: the sender is then known by the address it
        // really has (its messages come from it, replies go back over this connection), and it
        // never takes over what is sent to the endpoint it named. (A sender behind NAT is
        // answered all the same.)
        const bool believed = c->outbound || c->peer.ip == c->remote_ip;
        if (!believed) {
          observer->count("transport.hello_address_mismatch");
          boost::system::error_code ec;
          const auto remote = c->sock.remote_endpoint(ec);
          if (ec) {
            drop(c, "no remote address", false);
            return false;
          }
          c->peer = Endpoint{c->remote_ip, remote.port()};
        }
        // What is sent to the endpoint may go back over this connection, unless it came from this
        // host (or opts.dial_back): there every peer has one address, and a port in a HELLO is a
        // claim anyone there can make. What is sent to such a peer goes over a connection dialled
        // to its port, which only the process listening there answers; so a process that names
        // another's port (to relay between two peers, or read what is meant for one) is sent
        // nothing. A sender known by its real address (above) is answered here: it cannot be dialled.
        if (!believed || (!c->same_host && !opts.dial_back)) by_peer.try_emplace(c->peer, c);
        continue;
      }
      if (!c->peer.valid()) {
        observer->count("transport.bad_frames");
        observer->log(LogLevel::kWarn, "transport",
                      "closing connection from " + remote_text(*c) + ": message before HELLO");
        drop(c, "message before HELLO", false);
        return false;
      }
      observer->count("transport.messages_received");
      ev.message.link = c->link;
      deliver(c->peer, std::move(ev.message));
    }
    return c->open;
  }

  std::string remote_text(const Connection& c) const {
    boost::system::error_code ec;
    auto ep = c.sock.remote_endpoint(ec);
    return ec ? std::string("?") : ep.address().to_string() + ":" + std::to_string(ep.port());
  }

  void drop(const std::shared_ptr<Connection>& c, const std::string& why, bool notify = true) {
    if (!c->open) return;
    c->open = false;
    boost::system::error_code ignored;
    c->sock.close(ignored);
    all.erase(c.get());
    unfinished_total -= c->unfinished;
    c->unfinished = 0;
    if (!c->outbound) {
      auto n = inbound_per_ip.find(c->remote_ip);
      if (n != inbound_per_ip.end() && --n->second == 0) inbound_per_ip.erase(n);
    }
    // Only the connection that carried what we send to its peer speaks for that peer's
    // reachability: another (a second inbound one, or one from this host claiming the port) never
    // had anything of ours, and its end must not fail the calls waiting on the peer.
    auto it = by_peer.find(c->peer);
    const bool carried = it != by_peer.end() && it->second == c;
    if (carried) by_peer.erase(it);
    const bool had_work = !c->small.empty() || !c->bulk.empty();
    c->small.clear();
    c->bulk.clear();
    if (notify && carried && c->peer.valid() && handler) {
      if (had_work) observer->count("transport.undelivered");
      handler->on_peer_error(c->peer, Error{ErrorCode::kUnreachable, why});
    }
  }

  void send(const Endpoint& to, Message m) {
    std::shared_ptr<Connection> c;
    auto it = by_peer.find(to);
    if (it != by_peer.end() && it->second->open) {
      c = it->second;
    } else {
      c = std::make_shared<Connection>(*this, tcp::socket(io));
      c->peer = to;
      c->hello = wire::encode_hello(local);
      c->outbound = true;
      by_peer[to] = c;
      all.emplace(c.get(), c);
      if (local.ip != 0 && !local.shared_local()) {
        // A peer listening on an address of its own dials from it: its HELLO names that address,
        // which the other side checks against the connection's.
        boost::system::error_code ec;
        c->sock.open(tcp::v4(), ec);
        if (!ec) c->sock.bind(tcp::endpoint(asio::ip::address_v4(local.ip), 0), ec);
        if (ec) observer->count("transport.bind_failures");
      }
      c->sock.async_connect(to_asio(to), [self = weak_from_this(), c](boost::system::error_code ec) {
        auto me = self.lock();
        if (!me || !c->open) return;
        if (ec) {
          me->observer->count("transport.connect_failures");
          me->drop(c, "connect: " + ec.message());
          return;
        }
        c->sock.set_option(tcp::no_delay(true));
        c->connected = true;
        me->read_loop(c);
        me->write_next(c);
      });
    }
    OutMsg out;
    out.stream = c->next_stream++;
    out.header = std::move(m.header);
    out.payload = std::move(m.payload);
    observer->count("transport.messages_sent");
    observer->count("transport.bytes_sent", static_cast<std::int64_t>(out.header.size() + out.payload.size()));
    if (out.payload.size() <= wire::kPartSize)
      c->small.push_back(std::move(out));
    else
      c->bulk.push_back(std::move(out));
    if (c->connected) write_next(c);
  }

  // Small messages queued for one peer leave several to a write: one system call, and (Nagle
  // being off) one segment and one wake-up of the receiver, for a burst that would take one of
  // each per message. Whole messages only, up to these bounds (at most 3 * kCoalesceCount
  // buffers: one writev, under asio's 64).
  static constexpr std::size_t kCoalesceBytes = 64 * 1024;
  static constexpr std::size_t kCoalesceCount = 16;

  void write_next(const std::shared_ptr<Connection>& c) {
    if (c->writing || !c->open || !c->connected) return;
    c->bufs.clear();
    Bytes& pre = c->frame_prefix;  // every frame prefix of this write; the buffers point into it
    pre.clear();
    if (!c->hello.empty()) {
      // Alone: the receiver must know who is speaking before it decodes the first message (its
      // payload may go straight to memory lent for a reply from that peer).
      pre.swap(c->hello);
      c->bufs.push_back(asio::buffer(pre));
      c->small_in_write = 0;
      start_write(c);
      return;
    }
    c->small_in_write = 0;
    if (!c->small.empty()) {
      // A small message fits one frame: it is written whole, never in parts.
      std::array<std::size_t, kCoalesceCount + 1> cut{};  // where each message's prefix begins in `pre`
      std::size_t n = 0, bytes = 0;
      for (OutMsg& m : c->small) {
        const std::size_t size = m.header.size() + m.payload.size();
        if (n > 0 && (n == kCoalesceCount || bytes + size > kCoalesceBytes)) break;
        bytes += size;
        cut[n++] = pre.size();
        const Bytes p = wire::encode_begin_prefix(m.stream, static_cast<std::uint32_t>(m.header.size()), m.payload.size(),
                                                  m.payload.size());
        pre.insert(pre.end(), p.begin(), p.end());
      }
      cut[n] = pre.size();
      for (std::size_t i = 0; i < n; ++i) {  // `pre` is complete: its bytes stay where they are
        OutMsg& m = c->small[i];
        c->bufs.push_back(asio::buffer(pre.data() + cut[i], cut[i + 1] - cut[i]));
        c->bufs.push_back(asio::buffer(m.header));
        push_payload(*c, m, 0, m.payload.size());
        m.begun = true;
        m.offset = m.payload.size();
      }
      c->small_in_write = n;
    } else if (!c->bulk.empty()) {
      OutMsg& m = c->bulk.front();
      const std::uint64_t part = std::min<std::uint64_t>(wire::kPartSize, m.payload.size() - m.offset);
      if (!m.begun) {
        pre = wire::encode_begin_prefix(m.stream, static_cast<std::uint32_t>(m.header.size()), m.payload.size(), part);
      } else {
        const auto ph = wire::encode_part_header(m.stream, m.offset, static_cast<std::uint32_t>(part));
        pre.assign(ph.begin(), ph.end());
      }
      c->bufs.push_back(asio::buffer(pre));
      if (!m.begun) c->bufs.push_back(asio::buffer(m.header));
      m.begun = true;
      push_payload(*c, m, m.offset, part);
      m.offset += part;
      // Keep the message alive until its bytes are written: the buffers point into it.
    } else {
      return;
    }
    start_write(c);
  }

  void start_write(const std::shared_ptr<Connection>& c) {
    observer->count("transport.writes");
    c->writing = true;
    asio::async_write(c->sock, c->bufs, [self = weak_from_this(), c](boost::system::error_code ec,
                                                                     std::size_t) {
      auto me = self.lock();
      if (!me || !c->open) return;
      c->writing = false;
      if (ec) {
        me->drop(c, "write: " + ec.message());
        return;
      }
      c->last_active = Steady::now();
      me->retire_written(*c);
      me->write_next(c);
    });
  }

  // The buffer of `len` payload bytes from `from` (zeros for a payload that has only a size).
  static void push_payload(Connection& c, const OutMsg& m, std::uint64_t from, std::uint64_t len) {
    if (len == 0) return;
    if (m.payload.has_data())
      c.bufs.push_back(asio::buffer(m.payload.data().data() + from, len));
    else
      c.bufs.push_back(asio::buffer(zeros().data(), len));
  }

  // After a write completes: pop the small messages it carried, or, if it carried a part of a bulk
  // message, pop that message once finished and otherwise rotate bulk streams for fairness.
  void retire_written(Connection& c) {
    if (c.small_in_write > 0) {
      c.small.erase(c.small.begin(), c.small.begin() + static_cast<std::ptrdiff_t>(c.small_in_write));
      c.small_in_write = 0;
      return;
    }
    if (c.bulk.empty() || !c.bulk.front().begun) return;
    if (c.bulk.front().offset >= c.bulk.front().payload.size()) {
      c.bulk.pop_front();
    } else if (c.bulk.size() > 1) {
      c.bulk.push_back(std::move(c.bulk.front()));
      c.bulk.pop_front();
    }
  }

  void close_all() {
    if (acceptor) {
      boost::system::error_code ignored;
      acceptor->close(ignored);
      acceptor.reset();
    }
    auto conns = all;
    for (auto& [p, c] : conns) drop(c, "closed", false);
    by_peer.clear();
    if (sweeper) sweeper->cancel();
    if (accept_retry) accept_retry->cancel();
    queue.clear();
    due_of.clear();
    if (wake) wake->cancel();
    armed_for = Steady::time_point::max();
  }
};

LiveRuntime::LiveRuntime(asio::io_context& io, LiveOptions options)
    : impl_(std::make_shared<Impl>(io, options)) {}

LiveRuntime::~LiveRuntime() { close(); }

void LiveRuntime::open() {
  if (impl_->acceptor) return;
  auto acc = std::make_unique<tcp::acceptor>(impl_->io);
  // A reopened runtime (a restarted peer) listens on the port it had before.
  const auto ep = to_asio(impl_->local.port ? impl_->local : impl_->opts.listen);
  acc->open(ep.protocol());
  acc->set_option(tcp::acceptor::reuse_address(true));
  acc->bind(ep);
  acc->listen();
  impl_->local = Endpoint{impl_->opts.listen.ip, acc->local_endpoint().port()};
  impl_->acceptor = std::move(acc);
  impl_->accept_loop();
  impl_->start_sweeper();
}

void LiveRuntime::close() { impl_->close_all(); }
std::size_t LiveRuntime::connections() const { return impl_->all.size(); }
std::size_t LiveRuntime::pending_timers() const { return impl_->queue.size(); }
void LiveRuntime::set_emulated_delay(Duration d) { impl_->opts.emulated_delay = d; }

void LiveRuntime::set_observer(Observer& observer) { impl_->observer = &observer; }

TimePoint LiveRuntime::now() const { return impl_->clock_now(); }

TimerId LiveRuntime::schedule(Duration delay, std::function<void()> fn) {
  const TimerId id = impl_->next_timer++;
  const auto due = Impl::Steady::now() + (delay < Duration::zero() ? Duration::zero() : delay);
  impl_->queue.emplace(std::make_pair(due, id), std::move(fn));
  impl_->due_of.emplace(id, due);
  impl_->arm();
  return id;
}

bool LiveRuntime::cancel(TimerId id) {
  auto it = impl_->due_of.find(id);
  if (it == impl_->due_of.end()) return false;
  impl_->queue.erase(std::make_pair(it->second, id));
  impl_->due_of.erase(it);
  return true;
}

Endpoint LiveRuntime::local() const { return impl_->local; }
void LiveRuntime::set_handler(TransportHandler* handler) { impl_->handler = handler; }
TransportHandler* LiveRuntime::handler() const { return impl_->handler; }

void LiveRuntime::send(const Endpoint& to, Message message) {
  // Transport contract: send never calls the handler synchronously; errors arrive from the
  // io_context.
  impl_->send(to, std::move(message));
}

}  // namespace apiary::real
