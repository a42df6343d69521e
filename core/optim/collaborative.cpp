#include "core/optim/collaborative.hpp"

#include <utility>

namespace apiary::optim {

using namespace averaging;

CollaborativeOptimizer::CollaborativeOptimizer(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity,
                                               TensorSchema schema, std::vector<float> initial, CollaborativeConfig config)
    : rt_(rt),
      cfg_(std::move(config)),
      schema_(std::move(schema)),
      params_(std::move(initial)),
      grad_sum_(params_.size(), 0.0f),
      progress_(rt, dht, std::move(identity), cfg_.progress),
      matchmaker_(rt, rpc, dht, cfg_.matchmaking),
      averager_(rt, rpc, cfg_.allreduce),
      state_(rt, rpc, &dht, cfg_.progress.prefix, [this] {
        return std::optional<ModelState>(ModelState{epoch_, schema_, params_, {}});
      }) {
  if (params_.size() != schema_.total())
    throw std::invalid_argument("initial parameters have " + std::to_string(params_.size()) + " values; the schema " +
                                schema_.describe() + " has " + std::to_string(schema_.total()));
}

void CollaborativeOptimizer::accumulate(std::span<const float> grad_sum, std::uint64_t samples) {
  if (grad_sum.size() != grad_sum_.size())
    throw std::invalid_argument("gradient has " + std::to_string(grad_sum.size()) + " values, the parameters " +
                                std::to_string(grad_sum_.size()));
  for (std::size_t i = 0; i < grad_sum.size(); ++i) grad_sum_[i] += grad_sum[i];
  samples_ += samples;
}

Task<Result<StepReport>> CollaborativeOptimizer::step() {
  // What this peer gathered until now goes into this step; what the training loop accumulates
  // while the step runs counts toward the next one (delayed parameter updates: computing the
  // next batches overlaps the averaging of this one).
  std::vector<float> sum = std::exchange(grad_sum_, std::vector<float>(grad_sum_.size(), 0.0f));
  const std::uint64_t samples = std::exchange(samples_, 0);
  // 1. Tell the swarm how far we are, then wait for the global batch.
  PeerProgress mine{epoch_, samples, 0.0, {}, false};
  co_await progress_.publish(mine);
  const TimePoint give_up = rt_.now() + cfg_.max_wait;
  SwarmProgress swarm;
  while (true) {
    swarm = co_await progress_.fetch();
    if (swarm.ready && swarm.epoch == epoch_) break;
    if (swarm.epoch > epoch_) {  // behind: catch up, then contribute from the next step on
      Result<std::uint64_t> caught = co_await join();
      if (!caught.ok()) co_return caught.error();
      co_return Error{ErrorCode::kCancelled, "caught up from epoch behind to " + std::to_string(epoch_) +
                                                 "; accumulate on the new parameters and step again"};
    }
    if (rt_.now() >= give_up)
      co_return Error{ErrorCode::kTimeout, "the swarm gathered " + std::to_string(swarm.samples) + " of " +
                                               std::to_string(cfg_.progress.target_batch) + " samples in " +
                                               format_duration(cfg_.max_wait)};
    co_await sleep_on(rt_.timers, cfg_.poll);
  }
  // 2. The step's group, and the mean gradient over the global batch.
  Member self{rt_.transport.local(), MemberKind::kFull, 1.0};
  Result<Group> group = co_await matchmaker_.find_group(cfg_.progress.prefix + ".step" + std::to_string(epoch_), schema_, self);
  if (!group.ok()) co_return group.error();
  std::vector<float> mean(sum.size(), 0.0f);
  if (samples > 0)
    for (std::size_t i = 0; i < mean.size(); ++i) mean[i] = sum[i] / static_cast<float>(samples);
  const std::size_t members = group->members.size();
  Result<AllReduceReport> avg = co_await averager_.all_reduce(std::move(*group), std::move(mean), static_cast<double>(samples));
  if (!avg.ok()) co_return avg.error();
  // 3. The optimizer step, the same on every peer of the group (or the caller's optimizer's).
  if (cfg_.apply_sgd) {
    const float lr = static_cast<float>(cfg_.learning_rate);
    for (std::size_t i = 0; i < params_.size(); ++i) params_[i] -= lr * avg->averaged[i];
  }
  std::vector<float> mean_gradient = avg->averaged;
  StepReport rep{epoch_, members, swarm.samples, std::move(mean_gradient), std::move(*avg)};
  ++epoch_;
  rt_.observer.count("optim.steps");
  co_await state_.declare(epoch_, cfg_.progress.ttl);  // newcomers can fetch the state from us
  co_return rep;
}

Task<Result<std::uint64_t>> CollaborativeOptimizer::join() {
  Result<ModelState> st = co_await state_.download(schema_, cfg_.state_timeout);
  if (!st.ok()) co_return st.error();
  params_ = std::move(st->tensors);
  epoch_ = st->epoch;
  std::fill(grad_sum_.begin(), grad_sum_.end(), 0.0f);
  samples_ = 0;
  rt_.observer.count("optim.state_downloads");
  co_return epoch_;
}

}  // namespace apiary::optim
