#include <utility>  // before asio: boost/asio/awaitable.hpp uses std::exchange
#include "real/torch/trainers.hpp"

#include <boost/asio.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <nlohmann/json.hpp>

#include "harness/data/idx.hpp"
#include "core/auth/handshake.hpp"
#include "core/optim/schema.hpp"
#include "core/compression/codecs.hpp"
#include "core/dht/validate.hpp"
#include "core/optim/attack.hpp"
#include "core/optim/btard.hpp"
#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"
#include "real/processes.hpp"
#include "real/torch/collaborative.hpp"
#include "real/torch/experts.hpp"

namespace apiary::real {

namespace asio = boost::asio;

namespace {

// Fashion-MNIST as tensors, standardised with the dataset's pixel mean and deviation.
struct TensorSet {
  torch::Tensor x, y;
  std::int64_t size() const { return y.size(0); }
};

TensorSet load(const std::string& split, const std::string& dir, std::uint64_t limit, const torch::Device& device) {
  const auto set = data::load_fashion_mnist(split, dir);
  const auto n = static_cast<std::int64_t>(limit ? std::min<std::uint64_t>(limit, set.size()) : set.size());
  auto pixels = torch::from_blob(const_cast<std::uint8_t*>(set.pixels.data()), {n, 784}, torch::kUInt8).to(torch::kFloat);
  TensorSet t;
  t.x = (pixels / 255.0 - 0.286) / 0.353;
  t.y = torch::from_blob(const_cast<std::uint8_t*>(set.labels.data()), {n}, torch::kUInt8).to(torch::kLong);
  t.x = t.x.to(device);
  t.y = t.y.to(device);
  return t;
}

// The rows `idx` of `t` (the indices go to t's device).
torch::Tensor rows(const torch::Tensor& t, const torch::Tensor& idx) { return t.index_select(0, idx.to(t.device())); }

// `n` row indices drawn uniformly from [0, size).
torch::Tensor sample_rows(Rng& rng, std::uint64_t n, std::int64_t size) {
  auto idx = torch::empty({static_cast<std::int64_t>(n)}, torch::kLong);
  auto* ip = idx.data_ptr<std::int64_t>();
  for (std::uint64_t i = 0; i < n; ++i) ip[i] = static_cast<std::int64_t>(rng.below(static_cast<std::uint64_t>(size)));
  return idx;
}

torch::nn::Sequential make_model(const TrainerOptions& o, const torch::Device& device) {
  torch::manual_seed(static_cast<std::uint64_t>(o.seed));  // every trainer and the baseline start alike
  torch::nn::Sequential m(torch::nn::Linear(784, o.hidden), torch::nn::ReLU(), torch::nn::Linear(o.hidden, 10));
  m->to(device);  // initialised on the CPU (the same values everywhere), then moved
  return m;
}

struct Eval {
  double accuracy = 0, loss = 0;
};

Eval evaluate(torch::nn::Sequential& model, const TensorSet& test, std::int64_t limit) {
  torch::NoGradGuard g;
  const auto n = std::min<std::int64_t>(limit, test.size());
  const auto logits = model->forward(test.x.slice(0, 0, n));
  const auto y = test.y.slice(0, 0, n);
  return {logits.argmax(1).eq(y).to(torch::kFloat).mean().item<double>(),
          torch::nn::functional::cross_entropy(logits, y).item<double>()};
}

class Log {
 public:
  explicit Log(const std::string& path) : f_(path.empty() ? nullptr : std::fopen(path.c_str(), "w")) {
    if (!path.empty() && !f_) throw std::runtime_error("cannot write " + path);
  }
  ~Log() {
    if (f_) std::fclose(f_);
  }
  void write(const nlohmann::json& j) {
    if (!f_) return;
    const std::string s = j.dump() + "\n";
    std::fwrite(s.data(), 1, s.size(), f_);
    std::fflush(f_);
  }

