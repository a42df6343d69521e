#include <utility>
#include "real/live_dmoe.hpp"

#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <boost/asio.hpp>

#include "core/moe/experts.hpp"
#include "harness/churn.hpp"
#include "harness/fault_schedule.hpp"
#include "harness/workloads/dmoe.hpp"
#include "real/child_options.hpp"
#include "real/asio_timer.hpp"
#include "real/processes.hpp"

namespace apiary::real {

namespace fs = std::filesystem;

RunInfo run_live_dmoe(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  const auto& d = spec.workload_config<DmoeWorkloadConfig>().torch;
  const fs::path exe = sibling_program("apiary-train", "built with LibTorch, APIARY_WITH_TORCH=ON");
  const auto wall0 = std::chrono::steady_clock::now();
  const TempDir tmp("apiary-dmoe");  // before the children: they go first
  const std::string dir = tmp.str();
  ChildProcesses children;
  const std::string seed_ep = start_seed_peer(children, spec.live_host, dir, spec.dht.config.k);
  // Every process's options: one typed struct, serialised for the child by real/child_options.hpp.
  DmoeOptions base;
  base.grid.assign(d.grid_dims, d.grid_side);
  base.dim = d.dim;
  base.hidden = d.hidden;
  base.learning_rate = d.learning_rate;
  base.dataset_dir = d.dataset_dir;
  base.device = d.device;
  base.steps = d.steps;
  base.batch_size = d.batch_size;
  base.train_samples = d.train_samples;
  base.k = d.k;
  base.dht_k = static_cast<std::uint32_t>(spec.dht.config.k);
  base.seed = spec.seed;
  base.delay_ms = to_seconds(spec.live_emulated_latency) * 1e3;
  // Every expert of the grid, dealt round-robin to the servers.
  std::vector<std::vector<std::string>> hosted(d.servers);
  std::size_t n_experts = 1;
  for (std::uint32_t i = 0; i < d.grid_dims; ++i) n_experts *= d.grid_side;
  for (std::size_t e = 0; e < n_experts; ++e) {
    moe::ExpertUid u{"ffn", {}};
    std::size_t rest = e;
    for (std::uint32_t i = 0; i < d.grid_dims; ++i) {
      u.coords.insert(u.coords.begin(), static_cast<std::uint32_t>(rest % d.grid_side));
      rest /= d.grid_side;
    }
    hosted[e % d.servers].push_back(u.str());
  }
  std::vector<pid_t> servers(d.servers, 0);
  std::vector<std::uint32_t> incarnations(d.servers, 0);
  auto start_server = [&](std::uint32_t i) {
    DmoeOptions so = base;
    so.join = seed_ep;
    so.seed = spec.seed * 100 + i;
    so.fail_probability = d.fail_probability;
    so.max_batch = d.server.max_batch;
    so.min_batch = d.server.min_batch;
    so.batch_wait_ms = to_seconds(d.server.batch_wait) * 1e3;
    so.ready_file = dir + "/server-" + std::to_string(i) + ".ready";
    so.uids = hosted[i];
    const auto a = to_args("apiary-train", "expert-server", so);
    servers[i] = children.spawn(exe.string(), a, dir + "/server-" + std::to_string(i) + "-" + std::to_string(incarnations[i]++) + ".log");
  };
  for (std::uint32_t i = 0; i < d.servers; ++i)
    if (!hosted[i].empty()) start_server(i);
  for (std::uint32_t i = 0; i < d.servers; ++i)
    if (!hosted[i].empty())
      wait_for_file(dir + "/server-" + std::to_string(i) + ".ready", std::chrono::steady_clock::now() + std::chrono::seconds(60),
                    "expert server " + std::to_string(i) + " (see " + dir + "/server-" + std::to_string(i) + "-0.log)");

  const std::string out = dir + "/trainer.jsonl";
  DmoeOptions to = base;
  to.join = seed_ep;
  to.out = out;
  to.k_min = d.k_min;
  to.routing = d.routing;
  to.codec = d.codec;
  to.timeout_after_k_min_ms = to_seconds(d.grace) * 1e3;
  to.forward_timeout_ms = to_seconds(d.forward_timeout) * 1e3;
  to.backward_timeout_ms = to_seconds(d.backward_timeout) * 1e3;
  to.eval_every = d.eval_every;
  to.eval_samples = d.eval_samples;
  to.max_seconds = to_seconds(spec.duration);
  const auto ta = to_args("apiary-train", "dmoe-trainer", to);
  const pid_t trainer = children.spawn(exe.string(), ta, dir + "/trainer.log");
  // Churn on the expert servers (peer i of the scenario is server i), as the runner applies it
  // (harness/churn): "down" kills the server with SIGKILL, "up" starts it again with the same
  // experts, freshly initialised (a crashed server without a checkpoint). The trainer stays. The
  // loop is an io_context: churn timers, and a look every 100 ms for the trainer's exit.
  boost::asio::io_context io;
  const auto start = std::chrono::steady_clock::now();
  ChurnDriver churn(spec, metrics,
                    ChurnDriver::Hooks{
                        [&](Duration t, std::function<void()> fn) { run_at(io, start + t, std::move(fn)); },
                        [&] { return std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - start); },
                        [&](std::uint32_t i) { return servers[i] != 0; },
                        [&](std::uint32_t i) {
                          std::filesystem::remove(dir + "/server-" + std::to_string(i) + ".ready");
                          start_server(i);
                        },
                        [&](std::uint32_t i) {
                          children.kill_now(servers[i]);
                          servers[i] = 0;
                        }});
  churn.begin(0, Duration::zero(), d.servers);
  // Stalled expert servers (faults.stall): their processes are frozen for the window.
  FaultHooks stalls;
  stalls.at = [&](Duration t, std::function<void()> fn) { run_at(io, start + t, std::move(fn)); };
  stalls.stall = [&](std::uint32_t i, bool on) {
    if (i < servers.size()) children.freeze(servers[i], on);
  };
  schedule_fault_windows(spec, metrics, spec.duration, stalls);
  int trainer_status = -1;
  every(io, std::chrono::milliseconds(100), [&] {
    while (auto r = children.reap_one())
      if (r->first == trainer) trainer_status = r->second;
    const double f = to_seconds(std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - start)) / to_seconds(spec.duration);
    if (progress) progress(std::min(1.0, f));
    if (trainer_status < 0 && f <= 1.05 && !interrupted()) return true;
    if (trainer_status < 0) kill(trainer, SIGKILL);
    io.stop();
    return false;
  });
  io.run();
  throw_if_interrupted();
  const double run_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  children.terminate_all();
  RunInfo info;
  info.backend = "live";
  info.run_seconds = run_seconds;
  bool finished = false;
  for (const auto& j : read_json_lines(out)) {
    const std::string ev = j.value("event", "");
    if (ev == "eval") {
      metrics.sample("train.eval.epoch", j.value("epoch", 0.0));
      metrics.sample("train.eval.time_s", j.value("t", 0.0));
      metrics.sample("train.eval.accuracy", j.value("accuracy", 0.0));
    } else if (ev == "skipped") {
      metrics.count("moe.skipped_steps", 1);
    } else if (ev == "final") {
      finished = true;
      info.figures["final_accuracy"] = j.value("accuracy", 0.0);
      metrics.count("moe.expert_failures", j.value("expert_failures", 0LL));
      metrics.count("moe.researches", j.value("researches", 0LL));
      metrics.count("moe.backward_failures", j.value("backward_failures", 0LL));
      info.figures["train_seconds"] = j.value("t", 0.0);
    }
  }
  if (!finished)
    throw std::runtime_error("the DMoE trainer did not finish (status " + std::to_string(trainer_status) + "); logs in " + dir);
  info.figures["steps"] = d.steps;
  info.figures["steps_per_second"] = info.figures["train_seconds"] > 0 ? d.steps / info.figures["train_seconds"] : 0;
  if (d.baseline) {
    DmoeOptions bo = base;
    bo.out = dir + "/baseline.jsonl";
    const double acc = run_baseline(children, exe.string(), to_args("apiary-train", "dmoe-baseline", bo), bo.out, dir + "/baseline.log");
    info.figures["baseline_accuracy"] = acc;
    info.figures["accuracy_gap_pts"] = 100 * (info.figures["final_accuracy"] - acc);
  }
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return info;
}

namespace {
const bool kLauncher = (WorkloadRegistry::add_launcher("dmoe", {run_live_dmoe, true, false}), true);
}  // namespace

}  // namespace apiary::real
