#pragma once
// `apiary sweep SCENARIO [--jobs N] [--out DIR] [--set k=v]...`: runs every point of the
// scenario's [sweep] (grid x zip x seeds) as its own `apiary run` process, up to N at a time,
// with overall progress and an estimate of the time left. DIR gets one HDF5 file per run and
// index.json (every run's name, file, seed, parameters, status and wall time), rewritten after
// each run, so an interrupted sweep (Ctrl-C) resumes where it stopped: finished runs whose file
// is present are not run again.
//
// Elsewhere than on this machine: `--executor dask://HOST:PORT` hands each point to a Dask
// distributed cluster (Debian's python3-distributed; the workers share this directory), and
// `--emit slurm` prints a Slurm job array. Either way a point runs as `apiary sweep SCENARIO --out
// DIR --only I`, which runs point I alone and records it in DIR/index.json (under a lock, beside
// other such runs): the same index, the same files, the same resume.
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "core/runtime/time.hpp"

namespace apiary::cli {

struct SweepOptions {
  std::string scenario;
  std::vector<std::string> sets;
  std::string out;  // default out/sweep-<name>
  unsigned jobs = 2;
  bool quiet = false;
  std::string executor = "local";     // or dask://HOST:PORT
  std::optional<std::size_t> only;    // run this point alone (what each executor's task runs)
  std::string emit;                   // "slurm": print a job array instead of running
};

int run_sweep(const SweepOptions& o);

// One `apiary run` of a sweep or campaign, and what became of it.
struct Point {
  std::string name;
  std::uint64_t seed = 0;
  std::vector<std::pair<std::string, std::string>> params;  // key, value (--set form)
  std::string status = "pending";  // pending, running, done, failed, violated, hang
  double wall_seconds = 0;
  std::vector<std::string> findings;  // invariant violations, a hang
};

// How to run a set of points: up to `jobs` processes at a time, resumable through
// dir/index.json; a run past `timeout` (if set) is stopped and reported as a hang; `check` (if
// set) reads a finished run's log (its --json summary is the last line) and returns findings.
struct RunSet {
  std::string scenario;
  std::string name;
  std::vector<std::string> sets;
  std::filesystem::path dir;
  unsigned jobs = 2;
  bool quiet = false;
  Duration timeout{};
  std::function<std::vector<std::string>(const Point&, const std::string& log)> check;
  // Where the points run: "" or "local" (child processes here), or dask://HOST:PORT (each point
  // is `apiary sweep SCENARIO --out DIR --only I` on a Dask worker).
  std::string executor;
  std::optional<std::size_t> only;  // run this point alone; the index gets its entry only
};

// Runs the points (their status, wall time and findings are updated); `what` names the command
// in messages. Returns 0, 1 if a run failed or hung, 130 if interrupted.
int run_points(const RunSet& set, std::vector<Point>& points, const std::string& what);

}  // namespace apiary::cli
