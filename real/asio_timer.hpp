#pragma once
// A one-shot timer that owns itself: the live host's and the process launchers' way to run a
// callback at a time on their io_context (the churn driver's `at`, the runner's timers); and a
// repeating one, the launchers' look at their children.
#include <utility>

#include <boost/asio.hpp>
#include <chrono>
#include <functional>
#include <memory>

namespace apiary::real {

inline void run_at(boost::asio::io_context& io, std::chrono::steady_clock::time_point when, std::function<void()> fn) {
  auto timer = std::make_shared<boost::asio::steady_timer>(io, when);
  timer->async_wait([timer, fn = std::move(fn)](boost::system::error_code ec) {
    if (!ec) fn();
  });
}

// Calls fn now, then every `period` for as long as it returns true.
inline void every(boost::asio::io_context& io, std::chrono::steady_clock::duration period, std::function<bool()> fn) {
  if (!fn()) return;
  run_at(io, std::chrono::steady_clock::now() + period, [&io, period, fn = std::move(fn)]() mutable { every(io, period, std::move(fn)); });
}

}  // namespace apiary::real
