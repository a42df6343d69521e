#include "real/live_dmoe.hpp"

#include <signal.h>
#include <stdlib.h>

#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <thread>

#include "core/moe/experts.hpp"
#include "harness/workloads/dmoe.hpp"
#include "real/processes.hpp"

namespace apiary::real {

namespace fs = std::filesystem;

RunInfo run_live_dmoe(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  const auto& d = spec.workload_config<DmoeWorkloadConfig>().torch;
  const fs::path exe = sibling_program("apiary-train", "built with LibTorch, APIARY_WITH_TORCH=ON");
  const auto wall0 = std::chrono::steady_clock::now();
  char tmpl[] = "/tmp/apiary-dmoe-XXXXXX";
  if (!mkdtemp(tmpl)) throw std::runtime_error("cannot create a temporary directory");
  const std::string dir = tmpl;
  ChildProcesses children;
  const std::string seed_ep = start_seed_peer(children, spec.live_host, dir);
  const std::string delay = format_number(to_seconds(spec.live_emulated_latency) * 1e3);

  std::vector<std::string> grid;
  for (std::uint32_t i = 0; i < d.grid_dims; ++i) grid.push_back(std::to_string(d.grid_side));
  auto model_args = [&](std::vector<std::string> a) {
    a.push_back("--grid");
    a.insert(a.end(), grid.begin(), grid.end());
    for (const auto& [k, v] : std::vector<std::pair<std::string, std::string>>{
             {"--dim", std::to_string(d.dim)}, {"--hidden", std::to_string(d.hidden)}, {"--lr", format_number(d.learning_rate)},
             {"--dataset-dir", d.dataset_dir}, {"--steps", std::to_string(d.steps)},
             {"--batch-size", std::to_string(d.batch_size)}, {"--train-samples", std::to_string(d.train_samples)}}) {
      a.push_back(k);
      a.push_back(v);
    }
    return a;
  };
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
  std::vector<pid_t> servers;
  for (std::uint32_t i = 0; i < d.servers; ++i) {
    if (hosted[i].empty()) continue;
    auto a = model_args({"apiary-train", "expert-server", "--join", seed_ep, "--seed", std::to_string(spec.seed * 100 + i),
                         "--fail-probability", format_number(d.fail_probability), "--delay-ms", delay,
                         "--ready-file", dir + "/server-" + std::to_string(i) + ".ready"});
    a.push_back("--experts");
    a.insert(a.end(), hosted[i].begin(), hosted[i].end());
    servers.push_back(children.spawn(exe.string(), a, dir + "/server-" + std::to_string(i) + ".log"));
  }
  for (std::uint32_t i = 0; i < d.servers; ++i)
    if (!hosted[i].empty())
      wait_for_file(dir + "/server-" + std::to_string(i) + ".ready", std::chrono::steady_clock::now() + std::chrono::seconds(60),
                    "expert server " + std::to_string(i) + " (see " + dir + "/server-" + std::to_string(i) + ".log)");

  const std::string out = dir + "/trainer.jsonl";
  auto ta = model_args({"apiary-train",
                        "dmoe-trainer",
                        "--join",
                        seed_ep,
                        "--seed",
                        std::to_string(spec.seed),
                        "--out",
                        out,
                        "--k",
                        std::to_string(d.k),
                        "--k-min",
                        std::to_string(d.k_min),
                        "--routing",
                        d.routing,
                        "--codec",
                        d.codec,
                        "--grace-ms",
                        format_number(to_seconds(d.grace) * 1e3),
                        "--forward-timeout-ms",
                        format_number(to_seconds(d.forward_timeout) * 1e3),
                        "--backward-timeout-ms",
                        format_number(to_seconds(d.backward_timeout) * 1e3),
                        "--delay-ms",
                        delay,
                        "--eval-every",
                        std::to_string(d.eval_every),
                        "--eval-samples",
                        std::to_string(d.eval_samples),
                        "--max-seconds",
                        format_number(to_seconds(spec.duration))});
  const pid_t trainer = children.spawn(exe.string(), ta, dir + "/trainer.log");
  const auto start = std::chrono::steady_clock::now();
  int trainer_status = -1;
  while (trainer_status < 0) {
    while (auto r = children.reap_one())
      if (r->first == trainer) trainer_status = r->second;
    const double f = to_seconds(std::chrono::duration_cast<Duration>(std::chrono::steady_clock::now() - start)) / to_seconds(spec.duration);
    if (progress) progress(std::min(1.0, f));
    if (f > 1.05) {
      kill(trainer, SIGKILL);
      break;
    }
    if (trainer_status < 0) std::this_thread::sleep_for(std::chrono::milliseconds(100));
  }
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
    const std::string bout = dir + "/baseline.jsonl";
    auto ba = model_args({"apiary-train", "dmoe-baseline", "--seed", std::to_string(spec.seed), "--out", bout, "--k", std::to_string(d.k)});
    children.spawn(exe.string(), ba, dir + "/baseline.log");
    std::vector<std::string> failures;
    if (!children.wait_all(std::chrono::steady_clock::now() + std::chrono::minutes(30), failures) || !failures.empty())
      throw std::runtime_error("the DMoE baseline failed; see " + dir + "/baseline.log");
    for (const auto& j : read_json_lines(bout))
      if (j.value("event", "") == "final") {
        info.figures["baseline_accuracy"] = j.value("accuracy", 0.0);
        info.figures["accuracy_gap_pts"] = 100 * (info.figures["final_accuracy"] - j.value("accuracy", 0.0));
      }
  }
  fs::remove_all(dir);
  info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0).count();
  return info;
}

namespace {
const bool kLauncher = (WorkloadRegistry::add_launcher("dmoe", {run_live_dmoe, false}), true);
}  // namespace

}  // namespace apiary::real