 private:
  std::FILE* f_;
};

// What every trainer process starts with: one LibTorch thread, its start time, its JSON-lines
// log, and the Fashion-MNIST splits.
struct ProcessRun {
  ProcessRun(const std::string& out, const std::string& dataset_dir, std::uint64_t train_samples, const std::string& device_name)
      : wall0((torch::set_num_threads(1), std::chrono::steady_clock::now())),
        device(device_named(device_name)),
        log(out),
        train(load("train", dataset_dir, train_samples, device)),
        test(load("t10k", dataset_dir, 0, device)) {}
  double seconds() const { return std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count(); }
  std::chrono::steady_clock::time_point wall0;
  torch::Device device;  // the model and the data live there; values leave it only at the wire
  Log log;
  TensorSet train, test;
};

void quiet_log(void*, std::uint32_t, LogLevel level, std::string_view component, std::string_view msg) {
  static const char* names[] = {"debug", "info", "warn", "error"};
  std::fprintf(stderr, "[%s] %.*s: %.*s\n", names[static_cast<int>(level)], static_cast<int>(component.size()),
               component.data(), static_cast<int>(msg.size()), msg.data());
}

}  // namespace

int run_trainer(const TrainerOptions& o) {
  ProcessRun run(o.out, o.dataset_dir, o.train_samples, o.device);
  Log& log = run.log;
  const TensorSet &train = run.train, &test = run.test;

  asio::io_context io;
  LiveOptions lo;
  lo.emulated_delay = Duration(static_cast<std::int64_t>(o.delay_ms * 1e6));
  LiveRuntime live(io, lo);
  live.open();
  Metrics metrics;
  PeerObserver observer(metrics, live, o.index);
  observer.set_log_sink(&quiet_log, nullptr, LogLevel::kWarn);
  live.set_observer(observer);
  Rng rng(o.seed * 7919 + o.index + (o.newcomer ? 1000 : 0));
  const auto identity = dht::Identity::generate();
  auth::AuthTransport authenticated(live, live, live, rng, observer, identity);  // every peer proves its key
  Runtime rt{live, live, authenticated, rng, observer};
  Rpc rpc(rt);
  dht::DhtConfig dcfg;
  if (o.dht_k < 1 || o.dht_k > 64) throw std::invalid_argument("--dht-k must be in [1, 64]");
  dcfg.k = o.dht_k;
  dht::DhtNode node(rt, rpc, identity.id(), dcfg, optim::standard_validators());
  if (!o.ready_file.empty()) write_file_atomically(o.ready_file, live.local().to_string() + "\n");

  auto model = make_model(o, run.device);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(o.learning_rate).momentum(o.momentum));
  optim::CollaborativeConfig cc;
  cc.progress.prefix = "train";
  cc.progress.target_batch = o.target_batch;
  cc.progress.ttl = std::chrono::seconds(60);
  cc.progress.stale = std::chrono::seconds(10);
  auto ms = [](double v) { return Duration(static_cast<std::int64_t>(v * 1e6)); };
  if (o.min_group_size < 1 || o.min_group_size > o.target_group_size)
    throw std::invalid_argument("--min-group-size must be at least 1 and at most --target-group-size");
  if (!(o.budget_ms > 0 && o.poll_ms > 0 && o.progress_ms > 0 && o.max_wait_ms > 0 && o.btard_phase_timeout_ms > 0))
    throw std::invalid_argument("--budget-ms, --poll-ms, --progress-ms, --max-wait-ms and --btard-phase-timeout-ms must be positive");
  if (!(o.sender_timeout_ms > 0 && o.reducer_timeout_ms > o.sender_timeout_ms))
    throw std::invalid_argument("--reducer-timeout-ms must be longer than --sender-timeout-ms, which must be positive");
  cc.matchmaking.prefix = "mm";
  cc.matchmaking.target_group_size = o.target_group_size;  // sized down to the trainers that report progress
  cc.matchmaking.min_group_size = o.min_group_size;
  cc.matchmaking.budget = ms(o.budget_ms);
  cc.matchmaking.poll = ms(o.poll_ms);
  cc.allreduce.min_part = o.min_part;
  if (o.parts != "minmax" && o.parts != "proportional")
    throw std::invalid_argument("--parts must be minmax or proportional, not '" + o.parts + "'");
  cc.allreduce.parts = o.parts == "minmax" ? averaging::PartRule::kMinMax : averaging::PartRule::kProportional;
  cc.allreduce.sender_timeout = ms(o.sender_timeout_ms);
  cc.allreduce.reducer_timeout = ms(o.reducer_timeout_ms);
  const auto codec = compression::codec_from_string(o.codec);
  if (!codec) throw std::invalid_argument("--codec: no codec is called '" + o.codec + "'");
  cc.allreduce.codec.codec = *codec;
  cc.allreduce.codec.min_elements = o.codec_min_elements;
  cc.poll = std::min(ms(o.progress_ms), Duration(std::chrono::milliseconds(30)));
  cc.max_wait = ms(o.max_wait_ms);  // then compute on and try again
  if (o.aggregation != "mean" && o.aggregation != "centered_clip")
    throw std::invalid_argument("--aggregation must be mean or centered_clip, not '" + o.aggregation + "'");
  cc.allreduce.aggregation.rule =
      o.aggregation == "mean" ? averaging::AggregationRule::kMean : averaging::AggregationRule::kCenteredClip;
  cc.allreduce.aggregation.tau = o.clip_tau;
  cc.allreduce.aggregation.iterations = o.clip_iterations;
  cc.btard.enabled = o.btard;
  cc.btard.validators = o.btard_validators;
  cc.btard.ban_quorum = o.btard_ban_quorum;
  cc.btard.check_tolerance = o.btard_check_tolerance;
  cc.btard.recompute_tolerance = o.btard_recompute_tolerance;
  cc.btard.phase_timeout = ms(o.btard_phase_timeout_ms);
  cc.powersgd_rank = o.powersgd_rank;
  optim::AttackConfig attack;
  attack.kind = optim::attack_from_string(o.attack);
  attack.from_step = o.attack_from_step;
  attack.every = o.attack_every;
  attack.scale = o.attack_scale;
  attack.delay = o.attack_delay;
  Rng attack_rng(o.seed ^ 0x62797aULL ^ o.index);
  std::function<std::uint64_t()> epoch_now;  // set once the optimizer exists
  if (attack.kind == optim::AttackKind::kWrongAggregate)
    cc.allreduce.faults.tamper_result = [&](std::span<float> mean) {
      if (!epoch_now || !optim::attacks_at(attack, epoch_now())) return;
      optim::tamper_aggregate(attack, mean);
    };
  if (attack.kind == optim::AttackKind::kBreakCommitment)
    cc.allreduce.faults.tamper_sent = [&](std::span<float> mine) {
      if (!epoch_now || !optim::attacks_at(attack, epoch_now())) return;
      optim::tamper_aggregate(attack, mine);
    };
  if (o.role == "client") cc.role = averaging::MemberKind::kClient;
  else if (o.role == "aux") cc.role = averaging::MemberKind::kAux;
  else if (o.role != "full") throw std::invalid_argument("--role must be full, client or aux, not '" + o.role + "'");
  std::unique_ptr<TorchCollaborative> collab;
  std::unique_ptr<TorchDiloco> diloco;
  if (o.mode == "diloco") {
    optim::DilocoConfig dc;
    dc.prefix = "train";
    dc.inner_steps = o.inner_steps;
    dc.outer_lr = o.outer_lr;
    dc.outer_momentum = o.outer_momentum;
    dc.matchmaking = cc.matchmaking;
    dc.allreduce = cc.allreduce;
    dc.role = cc.role;
    dc.announce_round = true;  // auxiliary peers may take part
    dc.identity = identity;
    diloco = std::make_unique<TorchDiloco>(*model, rt, rpc, node, dc);
  } else if (o.mode == "collaborative") {
    if (o.btard_false_accusations) cc.btard.accuse_falsely = [&] { return epoch_now && optim::attacks_at(attack, epoch_now()); };
    collab = std::make_unique<TorchCollaborative>(*model, optimizer, rt, rpc, node, identity, cc);
  } else {
    throw std::invalid_argument("--mode must be collaborative or diloco, not '" + o.mode + "'");
  }

