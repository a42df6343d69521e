#include "real/loop_thread.hpp"

#include <boost/asio.hpp>

namespace apiary::real {

namespace asio = boost::asio;

struct LoopThread::Guard {
  asio::executor_work_guard<asio::io_context::executor_type> work;
};

LoopThread::LoopThread()
    : io_(std::make_unique<asio::io_context>(1)), guard_(new Guard{asio::make_work_guard(*io_)}) {
  thread_ = std::thread([this] { serve(); });
}

LoopThread::~LoopThread() { stop(); }

bool LoopThread::stopped() const {
  std::lock_guard l(m_);
  return stop_;
}

bool LoopThread::held_by_this_thread() const {
  std::lock_guard l(m_);
  return depth_ > 0 && holder_ == std::this_thread::get_id();
}

void LoopThread::stop() {
  if (held_by_this_thread()) throw std::logic_error("LoopThread::stop() from a thread that holds the loop");
  {
    std::lock_guard l(m_);
    stop_ = true;
  }
  cv_.notify_all();
  io_->stop();  // wakes run_one_for at once
  std::lock_guard j(join_m_);
  if (thread_.joinable()) thread_.join();
}

void LoopThread::serve() {
  std::unique_lock l(m_);
  while (!stop_) {
    if (waiting_ > 0 || depth_ > 0) {
      cv_.wait(l, [&] { return stop_ || (waiting_ == 0 && depth_ == 0); });
      continue;
    }
    depth_ = 1;
    holder_ = std::this_thread::get_id();
    l.unlock();
    io_->run_one_for(std::chrono::milliseconds(100));
    l.lock();
    depth_ = 0;
    holder_ = {};
    cv_.notify_all();
  }
}

LoopThread::Borrow::Borrow(LoopThread& loop) : loop_(loop) {
  std::unique_lock l(loop.m_);
  if (loop.depth_ > 0 && loop.holder_ == std::this_thread::get_id()) {
    ++loop.depth_;
    return;
  }
  ++loop.waiting_;
  asio::post(*loop.io_, [] {});  // the serving thread returns from its wait at once
  loop.cv_.wait(l, [&] { return loop.depth_ == 0; });
  --loop.waiting_;
  loop.depth_ = 1;
  loop.holder_ = std::this_thread::get_id();
}

LoopThread::Borrow::~Borrow() {
  {
    std::lock_guard l(loop_.m_);
    if (--loop_.depth_ > 0) return;
    loop_.holder_ = {};
  }
  loop_.cv_.notify_all();
}

void LoopThread::run_for(std::chrono::milliseconds wait) {
  if (io_->stopped()) return;
  io_->run_one_for(wait);
}

}  // namespace apiary::real
