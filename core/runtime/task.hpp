#pragma once
// A small lazy coroutine task so protocols read as straight-line code:
//
//   Task<Result<Pong>> ask(Rpc& rpc, Endpoint peer) {
//     auto pong = co_await rpc.call<Pong>(peer, Ping{}, 2s);
//     co_await sleep_on(rt.timers, 100ms);
//     ...
//   }
//
// Tasks are resumed only by the runtime's timers and transport callbacks, never by threads.
//
// Two rules for coroutine code here:
//  * Tasks are lazy, so a coroutine must take its parameters by value (a reference parameter
//    would dangle once the caller's full-expression ends).
//  * g++ 12 mishandles non-trivial temporaries created inside a co_await expression (seen as a
//    heap corruption when such a frame is destroyed): build arguments such as a request struct
//    in a named local and std::move it into the call, e.g.
//        Echo req{"text", payload};
//        auto r = co_await rpc.call<Echo>(peer, std::move(req), 2s);
// A task starts when awaited (or when spawned into a TaskScope) and resumes its awaiter by
// symmetric transfer. Destroying a suspended task destroys its whole chain of frames; awaiters
// that registered timers or pending calls undo that in their destructors, which is what makes
// stopping a peer (churn) leak-free.
#include <cassert>
#include <coroutine>
#include <cstdint>
#include <exception>
#include <functional>
#include <map>
#include <optional>
#include <utility>
#include <vector>

#include "core/runtime/error.hpp"
#include "core/runtime/runtime.hpp"

namespace apiary {

template <class T = void>
class Task;

namespace detail {

// Coroutine frames alive on this thread: a run counts the frames left once every peer has gone
// (a task that outlived its peer). Each peer runs on one thread, so a plain counter per thread.
inline std::int64_t& live_frames() noexcept {
  static thread_local std::int64_t n = 0;
  return n;
}

struct PromiseBase {
  std::coroutine_handle<> continuation;
  std::exception_ptr error;
  PromiseBase() noexcept { ++live_frames(); }
  ~PromiseBase() { --live_frames(); }
  PromiseBase(const PromiseBase&) = delete;
  PromiseBase& operator=(const PromiseBase&) = delete;

  struct FinalAwaiter {
    bool await_ready() const noexcept { return false; }
    template <class P>
    std::coroutine_handle<> await_suspend(std::coroutine_handle<P> h) noexcept {
      auto c = h.promise().continuation;
      return c ? c : std::noop_coroutine();
    }
    void await_resume() const noexcept {}
  };
  std::suspend_always initial_suspend() const noexcept { return {}; }
  FinalAwaiter final_suspend() const noexcept { return {}; }
  void unhandled_exception() noexcept { error = std::current_exception(); }
};

template <class T>
struct Promise : PromiseBase {
  std::optional<T> value;
  Task<T> get_return_object();
  template <class U>
  void return_value(U&& v) {
    value.emplace(std::forward<U>(v));
  }
  T take() {
    if (error) std::rethrow_exception(error);
    return std::move(*value);
  }
};

template <>
struct Promise<void> : PromiseBase {
  Task<void> get_return_object();
  void return_void() noexcept {}
  void take() {
    if (error) std::rethrow_exception(error);
  }
};

}  // namespace detail

template <class T>
class [[nodiscard]] Task {
 public:
  using promise_type = detail::Promise<T>;
  using handle_type = std::coroutine_handle<promise_type>;

  Task() = default;
  explicit Task(handle_type h) : h_(h) {}
  Task(Task&& o) noexcept : h_(std::exchange(o.h_, {})) {}
  Task& operator=(Task&& o) noexcept {
    if (this != &o) {
      reset();
      h_ = std::exchange(o.h_, {});
    }
    return *this;
  }
  Task(const Task&) = delete;
  Task& operator=(const Task&) = delete;
  ~Task() { reset(); }

  bool valid() const { return static_cast<bool>(h_); }
  bool done() const { return h_ && h_.done(); }

  auto operator co_await() && noexcept {
    struct Awaiter {
      handle_type h;
      bool await_ready() const noexcept { return !h || h.done(); }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<> cont) noexcept {
        h.promise().continuation = cont;
        return h;
      }
      T await_resume() { return h.promise().take(); }
    };
    return Awaiter{h_};
  }

  // For drivers (tests, TaskScope): start without an awaiter, then read the result once done.
  void start() {
    if (h_ && !h_.done()) h_.resume();
  }
  T result() { return h_.promise().take(); }