  epoch_now = [&] { return collab ? collab->epoch() : diloco->round(); };
  // BTARD: a local batch is drawn from the trainer's key, the epoch and its index within the step,
  // so that a validator can draw it again; a validator recomputes a member's mean gradient on a
  // copy of the model, summed as TorchCollaborative::accumulate sums it.
  auto seeded_rows = [&](const optim::Key& key, std::uint64_t epoch, std::uint64_t b) {
    Rng r = optim::batch_rng(o.seed, key, epoch, b);
    return sample_rows(r, o.batch_size, train.size());
  };
  auto shadow = make_model(o, run.device);
  if (collab && o.btard)
    collab->core().set_recompute([&](optim::Contribution c) -> Task<std::optional<std::vector<float>>> {
      const auto params = shadow->parameters();
      std::size_t total = 0;
      for (const auto& p : params) total += static_cast<std::size_t>(p.numel());
      if (!(c.weight >= o.batch_size) || std::fmod(c.weight, o.batch_size) != 0 || c.weight > 1e9 || c.parameters.size() != total)
        co_return std::vector<float>{};  // no honest trainer contributes that: it cannot match
      unflatten_into(c.parameters, params);
      const auto batches = static_cast<std::uint64_t>(c.weight) / o.batch_size;
      std::vector<float> sum(total, 0.0f);
      for (std::uint64_t b = 0; b < batches; ++b) {
        const torch::Tensor idx = seeded_rows(c.public_key, c.epoch, b);
        shadow->zero_grad();
        torch::nn::functional::cross_entropy(shadow->forward(rows(train.x, idx)), rows(train.y, idx)).backward();
        std::vector<torch::Tensor> grads;
        for (const auto& p : params) grads.push_back(p.grad());
        std::vector<float> g = flat(grads);
        for (std::size_t i = 0; i < total; ++i) sum[i] += g[i] * static_cast<float>(o.batch_size);
      }
      for (auto& x : sum) x = x / static_cast<float>(batches * o.batch_size);
      co_return sum;
    });
  std::uint64_t attacks = 0, attacks_logged = 0;
  std::optional<std::uint64_t> poisoned_epoch;  // progress poison: the last step it wrote its records at
  // Delayed attack: parameters by global step, the oldest within `delay` steps kept.
  std::map<std::uint64_t, std::vector<torch::Tensor>> snapshots;
  // One local batch's gradients, as this trainer computes them (an attacker's: attack.hpp).
  auto local_gradients = [&](const torch::Tensor& idx) {
    const std::uint64_t e = epoch_now();
    const bool attacking = optim::attacks_at(attack, e);
    torch::Tensor y = rows(train.y, idx);
    if (attacking && attack.kind == optim::AttackKind::kLabelFlip) y = 9 - y;
    std::vector<torch::Tensor> now;
    if (attack.kind == optim::AttackKind::kDelayed) {
      torch::NoGradGuard no_grad;
      if (!snapshots.count(e)) {
        std::vector<torch::Tensor> copy;
        for (const auto& p : model->parameters()) copy.push_back(p.detach().clone());
        snapshots.emplace(e, std::move(copy));
      }
      while (snapshots.size() > 1 && snapshots.begin()->first + attack.delay < e) snapshots.erase(snapshots.begin());
      if (attacking) {  // compute on the old parameters, then put the current ones back
        auto params = model->parameters();
        for (std::size_t k = 0; k < params.size(); ++k) {
          now.push_back(params[k].detach().clone());
          params[k].copy_(snapshots.begin()->second[k]);
        }
      }
    }
    model->zero_grad();
    torch::nn::functional::cross_entropy(model->forward(rows(train.x, idx)), y).backward();
    if (!now.empty()) {
      torch::NoGradGuard no_grad;
      auto params = model->parameters();
      for (std::size_t k = 0; k < params.size(); ++k) params[k].copy_(now[k]);
    }
    if (attacking && (attack.kind == optim::AttackKind::kSignFlip || attack.kind == optim::AttackKind::kRandomDirection)) {
      std::vector<float> flat;
      for (const auto& p : model->parameters()) {
        const torch::Tensor g = p.grad().contiguous();
        flat.insert(flat.end(), g.data_ptr<float>(), g.data_ptr<float>() + g.numel());
      }
      optim::tamper_gradient(attack, flat, attack_rng);
      std::size_t at = 0;
      for (auto& p : model->parameters()) {
        torch::Tensor g = p.mutable_grad();
        std::copy_n(flat.data() + at, g.numel(), g.data_ptr<float>());
        at += static_cast<std::size_t>(g.numel());
      }
    }
    if (attacking && attack.kind == optim::AttackKind::kProgressPoison && poisoned_epoch != e) {
      poisoned_epoch = e;  // the same records as the ns-3 trainer's attacker (progress.hpp)
      const auto sybil = dht::Identity::from_seed(o.seed ^ (0x5b11ULL << 32) ^ o.index);
      for (auto& rec : optim::poisoned_progress(cc.progress.prefix + ":progress", sybil, rt.now(), 1000000))
        node.spawn_store(std::move(rec), [](const dht::StoreResult&) {});
    }
    if (attacking) ++attacks;
  };
  int exit_code = 1;
  bool done = false;
  // The test accuracy and loss on the first `limit` images, logged as `event` at `epoch`.
  auto log_evaluation = [&](const char* event, std::uint64_t epoch, std::int64_t limit) {
    const Eval e = evaluate(model, test, limit);
    nlohmann::json j = {{"event", event}, {"epoch", epoch}, {"accuracy", e.accuracy}, {"loss", e.loss}, {"t", run.seconds()}};
    log.write(j);
  };
  // An auxiliary peer, in either mode: reduce a part of every step's (or round's) all-reduce until
  // the swarm has taken its steps, train nothing. `once` is one assist (nothing when not ready).
  auto assist_until_done = [&](std::function<Task<std::optional<nlohmann::json>>()> once,
                               std::function<std::uint64_t()> epoch) -> Task<void> {
    const auto until = run.wall0 + std::chrono::duration<double>(o.max_seconds);
    while (epoch() < o.steps && std::chrono::steady_clock::now() < until) {
      std::optional<nlohmann::json> a = co_await once();
      if (a) log.write(*a);
    }
    nlohmann::json fin = {{"event", "final"}, {"role", "aux"}, {"epoch", epoch()}};
    log.write(fin);
    exit_code = epoch() >= o.steps ? 0 : 2;
    co_await sleep_on(rt.timers, std::chrono::seconds(2));
    done = true;
  };
  auto body = [&]() -> Task<void> {
    std::vector<Endpoint> seeds{*Endpoint::parse(o.join)};
    co_await node.bootstrap(seeds);
    node.start_maintenance();
    nlohmann::json start = {{"event", "start"}, {"index", o.index}, {"newcomer", o.newcomer}, {"role", o.role},
                            {"endpoint", live.local().to_string()}};
    log.write(start);
    if (o.role == "aux") {
      std::function<Task<std::optional<nlohmann::json>>()> once = [&]() -> Task<std::optional<nlohmann::json>> {
        Result<optim::StepReport> r = co_await collab->core().assist();
        if (!r.ok()) co_return std::nullopt;  // not ready yet: look again (assist waits for the swarm itself)
        co_return nlohmann::json{{"event", "assist"}, {"epoch", r->epoch}, {"group", r->group}, {"bytes_sent", r->bytes_sent}};
      };
      std::function<std::uint64_t()> epoch = [&] { return collab->epoch(); };
      co_await assist_until_done(std::move(once), std::move(epoch));
      co_return;
    }
    if (o.newcomer) {
      // A swarm that has not taken its first step yet has no state to share: wait for it (up to
      // a minute), then start from the common initialisation.
      for (int attempt = 0; attempt < 120; ++attempt) {
        Result<std::uint64_t> j = co_await collab->join();
        if (j.ok()) {
          nlohmann::json joined = {
              {"event", "joined"}, {"epoch", *j}, {"t", run.seconds()}};
          log.write(joined);
          break;
        }
        co_await sleep_on(rt.timers, std::chrono::milliseconds(500));
      }
    }
    Rng data_rng(o.seed ^ (0x9e3779b97f4a7c15ULL * (o.index + 1)) ^ (o.newcomer ? 0x5555 : 0));
    optim::SwarmProgress swarm;
    const auto deadline = run.wall0 + std::chrono::duration<double>(o.max_seconds);
    while (collab->epoch() < o.steps && std::chrono::steady_clock::now() < deadline) {
      // One local batch (at the emulated device's speed, if one is set).
      const TimePoint batch_start = rt.now();
      const torch::Tensor idx = o.btard ? seeded_rows(identity.public_key, collab->epoch(), collab->local_samples() / o.batch_size)
                                        : sample_rows(data_rng, o.batch_size, train.size());
      local_gradients(idx);
      collab->accumulate(o.batch_size);
      // An attacker's running total, written as it grows: a banned attacker may never finish, and
      // is then stopped with the run.
      if (attacks != attacks_logged && attacks % 8 == 1) {
        log.write(nlohmann::json{{"event", "attacks"}, {"batches", attacks}});
        attacks_logged = attacks;
      }
      Duration rest = Duration::zero();  // let the network make progress meanwhile
      if (o.samples_per_second > 0) {
        const auto busy = Duration(static_cast<std::int64_t>(o.batch_size / o.samples_per_second * 1e9));
        rest = std::max(Duration::zero(), batch_start + busy - rt.now());
      }
      co_await sleep_on(rt.timers, rest);
      // Step when the swarm has (by the estimate from everyone's reported progress and
      // throughput) gathered the global batch.
      if (rt.now() - swarm.fetched >= ms(o.progress_ms)) swarm = co_await collab->report_progress();
      if (!collab->step_due(swarm)) continue;
      const auto t0 = std::chrono::steady_clock::now();
      Result<optim::StepReport> r = co_await collab->step();
      swarm = {};  // fresh progress before the next decision
      if (!r.ok()) {
        if (r.error().code == ErrorCode::kCancelled) {
          nlohmann::json caught = {{"event", "caught_up"}, {"epoch", collab->epoch()}, {"target", collab->core().catch_up_target()}};
          log.write(caught);
        } else {
          log.write(nlohmann::json{{"event", "step_failed"}, {"epoch", collab->epoch()}, {"why", r.error().describe()},
                                   {"t", run.seconds()}});
        }
        continue;  // not ready yet (or caught up): compute on
      }
      nlohmann::json step = {{"event", "step"},
                             {"epoch", r->epoch},
                             {"global_batch", r->swarm_samples},
                             {"samples", r->samples},
                             {"group", r->group},
                             {"bytes_sent", r->bytes_sent},
                             {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
                             {"t", run.seconds()}};
      log.write(step);
      if (o.eval_every && collab->epoch() % o.eval_every == 0) log_evaluation("eval", collab->epoch(), o.eval_samples);
    }
    if (attack.kind != optim::AttackKind::kNone) log.write(nlohmann::json{{"event", "attacks"}, {"batches", attacks}});  // the total
    if (const optim::Btard* b = collab->core().btard()) {
      nlohmann::json bans = nlohmann::json::array();
      for (const auto& ban : b->bans())
        bans.push_back({{"endpoint", ban.endpoint.to_string()}, {"epoch", ban.epoch}, {"reason", ban.reason}});
      const auto& st = b->stats();
      log.write(nlohmann::json{{"event", "btard"}, {"bans", bans}, {"validations", st.validations}, {"disputes", st.disputes},
                               {"refused_pieces", st.refused_pieces}});
    }
    log_evaluation("final", collab->epoch(), test.size());
    exit_code = collab->epoch() >= o.steps ? 0 : 2;
    // Linger a little so that peers still averaging with us, or downloading our state, finish.
    co_await sleep_on(rt.timers, std::chrono::seconds(2));
    done = true;
  };
  // DiLoCo: the SGD optimizer steps on every local batch; every H steps, the outer step.
  auto diloco_body = [&]() -> Task<void> {
    std::vector<Endpoint> seeds{*Endpoint::parse(o.join)};
    co_await node.bootstrap(seeds);
    node.start_maintenance();
    nlohmann::json start = {{"event", "start"}, {"index", o.index}, {"mode", "diloco"}, {"role", o.role},
                            {"endpoint", live.local().to_string()}};
    log.write(start);
    const auto deadline = run.wall0 + std::chrono::duration<double>(o.max_seconds);
    if (o.role == "aux") {
      std::function<Task<std::optional<nlohmann::json>>()> once = [&]() -> Task<std::optional<nlohmann::json>> {
        Result<optim::OuterReport> r = co_await diloco->assist();
        if (!r.ok()) {  // the trainers have not reached the next round: look again soon
          co_await sleep_on(rt.timers, std::chrono::milliseconds(100));
          co_return std::nullopt;
        }
        co_return nlohmann::json{{"event", "assist"}, {"epoch", r->round}, {"group", r->group}, {"bytes_sent", r->bytes_sent}};
      };
      std::function<std::uint64_t()> epoch = [&] { return diloco->round(); };
      co_await assist_until_done(std::move(once), std::move(epoch));
      co_return;
    }
    Rng data_rng(o.seed ^ (0x9e3779b97f4a7c15ULL * (o.index + 1)) ^ (o.newcomer ? 0x5555 : 0));
    while (diloco->round() < o.steps && std::chrono::steady_clock::now() < deadline) {
      const TimePoint batch_start = rt.now();
      const torch::Tensor idx = sample_rows(data_rng, o.batch_size, train.size());
      local_gradients(idx);
      optimizer.step();
      Duration rest = Duration::zero();  // the emulated device's speed; the network makes progress meanwhile
      if (o.samples_per_second > 0) {
        const auto busy = Duration(static_cast<std::int64_t>(o.batch_size / o.samples_per_second * 1e9));
        rest = std::max(Duration::zero(), batch_start + busy - rt.now());
      }
      co_await sleep_on(rt.timers, rest);
      if (!diloco->inner_step_done(o.batch_size)) continue;
      const auto t0 = std::chrono::steady_clock::now();
      Result<optim::OuterReport> r = co_await diloco->outer_step();
      if (!r.ok()) continue;  // no group this time: compute on and try again
      nlohmann::json step = {{"event", "step"},
                             {"epoch", r->round},
                             {"samples", r->samples},
                             {"group", r->group},
                             {"bytes_sent", r->bytes_sent},
                             {"seconds", std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count()},
                             {"t", run.seconds()}};
      log.write(step);
      if (o.eval_every && diloco->round() % o.eval_every == 0) log_evaluation("eval", diloco->round(), o.eval_samples);
    }
    log_evaluation("final", diloco->round(), test.size());
    exit_code = diloco->round() >= o.steps ? 0 : 2;
    co_await sleep_on(rt.timers, std::chrono::seconds(2));  // peers still averaging with us finish
    done = true;
  };
  Task<void> t = diloco ? diloco_body() : body();
  t.start();
  while (!done) io.run_one_for(std::chrono::milliseconds(50));
  rpc.shutdown();
  live.close();
  return exit_code;
}

int run_baseline(const TrainerOptions& o) {
  ProcessRun run(o.out, o.dataset_dir, o.train_samples, o.device);
  Log& log = run.log;
  const TensorSet &train = run.train, &test = run.test;
  auto model = make_model(o, run.device);
  torch::optim::SGD optimizer(model->parameters(), torch::optim::SGDOptions(o.learning_rate).momentum(o.momentum));
  Rng data_rng(o.seed ^ 0xba5e);
  for (std::uint32_t step = 0; step < o.steps; ++step) {
    const torch::Tensor idx = sample_rows(data_rng, o.target_batch, train.size());
    optimizer.zero_grad();
    torch::nn::functional::cross_entropy(model->forward(rows(train.x, idx)), rows(train.y, idx)).backward();
    optimizer.step();
    if (o.eval_every && (step + 1) % o.eval_every == 0) {
      const Eval e = evaluate(model, test, static_cast<std::int64_t>(o.eval_samples));
      log.write({{"event", "eval"}, {"epoch", step + 1}, {"accuracy", e.accuracy}, {"loss", e.loss}});
    }
  }
  const Eval e = evaluate(model, test, test.size());
  log.write({{"event", "final"}, {"epoch", o.steps}, {"accuracy", e.accuracy}, {"loss", e.loss},
             {"t", run.seconds()}});
  std::printf("baseline: %u steps of %llu samples, test accuracy %.4f\n", o.steps,
              static_cast<unsigned long long>(o.target_batch), e.accuracy);
  return 0;
}

}  // namespace apiary::real

