#pragma once
// The RPC layer: request ids, per-call timeouts, typed handlers and errors as values.
//
//   rpc.serve<PingRequest, PingResponse>([](const Endpoint& from, PingRequest req)
//       -> Task<Result<PingResponse>> { co_return PingResponse{req.nonce}; });
//   Result<PingResponse> r = co_await rpc.call<PingResponse>(peer, PingRequest{7}, 2s);
//
// A typed message T has `static constexpr std::uint32_t kMethod` (requests only),
// `void encode(wire::Writer&) const` and `static T decode(wire::Reader&)`; if it has a member
// `Payload payload`, that rides as the message's bulk payload.
//
// Envelope (the message header): u8 kind | varint request id | kind-specific | body.
//   request/notify: varint method, body; response: body; error: u8 code, string, nothing else.
#include <cstdint>
#include <functional>
#include <map>
#include <optional>
#include <string>

#include "core/runtime/error.hpp"
#include "core/runtime/runtime.hpp"
#include "core/runtime/task.hpp"
#include "core/wire/codec.hpp"

namespace apiary {

struct Request {
  Endpoint from;
  Bytes body;
  Payload payload;
};

struct Reply {
  Bytes body;
  Payload payload;
};

struct RpcOptions {
  std::size_t max_inflight_handlers = 4096;  // inbound requests being served at once
  std::size_t max_error_text = 1024;
};

namespace detail {
template <class T>
void encode_message(const T& m, Bytes& body, Payload& payload) {
  wire::Writer w(body);
  m.encode(w);
  if constexpr (requires { m.payload; }) payload = m.payload;
}
template <class T>
T decode_message(std::span<const std::uint8_t> body, const Payload& payload) {
  wire::Reader r(body);
  T m = T::decode(r);
  r.expect_end();
  if constexpr (requires { m.payload; }) m.payload = payload;
  return m;
}
}  // namespace detail

class Rpc final : public TransportHandler {
 public:
  using Handler = std::function<Task<Result<Reply>>(Request)>;

  Rpc(Runtime& rt, RpcOptions options = {});
  ~Rpc() override;
  Rpc(const Rpc&) = delete;
  Rpc& operator=(const Rpc&) = delete;

  // Registers the handler for `method`; replaces an earlier one.
  void on(std::uint32_t method, Handler handler);

  // Sends a request and waits for its reply, an error reply, the timeout, or a transport error.
  // `reply_into`, if given, is memory the reply's payload may be received into directly when it
  // has exactly that size (a transport that reads payloads itself does so; the reply's payload
  // then views it). It is written as bytes arrive: the caller must not read it until the call
  // ends, and must expect it changed (even partly, by a reply cut off or late) once it was lent.
  Task<Result<Reply>> call(Endpoint to, std::uint32_t method, Bytes body, Payload payload,
                           Duration timeout, PayloadTarget reply_into = {});
  // One-way message; no reply, no delivery guarantee.
  void notify(const Endpoint& to, std::uint32_t method, Bytes body, Payload payload = {});

  template <class Resp, class Req>
  Task<Result<Resp>> call(Endpoint to, Req req, Duration timeout,  // by value: tasks are lazy
                          PayloadTarget reply_into = {});
  template <class Req>
  void notify(const Endpoint& to, const Req& req) {
    Bytes body;
    Payload payload;
    detail::encode_message(req, body, payload);
    notify(to, Req::kMethod, std::move(body), std::move(payload));
  }
  template <class Req, class Resp, class F>
  void serve(F handler);

  // Stops serving: destroys running handlers and fails nothing further. Calls still awaited by
  // the owner's tasks are torn down when those tasks are destroyed.
  void shutdown();

  std::size_t pending_calls() const { return pending_.size(); }
  std::size_t running_handlers() const { return handlers_.size(); }

  // TransportHandler
  void on_message(const Endpoint& from, Message message) override;
  void on_peer_error(const Endpoint& peer, const Error& error) override;
  PayloadTarget place_payload(const Endpoint& from, std::uint64_t link, std::span<const std::uint8_t> header,
                              std::uint64_t size) override;

 private:
  enum Kind : std::uint8_t { kRequest = 1, kResponse = 2, kError = 3, kNotify = 4 };
  struct CallAwaiter;
  struct Pending {
    CallAwaiter* awaiter;
    Endpoint to;
    PayloadTarget reply_into;  // lent to at most one incoming reply
  };
  void complete(std::uint64_t id, Result<Reply> result);
  Task<void> serve_one(Endpoint from, std::uint64_t id, std::uint32_t method, Request req);
  void send_error(const Endpoint& to, std::uint64_t id, const Error& e);

  Runtime& rt_;
  RpcOptions options_;
  std::map<std::uint32_t, Handler> methods_;
  std::map<std::uint64_t, Pending> pending_;
  std::uint64_t next_id_ = 1;
  bool stopped_ = false;
  TaskScope handlers_;
};


template <class Resp, class Req>
Task<Result<Resp>> Rpc::call(Endpoint to, Req req, Duration timeout, PayloadTarget reply_into) {
  Bytes body;
  Payload payload;
  detail::encode_message(req, body, payload);
  Result<Reply> r = co_await call(to, Req::kMethod, std::move(body), std::move(payload), timeout,
                                  std::move(reply_into));
  if (!r.ok()) co_return r.error();
  // No co_return inside try/catch: g++ 12 mishandles the frame's temporaries there.
  std::optional<Resp> decoded;
  std::string why;
  try {
    decoded.emplace(detail::decode_message<Resp>(r->body, r->payload));
  } catch (const wire::DecodeError& e) {
    why = e.what();
  }
  if (!decoded) {
    rt_.observer.count("rpc.bad_replies");
    co_return Error{ErrorCode::kBadMessage, "reply from " + to.to_string() + ": " + why};
  }
  co_return std::move(*decoded);
}

template <class Req, class Resp, class F>
void Rpc::serve(F handler) {
  on(Req::kMethod, [handler = std::move(handler)](Request in) -> Task<Result<Reply>> {
    Req req = detail::decode_message<Req>(in.body, in.payload);  // DecodeError -> kBadMessage
    Result<Resp> r = co_await handler(in.from, std::move(req));
    if (!r.ok()) co_return r.error();
    Reply out;
    detail::encode_message(*r, out.body, out.payload);
    co_return out;
  });
}

}  // namespace apiary
