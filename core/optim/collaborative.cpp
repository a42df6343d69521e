#include "core/optim/collaborative.hpp"

#include <utility>

namespace apiary::optim {

using namespace averaging;

namespace {

// Clears a flag when a coroutine ends, however it ends.
struct FlagGuard {
  bool& flag;
  explicit FlagGuard(bool& f) : flag(f) { flag = true; }
  ~FlagGuard() { flag = false; }
};

// With BTARD, CenteredClip counts each member once (its weight, a claim, could otherwise outweigh
// the honest majority), at the reducers and at the validators alike (both use this config).
CollaborativeConfig btard_settings(CollaborativeConfig c) {
  if (c.btard.enabled) c.allreduce.aggregation.equal_weights = true;
  return c;
}

}  // namespace

CollaborativeOptimizer::CollaborativeOptimizer(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity,
                                               TensorSchema schema, std::vector<float> initial, CollaborativeConfig config)
    : rt_(rt),
      cfg_(btard_settings(std::move(config))),
      schema_(std::move(schema)),
      params_(std::move(initial)),
      grad_sum_(params_.size(), 0.0f),
      progress_(rt, dht, std::move(identity), cfg_.progress),
      matchmaker_(rt, rpc, dht, cfg_.matchmaking),
      averager_(rt, rpc, cfg_.allreduce),
      state_(rt, rpc, &dht, cfg_.progress.prefix, [this]() -> std::optional<ModelState> {
        if (cfg_.role != MemberKind::kFull) return std::nullopt;  // nothing to share, or cannot be reached
        std::vector<float> all = params_;
        if (get_opt_) {
          std::vector<float> opt = get_opt_();
          all.insert(all.end(), opt.begin(), opt.end());
        }
        return ModelState{epoch_, state_schema(), std::move(all), {}};
      }) {
  if (params_.size() != schema_.total())
    throw std::invalid_argument("initial parameters have " + std::to_string(params_.size()) + " values; the schema " +
                                schema_.describe() + " has " + std::to_string(schema_.total()));
  if (cfg_.momentum < 0 || cfg_.momentum >= 1) throw std::invalid_argument("momentum must be in [0, 1)");
  if (cfg_.powersgd_rank > 0) powersgd_ = std::make_unique<PowerSgd>(schema_, cfg_.powersgd_rank, schema_.hash());
  // Declarations (groups, state) signed with the key this peer proves to others.
  matchmaker_.set_identity(progress_.identity());
  state_.set_identity(progress_.identity());
  if (cfg_.btard.enabled) {
    if (cfg_.allreduce.aggregation.rule != AggregationRule::kCenteredClip)
      throw std::invalid_argument("BTARD verifies CenteredClip aggregates: set the aggregation to centered_clip");
    if (cfg_.powersgd_rank > 0 || cfg_.local_updates)
      throw std::invalid_argument("BTARD verifies whole gradients: it cannot run with PowerSGD or local updates");
    btard_ = std::make_unique<Btard>(rt, rpc, dht, progress_.identity(), cfg_.progress.prefix, cfg_.btard, averager_.config());
    matchmaker_.set_excluded([this](const Endpoint& e) { return btard_->banned(e); });
    state_.set_excluded([this](const Endpoint& e) { return btard_->banned(e); });  // a banned peer's state is not taken
    progress_.set_ignored([this](const std::string& tag) { return btard_->banned_tag(tag); });
  }
  if (cfg_.momentum > 0) {
    momentum_.assign(params_.size(), 0.0f);
    set_optimizer_state(schema_, [this] { return momentum_; }, [this](std::vector<float> m) { momentum_ = std::move(m); });
  }
}

void CollaborativeOptimizer::set_recompute(Recompute r) {
  if (btard_) btard_->set_recompute(std::move(r));
}

void CollaborativeOptimizer::set_optimizer_state(TensorSchema schema, std::function<std::vector<float>()> get,
                                                 std::function<void(std::vector<float>)> set) {
  opt_schema_ = std::move(schema);
  get_opt_ = std::move(get);
  set_opt_ = std::move(set);
}

TensorSchema CollaborativeOptimizer::state_schema() const {
  TensorSchema s = schema_;
  s.shapes.insert(s.shapes.end(), opt_schema_.shapes.begin(), opt_schema_.shapes.end());
  return s;
}

Member CollaborativeOptimizer::self() const { return Member{rt_.transport.local(), cfg_.role, cfg_.bandwidth}; }

void CollaborativeOptimizer::accumulate(std::span<const float> grad_sum, std::uint64_t samples) {
  if (cfg_.role == MemberKind::kAux) throw std::logic_error("an auxiliary peer trains nothing");
  if (!cfg_.local_updates || !grad_sum.empty()) {
    if (grad_sum.size() != grad_sum_.size())
      throw std::invalid_argument("gradient has " + std::to_string(grad_sum.size()) + " values, the parameters " +
                                  std::to_string(grad_sum_.size()));
    if (!cfg_.local_updates)
      for (std::size_t i = 0; i < grad_sum.size(); ++i) grad_sum_[i] += grad_sum[i];
  }
  samples_ += samples;
  // Throughput: an exponential moving average of samples per second between calls.
  const TimePoint now = rt_.now();
  if (last_accumulate_ && now > *last_accumulate_) {
    const double inst = static_cast<double>(samples) / std::chrono::duration<double>(now - *last_accumulate_).count();
    rate_ = rate_ == 0 ? inst : 0.8 * rate_ + 0.2 * inst;
  }
  last_accumulate_ = now;
}

Task<SwarmProgress> CollaborativeOptimizer::report_progress() {
  if (!in_step_) {
    PeerProgress mine{epoch_, samples_, rate_, {}, cfg_.role == MemberKind::kClient};
    published_ = samples_;
    co_await progress_.publish(mine);
  }
  SwarmProgress swarm = co_await progress_.fetch();
  co_return swarm;
}

double CollaborativeOptimizer::estimated_samples(const SwarmProgress& swarm) const {
  if (swarm.epoch != epoch_ || swarm.fetched == TimePoint{}) return static_cast<double>(swarm.samples);
  const double mine = static_cast<double>(samples_ - std::min(published_, samples_));
  const double others = std::max(0.0, swarm.samples_per_second - rate_) * to_seconds(rt_.now() - swarm.fetched);
  return static_cast<double>(swarm.samples) + mine + others;
}

bool CollaborativeOptimizer::step_due(const SwarmProgress& swarm, bool early) const {
  if (swarm.epoch > epoch_) return true;  // behind: step() catches up
  if (swarm.epoch != epoch_ || swarm.fetched == TimePoint{}) return false;
  if (early) {
    const TimePoint now = rt_.now();
    return progress_.matchmaking_time(swarm, now) <= now;
  }
  return swarm.ready || estimated_samples(swarm) >= static_cast<double>(cfg_.progress.target_batch);
}

Task<Result<SwarmProgress>> CollaborativeOptimizer::wait_for_target(std::uint64_t) {
  const TimePoint give_up = rt_.now() + cfg_.max_wait;
  if (btard_) co_await btard_->refresh_bans();
  std::optional<std::uint64_t> published;
  while (true) {
    // Re-publish only when there is news (the training loop may accumulate while we wait).
    if (published != samples_ || !published) {
      PeerProgress mine{epoch_, samples_, rate_, {}, cfg_.role == MemberKind::kClient};
      published_ = samples_;
      co_await progress_.publish(mine);
      published = mine.samples;
    }
    SwarmProgress swarm = co_await progress_.fetch();
    if (swarm.ready && swarm.epoch == epoch_) co_return swarm;
    if (swarm.epoch > epoch_) {  // behind: catch up, then contribute from the next step on
      const std::uint64_t was = epoch_;
      if (cfg_.role == MemberKind::kAux) {
        epoch_ = swarm.epoch;  // nothing to download: follow the swarm
        continue;
      }
      catch_up_target_ = swarm.epoch;
      Result<std::uint64_t> caught = co_await join(swarm.epoch);
      if (!caught.ok()) co_return caught.error();
      rt_.observer.count("optim.catch_ups");
      co_return Error{ErrorCode::kCancelled, "caught up from epoch " + std::to_string(was) + " to " + std::to_string(epoch_) +
                                                 "; accumulate on the new parameters and step again"};
    }
    if (rt_.now() >= give_up) {
      ++wait_timeouts_;
      co_return Error{ErrorCode::kTimeout, "the swarm gathered " + std::to_string(swarm.samples) + " of " +
                                               std::to_string(cfg_.progress.target_batch) + " samples in " +
                                               format_duration(cfg_.max_wait)};
    }
    co_await sleep_on(rt_.timers, cfg_.poll);
  }
}

Task<Result<Group>> CollaborativeOptimizer::find_group(std::string key, const TensorSchema& schema, std::size_t peers,
                                                      std::size_t at_least) {
  // Set in full every time: no call's sizes carry over to the next.
  auto& mm = matchmaker_.config();
  mm.min_group_size = std::clamp(at_least, cfg_.matchmaking.min_group_size, cfg_.matchmaking.target_group_size);
  mm.target_group_size = cfg_.size_groups_by_progress || at_least > 0
                             ? std::clamp<std::size_t>(peers, mm.min_group_size, cfg_.matchmaking.target_group_size)
                             : cfg_.matchmaking.target_group_size;
  Result<Group> g = co_await matchmaker_.find_group(std::move(key), schema, self());
  co_return g;
}

Task<Result<Group>> CollaborativeOptimizer::find_step_group(const SwarmProgress& swarm, const TensorSchema& schema) {
  std::string key = cfg_.progress.prefix + ".step" + std::to_string(epoch_);
  if (!btard_) co_return co_await find_group(std::move(key), schema, swarm.peers);
  // BTARD outvotes attackers within a group (CenteredClip, validators, ban quorums): a group
  // that is a part of the swarm may be half attackers, and trainers that step in a part of their
  // own drift apart. So a step needs more than half of every trainer that reports progress (those
  // behind included); a trainer left out catches up instead. Honest trainers, a majority, can
  // always form one.
  const std::size_t reporters = swarm.peers + swarm.behind;
  Result<Group> g = co_await find_group(std::move(key), schema, reporters, reporters / 2 + 1);
  if (!g.ok()) rt_.observer.count("optim.btard_no_majority_group");
  co_return g;
}

Task<Result<AllReduceReport>> CollaborativeOptimizer::average_state(std::size_t peers) {
  const TensorSchema schema = state_schema();
  Result<Group> group = co_await find_group(cfg_.progress.prefix + ".state" + std::to_string(epoch_), schema, peers);
  if (!group.ok()) co_return group.error();
  std::vector<float> local;
  if (cfg_.role != MemberKind::kAux) {
    local = params_;
    if (get_opt_) {
      std::vector<float> opt = get_opt_();
      local.insert(local.end(), opt.begin(), opt.end());
    }
  }
  const double weight = cfg_.role == MemberKind::kAux ? 0.0 : static_cast<double>(std::max<std::uint64_t>(1, samples_since_state_));
  Result<AllReduceReport> avg = co_await averager_.all_reduce(std::move(*group), std::move(local), weight);
  if (!avg.ok()) co_return avg.error();
  samples_since_state_ = 0;
  if (cfg_.role != MemberKind::kAux) {
    std::copy(avg->averaged.begin(), avg->averaged.begin() + static_cast<std::ptrdiff_t>(params_.size()), params_.begin());
    if (set_opt_) set_opt_(std::vector<float>(avg->averaged.begin() + static_cast<std::ptrdiff_t>(params_.size()), avg->averaged.end()));
  }
  rt_.observer.count("optim.state_averagings");
  co_return avg;
}

Task<Result<StepReport>> CollaborativeOptimizer::step() {
  if (in_step_) co_return Error{ErrorCode::kInvalidArgument, "a step is already running"};
  if (cfg_.role == MemberKind::kAux) co_return Error{ErrorCode::kInvalidArgument, "an auxiliary peer assists, it does not step"};
  FlagGuard guard(in_step_);
  const TimePoint t0 = rt_.now();
  // 1. Wait for the global batch (catching up if the swarm moved on without us).
  Result<SwarmProgress> swarm = co_await wait_for_target(samples_);
  if (!swarm.ok()) co_return swarm.error();
  // What this peer gathered until the swarm was ready goes into this step; what the training
  // loop accumulates from now on counts toward the next one (delayed parameter updates).
  std::vector<float> sum = std::exchange(grad_sum_, std::vector<float>(grad_sum_.size(), 0.0f));
  const std::uint64_t samples = std::exchange(samples_, 0);
  published_ = 0;
  samples_since_state_ += samples;
  FlagGuard averaging(averaging_);
  StepReport rep;
  rep.epoch = epoch_;
  rep.swarm_samples = swarm->samples;
  rep.samples = samples;
  const TimePoint t1 = rt_.now();
  rep.waited = t1 - t0;
  // 2. The step's group, and the mean gradient over the global batch.
  if (!cfg_.local_updates) {
    const TensorSchema& schema = powersgd_ ? powersgd_->first_schema() : schema_;
    Result<Group> group = co_await find_step_group(*swarm, schema);
    if (!group.ok()) co_return group.error();
    std::vector<float> mean(sum.size(), 0.0f);
    if (samples > 0)
      for (std::size_t i = 0; i < mean.size(); ++i) mean[i] = sum[i] / static_cast<float>(samples);
    rep.group = group->members.size();
    const Group members = *group;
    if (btard_) {
      std::optional<Error> failed = co_await btard_->commit(members, epoch_, mean, static_cast<double>(samples), params_);
      if (failed) co_return *failed;
    }
    Result<std::vector<float>> avg = co_await average_gradients(std::move(*group), std::move(mean), static_cast<double>(samples), rep);
    if (!avg.ok()) {
      if (btard_) btard_->abandon(members.id);
      co_return avg.error();
    }
    if (btard_) co_await btard_->verify(members, *avg, rep.allreduce.got_mean);
    // 3. The optimizer step, the same on every peer of the group (or the caller's optimizer's).
    if (cfg_.apply_sgd) {
      const float lr = static_cast<float>(cfg_.learning_rate);
      if (!momentum_.empty()) {
        const float mu = static_cast<float>(cfg_.momentum);
        for (std::size_t i = 0; i < params_.size(); ++i) {
          momentum_[i] = mu * momentum_[i] + (*avg)[i];
          params_[i] -= lr * momentum_[i];
        }
      } else {
        for (std::size_t i = 0; i < params_.size(); ++i) params_[i] -= lr * (*avg)[i];
      }
    }
    rep.mean_gradient = std::move(*avg);
    if (btard_) {
      if (auto from = btard_->resync_source(members.id)) {
        // Computed on other parameters than the group's plurality: take theirs (after this step).
        ++epoch_;
        Result<std::uint64_t> caught = co_await join_from(*from);
        rt_.observer.count(caught.ok() ? "optim.btard_resyncs" : "optim.btard_resync_failures");
        rep.resynced = true;
        co_return rep;
      }
    }
  }
  ++epoch_;
  rt_.observer.count("optim.steps");
  // 4. Every N epochs, parameters and optimizer state are averaged too (a failure here costs
  // only the drift it would have removed).
  if (cfg_.average_state_every > 0 && epoch_ % cfg_.average_state_every == 0) {
    Result<AllReduceReport> st = co_await average_state(swarm->peers);
    if (st.ok()) {
      rep.state_averaged = true;
      rep.bytes_sent += st->bytes_sent;
      rep.state = std::move(*st);
    } else {
      rt_.observer.log(LogLevel::kInfo, "optim", "state averaging after epoch " + std::to_string(epoch_) +
                                                     " failed: " + st.error().describe());
    }
  }
  rep.averaging = rt_.now() - t1;
  if (cfg_.role == MemberKind::kFull) co_await state_.declare(epoch_, cfg_.progress.ttl);  // newcomers fetch from us
  co_return rep;
}

Task<Result<std::vector<float>>> CollaborativeOptimizer::average_gradients(Group group, std::vector<float> mine, double weight,
                                                                            StepReport& rep) {
  if (!powersgd_) {
    Result<AllReduceReport> avg = co_await averager_.all_reduce(std::move(group), std::move(mine), weight);
    if (!avg.ok()) co_return avg.error();
    rep.bytes_sent += avg->bytes_sent;
    std::vector<float> mean = std::move(avg->averaged);  // StepReport::mean_gradient holds it
    rep.allreduce = std::move(*avg);
    co_return mean;
  }
  // PowerSGD: the P's (and the tensors left whole), then the Q's, in the same group under a
  // second id every member derives alike.
  const bool holds = !mine.empty();
  Group second = group;
  second.id = group.id ^ 0x9e3779b97f4a7c15ULL;
  second.schema = powersgd_->second_schema();
  std::vector<float> first_in = holds ? powersgd_->begin(mine) : std::vector<float>{};
  Result<AllReduceReport> a = co_await averager_.all_reduce(std::move(group), std::move(first_in), weight);
  if (!a.ok()) co_return a.error();
  rep.bytes_sent += a->bytes_sent;
  std::vector<float> second_in = holds ? powersgd_->middle(a->averaged) : std::vector<float>{};
  Result<AllReduceReport> b = co_await averager_.all_reduce(std::move(second), std::move(second_in), weight);
  if (!b.ok()) co_return b.error();
  rep.bytes_sent += b->bytes_sent;
  std::vector<float> mean = holds ? powersgd_->finish(b->averaged) : std::vector<float>{};
  rep.allreduce = std::move(*a);  // the first round (its report names who failed)
  rt_.observer.count("optim.powersgd_steps");
  co_return mean;
}

Task<Result<StepReport>> CollaborativeOptimizer::assist() {
  if (cfg_.role != MemberKind::kAux) co_return Error{ErrorCode::kInvalidArgument, "only an auxiliary peer assists"};
  if (in_step_) co_return Error{ErrorCode::kInvalidArgument, "a step is already running"};
  FlagGuard guard(in_step_);
  const TimePoint t0 = rt_.now();
  Result<SwarmProgress> swarm = co_await wait_for_target(0);
  if (!swarm.ok()) co_return swarm.error();
  StepReport rep;
  rep.epoch = epoch_;
  rep.swarm_samples = swarm->samples;
  const TimePoint t1 = rt_.now();
  rep.waited = t1 - t0;
  if (!cfg_.local_updates) {
    const TensorSchema& schema = powersgd_ ? powersgd_->first_schema() : schema_;
    Result<Group> group = co_await find_step_group(*swarm, schema);
    if (!group.ok()) co_return group.error();
    rep.group = group->members.size();
    const Group members = *group;
    if (btard_) {
      std::optional<Error> failed = co_await btard_->commit(members, epoch_, {}, 0.0, params_);
      if (failed) co_return *failed;
    }
    Result<std::vector<float>> avg = co_await average_gradients(std::move(*group), {}, 0.0, rep);
    if (!avg.ok()) {
      if (btard_) btard_->abandon(members.id);
      co_return avg.error();
    }
    if (btard_) co_await btard_->verify(members, {}, rep.allreduce.got_mean);
  }
  ++epoch_;
  if (cfg_.average_state_every > 0 && epoch_ % cfg_.average_state_every == 0) {
    Result<AllReduceReport> st = co_await average_state(swarm->peers);
    if (st.ok()) {
      rep.state_averaged = true;
      rep.bytes_sent += st->bytes_sent;
    }
  }
  rep.averaging = rt_.now() - t1;
  rt_.observer.count("optim.assists");
  co_return rep;
}

Task<Result<std::uint64_t>> CollaborativeOptimizer::join_from(Endpoint peer) {
  Result<ModelState> st = co_await state_.download_from(peer, state_schema(), cfg_.state_timeout);
  if (!st.ok()) co_return st.error();
  if (st->epoch < epoch_) co_return Error{ErrorCode::kRejected, "the peer's state is older than this peer's"};
  adopt(std::move(*st));
  co_return epoch_;
}

void CollaborativeOptimizer::adopt(ModelState st) {
  const auto n = static_cast<std::ptrdiff_t>(params_.size());
  params_.assign(st.tensors.begin(), st.tensors.begin() + n);
  if (set_opt_) set_opt_(std::vector<float>(st.tensors.begin() + n, st.tensors.end()));
  epoch_ = st.epoch;
  std::fill(grad_sum_.begin(), grad_sum_.end(), 0.0f);
  samples_ = 0;
  published_ = 0;
}

Task<Result<std::uint64_t>> CollaborativeOptimizer::join(std::uint64_t max_epoch) {
  // Never back: a peer that catches up takes no state older than its own epoch, nor one ahead of
  // where it believes the swarm is.
  Result<ModelState> st = co_await state_.download(state_schema(), cfg_.state_timeout, epoch_, max_epoch);
  if (!st.ok()) co_return st.error();
  adopt(std::move(*st));
  samples_since_state_ = 0;
  rt_.observer.count("optim.state_downloads");
  co_return epoch_;
}

}  // namespace apiary::optim
