#include "cli/sweep.hpp"

#include <csignal>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <thread>

#include <nlohmann/json.hpp>
#include <sys/wait.h>
#include <unistd.h>

#include "harness/spec.hpp"
#include "real/processes.hpp"

namespace apiary::cli {

namespace fs = std::filesystem;

namespace {

std::vector<Point> expand(const SweepSpec& sw, std::uint64_t base_seed) {
  std::vector<std::vector<std::pair<std::string, std::string>>> combos{{}};
  for (const auto& axis : sw.grid) {
    std::vector<std::vector<std::pair<std::string, std::string>>> next;
    for (const auto& c : combos)
      for (const auto& v : axis.values) {
        auto d = c;
        d.emplace_back(axis.key, v);
        next.push_back(std::move(d));
      }
    combos = std::move(next);
  }
  if (!sw.zip.empty()) {
    std::vector<std::vector<std::pair<std::string, std::string>>> next;
    for (const auto& c : combos)
      for (std::size_t row = 0; row < sw.zip[0].values.size(); ++row) {
        auto d = c;
        for (const auto& axis : sw.zip) d.emplace_back(axis.key, axis.values[row]);
        next.push_back(std::move(d));
      }
    combos = std::move(next);
  }
  const std::vector<std::uint64_t> seeds = sw.seeds.empty() ? std::vector<std::uint64_t>{base_seed} : sw.seeds;
  std::vector<Point> out;
  for (const auto& c : combos)
    for (auto seed : seeds) {
      Point p;
      char name[32];
      std::snprintf(name, sizeof name, "run-%04zu", out.size());
      p.name = name;
      p.seed = seed;
      p.params = c;
      out.push_back(std::move(p));
    }
  return out;
}

nlohmann::json index_json(const std::string& scenario, const std::string& name, const std::vector<std::string>& sets,
                          const std::vector<Point>& points) {
  nlohmann::json runs = nlohmann::json::array();
  for (const auto& p : points) {
    nlohmann::json params = nlohmann::json::object();
    for (const auto& [k, v] : p.params) params[k] = v;
    runs.push_back({{"run", p.name},
                    {"file", p.name + ".h5"},
                    {"seed", p.seed},
                    {"params", params},
                    {"status", p.status},
                    {"wall_seconds", p.wall_seconds}});
    if (!p.findings.empty()) runs.back()["findings"] = p.findings;
  }
  return {{"scenario", scenario}, {"name", name}, {"sets", sets}, {"runs", runs}};
}

void write_index(const fs::path& dir, const nlohmann::json& j) {
  real::write_file_atomically((dir / "index.json").string(), j.dump(1) + "\n");
}

std::string clock_text(double seconds) {
  const long s = static_cast<long>(seconds + 0.5);
  char buf[32];
  if (s >= 3600)
    std::snprintf(buf, sizeof buf, "%ld:%02ld:%02ld", s / 3600, s / 60 % 60, s % 60);
  else
    std::snprintf(buf, sizeof buf, "%ld:%02ld", s / 60, s % 60);
  return buf;
}

}  // namespace

int run_sweep(const SweepOptions& o) {
  // Validate the base scenario and the sweep, then every point, before running anything.
  Scenario base = Scenario::from_file(o.scenario, o.sets);
  SwarmSpec spec = parse_swarm_spec(base);  // also validates [sweep]
  Scenario again = Scenario::from_file(o.scenario, o.sets);
  const SweepSpec sw = again.get_sweep();
  if (!sw.present()) throw ScenarioError(o.scenario + ": no [sweep] table (grid, zip and/or seeds) to run");
  std::vector<Point> points = expand(sw, spec.seed);
  for (const auto& p : points) {
    auto sets = o.sets;
    for (const auto& [k, v] : p.params) sets.push_back(k + "=" + v);
    sets.push_back("seed=" + std::to_string(p.seed));
    Scenario sc = Scenario::from_file(o.scenario, sets);
    parse_swarm_spec(sc);  // a bad value is reported now, naming the --set
  }
  const fs::path dir = o.out.empty() ? fs::path("out") / ("sweep-" + spec.name) : fs::path(o.out);
  RunSet set{o.scenario, spec.name, o.sets, dir, o.jobs, o.quiet, Duration::zero(), {}};
  return run_points(set, points, "sweep");
}

int run_points(const RunSet& o, std::vector<Point>& points, const std::string& what) {
  const fs::path& dir = o.dir;
  const std::string& name = o.name;
  fs::create_directories(dir);

  // Resume: runs recorded as done with their file present are kept.
  std::size_t cached = 0;
  if (fs::exists(dir / "index.json")) {
    std::ifstream in(dir / "index.json");
    nlohmann::json old = nlohmann::json::parse(in, nullptr, false);
    std::map<std::string, nlohmann::json> by_name;
    // Earlier runs count only for the same scenario file and the same --set overrides.
    const bool same_base = old.is_object() && old.value("scenario", "") == o.scenario && old.contains("sets") &&
                           old["sets"] == nlohmann::json(o.sets);
    if (same_base && old.contains("runs") && old["runs"].is_array())
      for (const auto& r : old["runs"])
        if (r.is_object() && r.contains("run") && r["run"].is_string()) by_name[r["run"].get<std::string>()] = r;
    if (!same_base && old.is_object())
      std::fprintf(stderr, "%s: %s holds runs of another scenario or other --set values; running everything again\n",
                   what.c_str(), (dir / "index.json").c_str());
    for (auto& p : points) {
      auto it = by_name.find(p.name);
      if (it == by_name.end()) continue;
      nlohmann::json params = nlohmann::json::object();
      for (const auto& [k, v] : p.params) params[k] = v;
      const auto& r = it->second;
      const bool same = r.contains("seed") && r["seed"].is_number_unsigned() && r["seed"].get<std::uint64_t>() == p.seed &&
                        r.contains("params") && r["params"] == params;
      const std::string status = r.contains("status") && r["status"].is_string() ? r["status"].get<std::string>() : "";
      if (same && (status == "done" || status == "violated") && fs::exists(dir / (p.name + ".h5"))) {
        p.status = status;
        p.wall_seconds = r.contains("wall_seconds") && r["wall_seconds"].is_number() ? r["wall_seconds"].get<double>() : 0.0;
        if (r.contains("findings") && r["findings"].is_array())
          for (const auto& f : r["findings"])
            if (f.is_string()) p.findings.push_back(f.get<std::string>());
        ++cached;
      }
    }
  }
  write_index(dir, index_json(o.scenario, name, o.sets, points));
  const std::size_t total = points.size();
  std::fprintf(stderr, "%s %s: %zu runs into %s; %zu already done\n", what.c_str(), name.c_str(), total, dir.c_str(), cached);

  real::ChildProcesses children;  // from here on SIGINT/SIGTERM reach the runs and set interrupted()
  std::map<pid_t, std::pair<std::size_t, std::chrono::steady_clock::time_point>> running;
  std::size_t next = 0, done = cached, failed = 0;
  double work_seconds = 0;  // wall time of runs finished in this invocation, summed
  std::size_t finished_here = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const unsigned jobs = std::max(1u, o.jobs);
  while (true) {
    while (!real::interrupted() && running.size() < jobs && next < total) {
      Point& p = points[next];
      const std::size_t i = next++;
      if (p.status == "done" || p.status == "violated") continue;
      std::vector<std::string> args{"apiary", "run", o.scenario, "--quiet", "--json", "--force", "--out",
                                    (dir / (p.name + ".h5")).string()};
      for (const auto& s : o.sets) args.insert(args.end(), {"--set", s});
      for (const auto& [k, v] : p.params) args.insert(args.end(), {"--set", k + "=" + v});
      args.insert(args.end(), {"--seed", std::to_string(p.seed)});
      const pid_t pid = children.spawn_self(args, (dir / (p.name + ".log")).string());
      p.status = "running";
      running[pid] = {i, std::chrono::steady_clock::now()};
    }
    if (running.empty()) break;
    // (An interrupt has already reached the runs: the handler forwards it, once.)
    // A run past its time limit hangs: SIGTERM, so that it stops its own children and removes its
    // files, then SIGKILL if it is still there 10 s later.
    if (o.timeout > Duration::zero())
      for (auto& [pid, at] : running) {
        const auto age = std::chrono::steady_clock::now() - at.second;
        if (age > o.timeout && points[at.first].status == "running") {
          points[at.first].status = "hang";
          kill(-pid, SIGTERM);
        } else if (age > o.timeout + std::chrono::seconds(10) && points[at.first].status == "hang") {
          kill(-pid, SIGKILL);
        }
      }
    if (auto r = children.reap_one()) {
      auto it = running.find(r->first);
      if (it == running.end()) continue;
      Point& p = points[it->second.first];
      p.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - it->second.second).count();
      running.erase(it);
      const bool ok = WIFEXITED(r->second) && WEXITSTATUS(r->second) == 0;
      const std::string log = (dir / (p.name + ".log")).string();
      if (p.status == "hang") {
        p.findings = {"hang: no result after " + format_duration(o.timeout)};
        ++failed;
        std::fprintf(stderr, "%s: %s hung (stopped after %s; see %s)\n", what.c_str(), p.name.c_str(),
                     format_duration(o.timeout).c_str(), log.c_str());
      } else if (real::interrupted() && !ok) {
        p.status = "pending";  // killed by us: runs again on resume
      } else {
        p.status = ok ? "done" : "failed";
        if (ok && o.check) {
          try {
            p.findings = o.check(p, log);
          } catch (const std::exception& e) {
            p.findings = {std::string("its summary could not be read: ") + e.what()};
          }
          if (!p.findings.empty()) p.status = "violated";
        }
        ok ? ++done : ++failed;
        ++finished_here;
        work_seconds += p.wall_seconds;
        if (!ok) std::fprintf(stderr, "%s: %s failed (see %s)\n", what.c_str(), p.name.c_str(), log.c_str());
        for (const auto& f : p.findings) std::fprintf(stderr, "%s: %s: %s\n", what.c_str(), p.name.c_str(), f.c_str());
      }
      write_index(dir, index_json(o.scenario, name, o.sets, points));
      if (!o.quiet && !real::interrupted()) {
        const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        const std::size_t left = total - done - failed;
        const double eta = finished_here ? work_seconds / static_cast<double>(finished_here) * static_cast<double>(left) / jobs : 0;
        std::fprintf(stderr, "[%zu/%zu] %s %s in %.1f s; elapsed %s, about %s left\n", done + failed, total, p.name.c_str(),
                     p.status.c_str(), p.wall_seconds, clock_text(elapsed).c_str(), clock_text(eta).c_str());
      }
      continue;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(20));
  }
  write_index(dir, index_json(o.scenario, name, o.sets, points));
  if (real::interrupted()) {
    std::fprintf(stderr, "%s interrupted: %zu of %zu runs done; run the same command again to resume\n", what.c_str(), done,
                 total);
    return 130;
  }
  std::fprintf(stderr, "%s %s: %zu done, %zu failed; index: %s\n", what.c_str(), name.c_str(), done, failed,
               (dir / "index.json").c_str());
  return failed ? 1 : 0;
}

}  // namespace apiary::cli
