#include "harness/workloads/training.hpp"

#include <algorithm>
#include <cmath>

#include "harness/data/idx.hpp"
#include "harness/runner.hpp"
#include "harness/spec.hpp"
#include "harness/workloads/averaging.hpp"

namespace apiary {

using namespace averaging;

namespace {

optim::Examples to_examples(const data::ImageSet& set, std::uint64_t limit) {
  optim::Examples e;
  const std::size_t n = limit ? std::min<std::size_t>(limit, set.size()) : set.size();
  e.inputs = std::size_t{set.rows} * set.cols;
  e.x.resize(n * e.inputs);
  // Standardised with Fashion-MNIST's pixel mean and deviation (0.286, 0.353): centred inputs keep
  // plain SGD well conditioned.
  for (std::size_t i = 0; i < n * e.inputs; ++i) e.x[i] = (static_cast<float>(set.pixels[i]) / 255.0f - 0.286f) / 0.353f;
  e.y.assign(set.labels.begin(), set.labels.begin() + static_cast<std::ptrdiff_t>(n));
  return e;
}

}  // namespace

// ---- one peer ----------------------------------------------------------------------------

TrainingApp::TrainingApp(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity, const TrainingDriver& driver,
                         std::uint32_t index, double bandwidth)
    : rt_(rt),
      dht_(dht),
      driver_(driver),
      spec_(driver.spec()),
      index_(index),
      kind_(driver.kind_of(index)),
      speed_(driver.speed_of(index)),
      data_rng_(Rng(driver.swarm().seed ^ 0x64617461ULL).fork(index + 1)),
      attacker_(driver.attacker(index)),
      attack_rng_(Rng(driver.swarm().seed ^ 0x62797aULL).fork(index + 1)),
      key_(identity.public_key) {
  const auto schema = driver.model().schema();
  auto allreduce = spec_.allreduce;
  if (attacker_ && spec_.attack.kind == optim::AttackKind::kWrongAggregate)
    allreduce.faults.tamper_result = [this](std::span<float> mean) {
      if (!attacking()) return;
      optim::tamper_aggregate(spec_.attack, mean);
      rt_.observer.count("train.attacks.wrong_aggregate");
    };
  if (attacker_ && spec_.attack.kind == optim::AttackKind::kBreakCommitment)
    allreduce.faults.tamper_sent = [this](std::span<float> mine) {
      if (!attacking()) return;
      optim::tamper_aggregate(spec_.attack, mine);
      rt_.observer.count("train.attacks.break_commitment");
    };
  if (spec_.mode == "diloco") {
    optim::DilocoConfig dc;
    dc.prefix = "train";
    dc.inner_steps = spec_.inner_steps;
    dc.outer_lr = spec_.outer_lr;
    dc.outer_momentum = spec_.outer_momentum;
    dc.nesterov = true;
    dc.matchmaking = spec_.matchmaking;
    dc.allreduce = allreduce;
    dc.bandwidth = bandwidth;
    dc.role = kind_;
    dc.announce_round = spec_.aux_fraction > 0;  // the auxiliary peers follow the rounds through the DHT
    dc.identity = identity;
    diloco_ = std::make_unique<optim::DilocoOptimizer>(rt, rpc, dht, schema, driver.initial(), dc);
    local_momentum_.assign(driver.initial().size(), 0.0f);
    return;
  }
  optim::CollaborativeConfig cc;
  cc.progress.prefix = "train";
  cc.progress.target_batch = spec_.target_batch;
  cc.progress.ttl = std::max<Duration>(std::chrono::seconds(60), spec_.progress_period * 10);
  cc.progress.stale = std::max<Duration>(std::chrono::seconds(30), spec_.progress_period * 5);
  cc.progress.matchmaking_lead = spec_.progress_period;
  cc.matchmaking = spec_.matchmaking;
  cc.allreduce = allreduce;
  cc.bandwidth = bandwidth;
  cc.role = kind_;
  cc.learning_rate = spec_.learning_rate;
  cc.momentum = spec_.momentum;
  cc.local_updates = spec_.local_updates;
  cc.average_state_every = spec_.average_state_every;
  cc.powersgd_rank = spec_.powersgd_rank;
  cc.poll = std::min<Duration>(spec_.progress_period, std::chrono::milliseconds(500));
  // A step on an optimistic estimate should give up soon and compute on.
  cc.max_wait = spec_.max_wait > Duration::zero() ? spec_.max_wait : spec_.progress_period * 3 + std::chrono::seconds(1);
  cc.btard = spec_.btard;
  if (attacker_ && spec_.btard_false_accusations) cc.btard.accuse_falsely = [this] { return attacking(); };
  collab_ = std::make_unique<optim::CollaborativeOptimizer>(rt, rpc, dht, std::move(identity), schema, driver.initial(), cc);
  collab_->set_recompute([this](optim::Contribution c) { return recompute(std::move(c)); });
  if (spec_.local_updates) local_momentum_.assign(driver.initial().size(), 0.0f);
}

TrainingApp::~TrainingApp() { scope_.destroy_all(); }

void TrainingApp::joined() {
  joined_ = true;
  if (pending_) {
    const bool newcomer = *pending_;
    pending_.reset();
    begin(newcomer);
  }
}

void TrainingApp::begin(bool newcomer) {
  if (!joined_) {
    pending_ = newcomer;
    return;
  }
  if (started_flag_) return;
  started_flag_ = true;
  started_ = rt_.now();
  if (kind_ == MemberKind::kAux)
    scope_.spawn(assist_loop());
  else if (diloco_)
    scope_.spawn(diloco_loop());
  else
    scope_.spawn(collaborative_loop(newcomer));
}

std::span<const float> TrainingApp::parameters() const {
  return collab_ ? std::span<const float>(collab_->parameters()) : std::span<const float>(diloco_->parameters());
}

std::uint64_t TrainingApp::epoch() const { return collab_ ? collab_->epoch() : diloco_->round(); }

double TrainingApp::up_seconds() const { return to_seconds((finished_ ? finished_at_ : rt_.now()) - started_); }

Task<void> TrainingApp::compute_batch(std::vector<float>& grad) {
  // Invariant: a peer's epoch never goes back.
  if (const std::uint64_t e = epoch(); e < seen_epoch_) {
    rt_.observer.count("invariant.train.epoch_went_back");
    rt_.observer.log(LogLevel::kWarn, "invariant",
                     "peer " + std::to_string(index_) + ": epoch " + std::to_string(e) + " after " + std::to_string(seen_epoch_));
  } else {
    seen_epoch_ = e;
  }
  // The compute model: this batch keeps the device busy for B / speed seconds...
  const double seconds = spec_.batch_size / speed_;
  co_await sleep_on(rt_.timers, Duration(static_cast<std::int64_t>(seconds * 1e9)));
  busy_ += seconds;
  // ...and its gradient is real, on the parameters as they are now (an attacker's: on flipped
  // labels, or on old parameters, or scaled or random; attack.hpp).
  std::vector<std::size_t> rows(spec_.batch_size);
  if (spec_.btard.enabled && collab_)
    rows = seeded_rows(key_, collab_->epoch(), collab_->local_samples() / spec_.batch_size);
  else
    for (auto& r : rows) r = static_cast<std::size_t>(data_rng_.below(driver_.train().size()));
  grad.assign(driver_.model().parameters(), 0.0f);
  auto params = collab_ ? std::span<const float>(collab_->parameters()) : std::span<const float>(diloco_->parameters());
  const bool attack = attacking();
  if (attacker_ && spec_.attack.kind == optim::AttackKind::kDelayed) params = delayed_parameters();
  const bool flip = attack && spec_.attack.kind == optim::AttackKind::kLabelFlip;
  const double loss = driver_.model().grad_sum(params, flip ? driver_.train_flipped() : driver_.train(), rows, grad);
  if (attack && spec_.attack.kind == optim::AttackKind::kProgressPoison && poisoned_epoch_ != epoch()) {
    poisoned_epoch_ = epoch();
    const auto sybil = dht::Identity::from_seed(driver_.swarm().seed ^ (0x5b11ULL << 32) ^ index_);
    for (auto& rec : optim::poisoned_progress(collab_ ? collab_->progress_key() : "train:progress", sybil, rt_.now(), 1000000))
      dht_.spawn_store(std::move(rec), [obs = &rt_.observer](const dht::StoreResult& r) {
        obs->count("train.attacks.progress_poison.replicas", static_cast<std::int64_t>(r.replicas));
      });
  }
  if (attack) {
    optim::tamper_gradient(spec_.attack, grad, attack_rng_);
    if (spec_.attack.kind != optim::AttackKind::kWrongAggregate && spec_.attack.kind != optim::AttackKind::kBreakCommitment)
      rt_.observer.count("train.attacks." + optim::to_string(spec_.attack.kind));
  }
  samples_ += spec_.batch_size;
  rt_.observer.count("train.samples", spec_.batch_size);
  rt_.observer.sample("train.batch_loss", loss / spec_.batch_size);
}

std::vector<std::size_t> TrainingApp::seeded_rows(const optim::Key& key, std::uint64_t epoch, std::uint64_t b) const {
  Rng rng = optim::batch_rng(driver_.swarm().seed, key, epoch, b);
  std::vector<std::size_t> rows(spec_.batch_size);
  for (auto& r : rows) r = static_cast<std::size_t>(rng.below(driver_.train().size()));
  return rows;
}

// What a validator does: the member's batches of the step, on the step's parameters, summed in
// the order the member's optimizer summed them, as its mean; it costs this peer compute time.
Task<std::optional<std::vector<float>>> TrainingApp::recompute(optim::Contribution c) {
  if (!(c.weight >= spec_.batch_size) || std::fmod(c.weight, spec_.batch_size) != 0 || c.weight > 1e9 ||
      c.parameters.size() != driver_.model().parameters())
    co_return std::vector<float>{};  // no honest trainer contributes that: it cannot match
  const auto batches = static_cast<std::uint64_t>(c.weight) / spec_.batch_size;
  const double seconds = c.weight / speed_;
  co_await sleep_on(rt_.timers, Duration(static_cast<std::int64_t>(seconds * 1e9)));
  busy_ += seconds;
  rt_.observer.count("train.btard.recomputed_samples", static_cast<std::int64_t>(c.weight));
  std::vector<float> sum(c.parameters.size(), 0.0f), grad;
  for (std::uint64_t b = 0; b < batches; ++b) {
    grad.assign(sum.size(), 0.0f);
    driver_.model().grad_sum(c.parameters, driver_.train(), seeded_rows(c.public_key, c.epoch, b), grad);
    for (std::size_t i = 0; i < sum.size(); ++i) sum[i] += grad[i];
  }
  for (auto& x : sum) x = x / static_cast<float>(batches * spec_.batch_size);
  co_return sum;
}

bool TrainingApp::attacking() const { return attacker_ && optim::attacks_at(spec_.attack, epoch()); }

std::span<const float> TrainingApp::delayed_parameters() {
  // Keeps a snapshot per global step and computes on the one `delay` steps old (the oldest kept
  // until there is one that old): stale gradients from the attack step on.
  const std::uint64_t e = epoch();
  auto now = collab_ ? std::span<const float>(collab_->parameters()) : std::span<const float>(diloco_->parameters());
  if (!snapshots_.count(e)) snapshots_.emplace(e, std::vector<float>(now.begin(), now.end()));
  while (snapshots_.size() > 1 && snapshots_.begin()->first + spec_.attack.delay < e) snapshots_.erase(snapshots_.begin());
  if (!attacking()) return now;
  return snapshots_.begin()->second;
}

void TrainingApp::record_step(const Result<optim::StepReport>& r) {
  if (!r.ok()) {
    rt_.observer.count(r.error().code == ErrorCode::kCancelled ? "train.catch_ups" : "train.step_failures");
    // A catch-up toward a step past the run's last was set by a lie about the swarm's progress.
    if (r.error().code == ErrorCode::kCancelled && collab_ && collab_->catch_up_target() > spec_.steps)
      rt_.observer.count("train.catch_ups_past_last_step");
    rt_.observer.log(LogLevel::kInfo, "train", "peer " + std::to_string(index_) + " step: " + r.error().describe());
    return;
  }
  rt_.observer.count("train.steps_ok");
  rt_.observer.count("train.allreduce_bytes", static_cast<std::int64_t>(r->bytes_sent));
  rt_.observer.sample("train.step.averaging_s", to_seconds(r->averaging));
  rt_.observer.sample("train.step.waited_s", to_seconds(r->waited));
  if (r->group) rt_.observer.sample("train.step.group", static_cast<double>(r->group));
  // What the state round gave this peer (its parameters may have moved on since: local updates).
  const auto& st = r->state;
  if (r->state_averaged && st.failed_reducers.empty() && st.pieces_kept == 0 && kind_ != MemberKind::kAux &&
      st.averaged.size() >= driver_.model().parameters())
    driver_.check_state(r->epoch + 1, st.group, std::span<const float>(st.averaged).first(driver_.model().parameters()));
}

Task<void> TrainingApp::run_step() {
  const std::uint64_t timeouts = collab_->wait_timeouts();
  Result<optim::StepReport> r = co_await collab_->step();
  if (!r.ok() && collab_->wait_timeouts() > timeouts) {  // stepped on an optimistic estimate: compute on
    rt_.observer.count("train.step_retries");
    co_return;
  }
  record_step(r);
}

Task<void> TrainingApp::refresh_progress() {
  refreshing_ = true;
  last_refresh_ = rt_.now();
  swarm_ = co_await collab_->report_progress();
  refreshing_ = false;
}

Task<void> TrainingApp::collaborative_loop(bool newcomer) {
  if (newcomer) {
    Result<std::uint64_t> j = co_await collab_->join();
    if (!j.ok()) rt_.observer.log(LogLevel::kInfo, "train", "peer " + std::to_string(index_) + " state download: " + j.error().describe());
  }
  std::vector<float> grad;
  while (collab_->epoch() < spec_.steps) {
    co_await compute_batch(grad);
    if (spec_.local_updates) {  // the peer's own optimizer, every batch: SGD with momentum
      auto& p = collab_->parameters();
      const float lr = static_cast<float>(spec_.learning_rate), mu = static_cast<float>(spec_.momentum);
      for (std::size_t k = 0; k < p.size(); ++k) {
        local_momentum_[k] = mu * local_momentum_[k] + grad[k] / static_cast<float>(spec_.batch_size);
        p[k] -= lr * local_momentum_[k];
      }
      collab_->accumulate({}, spec_.batch_size);
    } else {
      collab_->accumulate(grad, spec_.batch_size);
    }
    if (collab_->stepping()) continue;
    if (!refreshing_ && rt_.now() - last_refresh_ >= spec_.progress_period) scope_.spawn(refresh_progress());
    if (collab_->step_due(swarm_, spec_.delayed_updates)) {
      swarm_ = {};
      if (spec_.delayed_updates) {
        scope_.spawn(run_step());  // compute on while it averages
      } else {
        const TimePoint idle0 = rt_.now();
        co_await run_step();
        rt_.observer.sample("train.step.idle_s", to_seconds(rt_.now() - idle0));
      }
    }
  }
  finished_ = true;
  finished_at_ = rt_.now();
}

Task<void> TrainingApp::assist_loop() {
  while (epoch() < spec_.steps) {
    std::optional<Error> failed;
    std::uint64_t bytes = 0;
    if (diloco_) {
      Result<optim::OuterReport> r = co_await diloco_->assist();
      if (r.ok()) bytes = r->bytes_sent;
      else failed = r.error();
    } else {
      Result<optim::StepReport> r = co_await collab_->assist();
      if (r.ok()) bytes = r->bytes_sent;
      else failed = r.error();
    }
    if (failed) {
      rt_.observer.count("train.assist_failures");
      co_await sleep_on(rt_.timers, spec_.progress_period);
      continue;
    }
    rt_.observer.count("train.assists_ok");
    rt_.observer.count("train.allreduce_bytes", static_cast<std::int64_t>(bytes));
  }
  finished_ = true;
  finished_at_ = rt_.now();
}

Task<void> TrainingApp::diloco_loop() {
  std::vector<float> grad;
  const float lr = static_cast<float>(spec_.learning_rate), mu = static_cast<float>(spec_.momentum);
  while (diloco_->round() < spec_.steps) {
    co_await compute_batch(grad);
    auto& p = diloco_->parameters();
    for (std::size_t k = 0; k < p.size(); ++k) {
      local_momentum_[k] = mu * local_momentum_[k] + grad[k] / static_cast<float>(spec_.batch_size);
      p[k] -= lr * local_momentum_[k];
    }
    if (!diloco_->inner_step_done(spec_.batch_size)) continue;
    const TimePoint idle0 = rt_.now();
    Result<optim::OuterReport> r = co_await diloco_->outer_step();
    rt_.observer.sample("train.step.idle_s", to_seconds(rt_.now() - idle0));
    if (!r.ok()) {
      rt_.observer.count("train.step_failures");
      rt_.observer.log(LogLevel::kInfo, "train", "peer " + std::to_string(index_) + " outer step: " + r.error().describe());
      continue;
    }
    rt_.observer.count("train.steps_ok");
    rt_.observer.count("train.allreduce_bytes", static_cast<std::int64_t>(r->bytes_sent));
    rt_.observer.sample("train.step.group", static_cast<double>(r->group));
  }
  finished_ = true;
  finished_at_ = rt_.now();
}

// ---- the swarm ---------------------------------------------------------------------------

std::vector<MemberKind> training_roles(const SwarmSpec& spec) {
  const auto aux = static_cast<std::uint32_t>(std::lround(spec.workload_config<TrainingWorkloadSpec>().aux_fraction * spec.peers));
  const auto clients = static_cast<std::uint32_t>(std::lround(spec.workload_config<TrainingWorkloadSpec>().client_fraction * spec.peers));
  std::vector<MemberKind> kinds(spec.peers, MemberKind::kFull);
  for (std::uint32_t i = 0; i < spec.peers; ++i) {
    if (i >= spec.peers - aux) kinds[i] = MemberKind::kAux;
    else if (i >= spec.peers - aux - clients) kinds[i] = MemberKind::kClient;
    if (spec.behind_nat(i)) kinds[i] = MemberKind::kClient;  // it cannot reduce: nobody can reach it
  }
  return kinds;
}

std::vector<double> device_speeds(const SwarmSpec& spec) {
  Rng rng(spec.seed ^ 0x7370656564ULL);  // "speed"
  std::vector<double> out;
  for (std::uint32_t i = 0; i < spec.peers; ++i)
    out.push_back(std::max(1.0, spec.workload_config<TrainingWorkloadSpec>().samples_per_second.sample(rng)));
  return out;
}

TrainingDriver::TrainingDriver(const SwarmSpec& spec, Metrics& metrics)
    : spec_(spec), tr_(spec.workload_config<TrainingWorkloadSpec>()), metrics_(metrics), model_(784, 10) {
  train_ = to_examples(data::load_fashion_mnist("train", tr_.dataset_dir), tr_.train_samples);
  test_ = to_examples(data::load_fashion_mnist("t10k", tr_.dataset_dir), tr_.eval_samples);
  initial_.assign(model_.parameters(), 0.0f);
  speeds_ = device_speeds(spec);
  kinds_ = training_roles(spec);
  attackers_ = training_attackers(spec);
  if (tr_.attack.kind == optim::AttackKind::kLabelFlip) {
    flipped_ = train_;
    for (auto& y : flipped_.y) y = static_cast<std::uint8_t>(9 - y);
  }
}

std::vector<bool> training_attackers(const SwarmSpec& spec) {
  const auto& a = spec.workload_config<TrainingWorkloadSpec>().attack;
  const auto kinds = training_roles(spec);
  std::vector<bool> out(kinds.size(), false);
  std::uint32_t left = a.kind == optim::AttackKind::kNone ? 0 : a.attackers;
  for (std::size_t i = kinds.size(); i-- > 0 && left > 0;)
    if (kinds[i] != MemberKind::kAux) {
      out[i] = true;
      --left;
    }
  return out;
}

MemberKind TrainingDriver::kind_of(std::uint32_t peer) const { return kinds_[peer]; }

void TrainingDriver::check_state(std::uint64_t epoch, std::uint64_t group, std::span<const float> params) const {
  while (!state_seen_.empty() && state_seen_.begin()->first.first + 4 < epoch) state_seen_.erase(state_seen_.begin());
  auto [it, first] = state_seen_.try_emplace({epoch, group}, params.begin(), params.end());
  if (first) return;
  metrics_.count("train.state_compared", 1);
  const auto& seen = it->second;
  double absmax = 0;
  for (float x : seen) absmax = std::max(absmax, static_cast<double>(std::fabs(x)));
  const double tol = mean_tolerance(tr_.allreduce.codec.codec, absmax);
  std::uint64_t off = seen.size() == params.size() ? 0 : params.size();
  for (std::size_t k = 0; k < seen.size() && k < params.size(); ++k)
    if (!(std::fabs(params[k] - seen[k]) <= 2 * tol)) ++off;
  if (off) metrics_.count("invariant.train.state_disagrees", off);
}

void TrainingDriver::btard_figures(const std::vector<TrainingApp*>& apps, std::map<std::string, double>& figures) const {
  if (!tr_.btard.enabled) return;
  std::map<Endpoint, std::uint32_t> who;
  for (auto* a : apps)
    if (a) who[a->endpoint()] = a->index();
  std::uint64_t honest_banned = 0;
  double last = -1;
  std::vector<std::size_t> banned_by(attackers_.size(), 0);  // honest trainers that banned each peer
  std::size_t honest = 0;
  for (auto* a : apps) {
    if (!a || attackers_[a->index()] || a->kind() == MemberKind::kAux || !a->btard()) continue;
    ++honest;
    for (const auto& b : a->btard()->bans()) {
      auto it = who.find(b.endpoint);
      if (it == who.end()) continue;
      if (!attackers_[it->second]) {
        ++honest_banned;  // the reason is in the log (btard, at info level)
      } else {
        ++banned_by[it->second];
        last = std::max(last, static_cast<double>(b.epoch));
      }
    }
  }
  std::size_t caught = 0, attackers = 0, seen = 0;
  for (std::size_t i = 0; i < attackers_.size(); ++i)
    if (attackers_[i]) {
      ++attackers;
      if (honest > 0 && banned_by[i] == honest) ++caught;
      if (banned_by[i] > 0) ++seen;
    }
  figures["btard_attackers"] = static_cast<double>(attackers);
  figures["btard_attackers_banned_by_any"] = static_cast<double>(seen);  // by at least one honest trainer
  figures["btard_attackers_banned"] = static_cast<double>(caught);  // by every honest trainer
  figures["btard_false_bans"] = static_cast<double>(honest_banned);
  figures["btard_last_ban_epoch"] = last;
  if (honest_banned) metrics_.count("invariant.btard.honest_banned", static_cast<std::int64_t>(honest_banned));
}

bool TrainingDriver::evaluate(double elapsed, const std::vector<TrainingApp*>& apps) {
  double loss = 0, acc = 0;
  std::size_t n = 0, trainers = 0, finished = 0;
  std::uint64_t epoch = 0;
  for (auto* a : apps) {
    if (!a || !a->started() || a->kind() == MemberKind::kAux) continue;
    if (!attackers_[a->index()]) {  // Byzantine trainers may never finish (banned ones cannot)
      ++trainers;
      finished += a->finished();
    }
    epoch = std::max(epoch, a->epoch());
    if (n < 4) {  // the first few trainers that are up: they hold (nearly) the same parameters
      const auto e = model_.evaluate(a->parameters(), test_, test_.size());
      loss += e.loss;
      acc += e.accuracy;
      ++n;
    }
  }
  if (n == 0) return false;
  loss /= static_cast<double>(n);
  acc /= static_cast<double>(n);
  metrics_.sample("train.eval.time_s", elapsed);
  metrics_.sample("train.eval.loss", loss);
  metrics_.sample("train.eval.accuracy", acc);
  metrics_.sample("train.eval.epoch", static_cast<double>(epoch));
  if (tr_.target_loss > 0 && time_to_target_ < 0 && loss <= tr_.target_loss) time_to_target_ = elapsed;
  return (tr_.stop_at_target && time_to_target_ >= 0) || (trainers > 0 && finished == trainers);
}

void TrainingDriver::finish(double elapsed, const std::vector<TrainingApp*>& apps, std::map<std::string, double>& figures) {
  evaluate(elapsed, apps);
  btard_figures(apps, figures);
  double umin = 1, usum = 0;
  std::size_t n = 0;
  std::uint64_t epoch = 0;
  for (auto* a : apps) {
    if (!a || !a->started() || a->kind() == MemberKind::kAux || a->up_seconds() <= 0) continue;
    const double u = a->busy_seconds() / a->up_seconds();
    metrics_.sample("train.utilisation", u);
    umin = std::min(umin, u);
    usum += u;
    ++n;
    epoch = std::max(epoch, a->epoch());
  }
  const auto& s = metrics_.series();
  const double samples = static_cast<double>(metrics_.counter("train.samples"));
  figures["train_seconds"] = elapsed;
  figures["steps"] = static_cast<double>(epoch);
  figures["final_loss"] = s.count("train.eval.loss") ? s.find("train.eval.loss")->second.back() : 0;
  figures["final_accuracy"] = s.count("train.eval.accuracy") ? s.find("train.eval.accuracy")->second.back() : 0;
  figures["time_to_target_s"] = time_to_target_;
  figures["utilisation_min"] = n ? umin : 0;
  figures["utilisation_mean"] = n ? usum / static_cast<double>(n) : 0;
  figures["samples"] = samples;
  figures["allreduce_bytes_per_sample"] = samples > 0 ? static_cast<double>(metrics_.counter("train.allreduce_bytes")) / samples : 0;
  figures["transport_bytes_per_sample"] = samples > 0 ? static_cast<double>(metrics_.counter("transport.bytes_sent")) / samples : 0;
  figures["averaging_seconds_mean"] = metrics_.mean("train.step.averaging_s");
  // The compute model's time for one global batch at the trainers' summed speed, against the
  // measured averaging time: the ratio the utilisation target is stated for.
  double speed = 0;
  for (std::uint32_t i = 0; i < speeds_.size(); ++i)
    if (kinds_[i] != MemberKind::kAux) speed += speeds_[i];
  if (tr_.mode == "collaborative" && speed > 0) {
    figures["step_compute_s"] = static_cast<double>(tr_.target_batch) / speed;
    const double avg = figures["averaging_seconds_mean"];
    figures["compute_to_averaging"] = avg > 0 ? figures["step_compute_s"] / avg : 0;
  }
}

// ---- the workload ------------------------------------------------------------------------

namespace {

// Training begins at `start` on every peer that is up; a peer that comes up later is a newcomer
// and downloads the state first. The trainers are evaluated every eval_period; the run ends when
// every trainer is done (or the target loss is reached, if the scenario says so).
class TrainingWorkload final : public Workload {
 public:
  TrainingWorkload(const SwarmSpec& spec, Metrics& metrics) : cfg_(spec.workload_config<TrainingWorkloadSpec>()), driver_(spec, metrics) {}
  std::unique_ptr<PeerApp> make_app(PeerStack& p) override {
    return std::make_unique<TrainingApp>(p.runtime(), p.rpc(), *p.dht(), p.identity(), driver_, p.index(),
                                         p.bandwidth());
  }
  void begin(Runner& r) override {
    r.at(cfg_.start, [this, &r] {
      started_ = true;
      for (auto* app : r.apps<TrainingApp>(false))
        if (app) app->begin(false);
      evaluate(r);
    });
  }
  void peer_up(Runner& r, std::uint32_t i) override {
    if (started_) r.peer(i)->app_as<TrainingApp>()->begin(true);
  }
  void finish(Runner& r, RunInfo& info) override {
    const double elapsed = std::max(0.0, info.run_seconds - to_seconds(cfg_.start));
    driver_.finish(elapsed, r.apps<TrainingApp>(false), info.figures);
  }

