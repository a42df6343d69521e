#include "core/optim/diloco.hpp"

namespace apiary::optim {

using namespace averaging;

DilocoOptimizer::DilocoOptimizer(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, TensorSchema schema, std::vector<float> initial,
                                 DilocoConfig config)
    : rt_(rt),
      dht_(dht),
      cfg_(std::move(config)),
      schema_(std::move(schema)),
      params_(std::move(initial)),
      start_(params_),
      momentum_(params_.size(), 0.0f),
      matchmaker_(rt, rpc, dht, cfg_.matchmaking),
      averager_(rt, rpc, cfg_.allreduce) {
  if (params_.size() != schema_.total())
    throw std::invalid_argument("initial parameters do not match the schema " + schema_.describe());
  if (cfg_.identity) matchmaker_.set_identity(*cfg_.identity);
}

bool DilocoOptimizer::inner_step_done(std::uint64_t samples) {
  samples_ += samples;
  return ++inner_ >= std::max<std::size_t>(1, cfg_.inner_steps);
}

Task<Result<OuterReport>> DilocoOptimizer::outer_step() {
  if (cfg_.role == MemberKind::kAux) co_return Error{ErrorCode::kInvalidArgument, "an auxiliary peer assists, it does not step"};
  if (cfg_.announce_round) {
    dht::Record r;
    r.key = rounds_key();
    r.subkey = rt_.transport.local().to_string();
    wire::Writer w;
    w.varint(round_);
    r.value = w.take();
    r.expiration = rt_.now() + cfg_.announce_ttl;
    co_await dht_.store(std::move(r));
  }
  std::vector<float> pseudo(params_.size());
  for (std::size_t i = 0; i < pseudo.size(); ++i) pseudo[i] = start_[i] - params_[i];
  Member self{rt_.transport.local(), cfg_.role, cfg_.bandwidth};
  Result<Group> group = co_await matchmaker_.find_group(cfg_.prefix + ".outer" + std::to_string(round_), schema_, self);
  if (!group.ok()) co_return group.error();
  const std::size_t members = group->members.size();
  const double weight = samples_ > 0 ? static_cast<double>(samples_) : 1.0;
  Result<AllReduceReport> avg = co_await averager_.all_reduce(std::move(*group), std::move(pseudo), weight);
  if (!avg.ok()) co_return avg.error();
  // Outer SGD with momentum (Nesterov: step along the look-ahead), from the start parameters.
  const float lr = static_cast<float>(cfg_.outer_lr), mu = static_cast<float>(cfg_.outer_momentum);
  for (std::size_t i = 0; i < params_.size(); ++i) {
    const float g = avg->averaged[i];
    momentum_[i] = mu * momentum_[i] + g;
    const float update = cfg_.nesterov ? g + mu * momentum_[i] : momentum_[i];
    start_[i] -= lr * update;
    params_[i] = start_[i];
  }
  OuterReport rep{round_, members, avg->bytes_sent, samples_};
  inner_ = 0;
  samples_ = 0;
  ++round_;
  rt_.observer.count("optim.outer_steps");
  co_return rep;
}

Task<Result<OuterReport>> DilocoOptimizer::assist() {
  if (cfg_.role != MemberKind::kAux) co_return Error{ErrorCode::kInvalidArgument, "only an auxiliary peer assists"};
  // The swarm's round: the median of the rounds its trainers announced (undecodable ones skipped).
  dht::GetResult got = co_await dht_.get(rounds_key(), cfg_.matchmaking.read_holders);
  std::vector<std::uint64_t> rounds;
  for (const auto& r : got.records) {
    try {
      wire::Reader rd(r.value);
      rounds.push_back(rd.varint());
    } catch (const wire::DecodeError&) {
      rt_.observer.count("optim.bad_round_announcements");
    }
  }
  if (rounds.empty()) co_return Error{ErrorCode::kRejected, "no trainer has announced a round yet"};
  std::nth_element(rounds.begin(), rounds.begin() + static_cast<std::ptrdiff_t>(rounds.size() / 2), rounds.end());
  const std::uint64_t swarm = rounds[rounds.size() / 2];
  if (swarm < round_) co_return Error{ErrorCode::kRejected, "the trainers have not reached round " + std::to_string(round_) + " yet"};
  round_ = swarm;
  Member self{rt_.transport.local(), MemberKind::kAux, cfg_.bandwidth};
  Result<Group> group = co_await matchmaker_.find_group(cfg_.prefix + ".outer" + std::to_string(round_), schema_, self);
  if (!group.ok()) co_return group.error();
  const std::size_t members = group->members.size();
  Result<AllReduceReport> avg = co_await averager_.all_reduce(std::move(*group), {}, 0.0);
  if (!avg.ok()) co_return avg.error();
  OuterReport rep{round_, members, avg->bytes_sent, 0};
  ++round_;
  rt_.observer.count("optim.outer_assists");
  co_return rep;
}

}  // namespace apiary::optim
