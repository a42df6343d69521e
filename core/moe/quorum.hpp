#pragma once
// The wait rule of a mixture layer's expert calls, written once (core/moe/mixture.hpp uses it for
// every world): call every chosen expert at once, and stop waiting when all have finished, when
// the timeout has passed, or when enough have answered (min(k_min, n), or the rule's own test of
// who answered) and a grace period for the rest has passed too. The experts that did not
// answer in time are the layer's failures, skipped like dropout.
#include <algorithm>
#include <functional>
#include <memory>
#include <optional>
#include <vector>

#include "core/runtime/runtime.hpp"
#include "core/runtime/task.hpp"

namespace apiary::moe {

struct QuorumRule {
  std::size_t k_min = 1;
  Duration grace{};                          // after the k_min-th answer
  Duration timeout = std::chrono::seconds(10);  // never waits past this
  // When set, "enough answered" is this test of which calls answered, instead of k_min of them.
  std::function<bool(const std::vector<bool>&)> enough;
};

// Makes call j = call(j) for j < n at once and returns, by the rule, each call's result (nullopt
// where none came in time). `accept(j, result)` says whether a result counts as an answer (an
// error or a reply of the wrong shape does not); it runs only while the caller still waits, so it
// may refer to the caller's locals. Calls still running at the return go on in `scope`, their
// results dropped; destroying the scope abandons them.
template <class Reply>
Task<std::vector<std::optional<Result<Reply>>>> call_quorum(Runtime& rt, TaskScope& scope, std::size_t n,
                                                            std::function<Task<Result<Reply>>(std::size_t)> call,
                                                            std::function<bool(std::size_t, const Result<Reply>&)> accept,
                                                            QuorumRule rule) {
  struct State {
    std::vector<std::optional<Result<Reply>>> replies;
    std::size_t finished = 0, answered = 0;
    std::vector<bool> ok;
    bool over = false;  // the caller stopped waiting: later results are dropped
    std::function<bool(std::size_t, const Result<Reply>&)> accept;
    Notifier changed;
  };
  auto st = std::make_shared<State>();
  st->replies.resize(n);
  st->ok.resize(n);
  st->accept = std::move(accept);
  for (std::size_t j = 0; j < n; ++j) {
    Task<Result<Reply>> pending = call(j);
    scope.spawn([](Task<Result<Reply>> c, std::shared_ptr<State> s, std::size_t k) -> Task<void> {
      Result<Reply> r = co_await std::move(c);
      if (s->over) co_return;
      ++s->finished;
      s->ok[k] = s->accept(k, r);
      s->answered += s->ok[k] ? 1 : 0;
      s->replies[k] = std::move(r);
      s->changed.notify_all();
    }(std::move(pending), st, j));
  }
  const TimePoint deadline = rt.now() + rule.timeout;
  const std::size_t need = std::min(rule.k_min, n);
  std::function<bool(const std::vector<bool>&)> test = std::move(rule.enough);
  std::function<bool()> enough = [st, n, need, test] {
    return st->finished == n || (test ? test(st->ok) : st->answered >= need);
  };
  co_await wait_until(rt, st->changed, deadline, std::move(enough));
  if (st->finished < n) {
    std::function<bool()> all = [st, n] { return st->finished == n; };
    co_await wait_until(rt, st->changed, std::min(deadline, rt.now() + rule.grace), std::move(all));
  }
  st->over = true;
  co_return std::move(st->replies);
}

}  // namespace apiary::moe