 private:
  void reset() {
    if (h_) h_.destroy();
    h_ = {};
  }
  handle_type h_;
};

namespace detail {
template <class T>
Task<T> Promise<T>::get_return_object() {
  return Task<T>(std::coroutine_handle<Promise<T>>::from_promise(*this));
}
inline Task<void> Promise<void>::get_return_object() {
  return Task<void>(std::coroutine_handle<Promise<void>>::from_promise(*this));
}
}  // namespace detail

// Owns detached tasks ("fire and forget" protocol loops, request handlers). When the owner stops,
// destroy_all() destroys every suspended task; nothing it awaited will resume it afterwards.
class TaskScope {
 public:
  using ErrorHandler = std::function<void(std::exception_ptr)>;
  explicit TaskScope(ErrorHandler on_error = {}) : on_error_(std::move(on_error)) {}
  TaskScope(const TaskScope&) = delete;
  TaskScope& operator=(const TaskScope&) = delete;
  ~TaskScope() { destroy_all(); }

  // Starts `task` now; it runs until its first suspension before spawn returns.
  void spawn(Task<void> task);
  void destroy_all();
  std::size_t size() const { return roots_.size(); }

 private:
  struct Root {
    struct promise_type {
      TaskScope* scope = nullptr;
      std::uint64_t id = 0;
      Root get_return_object() {
        return Root{std::coroutine_handle<promise_type>::from_promise(*this)};
      }
      std::suspend_always initial_suspend() const noexcept { return {}; }
      struct Final {
        bool await_ready() const noexcept { return false; }
        void await_suspend(std::coroutine_handle<promise_type> h) noexcept {
          TaskScope* s = h.promise().scope;
          s->roots_.erase(h.promise().id);
          h.destroy();
        }
        void await_resume() const noexcept {}
      };
      Final final_suspend() const noexcept { return {}; }
      void return_void() noexcept {}
      void unhandled_exception() noexcept { std::terminate(); }  // run() catches everything
    };
    std::coroutine_handle<promise_type> h;
  };
  static Root run(Task<void> task, ErrorHandler* on_error);

  std::map<std::uint64_t, std::coroutine_handle<Root::promise_type>> roots_;
  std::uint64_t next_id_ = 1;
  ErrorHandler on_error_;
};

inline TaskScope::Root TaskScope::run(Task<void> task, ErrorHandler* on_error) {
  try {
    co_await std::move(task);
  } catch (...) {
    if (on_error && *on_error) (*on_error)(std::current_exception());
  }
}

inline void TaskScope::spawn(Task<void> task) {
  Root r = run(std::move(task), &on_error_);
  const std::uint64_t id = next_id_++;
  r.h.promise().scope = this;
  r.h.promise().id = id;
  roots_.emplace(id, r.h);
  r.h.resume();  // may complete (and erase itself) before returning
}

inline void TaskScope::destroy_all() {
  while (!roots_.empty()) {
    auto it = roots_.begin();
    auto h = it->second;
    roots_.erase(it);
    h.destroy();
  }
}

// Suspends for `delay` of the runtime's time. Cancels its timer if the task is destroyed.
class SleepAwaiter {
 public:
  SleepAwaiter(Timers& timers, Duration delay) : timers_(timers), delay_(delay) {}
  SleepAwaiter(const SleepAwaiter&) = delete;
  SleepAwaiter& operator=(const SleepAwaiter&) = delete;
  ~SleepAwaiter() {
    if (id_) timers_.cancel(id_);
  }
  bool await_ready() const noexcept { return false; }
  void await_suspend(std::coroutine_handle<> h) {
    id_ = timers_.schedule(delay_ < Duration::zero() ? Duration::zero() : delay_, [this, h] {
      id_ = 0;
      h.resume();
    });
  }
  void await_resume() const noexcept {}

 private:
  Timers& timers_;
  Duration delay_;
  TimerId id_ = 0;
};

inline SleepAwaiter sleep_on(Timers& timers, Duration delay) { return {timers, delay}; }

// Wakes every task waiting on it. For "wait until something changed" loops (a lookup worker
// waiting for any reply). A waiter destroyed while waiting unregisters itself.
class Notifier {
 public:
  class Awaiter {
   public:
    explicit Awaiter(Notifier& n) : n_(n) {}
    Awaiter(const Awaiter&) = delete;
    ~Awaiter() {
      if (h_) std::erase(n_.waiters_, h_);
    }
    bool await_ready() const noexcept { return false; }
    void await_suspend(std::coroutine_handle<> h) {
      h_ = h;
      n_.waiters_.push_back(h);
    }
    void await_resume() noexcept { h_ = {}; }

