#pragma once
// `apiary sweep SCENARIO [--jobs N] [--out DIR] [--set k=v]...`: runs every point of the
// scenario's [sweep] (grid x zip x seeds) as its own `apiary run` process, up to N at a time,
// with overall progress and an estimate of the time left. DIR gets one HDF5 file per run and
// index.json (every run's name, file, seed, parameters, status and wall time), rewritten after
// each run, so an interrupted sweep (Ctrl-C) resumes where it stopped: finished runs whose file
// is present are not run again.
#include <string>
#include <vector>

namespace apiary::cli {

struct SweepOptions {
  std::string scenario;
  std::vector<std::string> sets;
  std::string out;  // default out/sweep-<name>
  unsigned jobs = 2;
  bool quiet = false;
};

int run_sweep(const SweepOptions& o);

}  // namespace apiary::cli