#include <csignal>

#include "real/torch/mixture.hpp"

namespace apiary::real {

namespace {

volatile std::sig_atomic_t g_stop = 0;
void on_term(int) { g_stop = 1; }

std::vector<moe::ExpertUid> all_experts(const std::vector<std::uint32_t>& grid) {
  std::vector<moe::ExpertUid> out{moe::ExpertUid{"ffn", {}}};
  for (auto g : grid) {
    std::vector<moe::ExpertUid> next;
    for (const auto& u : out)
      for (std::uint32_t c = 0; c < g; ++c) {
        auto v = u;
        v.coords.push_back(c);
        next.push_back(v);
      }
    out = std::move(next);
  }
  return out;
}

// The baseline's mixture: the same gate, experts and routing as the remote layer, all local.
struct LocalMixtureImpl : torch::nn::Module {
  LocalMixtureImpl(const DmoeOptions& o) : opt(o), uids(all_experts(o.grid)) {
    std::int64_t scores = 0;
    for (auto g : o.grid) scores += g;
    gate = register_module("gate", torch::nn::Linear(o.dim, scores));
    for (std::size_t i = 0; i < uids.size(); ++i) experts.push_back(register_module("e" + std::to_string(i), FfnExpert(o.dim, o.hidden)));
  }
  torch::Tensor forward(const torch::Tensor& x) {
    const torch::Tensor logits = gate(x);
    std::vector<torch::Tensor> per_dim;
    std::int64_t at = 0;
    for (auto g : opt.grid) {
      per_dim.push_back(logits.narrow(1, at, g));
      at += g;
    }
    // Every expert's gate score per sample; the k best by the batch mean (as the remote layer).
    std::vector<torch::Tensor> s;
    for (const auto& u : uids) {
      torch::Tensor v = torch::zeros({x.size(0)}, x.options());
      for (std::size_t d = 0; d < u.coords.size(); ++d) v = v + per_dim[d].select(1, u.coords[d]);
      s.push_back(v);
    }
    const torch::Tensor all = torch::stack(s, 1);  // [batch, experts]
    const auto top = std::get<1>(all.detach().mean(0).topk(static_cast<std::int64_t>(std::min(opt.k, uids.size()))));
    const torch::Tensor w = torch::softmax(all.index_select(1, top), 1);
    torch::Tensor y = torch::zeros_like(x);
    for (std::int64_t j = 0; j < top.size(0); ++j)
      y = y + w.select(1, j).unsqueeze(1) * experts[static_cast<std::size_t>(top[j].item<std::int64_t>())]->forward(x);
    return y;
  }
  DmoeOptions opt;
  std::vector<moe::ExpertUid> uids;
  torch::nn::Linear gate{nullptr};
  std::vector<FfnExpert> experts;
};
TORCH_MODULE(LocalMixture);

struct Node {
  asio::io_context io;
  Metrics metrics;
  std::unique_ptr<LiveRuntime> live;
  std::unique_ptr<PeerObserver> observer;
  Rng rng;
  dht::Identity identity = dht::Identity::generate();
  std::unique_ptr<auth::AuthTransport> auth;  // every peer proves its key
  std::unique_ptr<Runtime> rt;
  std::unique_ptr<Rpc> rpc;
  std::unique_ptr<dht::DhtNode> dht;
  Node(double delay_ms, std::uint64_t seed, std::uint32_t k) : rng(seed) {
    LiveOptions lo;
    lo.emulated_delay = Duration(static_cast<std::int64_t>(delay_ms * 1e6));
    live = std::make_unique<LiveRuntime>(io, lo);
    live->open();
    observer = std::make_unique<PeerObserver>(metrics, *live, 0);
    observer->set_log_sink(&quiet_log, nullptr, LogLevel::kWarn);
    live->set_observer(*observer);
    auth = std::make_unique<auth::AuthTransport>(*live, *live, *live, rng, *observer, identity);
    rt = std::make_unique<Runtime>(Runtime{*live, *live, *auth, rng, *observer});
    rpc = std::make_unique<Rpc>(*rt);
    dht::DhtConfig cfg;
    if (k < 1 || k > 64) throw std::invalid_argument("--dht-k must be in [1, 64]");
    cfg.k = k;
    dht = std::make_unique<dht::DhtNode>(*rt, *rpc, identity.id(), cfg,
                                         optim::standard_validators());
  }
  ~Node() {
    dht.reset();
    rpc->shutdown();
    rpc.reset();
    auth.reset();
    live->close();
  }
  template <class T>
  T run(Task<T> t) {
    t.start();
    while (!t.done()) io.run_one_for(std::chrono::milliseconds(20));
    return t.result();
  }
  void join(const std::string& seed) {
    std::vector<Endpoint> seeds{*Endpoint::parse(seed)};
    run(dht->bootstrap(seeds));
    dht->start_maintenance();
  }
};

}  // namespace

int run_expert_server(const DmoeOptions& o) {
  torch::set_num_threads(1);
  torch::manual_seed(o.seed);
  std::signal(SIGTERM, on_term);
  std::signal(SIGINT, on_term);
  Node n(o.delay_ms, o.seed * 31 + 7, o.dht_k);
  n.join(o.join);
  ServerOptions so;
  so.fail_probability = o.fail_probability;
  so.max_batch = o.max_batch;
  so.min_batch = o.min_batch;
  so.batch_wait = Duration(static_cast<std::int64_t>(o.batch_wait_ms * 1e6));
  ExpertServer server(*n.rt, *n.rpc, so);
  const torch::Device device = device_named(o.device);
  std::vector<moe::ExpertUid> mine;
  for (const auto& u : o.uids) {
    std::string why;
    auto uid = moe::ExpertUid::parse(u, o.grid, &why);
    if (!uid) throw std::invalid_argument("expert uid '" + u + "': " + why);
    server.add(u, make_ffn_expert(o.dim, o.hidden, o.learning_rate, device));
    mine.push_back(*uid);
  }
  // Declare, and declare again before the declarations expire.
  auto declare = [&] { return moe::declare_experts(*n.dht, mine, n.live->local(), n.rt->now() + std::chrono::seconds(60), &n.identity); };
  n.run(declare());
  if (!o.ready_file.empty()) write_file_atomically(o.ready_file, n.live->local().to_string() + "\n");
  auto last = std::chrono::steady_clock::now();
  while (!g_stop) {
    n.io.run_one_for(std::chrono::milliseconds(100));
    if (std::chrono::steady_clock::now() - last > std::chrono::seconds(20)) {
      auto t = declare();
      t.start();
      while (!t.done() && !g_stop) n.io.run_one_for(std::chrono::milliseconds(20));
      last = std::chrono::steady_clock::now();
    }
  }
  std::fprintf(stderr, "expert server: %lld forwards, %lld backwards, %lld injected failures\n",
               static_cast<long long>(n.metrics.counter("moe.forwards")), static_cast<long long>(n.metrics.counter("moe.backwards")),
               static_cast<long long>(n.metrics.counter("moe.injected_failures")));
  return 0;
}

int run_dmoe_trainer(const DmoeOptions& o) {
  ProcessRun run(o.out, o.dataset_dir, o.train_samples, o.device);
  Log& log = run.log;
  const TensorSet &train = run.train, &test = run.test;
  Node n(o.delay_ms, o.seed * 131 + 3, o.dht_k);
  n.join(o.join);
  MoeOptions mo;
  mo.grid = o.grid;
  mo.dim = o.dim;
  mo.k_best = o.k;
  mo.k_min = o.k_min;
  mo.per_sample = o.routing == "sample";
  mo.switch_mode = o.routing == "switch";
  mo.timeout_after_k_min = Duration(static_cast<std::int64_t>(o.timeout_after_k_min_ms * 1e6));
  mo.forward_timeout = Duration(static_cast<std::int64_t>(o.forward_timeout_ms * 1e6));
  mo.backward_timeout = Duration(static_cast<std::int64_t>(o.backward_timeout_ms * 1e6));
  mo.searches = 3;
  if (const auto codec = compression::codec_from_string(o.codec)) mo.codec.codec = *codec;
  else throw std::invalid_argument("--codec: no codec is called '" + o.codec + "'");
  const auto cap = std::chrono::seconds(60);
  RemoteExpert::Drive drive = [&n, cap](const std::function<bool()>& done) {
    const auto end = std::chrono::steady_clock::now() + cap;
    while (!done() && std::chrono::steady_clock::now() < end) n.io.run_one_for(std::chrono::milliseconds(5));
  };
  torch::manual_seed(o.seed);
  torch::nn::Linear in(784, o.dim), out(o.dim, 10);
  RemoteMixtureOfExperts moe(*n.rt, *n.rpc, *n.dht, mo, drive);
  in->to(run.device);
  out->to(run.device);
  moe->to(run.device);
  std::vector<torch::Tensor> params = in->parameters();
  for (auto& p : out->parameters()) params.push_back(p);
  for (auto& p : moe->parameters()) params.push_back(p);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(o.learning_rate).momentum(0.9));
  auto model = [&](const torch::Tensor& x) { return out(moe->forward(torch::relu(in(x)))); };
  auto evaluate_now = [&](std::int64_t limit) {
    torch::NoGradGuard g;
    double correct = 0;
    const auto total = std::min<std::int64_t>(limit, test.size());
    for (std::int64_t at = 0; at < total; at += 500) {
      const auto m = std::min<std::int64_t>(500, total - at);
      correct += model(test.x.slice(0, at, at + m)).argmax(1).eq(test.y.slice(0, at, at + m)).sum().item<double>();
    }
    return correct / static_cast<double>(total);
  };
  Rng data_rng(o.seed ^ 0xd0e);
  std::uint32_t failed_steps = 0;
  for (std::uint32_t step = 0; step < o.steps; ++step) {
    if (run.seconds() > o.max_seconds) break;
    const torch::Tensor idx = sample_rows(data_rng, o.batch_size, train.size());
    opt.zero_grad();
    try {
      torch::Tensor loss = torch::nn::functional::cross_entropy(model(rows(train.x, idx)), rows(train.y, idx));
      if (mo.switch_mode) loss = loss + 0.01 * moe->last_balance_loss();
      loss.backward();
      opt.step();
    } catch (const std::runtime_error& e) {
      ++failed_steps;  // not even k_min experts answered: skip the batch
      log.write({{"event", "skipped"}, {"step", step}, {"why", e.what()}});
    }
    if (o.eval_every && (step + 1) % o.eval_every == 0) {
      const double acc = evaluate_now(static_cast<std::int64_t>(o.eval_samples));
      log.write({{"event", "eval"}, {"epoch", step + 1}, {"accuracy", acc},
                 {"t", run.seconds()}});
    }
  }
  const double acc = evaluate_now(test.size());
  log.write({{"event", "final"}, {"epoch", o.steps}, {"accuracy", acc}, {"skipped", failed_steps},
             {"expert_failures", n.metrics.counter("moe.expert_failures")},
             {"researches", n.metrics.counter("moe.researches")},
             {"backward_failures", n.metrics.counter("moe.backward_failures")},
             {"t", run.seconds()}});
  return 0;
}

