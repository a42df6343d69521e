#include "core/runtime/rpc.hpp"

#include "core/runtime/faults.hpp"

#include <utility>

namespace apiary {

const char* to_string(ErrorCode code) {
  switch (code) {
    case ErrorCode::kTimeout: return "timeout";
    case ErrorCode::kUnreachable: return "unreachable";
    case ErrorCode::kRemote: return "remote error";
    case ErrorCode::kBadMessage: return "bad message";
    case ErrorCode::kUnknownMethod: return "unknown method";
    case ErrorCode::kCancelled: return "cancelled";
    case ErrorCode::kShutdown: return "shutdown";
    case ErrorCode::kTooLarge: return "too large";
    case ErrorCode::kInvalidArgument: return "invalid argument";
    case ErrorCode::kRejected: return "rejected";
  }
  return "unknown error";
}

// Lives in the caller's coroutine frame for the duration of one call. If that frame is destroyed
// while suspended (peer stopped), the destructor unregisters the call and its timer.
struct Rpc::CallAwaiter {
  Rpc& rpc;
  std::uint64_t id;
  Endpoint to;
  Message msg;
  Duration timeout;
  PayloadTarget reply_into;
  std::optional<Result<Reply>> result;
  std::coroutine_handle<> waiter;
  TimerId timer = 0;
  bool registered = false;

