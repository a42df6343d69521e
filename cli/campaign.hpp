#pragma once
// `apiary campaign SCENARIO --seeds N [--jobs J] [--out DIR] [--faults all|network|inject|none]
// [--timeout SECONDS] [--set k=v]...`: the scenario under N seeds, each with its own seeded draw
// of faults (packet loss, a partition, a latency spike, a bandwidth drop, stalled peers in ns-3; faults injected
// into the RPC layer in both worlds), every run checked against the invariants the workloads
// count (`invariant.*` counters) and for hangs. DIR gets each run's results and log, index.json
// (resumable, as a sweep) and summary.md, which gives every violation and hang a one-line
// command that replays it exactly.
#include <string>
#include <vector>

namespace apiary::cli {

struct CampaignOptions {
  std::string scenario;
  std::vector<std::string> sets;
  std::string out;  // default out/campaign-<name>
  unsigned seeds = 100;
  unsigned jobs = 2;
  std::string faults = "all";
  double timeout_s = 600;
  bool quiet = false;
};

int run_campaign(const CampaignOptions& o);

}  // namespace apiary::cli