int run_dmoe_baseline(const DmoeOptions& o) {
  ProcessRun run(o.out, o.dataset_dir, o.train_samples, o.device);
  Log& log = run.log;
  const TensorSet &train = run.train, &test = run.test;
  torch::manual_seed(o.seed);
  torch::nn::Linear in(784, o.dim), out(o.dim, 10);
  LocalMixture moe(o);
  in->to(run.device);
  out->to(run.device);
  moe->to(run.device);
  std::vector<torch::Tensor> params = in->parameters(), expert_params;
  for (auto& p : out->parameters()) params.push_back(p);
  for (auto& p : moe->gate->parameters()) params.push_back(p);
  for (auto& e : moe->experts)
    for (auto& p : e->parameters()) expert_params.push_back(p);
  torch::optim::SGD opt(params, torch::optim::SGDOptions(o.learning_rate).momentum(0.9));
  torch::optim::SGD expert_opt(expert_params, torch::optim::SGDOptions(o.learning_rate));  // as the servers' experts
  auto model = [&](const torch::Tensor& x) { return out(moe->forward(torch::relu(in(x)))); };
  Rng data_rng(o.seed ^ 0xd0e);
  for (std::uint32_t step = 0; step < o.steps; ++step) {
    const torch::Tensor idx = sample_rows(data_rng, o.batch_size, train.size());
    opt.zero_grad();
    expert_opt.zero_grad();
    torch::nn::functional::cross_entropy(model(rows(train.x, idx)), rows(train.y, idx)).backward();
    opt.step();
    expert_opt.step();
  }
  torch::NoGradGuard g;
  const double acc = model(test.x).argmax(1).eq(test.y).to(torch::kFloat).mean().item<double>();
  log.write({{"event", "final"}, {"epoch", o.steps}, {"accuracy", acc},
             {"t", run.seconds()}});
  std::printf("dmoe baseline: %u steps of %u, test accuracy %.4f\n", o.steps, o.batch_size, acc);
  return 0;
}

}  // namespace apiary::real
