#pragma once
// An io_context served by a thread of its own, which other threads may borrow: a peer owned by a
// program that does other things (a Python training loop) keeps answering the swarm while that
// program computes, and the program's calls into the peer still run single-threaded, as every
// protocol object expects.
//
// At any moment one thread holds the loop: the serving thread between its handlers, or a caller
// inside a Borrow. A caller that borrows the loop wakes the serving thread, takes the loop once
// that thread has finished its current handler, and may then touch protocol objects and run the
// io_context itself (drive) until its task is done; when it gives the loop back, the serving
// thread goes on. Borrowing is re-entrant on one thread.
//
// Never borrow while holding a lock that a handler may take (Python: release the GIL first).
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <optional>
#include <stdexcept>
#include <thread>

#include "core/runtime/task.hpp"

namespace boost::asio {
class io_context;
}

namespace apiary::real {

class LoopThread {
 public:
  LoopThread();
  ~LoopThread();  // stop()
  LoopThread(const LoopThread&) = delete;
  LoopThread& operator=(const LoopThread&) = delete;

  boost::asio::io_context& io() { return *io_; }
  // Ends the serving thread and joins it (idempotent); handlers still queued do not run. Called
  // with the loop not borrowed by this thread.
  void stop();
  bool stopped() const;
  // Whether the calling thread holds the loop now (inside a Borrow, or the serving thread inside a
  // handler): stop() from there would wait for itself.
  bool held_by_this_thread() const;

  class Borrow {
   public:
    explicit Borrow(LoopThread& loop);
    ~Borrow();
    Borrow(const Borrow&) = delete;
    Borrow& operator=(const Borrow&) = delete;

   private:
    LoopThread& loop_;
  };

  // With the loop borrowed: runs ready handlers, waiting up to `wait` for one.
  void run_for(std::chrono::milliseconds wait);

  // Borrows the loop, starts `task` and runs the io_context on this thread until the task is
  // done, calling `check` every `every` (it may throw: the task is then destroyed, with the loop
  // still borrowed, and the exception goes on). nullopt when `deadline` passed first.
  template <class T>
  std::optional<T> await(Task<T> task, const std::function<void()>& check, std::optional<std::chrono::milliseconds> deadline = {},
                         std::chrono::milliseconds every = std::chrono::milliseconds(50)) {
    Borrow b(*this);
    if (stopped()) throw std::runtime_error("the peer is shut down");
    task.start();
    const auto start = std::chrono::steady_clock::now();
    auto last_check = start;
    while (!task.done()) {
      if (stopped()) throw std::runtime_error("the peer was shut down during the call");
      const auto now = std::chrono::steady_clock::now();
      if (deadline && now - start >= *deadline) return std::nullopt;
      if (check && now - last_check >= every) {
        check();
        last_check = now;
      }
      run_for(std::chrono::milliseconds(10));
    }
    return task.result();
  }

 private:
  void serve();
  std::unique_ptr<boost::asio::io_context> io_;
  struct Guard;
  std::unique_ptr<Guard> guard_;
  mutable std::mutex m_;
  std::condition_variable cv_;
  int waiting_ = 0;   // callers waiting to borrow
  int depth_ = 0;     // how deeply the holder holds (0: nobody)
  std::thread::id holder_;
  bool stop_ = false;
  std::mutex join_m_;  // one stop() joins the serving thread; another waits for it
  std::thread thread_;
};

}  // namespace apiary::real
