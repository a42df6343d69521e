#include "cli/sweep.hpp"

#include <csignal>
#include <chrono>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <map>
#include <stdexcept>
#include <thread>

#include <fcntl.h>
#include <nlohmann/json.hpp>
#include <sys/file.h>
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

// The index, rewritten whole by the process that runs a set; by a run of one point beside others
// (--only), that point's entry only. Under an exclusive lock either way, so that array tasks and
// Dask workers finishing at once do not lose each other's entries.
void save_index(const RunSet& o, const std::vector<Point>& points) {
  const int fd = ::open((o.dir / "index.lock").c_str(), O_CREAT | O_RDWR | O_CLOEXEC, 0644);
  if (fd >= 0) ::flock(fd, LOCK_EX);
  nlohmann::json j = index_json(o.scenario, o.name, o.sets, points);
  if (fs::exists(o.dir / "index.json")) {
    std::ifstream in(o.dir / "index.json");
    nlohmann::json old = nlohmann::json::parse(in, nullptr, false);
    if (old.is_object() && old.contains("runs") && old["runs"].is_array() && old["runs"].size() == points.size()) {
      if (o.only) {
        old["runs"][*o.only] = j["runs"][*o.only];
        j = std::move(old);
      } else {
        // A point we still see running may have been finished, and recorded, by a worker.
        for (std::size_t i = 0; i < points.size(); ++i) {
          const auto& r = old["runs"][i];
          const std::string st = r.is_object() ? r.value("status", "") : "";
          if (points[i].status == "running" && r.value("run", "") == points[i].name && (st == "done" || st == "violated" || st == "failed"))
            j["runs"][i] = r;
        }
      }
    }
  }
  write_index(o.dir, j);
  if (fd >= 0) {
    ::flock(fd, LOCK_UN);
    ::close(fd);
  }
}

// What the index on disk says of point i (a Dask worker may have finished it after we stopped
// waiting): its status if its file is there too, else "".
std::string recorded_status(const fs::path& dir, const Point& p, std::size_t i) {
  std::ifstream in(dir / "index.json");
  nlohmann::json j = nlohmann::json::parse(in, nullptr, false);
  if (!j.is_object() || !j.contains("runs") || !j["runs"].is_array() || j["runs"].size() <= i) return "";
  const auto& r = j["runs"][i];
  if (!r.is_object() || r.value("run", "") != p.name || !fs::exists(dir / (p.name + ".h5"))) return "";
  return r.value("status", "");
}

// Each point on a Dask worker: a small Python program (Debian's python3-distributed) that submits
// the point's command to the cluster and exits with its status. SIGTERM or SIGINT to it (an
// interrupted sweep) sets a cluster-wide event on which the task stops its process group.
constexpr const char* kDaskTask = R"PY(
import os, signal, subprocess, sys, time
from distributed import Client, Event

def run_point(cmd, stop_name):
    import os, signal, subprocess, time
    from distributed import Event
    stop = Event(stop_name)
    proc = subprocess.Popen(cmd, start_new_session=True)
    while proc.poll() is None:
        if stop.is_set():
            os.killpg(proc.pid, signal.SIGTERM)
            try:
                proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
            return 130
        time.sleep(0.2)
    return proc.returncode

address, cmd = sys.argv[1], sys.argv[2:]
client = Client(address, timeout="30s")
stop_name = "apiary-stop-%d-%d" % (os.getpid(), time.time_ns())
future = client.submit(run_point, cmd, stop_name, pure=False)

def stop(*_):
    code = 130
    if future.done():
        code = future.result()  # it finished: say how
    else:
        Event(stop_name, client=client).set()
        try:
            future.result(timeout=30)
        except Exception:
            pass
    client.close()
    os._exit(code)

signal.signal(signal.SIGTERM, stop)
signal.signal(signal.SIGINT, stop)
code = future.result()
client.close()
sys.exit(code)
)PY";

// "dask://HOST:PORT" as Dask names it ("tcp://HOST:PORT"); throws on anything else.
std::string dask_address(const std::string& executor) {
  const std::string scheme = "dask://";
  const std::string rest = executor.rfind(scheme, 0) == 0 ? executor.substr(scheme.size()) : "";
  const auto colon = rest.rfind(':');
  if (rest.empty() || colon == std::string::npos || colon == 0 || colon + 1 == rest.size() ||
      rest.find_first_not_of("0123456789", colon + 1) != std::string::npos)
    throw std::invalid_argument("--executor '" + executor + "': expected local or dask://HOST:PORT");
  return "tcp://" + rest;
}

