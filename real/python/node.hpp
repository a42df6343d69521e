#pragma once
// The Python package's peer: a live node (real/live_node.hpp) whose io_context a thread of its own
// serves (real/loop_thread.hpp), so it answers the swarm while Python computes. Every call from
// Python releases the GIL, borrows the loop, and runs its task there; Ctrl-C is checked while it
// waits (the task is then dropped and KeyboardInterrupt raised). Objects built on a node
// (averagers, optimizers, expert servers, mixtures) register as its dependents: they live until the
// node shuts down (their RPC handlers stay registered until then), which closes them first; their
// calls afterwards raise.
#include <pybind11/pybind11.h>

#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "core/compression/codecs.hpp"
#include "real/live_node.hpp"
#include "real/loop_thread.hpp"

namespace apiary::python {

namespace py = pybind11;

// Raised as Python's TimeoutError / ConnectionError (registered by the module).
struct TimeoutFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
struct ConnectionFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};
// Raised when an object is used after its node shut down (Python's RuntimeError).
struct ClosedFailure : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// With the GIL released: takes it, raises a pending signal's exception (KeyboardInterrupt).
void check_signals();

// Options from Python: a codec by name, a positive number of seconds (else ValueError naming it).
compression::Codec codec_named(const std::string& name);
Duration seconds(double s, const char* what);

class Dependent {
 public:
  virtual ~Dependent() = default;
  // Destroys its protocol objects; called with the loop borrowed, once.
  virtual void close() = 0;
};

struct NodeOptions {
  std::string listen = "127.0.0.1:0";
  std::vector<std::string> initial_peers;
  std::string identity_path;
  std::string swarm_secret;
  unsigned id_work_bits = 0;
  bool client_mode = false;
  std::size_t k = 20;
  double rpc_timeout = 2.0;
  double join_timeout = 10.0;
  bool verbose = false;
};

class Node {
 public:
  explicit Node(const NodeOptions& o);
  ~Node();
  Node(const Node&) = delete;
  Node& operator=(const Node&) = delete;

  // Closes dependents, then the node (sockets, timers), then stops the loop. Idempotent.
  void shutdown();
  bool closed() const { return closed_; }

  // Makes the task (`make()`, called with the loop borrowed) and runs it on the loop with the GIL
  // released; raises TimeoutFailure after `timeout` seconds (when > 0) naming `what`,
  // ClosedFailure if the node is shut down.
  template <class F>
  auto await(F&& make, double timeout, const std::string& what) {
    py::gil_scoped_release nogil;
    std::optional<std::chrono::milliseconds> deadline;
    if (timeout > 0 && timeout < 1e9) deadline = std::chrono::milliseconds(static_cast<std::int64_t>(timeout * 1000));
    real::LoopThread::Borrow b(*loop_);  // held throughout: a shutdown cannot come between
    if (closed_) throw ClosedFailure(what + ": the DHT is shut down");
    auto r = loop_->await(make(), &check_signals, deadline);
    if (!r) throw TimeoutFailure(what + " did not finish within " + std::to_string(timeout) + " s");
    return std::move(*r);
  }
  // Calls `f()` with the GIL released and the loop borrowed (for constructing and destroying
  // protocol objects and reading their state).
  template <class F>
  auto with_loop(F&& f, const std::string& what = "the call") {
    py::gil_scoped_release nogil;
    real::LoopThread::Borrow b(*loop_);
    if (closed_) throw ClosedFailure(what + ": the DHT is shut down");
    return f();
  }
  // Takes `role` ("averaging", "experts": the RPC methods its object serves) before that object is
  // built: one node serves each once, so a second object of a role is refused (ValueError) before
  // it could replace the first one's handlers. With the loop borrowed.
  void claim(const std::string& role);
  // Keeps `d` until shutdown, which closes it. With the loop borrowed.
  void attach(std::shared_ptr<Dependent> d);

  // The node's stack; ClosedFailure once it is shut down. Use it with the loop borrowed.
  real::LiveNodeStack& stack() {
    if (!stack_) throw ClosedFailure("the DHT is shut down");
    return *stack_;
  }
  real::LoopThread& loop() { return *loop_; }
  const dht::Identity& identity() const { return identity_; }
  std::string endpoint() const { return endpoint_; }
  std::string peer_id() const { return identity_.id().hex(); }
  std::size_t contacts() const { return contacts_; }

 private:
  std::unique_ptr<real::LoopThread> loop_ = std::make_unique<real::LoopThread>();
  dht::Identity identity_;
  std::unique_ptr<real::LiveNodeStack> stack_;
  std::vector<std::shared_ptr<Dependent>> dependents_;
  std::vector<std::string> roles_;
  std::string endpoint_;
  std::size_t contacts_ = 0;
  bool closed_ = false;
};

}  // namespace apiary::python