 private:
  void evaluate(Runner& r) {
    const double elapsed = to_seconds(r.elapsed() - cfg_.start);
    if (elapsed > 0 && driver_.evaluate(elapsed, r.apps<TrainingApp>(false))) {
      r.stop();
      return;
    }
    r.after(cfg_.eval_period, [this, &r] { evaluate(r); });
  }
  const TrainingWorkloadSpec& cfg_;
  TrainingDriver driver_;
  bool started_ = false;
};

std::shared_ptr<const WorkloadConfig> parse_training(Scenario& s, const SwarmSpec& spec) {
  auto c = std::make_shared<TrainingWorkloadSpec>();
  auto& t = *c;
  // LibTorch trainer processes (live.processes) read the same keys; where their defaults differ
  // (wall-clock timing: finer polls, shorter timeouts) they are the ones real/child_options.hpp
  // gives a trainer started by hand, and what they cannot do is refused here.
  const bool processes = spec.backend == "live" && spec.live_processes;
  using std::chrono::milliseconds, std::chrono::seconds;
  t.mode = s.get_string("training.mode", t.mode, {"collaborative", "diloco"});
  t.dataset_dir = path_beside(s, s.get_string("training.dataset_dir", t.dataset_dir));
  t.device = s.get_device("training.device", t.device);
  t.train_samples = static_cast<std::uint64_t>(s.get_int("training.train_samples", 0, 0, 60000));
  t.eval_samples = static_cast<std::uint64_t>(s.get_int("training.eval_samples", static_cast<std::int64_t>(t.eval_samples), 1, 10000));
  t.batch_size = static_cast<std::uint32_t>(s.get_int("training.batch_size", t.batch_size, 1, 1 << 16));
  t.target_batch =
      static_cast<std::uint64_t>(s.get_int("training.target_batch", static_cast<std::int64_t>(t.target_batch), 1, std::int64_t{1} << 40));
  t.steps = static_cast<std::uint32_t>(s.get_int("training.steps", t.steps, 1, 10'000'000));
  t.learning_rate = s.get_double("training.learning_rate", t.learning_rate, 0, 1e6);
  t.momentum = s.get_double("training.momentum", t.momentum, 0, 0.999);
  t.delayed_updates = s.get_bool("training.delayed_updates", !processes);
  t.local_updates = s.get_bool("training.local_updates", t.local_updates);
  t.average_state_every = static_cast<std::uint32_t>(s.get_int("training.average_state_every", t.average_state_every, 0, 1'000'000));
  if (processes && t.delayed_updates)
    s.fail("training.delayed_updates", "live trainer processes wait for each step's average before the next batch");
  if (processes && (t.local_updates || t.average_state_every > 0))
    s.fail(t.local_updates ? "training.local_updates" : "training.average_state_every",
           "live trainer processes step on the averaged gradients only; local updates run in ns-3 or live in one process");
  t.powersgd_rank = static_cast<std::uint32_t>(s.get_int("training.powersgd_rank", 0, 0, 1 << 16));
  if (t.local_updates && t.average_state_every == 0)
    s.fail("training.average_state_every", "local updates need parameter averaging every N epochs (N >= 1)");
  t.inner_steps = static_cast<std::uint32_t>(s.get_int("training.inner_steps", t.inner_steps, 1, 10'000'000));
  t.outer_lr = s.get_double("training.outer_lr", t.outer_lr, 0, 1e6);
  t.outer_momentum = s.get_double("training.outer_momentum", t.outer_momentum, 0, 0.999);
  t.samples_per_second = s.get_distribution("training.samples_per_second", t.samples_per_second, "rate");
  if (t.samples_per_second.mean() <= 0) s.fail("training.samples_per_second", "must be positive");
  t.start = s.get_duration("training.start", t.start);
  t.eval_period = s.get_duration("training.eval_period", t.eval_period);
  t.progress_period = s.get_duration("training.progress_period", processes ? milliseconds(100) : t.progress_period);
  if (t.eval_period <= Duration::zero()) s.fail("training.eval_period", "must be positive");
  if (t.progress_period <= Duration::zero()) s.fail("training.progress_period", "must be positive");
  t.target_loss = s.get_double("training.target_loss", t.target_loss, 0, 1e6);
  t.stop_at_target = s.get_bool("training.stop_at_target", t.stop_at_target);
  if (processes && (t.target_loss > 0 || t.stop_at_target))
    s.fail(t.target_loss > 0 ? "training.target_loss" : "training.stop_at_target",
           "live trainer processes report their accuracy every eval_every steps, not a time to a target loss");
  t.client_fraction = s.get_double("training.client_fraction", t.client_fraction, 0, 1);
  t.aux_fraction = s.get_double("training.aux_fraction", t.aux_fraction, 0, 1);
  if (t.client_fraction + t.aux_fraction >= 1) s.fail("training.aux_fraction", "client_fraction + aux_fraction must be below 1");
  if (spec.dht.bootstrap_peers + std::lround(t.aux_fraction * spec.peers) + std::lround(t.client_fraction * spec.peers) > spec.peers)
    s.fail("training.aux_fraction",
           "the DHT's bootstrap peers train as full peers; too few peers are left for the client and auxiliary fractions");
  t.max_wait = s.get_duration("training.max_wait", processes ? Duration(seconds(2)) : t.max_wait);
  if (processes && t.max_wait <= Duration::zero()) s.fail("training.max_wait", "live trainer processes need a positive wait");
  t.hidden = static_cast<std::uint32_t>(s.get_int("training.hidden", t.hidden, 1, 1 << 16));
  t.eval_every = static_cast<std::uint32_t>(s.get_int("training.eval_every", t.eval_every, 0, 1 << 30));
  t.baseline = s.get_bool("training.baseline", t.baseline);
  auto& m = t.matchmaking;
  m.prefix = "mm";
  m.target_group_size = static_cast<std::size_t>(s.get_int("training.target_group_size", spec.peers, 1, 4096));
  m.min_group_size = static_cast<std::size_t>(s.get_int("training.min_group_size", processes ? 1 : 2, 1, 4096));
  if (m.min_group_size > m.target_group_size) s.fail("training.min_group_size", "must not exceed target_group_size");
  m.budget = s.get_duration("training.matchmaking_budget", processes ? seconds(3) : seconds(5));
  m.poll = s.get_duration("training.matchmaking_poll", processes ? milliseconds(50) : milliseconds(250));
  if (m.budget <= Duration::zero() || m.poll <= Duration::zero()) s.fail("training.matchmaking_poll", "budget and poll must be positive");
  auto& r = t.allreduce;
  r.min_part = static_cast<std::uint64_t>(s.get_int("training.min_part", processes ? 1024 : 256, 0, std::int64_t{1} << 32));
  r.parts = s.get_string("training.parts", averaging::to_string(r.parts), {"minmax", "proportional"}) == "minmax"
                ? averaging::PartRule::kMinMax
                : averaging::PartRule::kProportional;
  r.sender_timeout = s.get_duration("training.sender_timeout", processes ? seconds(3) : seconds(5));
  r.reducer_timeout = s.get_duration("training.reducer_timeout", processes ? seconds(6) : seconds(15));
  if (r.reducer_timeout <= r.sender_timeout) s.fail("training.reducer_timeout", "must be longer than sender_timeout");
  r.codec.codec = *compression::codec_from_string(s.get_string("training.codec", "float32", compression::codec_names()));
  r.codec.min_elements = static_cast<std::uint64_t>(s.get_int("training.codec_min_elements", 0, 0, std::int64_t{1} << 40));
  parse_aggregation(s, "training", r.aggregation);
  auto& at = t.attack;
  at.kind = optim::attack_from_string(s.get_string("training.attack", "none", optim::attack_names()));
  const auto trainers = spec.peers - static_cast<std::uint32_t>(std::lround(t.aux_fraction * spec.peers));
  at.attackers = static_cast<std::uint32_t>(s.get_int("training.attackers", at.kind == optim::AttackKind::kNone ? 0 : 1, 0, trainers));
  at.from_step = static_cast<std::uint64_t>(s.get_int("training.attack_from_step", 0, 0, std::int64_t{1} << 40));
  at.every = static_cast<std::uint32_t>(s.get_int("training.attack_every", 1, 1, 1 << 30));
  at.scale = s.get_double("training.attack_scale", at.scale, 0, 1e12);
  at.delay = static_cast<std::uint64_t>(s.get_int("training.attack_delay", static_cast<std::int64_t>(at.delay), 1, 1 << 20));
  auto& b = t.btard;
  b.enabled = s.get_bool("training.btard", false);
  b.validators = static_cast<std::uint32_t>(s.get_int("training.btard_validators", b.validators, 0, 4096));
  b.ban_quorum = static_cast<std::size_t>(s.get_int("training.btard_ban_quorum", static_cast<std::int64_t>(b.ban_quorum), 1, 4096));
  b.check_tolerance = s.get_double("training.btard_check_tolerance", b.check_tolerance, 0, 1);
  b.recompute_tolerance = s.get_double("training.btard_recompute_tolerance", b.recompute_tolerance, 0, 1);
  b.phase_timeout = s.get_duration("training.btard_phase_timeout", b.phase_timeout);
  if (b.phase_timeout <= Duration::zero()) s.fail("training.btard_phase_timeout", "must be positive");
  t.btard_false_accusations = s.get_bool("training.btard_false_accusations", false);
  if (b.enabled) {
    if (t.mode != "collaborative" || t.local_updates || t.powersgd_rank > 0)
      s.fail("training.btard", "verifies whole gradient steps: it needs mode = \"collaborative\", no local_updates and no powersgd_rank");
    if (r.aggregation.rule != averaging::AggregationRule::kCenteredClip)
      s.fail("training.btard", "checks CenteredClip aggregates: set training.aggregation = \"centered_clip\"");
    if (t.delayed_updates)
      s.fail("training.btard", "recomputes each step's batches on the step's parameters: set training.delayed_updates = false");
  }
  return c;
}

void summarize_training(std::FILE* f, const Metrics& m, const RunInfo& info) {
  auto fig = [&](const char* k) { return info.figures.count(k) ? info.figures.at(k) : 0.0; };
  auto c = [&](const char* k) { return static_cast<long long>(m.counter(k)); };
  if (!m.counter("train.samples") || !info.figures.count("final_loss")) return;
  std::fprintf(f, "  training: %.0f steps, %lld samples in %.0f s; test loss %.3f, accuracy %.1f%%\n", fig("steps"),
               c("train.samples"), fig("train_seconds"), fig("final_loss"), 100 * fig("final_accuracy"));
  if (info.figures.count("time_to_target_s") && fig("time_to_target_s") >= 0)
    std::fprintf(f, "  time to the target loss: %.0f s\n", fig("time_to_target_s"));
  if (info.figures.count("utilisation_min"))
    std::fprintf(f, "  utilisation per trainer: min %.1f%%, mean %.1f%%;", 100 * fig("utilisation_min"), 100 * fig("utilisation_mean"));
  else
    std::fprintf(f, " ");
  std::fprintf(f, " averaging %.2f s per step", fig("averaging_seconds_mean"));
  if (info.figures.count("compute_to_averaging"))
    std::fprintf(f, " (a step computes %.2f s, %.1fx that)", fig("step_compute_s"), fig("compute_to_averaging"));
  std::fprintf(f, "\n  all-reduce bytes per sample: %.1f; %lld steps ok, %lld failed, %lld catch-ups\n",
               fig("allreduce_bytes_per_sample"), c("train.steps_ok"), c("train.step_failures"), c("train.catch_ups"));
}

const RegisterWorkload kRegister{WorkloadType{
    "training", "collaborative training (global steps through the DHT) or DiLoCo of one model by every peer", true,
    parse_training, [](const SwarmSpec& spec, Metrics& m) { return std::make_unique<TrainingWorkload>(spec, m); },
    summarize_training}};

}  // namespace
}  // namespace apiary