  CallAwaiter(Rpc& r, std::uint64_t i, Endpoint t, Message m, Duration d, PayloadTarget into)
      : rpc(r), id(i), to(t), msg(std::move(m)), timeout(d), reply_into(std::move(into)) {}
  CallAwaiter(const CallAwaiter&) = delete;
  ~CallAwaiter() {
    if (registered) rpc.pending_.erase(id);
    if (timer) rpc.rt_.timers.cancel(timer);
  }
  bool await_ready() const noexcept { return result.has_value(); }
  void await_suspend(std::coroutine_handle<> h) {
    waiter = h;
    registered = true;
    rpc.pending_.emplace(id, Pending{this, to, std::move(reply_into)});
    const Duration fires = rpc.rt_.faults ? rpc.rt_.faults->timeout(timeout) : timeout;
    timer = rpc.rt_.timers.schedule(fires, [r = &rpc, i = id, t = timeout] {
      r->complete(i, Error{ErrorCode::kTimeout, "no reply within " + format_duration(t)});
    });
    // Transports never call back synchronously from send(), so nothing resumes us in here.
    rpc.rt_.transport.send(to, std::move(msg));
  }
  Result<Reply> await_resume() { return std::move(*result); }
};

Rpc::Rpc(Runtime& rt, RpcOptions options)
    : rt_(rt), options_(options), handlers_([this](std::exception_ptr e) {
        try {
          std::rethrow_exception(e);
        } catch (const std::exception& ex) {
          rt_.observer.log(LogLevel::kError, "rpc", std::string("handler task failed: ") + ex.what());
        }
        rt_.observer.count("rpc.handler_failures");
      }) {
  rt_.transport.set_handler(this);
}

Rpc::~Rpc() {
  shutdown();
  // A successor may already own the transport (a peer's stack rebuilt on restart).
  if (rt_.transport.handler() == this) rt_.transport.set_handler(nullptr);
}

void Rpc::on(std::uint32_t method, Handler handler) { methods_[method] = std::move(handler); }

void Rpc::shutdown() {
  stopped_ = true;
  handlers_.destroy_all();
}

Task<Result<Reply>> Rpc::call(Endpoint to, std::uint32_t method, Bytes body, Payload payload,
                              Duration timeout, PayloadTarget reply_into) {
  if (stopped_) co_return Error{ErrorCode::kShutdown, "rpc layer is shut down"};
  const std::uint64_t id = next_id_++;
  Message msg;
  wire::Writer w(msg.header);
  w.u8(kRequest);
  w.varint(id);
  w.varint(method);
  w.raw(body);
  msg.payload = std::move(payload);
  rt_.observer.count("rpc.calls");
  rt_.observer.trace("rpc.call", method, id);
  Result<Reply> r = co_await CallAwaiter(*this, id, to, std::move(msg), timeout, std::move(reply_into));
  if (!r.ok()) {
    rt_.observer.count(std::string("rpc.errors.") + to_string(r.error().code));
    rt_.observer.trace("rpc.fail", id, static_cast<std::uint64_t>(r.error().code));
  } else {
    rt_.observer.trace("rpc.done", id);
  }
  co_return r;
}

void Rpc::notify(const Endpoint& to, std::uint32_t method, Bytes body, Payload payload) {
  Message msg;
  wire::Writer w(msg.header);
  w.u8(kNotify);
  w.varint(0);
  w.varint(method);
  w.raw(body);
  msg.payload = std::move(payload);
  rt_.transport.send(to, std::move(msg));
}

void Rpc::complete(std::uint64_t id, Result<Reply> result) {
  auto it = pending_.find(id);
  if (it == pending_.end()) return;
  CallAwaiter* a = it->second.awaiter;
  pending_.erase(it);
  a->registered = false;
  if (a->timer) {
    rt_.timers.cancel(a->timer);
    a->timer = 0;
  }
  a->result.emplace(std::move(result));
  a->waiter.resume();
}

void Rpc::on_peer_error(const Endpoint& peer, const Error& error) {
  std::vector<std::uint64_t> ids;
  for (const auto& [id, p] : pending_)
    if (p.to == peer) ids.push_back(id);
  for (auto id : ids)
    complete(id, Error{error.code, peer.to_string() + ": " + error.message});
}

PayloadTarget Rpc::place_payload(const Endpoint& from, std::uint64_t, std::span<const std::uint8_t> header,
                                 std::uint64_t size) {
  if (stopped_) return {};
  std::uint64_t id = 0;
  try {
    wire::Reader r(header);
    if (r.u8() != kResponse) return {};
    id = r.varint();
  } catch (const wire::DecodeError&) {
    return {};  // on_message reports it when the message is whole
  }
  auto it = pending_.find(id);
  // Only the callee's own reply, of the size asked for, and only one.
  if (it == pending_.end() || !(it->second.to == from) || !it->second.reply_into ||
      it->second.reply_into.bytes.size() != size)
    return {};
  rt_.observer.count("rpc.replies_placed");
  return std::exchange(it->second.reply_into, PayloadTarget{});
}

void Rpc::send_error(const Endpoint& to, std::uint64_t id, const Error& e) {
  Message msg;
  wire::Writer w(msg.header);
  w.u8(kError);
  w.varint(id);
  w.u8(static_cast<std::uint8_t>(e.code));
  w.str(e.message.size() > options_.max_error_text ? e.message.substr(0, options_.max_error_text)
                                                    : e.message);
  rt_.transport.send(to, std::move(msg));
}

void Rpc::on_message(const Endpoint& from, Message message) {
  if (stopped_) return;
  std::uint8_t kind = 0;
  std::uint64_t id = 0;
  std::uint64_t method = 0;
  std::size_t body_at = 0;
  Error remote_error{};
  try {
    wire::Reader r(message.header);
    kind = r.u8();
    id = r.varint();
    switch (kind) {
      case kRequest:
      case kNotify:
        method = r.varint_max(UINT32_MAX, "method");
        break;
      case kResponse:
        break;
      case kError: {
        const auto code = r.u8();
        if (code < 1 || code > static_cast<std::uint8_t>(ErrorCode::kRejected))
          throw wire::DecodeError("unknown error code " + std::to_string(code));
        remote_error.code = static_cast<ErrorCode>(code);
        remote_error.message = r.str(options_.max_error_text);
        r.expect_end();
        break;
      }
      default:
        throw wire::DecodeError("unknown envelope kind " + std::to_string(kind));
    }
    body_at = r.position();
  } catch (const wire::DecodeError& e) {
    rt_.observer.count("rpc.bad_messages");
    rt_.observer.log(LogLevel::kWarn, "rpc",
                     "dropped malformed message from " + from.to_string() + ": " + e.what());
    return;
  }

  if (kind == kResponse || kind == kError) {
    if (!pending_.count(id)) {
      rt_.observer.count("rpc.late_replies");
      return;
    }
    if (kind == kError) {
      // The remote's own code is kept (unknown method, bad message, ...), with its text.
      complete(id, Error{remote_error.code, from.to_string() + ": " + remote_error.message});
    } else {
      Reply reply;
      reply.body.assign(message.header.begin() + static_cast<std::ptrdiff_t>(body_at),
                        message.header.end());
      reply.payload = std::move(message.payload);
      complete(id, std::move(reply));
    }
    return;
  }

  Request req;
  req.from = from;
  req.body.assign(message.header.begin() + static_cast<std::ptrdiff_t>(body_at),
                  message.header.end());
  req.payload = std::move(message.payload);
  rt_.observer.trace("rpc.serve", method, id);
  if (handlers_.size() >= options_.max_inflight_handlers) {
    rt_.observer.count("rpc.rejected_busy");
    if (kind == kRequest)
      send_error(from, id, Error{ErrorCode::kTooLarge, "too many requests in flight"});
    return;
  }
  handlers_.spawn(serve_one(from, kind == kRequest ? id : 0, static_cast<std::uint32_t>(method),
                            std::move(req)));
}

Task<void> Rpc::serve_one(Endpoint from, std::uint64_t id, std::uint32_t method, Request req) {
  auto it = methods_.find(method);
  if (it == methods_.end()) {
    rt_.observer.count("rpc.unknown_method");
    if (id) send_error(from, id, Error{ErrorCode::kUnknownMethod, "no handler for method " +
                                                                      std::to_string(method)});
    co_return;
  }
  // Copy the handler: a handler may re-register methods while it runs.
  Handler handler = it->second;
  // Injected faults: every decision for this request drawn now, in a fixed order.
  Duration slow{}, late{};
  bool drop = false;
  if (rt_.faults) {
    slow = rt_.faults->handler_delay();
    drop = rt_.faults->drop_reply();
    late = rt_.faults->reply_delay();
  }
  if (slow > Duration::zero()) co_await sleep_on(rt_.timers, slow);
  std::optional<Result<Reply>> result;
  try {
    result.emplace(co_await handler(std::move(req)));
  } catch (const wire::DecodeError& e) {
    rt_.observer.count("rpc.bad_requests");
    result.emplace(Error{ErrorCode::kBadMessage, std::string("bad request: ") + e.what()});
  } catch (const ErrorException& e) {
    result.emplace(e.error());
  } catch (const std::exception& e) {
    result.emplace(Error{ErrorCode::kRemote, e.what()});
  }
  if (!id) co_return;  // notify: nobody waits
  if (drop) co_return;
  if (late > Duration::zero()) co_await sleep_on(rt_.timers, late);
  if (!result->ok()) {
    send_error(from, id, result->error());
    co_return;
  }
  Message msg;
  wire::Writer w(msg.header);
  w.u8(kResponse);
  w.varint(id);
  w.raw(result->value().body);
  msg.payload = std::move(result->value().payload);
  rt_.transport.send(from, std::move(msg));
}

}  // namespace apiary
