#include "cli/campaign.hpp"

#include <cstdio>
#include <fstream>
#include <sstream>

#include <nlohmann/json.hpp>

#include "cli/sweep.hpp"
#include "core/runtime/rng.hpp"
#include "harness/spec.hpp"

namespace apiary::cli {

namespace fs = std::filesystem;

namespace {

std::string ms(double seconds) { return std::to_string(static_cast<long long>(seconds * 1000)) + "ms"; }

std::string number(double v) {
  char b[32];
  std::snprintf(b, sizeof b, "%.4g", v);
  return b;
}

// A window at a random time of the run, lasting 5-25% of it, over 10-50% of the peers.
std::string window(Rng& r, double run_s, const std::string& extra) {
  const double at = r.uniform(0.1, 0.6) * run_s, length = r.uniform(0.05, 0.25) * run_s;
  return "{ at = \"" + ms(at) + "\", duration = \"" + ms(length) + "\", fraction = " + number(r.uniform(0.1, 0.5)) + extra + " }";
}

// The faults of one seed: a draw of its own (the same seed, the same faults), every decision
// made whether or not its fault is used, so that --faults does not shift the others.
std::vector<std::pair<std::string, std::string>> draw_faults(std::uint64_t seed, const SwarmSpec& spec, const std::string& which) {
  Rng r = Rng(0x63616d706169676eULL).fork(seed);  // "campaign"
  const bool network = (which == "all" || which == "network") && spec.backend == "sim";
  const bool inject = which == "all" || which == "inject";
  const double run_s = to_seconds(spec.duration);
  std::vector<std::pair<std::string, std::string>> out;
  const bool loss = r.uniform(0, 1) < 0.5;
  const double loss_p = r.uniform(0.005, 0.05);
  if (network && loss) out.emplace_back("network.loss", number(loss_p));
  const bool cut = r.uniform(0, 1) < 0.5;
  const std::string partition = window(r, run_s, "");
  if (network && cut) out.emplace_back("faults.partition", partition);
  const bool spike = r.uniform(0, 1) < 0.3;
  const std::string spike_w = window(r, run_s, ", extra = \"" + ms(r.uniform(0.05, 0.5)) + "\"");
  if (network && spike) out.emplace_back("faults.latency_spike", spike_w);
  const bool slow = r.uniform(0, 1) < 0.3;
  const std::string slow_w = window(r, run_s, ", factor = " + number(r.uniform(0.05, 0.5)));
  if (network && slow) out.emplace_back("faults.bandwidth_drop", slow_w);
  const bool rpc = r.uniform(0, 1) < 0.5;
  const std::string plan = "{ drop_reply = " + number(r.uniform(0, 0.05)) + ", delay_reply = " + number(r.uniform(0, 0.1)) +
                           ", delay_max = \"1s\", slow_handler = " + number(r.uniform(0, 0.05)) + ", slow_max = \"500ms\" }";
  if (inject && rpc) out.emplace_back("faults.inject", plan);
  const bool freeze = r.uniform(0, 1) < 0.3;
  const std::string stall = window(r, run_s, "");
  if (network && freeze) out.emplace_back("faults.stall", stall);
  // Drawn after the others, so that adding it kept every earlier seed's faults as they were.
  const bool early = r.uniform(0, 1) < 0.3;
  const std::string early_p = number(r.uniform(0, 0.05));
  if (inject && early) out.emplace_back("faults.inject.early_timeout", early_p);
  const bool nat = r.uniform(0, 1) < 0.3;
  const std::string nat_share = number(r.uniform(0.1, 0.4));
  if (network && nat) out.emplace_back("network.nat", nat_share);
  return out;
}

// The invariants a run counted, from the --json summary on its log's last line.
std::vector<std::string> violations(const std::string& log) {
  std::ifstream f(log);
  std::string line, last;
  while (std::getline(f, line))
    if (!line.empty() && line[0] == '{') last = line;
  const auto j = nlohmann::json::parse(last, nullptr, false);
  if (j.is_discarded() || !j.contains("metrics")) return {"no JSON summary in " + log};
  std::vector<std::string> out;
  const auto& m = j["metrics"];
  if (!m.is_object() || !m.contains("counters") || !m["counters"].is_object()) return out;
  for (const auto& [k, v] : m["counters"].items())
    if (k.rfind("invariant.", 0) == 0 && v.is_number_integer() && v.get<long long>() > 0)
      out.push_back(k + " = " + std::to_string(v.get<long long>()));
  return out;
}

std::string quoted(const std::string& s) {
  std::string q = "'";
  for (char c : s) q += c == '\'' ? std::string("'\\''") : std::string(1, c);
  return q + "'";
}

}  // namespace

int run_campaign(const CampaignOptions& o) {
  if (o.seeds < 1) throw std::invalid_argument("--seeds must be at least 1");
  if (o.faults != "all" && o.faults != "network" && o.faults != "inject" && o.faults != "none")
    throw std::invalid_argument("--faults must be all, network, inject or none, not '" + o.faults + "'");
  Scenario base = Scenario::from_file(o.scenario, o.sets);
  const SwarmSpec spec = parse_swarm_spec(base);
  std::vector<Point> points;
  for (std::uint64_t seed = 1; seed <= o.seeds; ++seed) {
    Point p;
    char name[32];
    std::snprintf(name, sizeof name, "seed-%04llu", static_cast<unsigned long long>(seed));
    p.name = name;
    p.seed = seed;
    if (o.faults != "none") p.params = draw_faults(seed, spec, o.faults);
    auto sets = o.sets;
    for (const auto& [k, v] : p.params) sets.push_back(k + "=" + v);
    Scenario sc = Scenario::from_file(o.scenario, sets);
    parse_swarm_spec(sc);  // every point is valid before anything runs
    points.push_back(std::move(p));
  }
  RunSet set;
  set.scenario = o.scenario;
  set.name = spec.name;
  set.sets = o.sets;
  set.dir = o.out.empty() ? fs::path("out") / ("campaign-" + spec.name) : fs::path(o.out);
  set.jobs = o.jobs;
  set.quiet = o.quiet;
  set.timeout = Duration(static_cast<std::int64_t>(o.timeout_s * 1e9));
  set.check = [](const Point&, const std::string& log) { return violations(log); };
  const int rc = run_points(set, points, "campaign");
  if (rc == 130) return rc;

  // The summary: counts, then every finding with the command that replays it.
  std::size_t clean = 0, violated = 0, hung = 0, failed = 0;
  std::ostringstream findings;
  for (const auto& p : points) {
    clean += p.status == "done";
    violated += p.status == "violated";
    hung += p.status == "hang";
    failed += p.status == "failed";
    if (p.status == "done") continue;
    std::string cmd = "apiary run " + o.scenario;
    for (const auto& s : o.sets) cmd += " --set " + quoted(s);
    for (const auto& [k, v] : p.params) cmd += " --set " + quoted(k + "=" + v);
    cmd += " --seed " + std::to_string(p.seed);
    findings << "* " << p.name << " (" << p.status << ")";
    for (const auto& f : p.findings) findings << "; " << f;
    if (p.status == "failed") findings << "; see " << (set.dir / (p.name + ".log")).string();
    findings << "\n\n  ```sh\n  " << cmd << "\n  ```\n";
  }
  std::ofstream md(set.dir / "summary.md");
  md << "# Campaign: " << spec.name << ", " << points.size() << " seeds\n\n"
     << "Scenario " << o.scenario << "; faults drawn per seed: " << o.faults << "; a run is a hang after "
     << o.timeout_s << " s.\n\n"
     << "| clean | invariant violations | hangs | failed runs |\n|---:|---:|---:|---:|\n"
     << "| " << clean << " | " << violated << " | " << hung << " | " << failed << " |\n\n";
  if (clean < points.size()) md << "## Findings, each with the command that replays it\n\n" << findings.str();
  md.close();
  std::fprintf(stderr, "campaign %s: %zu clean, %zu with invariant violations, %zu hangs, %zu failed; %s\n", spec.name.c_str(),
               clean, violated, hung, failed, (set.dir / "summary.md").c_str());
  return clean == points.size() ? 0 : 1;
}

}  // namespace apiary::cli
