#include <utility>
#include "real/live_training.hpp"

#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <map>
#include <nlohmann/json.hpp>
#include <boost/asio.hpp>

#include "core/compression/codecs.hpp"
#include "harness/churn.hpp"
#include "harness/fault_schedule.hpp"
#include "harness/workloads/training.hpp"
#include "real/child_options.hpp"
#include "real/asio_timer.hpp"
#include "real/processes.hpp"

namespace apiary::real {

namespace fs = std::filesystem;

namespace {

// One trainer process: the trainer index it plays and where its record goes.
struct Incarnation {
  std::uint32_t index = 0;
  bool newcomer = false;
  pid_t pid = 0;
  bool running = false;
  bool killed = false;
  int status = 0;
  std::string out;
};

// BTARD, from the honest trainers' records: who banned whom (as the ns-3 workload reports it).
void btard_figures(const std::vector<Incarnation>& incs, const std::vector<bool>& attackers, Metrics& metrics,
                   std::map<std::string, double>& figures) {
  std::map<std::string, std::uint32_t> who;  // endpoint -> trainer
  for (const auto& inc : incs)
    for (const auto& j : read_json_lines(inc.out))
      if (j.value("event", "") == "start") who[j.value("endpoint", "")] = inc.index;
  std::vector<std::size_t> banned_by(attackers.size(), 0);
  std::size_t honest = 0;
  double false_bans = 0, last = -1;
  for (const auto& inc : incs) {
    if (attackers[inc.index] || inc.killed) continue;
    for (const auto& j : read_json_lines(inc.out)) {
      if (j.value("event", "") != "btard") continue;
      ++honest;
      metrics.count("btard.validations", j.value("validations", std::int64_t{0}));
      metrics.count("btard.disputes", j.value("disputes", std::int64_t{0}));
      metrics.count("btard.refused_pieces", j.value("refused_pieces", std::int64_t{0}));
      for (const auto& b : j["bans"]) {
        auto it = who.find(b.value("endpoint", ""));
        if (it == who.end()) continue;
        if (!attackers[it->second]) {
          ++false_bans;
          continue;
        }
        ++banned_by[it->second];
        last = std::max(last, b.value("epoch", 0.0));
      }
    }
  }
  double caught = 0, n = 0;
  for (std::size_t i = 0; i < attackers.size(); ++i)
    if (attackers[i]) {
      ++n;
      if (honest > 0 && banned_by[i] == honest) ++caught;
    }
  figures["btard_attackers"] = n;
  figures["btard_attackers_banned"] = caught;
  figures["btard_false_bans"] = false_bans;
  figures["btard_last_ban_epoch"] = last;
  if (false_bans > 0) metrics.count("invariant.btard.honest_banned", static_cast<std::int64_t>(false_bans));
}

}  // namespace

TrainerOptions trainer_options(const SwarmSpec& spec) {
  const auto& t = spec.workload_config<TrainingWorkloadSpec>();
  auto ms = [](Duration d) { return std::chrono::duration<double, std::milli>(d).count(); };
  TrainerOptions o;
  o.seed = spec.seed;
  o.steps = t.steps;
  o.target_batch = t.target_batch;
  o.batch_size = t.batch_size;
  o.hidden = t.hidden;
  o.learning_rate = t.learning_rate;
  o.momentum = t.momentum;
  o.train_samples = t.train_samples;
  o.eval_samples = t.eval_samples;
  o.eval_every = t.eval_every;
  o.dataset_dir = t.dataset_dir;
  o.device = t.device;
  o.mode = t.mode;
  o.inner_steps = static_cast<std::uint32_t>(t.inner_steps);
  o.outer_lr = t.outer_lr;
  o.outer_momentum = t.outer_momentum;
  o.aggregation = averaging::to_string(t.allreduce.aggregation.rule);
  o.clip_tau = t.allreduce.aggregation.tau;
  o.clip_iterations = t.allreduce.aggregation.iterations;
  o.powersgd_rank = t.powersgd_rank;
  o.attack_from_step = t.attack.from_step;
  o.attack_every = t.attack.every;
  o.attack_scale = t.attack.scale;
  o.attack_delay = t.attack.delay;
  o.btard = t.btard.enabled;
  o.btard_validators = t.btard.validators;
  o.btard_ban_quorum = static_cast<std::uint32_t>(t.btard.ban_quorum);
  o.btard_check_tolerance = t.btard.check_tolerance;
  o.btard_recompute_tolerance = t.btard.recompute_tolerance;
  o.btard_phase_timeout_ms = ms(t.btard.phase_timeout);
  const auto& m = t.matchmaking;
  o.target_group_size = static_cast<std::uint32_t>(m.target_group_size);
  o.min_group_size = static_cast<std::uint32_t>(m.min_group_size);
  o.budget_ms = ms(m.budget);
  o.poll_ms = ms(m.poll);
  o.progress_ms = ms(t.progress_period);
  o.max_wait_ms = ms(t.max_wait);
  const auto& r = t.allreduce;
  o.min_part = r.min_part;
  o.parts = averaging::to_string(r.parts);
  o.sender_timeout_ms = ms(r.sender_timeout);
  o.reducer_timeout_ms = ms(r.reducer_timeout);
  o.codec = compression::to_string(r.codec.codec);
  o.codec_min_elements = r.codec.min_elements;
  o.dht_k = static_cast<std::uint32_t>(spec.dht.config.k);
  return o;
}

RunInfo run_live_training(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  const auto& t = spec.workload_config<TrainingWorkloadSpec>();
  const std::string program = sibling_program("apiary-train", "built with LibTorch, APIARY_WITH_TORCH=ON");
  const auto wall0 = std::chrono::steady_clock::now();
  const TempDir tmp("apiary-train");  // before the children: they go first
  const std::string dir = tmp.str();

  ChildProcesses children;
  // The seed DHT peer every trainer enters through.
  const std::string seed_ep = start_seed_peer(children, spec.live_host, dir, spec.dht.config.k);

  // Every trainer process's options, and the baseline's: one typed struct, serialised for the
  // child by real/child_options.hpp.
  const TrainerOptions base = trainer_options(spec);
  const std::vector<bool> attackers = training_attackers(spec);
  const std::vector<double> speeds = device_speeds(spec);
  const std::vector<averaging::MemberKind> roles = training_roles(spec);
  std::vector<Incarnation> incs;
  std::map<std::uint32_t, std::size_t> current;  // trainer index -> its running incarnation
  auto start_trainer = [&](std::uint32_t i, bool newcomer) {
    Incarnation inc;
    inc.index = i;
    inc.newcomer = newcomer;
    const std::string name = "trainer-" + std::to_string(i) + "-" + std::to_string(incs.size());
    inc.out = dir + "/" + name + ".jsonl";
    TrainerOptions o = base;
    o.join = seed_ep;
    o.index = i;
    o.out = inc.out;
    o.delay_ms = to_seconds(spec.live_emulated_latency) * 1e3;
    o.max_seconds = to_seconds(spec.duration);
    o.samples_per_second = speeds[i];
    o.newcomer = newcomer;
    o.role = roles[i] == averaging::MemberKind::kAux ? "aux" : roles[i] == averaging::MemberKind::kClient ? "client" : "full";
    o.attack = attackers[i] ? optim::to_string(t.attack.kind) : "none";
    o.btard_false_accusations = attackers[i] && t.btard_false_accusations;
    const auto args = to_args("apiary-train", "trainer", o);
    inc.pid = children.spawn(program, args, dir + "/" + name + ".log");
    inc.running = true;
    current[i] = incs.size();
    incs.push_back(std::move(inc));
    if (!newcomer) metrics.count("train.trainers_started", 1);
  };

  // Churn, as the runner applies it (harness/churn), on the trainer processes: "down" kills the
  // trainer with SIGKILL, "up" starts a fresh process that downloads the swarm's state first. A
  // trainer whose first trace event is "up" starts down. The loop is an io_context: churn timers,
  // the end of the run, and a look every 50 ms for trainers that exited.
  boost::asio::io_context io;
  const auto start = std::chrono::steady_clock::now();
  auto running = [&](std::uint32_t i) {
    auto it = current.find(i);
    return it != current.end() && incs[it->second].running;
  };
  std::size_t pending = 0;  // churn events scheduled and not yet due
  ChurnDriver churn(spec, metrics,
                    ChurnDriver::Hooks{
                        [&](Duration at, std::function<void()> fn) {
                          ++pending;
                          run_at(io, start + at, [&pending, fn = std::move(fn)] {
                            --pending;
                            fn();
                          });
                        },
                        [&] { return std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - start); },
                        running, [&](std::uint32_t i) { start_trainer(i, true); },
                        [&](std::uint32_t i) {
                          auto& inc = incs[current.at(i)];
                          inc.status = children.kill_now(inc.pid);  // dies mid-whatever: no goodbye
                          inc.running = false;
                          inc.killed = true;
                        }});
  const std::vector<bool> starts_down = spec.churn.starts_down(spec.peers);
  for (std::uint32_t i = 0; i < spec.peers; ++i)
    if (!starts_down[i]) start_trainer(i, false);
  churn.begin(std::min(spec.dht.bootstrap_peers, spec.peers), Duration::zero());
  // Stalled trainers (faults.stall): their processes are frozen for the window.
  FaultHooks stalls;
  stalls.at = [&](Duration when, std::function<void()> fn) { run_at(io, start + when, std::move(fn)); };
  stalls.stall = [&](std::uint32_t i, bool on) {
    if (running(i)) children.freeze(incs[current.at(i)].pid, on);
  };
  schedule_fault_windows(spec, metrics, spec.duration, stalls);
  every(io, std::chrono::milliseconds(50), [&] {
    while (auto r = children.reap_one())
      for (auto& inc : incs)
        if (inc.pid == r->first) {
          inc.running = false;
          inc.status = r->second;
        }
    const Duration elapsed = std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - start);
    if (progress) progress(std::min(1.0, to_seconds(elapsed) / to_seconds(spec.duration)));
    // Byzantine trainers may never finish (banned ones cannot): the run ends with the honest ones.
    const bool any_running =
        std::any_of(incs.begin(), incs.end(), [&](const Incarnation& i) { return i.running && !attackers[i.index]; });
    if ((any_running || pending > 0) && elapsed < spec.duration && !interrupted()) return true;
    io.stop();
    return false;
  });
  io.run();
  throw_if_interrupted();
  const double run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  // Stop whatever still runs (the seed peer, trainers past the deadline) before the baseline.
  children.terminate_all();

  RunInfo info;
  info.backend = "live";
  info.run_seconds = run_seconds;
  // Gather the trainers' records.
  double final_sum = 0;
  std::size_t finishers = 0;
  std::uint64_t max_epoch = 0;
  std::size_t eval_source = incs.size();
  // Utilisation of a trainer that ran to its final record: the share of its run not spent in
  // averaging steps (the sim's busy / up time, measured on the wall clock).
  double umin = 1, usum = 0;
  std::size_t users = 0;
  for (std::size_t k = 0; k < incs.size(); ++k) {
    const auto& inc = incs[k];
    bool has_eval = false;
    double stepping = 0;
    std::int64_t attacked = 0;
    for (const auto& j : read_json_lines(inc.out)) {
      const std::string ev = j.value("event", "");
      if (ev == "step") stepping += j.value("seconds", 0.0);
      if (ev == "final" && !inc.killed && j.value("role", "") != "aux" && j.value("t", 0.0) > 0) {
        const double u = std::clamp(1 - stepping / j.value("t", 0.0), 0.0, 1.0);
        metrics.sample("train.utilisation", u);
        umin = std::min(umin, u);
        usum += u;
        ++users;
      }
      if (ev == "step") {
        metrics.count("train.steps_ok", 1);
        metrics.count("train.allreduce_bytes", j.value("bytes_sent", 0LL));
        metrics.count("train.samples", j.value("samples", 0LL));
        metrics.sample("train.step.seconds", j.value("seconds", 0.0));
        if (j.contains("global_batch")) metrics.sample("train.step.global_batch", j.value("global_batch", 0.0));
        metrics.sample("train.step.group", j.value("group", 0.0));
        max_epoch = std::max<std::uint64_t>(max_epoch, j.value("epoch", 0ULL) + 1);
      } else if (ev == "attacks") {  // a running total: the trainer's last one counts
        attacked = std::max(attacked, j.value("batches", std::int64_t{0}));
      } else if (ev == "joined") {
        metrics.count("optim.state_downloads", 1);
        metrics.sample("train.joined_epoch", j.value("epoch", 0.0));
      } else if (ev == "caught_up") {
        metrics.count("train.catch_ups", 1);
        // A trainer that fell behind catches up toward a step the swarm took; one past the run's
        // last step was set by a lie about the swarm's progress.
        if (j.value("target", std::uint64_t{0}) > t.steps) metrics.count("train.catch_ups_past_last_step", 1);
      } else if (ev == "eval") {
        has_eval = true;
      } else if (ev == "assist") {
        metrics.count("train.assists_ok", 1);
        metrics.count("train.allreduce_bytes", j.value("bytes_sent", 0LL));
      } else if (ev == "final" && !inc.killed && j.value("role", "") != "aux") {
        metrics.sample("train.final_accuracy", j.value("accuracy", 0.0));
        if (j.value("epoch", 0U) >= t.steps) {
          final_sum += j.value("accuracy", 0.0);
          ++finishers;
        }
      }
    }
    if (attacked > 0) metrics.count("train.attacks." + optim::to_string(t.attack.kind), attacked);
    if (has_eval && eval_source == incs.size() && !inc.killed && !inc.newcomer) eval_source = k;
  }
  // Accuracy over time, as the first trainer that ran to the end saw it.
  if (eval_source < incs.size())
    for (const auto& j : read_json_lines(incs[eval_source].out))
      if (j.value("event", "") == "eval") {
        metrics.sample("train.eval.epoch", j.value("epoch", 0.0));
        metrics.sample("train.eval.time_s", j.value("t", 0.0));
        metrics.sample("train.eval.accuracy", j.value("accuracy", 0.0));
        metrics.sample("train.eval.loss", j.value("loss", 0.0));
      }
  if (users) {
    info.figures["utilisation_min"] = umin;
    info.figures["utilisation_mean"] = usum / static_cast<double>(users);
  }
  info.figures["steps"] = static_cast<double>(max_epoch);
  info.figures["trainers_finished"] = static_cast<double>(finishers);
  info.figures["final_accuracy"] = finishers ? final_sum / static_cast<double>(finishers) : 0;
  info.figures["train_seconds"] = run_seconds;
  info.figures["final_loss"] = 0;
  if (auto it = metrics.series().find("train.eval.loss"); it != metrics.series().end() && !it->second.empty())
    info.figures["final_loss"] = it->second.back();
  info.figures["global_batch_mean"] = metrics.mean("train.step.global_batch");
  info.figures["averaging_seconds_mean"] = metrics.mean("train.step.seconds");
  const double samples = static_cast<double>(metrics.counter("train.samples"));
  info.figures["samples"] = samples;
  info.figures["allreduce_bytes_per_sample"] = samples > 0 ? static_cast<double>(metrics.counter("train.allreduce_bytes")) / samples : 0;

  if (t.btard.enabled) btard_figures(incs, attackers, metrics, info.figures);
  if (t.baseline) {
    TrainerOptions bo = base;
    bo.out = dir + "/baseline.jsonl";
    if (t.mode == "diloco") {  // as many samples in one process: the trainers' batches together, H steps per round
      std::uint64_t trainers = 0;
      for (auto k : roles) trainers += k == averaging::MemberKind::kAux ? 0 : 1;
      bo.steps = t.steps * static_cast<std::uint32_t>(t.inner_steps);
      bo.target_batch = trainers * t.batch_size;
    }
    const double acc = run_baseline(children, program, to_args("apiary-train", "baseline", bo), bo.out, dir + "/baseline.log");
    info.figures["baseline_accuracy"] = acc;
    info.figures["accuracy_gap_pts"] = 100 * (info.figures["final_accuracy"] - acc);
  }
  if (finishers == 0)
    throw std::runtime_error("no trainer reached " + std::to_string(t.steps) + " steps within " +
                             format_duration(spec.duration) + "; the trainers' logs are in " + dir);
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return info;
}

namespace {
const bool kLauncher = (WorkloadRegistry::add_launcher("training", {run_live_training, true, false}), true);
}  // namespace

}  // namespace apiary::real