std::string shell_quote(const std::string& s) {
  std::string out = "'";
  for (char c : s) out += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return out + "'";
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
  RunSet set{o.scenario, spec.name, o.sets, dir, o.jobs, o.quiet, Duration::zero(), {}, o.executor, o.only};
  if (o.only && *o.only >= points.size())
    throw std::invalid_argument("--only " + std::to_string(*o.only) + ": the sweep has points 0 to " + std::to_string(points.size() - 1));
  if (o.executor != "local") dask_address(o.executor);  // a malformed address is an error before anything runs
  if (o.emit == "slurm") {
    // A job array whose task I runs point I the way a Dask worker does; the index is made now, so
    // that the tasks (and a later local resume) share it.
    fs::create_directories(dir);
    if (!fs::exists(dir / "index.json")) save_index(set, points);
    const std::string self = fs::read_symlink("/proc/self/exe").string();
    std::string cmd = shell_quote(self) + " sweep " + shell_quote(fs::absolute(o.scenario).string()) + " --out " +
                      shell_quote(fs::absolute(dir).string()) + " --quiet";
    for (const auto& s : o.sets) cmd += " --set " + shell_quote(s);
    std::printf("#!/bin/bash\n# %zu points of %s; submit with sbatch (the nodes share %s)\n", points.size(), o.scenario.c_str(),
                fs::absolute(dir).c_str());
    std::printf("#SBATCH --job-name=apiary-%s\n#SBATCH --array=0-%zu\n#SBATCH --output=%s/slurm-%%A_%%a.out\n", spec.name.c_str(),
                points.size() - 1, fs::absolute(dir).c_str());
    std::printf("exec %s --only \"$SLURM_ARRAY_TASK_ID\"\n", cmd.c_str());
    return 0;
  }
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
    // (The same file however it is named: a worker names it by its absolute path.)
    const auto same_file = [&](const std::string& a) {
      std::error_code ec;
      return a == o.scenario || fs::weakly_canonical(a, ec) == fs::weakly_canonical(o.scenario, ec);
    };
    const bool same_base = old.is_object() && same_file(old.value("scenario", "")) && old.contains("sets") &&
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
  if (!o.only || !fs::exists(dir / "index.json")) save_index(o, points);
  const std::size_t total = o.only ? 1 : points.size();
  if (o.only) cached = points[*o.only].status == "done" || points[*o.only].status == "violated" ? 1 : 0;
  std::fprintf(stderr, "%s %s: %zu runs into %s; %zu already done\n", what.c_str(), name.c_str(), total, dir.c_str(), cached);

  // A Dask worker runs `apiary sweep` by this executable's path and this directory's: absolute.
  const std::optional<std::string> dask =
      o.executor.empty() || o.executor == "local" ? std::nullopt : std::optional<std::string>(dask_address(o.executor));
  const std::string self = fs::read_symlink("/proc/self/exe").string();
  real::ChildProcesses children;  // from here on SIGINT/SIGTERM reach the runs and set interrupted()
  std::map<pid_t, std::pair<std::size_t, std::chrono::steady_clock::time_point>> running;
  std::size_t next = 0, done = cached, failed = 0;
  double work_seconds = 0;  // wall time of runs finished in this invocation, summed
  std::size_t finished_here = 0;
  const auto t0 = std::chrono::steady_clock::now();
  const unsigned jobs = std::max(1u, o.jobs);
  while (true) {
    while (!real::interrupted() && running.size() < jobs && next < points.size()) {
      Point& p = points[next];
      const std::size_t i = next++;
      if (p.status == "done" || p.status == "violated" || (o.only && i != *o.only)) continue;
      pid_t pid = 0;
      if (dask) {
        // The point as a task of the cluster: `apiary sweep ... --only I` on a worker.
        std::vector<std::string> args{"python3", "-c", kDaskTask, *dask, self, "sweep", fs::absolute(o.scenario).string(), "--out",
                                      fs::absolute(dir).string(), "--quiet", "--only", std::to_string(i)};
        for (const auto& s : o.sets) args.insert(args.end(), {"--set", s});
        pid = children.spawn("/usr/bin/python3", args, (dir / (p.name + ".dask.log")).string());
      } else {
        std::vector<std::string> args{"apiary", "run", o.scenario, "--quiet", "--json", "--force", "--out",
                                      (dir / (p.name + ".h5")).string()};
        for (const auto& s : o.sets) args.insert(args.end(), {"--set", s});
        for (const auto& [k, v] : p.params) args.insert(args.end(), {"--set", k + "=" + v});
        args.insert(args.end(), {"--seed", std::to_string(p.seed)});
        pid = children.spawn_self(args, (dir / (p.name + ".log")).string());
      }
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
      const std::size_t index = it->second.first;
      Point& p = points[index];
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
        // Killed by us: runs again on resume, unless a worker finished it meanwhile.
        const std::string recorded = dask ? recorded_status(dir, p, index) : "";
        p.status = recorded == "done" || recorded == "violated" ? recorded : "pending";
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
      save_index(o, points);
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
  save_index(o, points);
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