   private:
    Notifier& n_;
    std::coroutine_handle<> h_;
  };
  Awaiter wait() { return Awaiter(*this); }
  void notify_all() {
    auto waiters = std::move(waiters_);
    waiters_.clear();
    for (auto h : waiters) h.resume();
  }

 private:
  std::vector<std::coroutine_handle<>> waiters_;
};

// Waits on `n` until `pred()` holds or `deadline` passes on the runtime's clock; returns pred().
// Whoever changes what `pred` reads calls n.notify_all(). The deadline timer is cancelled if the
// waiting task is destroyed.
inline Task<bool> wait_until(Runtime& rt, Notifier& n, TimePoint deadline, std::function<bool()> pred) {
  struct Guard {
    Timers& timers;
    TimerId id = 0;
    ~Guard() {
      if (id) timers.cancel(id);
    }
  };
  while (!pred()) {
    const TimePoint now = rt.now();
    if (now >= deadline) co_return false;
    Guard g{rt.timers};
    g.id = rt.timers.schedule(deadline - now, [&n, &g] {
      g.id = 0;
      n.notify_all();
    });
    co_await n.wait();
  }
  co_return true;
}

// Runs tasks concurrently and resumes when all are done; results in input order. An exception
// from any task is rethrown after all have finished.
namespace detail {
template <class T>
struct WhenAllState {
  std::size_t remaining = 0;
  std::coroutine_handle<> parent;
  std::vector<std::optional<T>> results;
  std::exception_ptr error;
};

struct WhenAllChild {
  struct promise_type {
    std::size_t* remaining = nullptr;
    std::coroutine_handle<>* parent = nullptr;
    WhenAllChild get_return_object() {
      return WhenAllChild{std::coroutine_handle<promise_type>::from_promise(*this)};
    }
    std::suspend_always initial_suspend() const noexcept { return {}; }
    struct Final {
      bool await_ready() const noexcept { return false; }
      std::coroutine_handle<> await_suspend(std::coroutine_handle<promise_type> h) noexcept {
        auto& p = h.promise();
        if (--*p.remaining == 0) return *p.parent;
        return std::noop_coroutine();
      }
      void await_resume() const noexcept {}
    };
    Final final_suspend() const noexcept { return {}; }
    void return_void() noexcept {}
    void unhandled_exception() noexcept { std::terminate(); }
  };
  WhenAllChild(WhenAllChild&& o) noexcept : h(std::exchange(o.h, {})) {}
  explicit WhenAllChild(std::coroutine_handle<promise_type> hh) : h(hh) {}
  ~WhenAllChild() {
    if (h) h.destroy();
  }
  std::coroutine_handle<promise_type> h;
};

template <class T>
WhenAllChild when_all_child(Task<T> task, WhenAllState<T>* st, std::size_t i) {
  try {
    st->results[i].emplace(co_await std::move(task));
  } catch (...) {
    if (!st->error) st->error = std::current_exception();
  }
}
}  // namespace detail

template <class T>
Task<std::vector<T>> when_all(std::vector<Task<T>> tasks) {
  detail::WhenAllState<T> st;
  st.results.resize(tasks.size());
  std::vector<detail::WhenAllChild> children;
  children.reserve(tasks.size());
  if (!tasks.empty()) {
    struct Awaiter {
      std::vector<Task<T>>& tasks;
      detail::WhenAllState<T>& st;
      std::vector<detail::WhenAllChild>& children;
      bool await_ready() const noexcept { return false; }
      bool await_suspend(std::coroutine_handle<> parent) {
        st.parent = parent;
        st.remaining = tasks.size() + 1;  // +1 held until all children have started
        for (std::size_t i = 0; i < tasks.size(); ++i) {
          children.push_back(detail::when_all_child<T>(std::move(tasks[i]), &st, i));
          children.back().h.promise().remaining = &st.remaining;
          children.back().h.promise().parent = &st.parent;
          children.back().h.resume();
        }
        return --st.remaining != 0;  // false: everything finished synchronously, resume now
      }
      void await_resume() const noexcept {}
    };
    co_await Awaiter{tasks, st, children};
  }
  if (st.error) std::rethrow_exception(st.error);
  std::vector<T> out;
  out.reserve(st.results.size());
  for (auto& r : st.results) out.push_back(std::move(*r));
  co_return out;
}

}  // namespace apiary
