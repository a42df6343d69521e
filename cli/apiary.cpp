// apiary: the front. Parses a scenario, runs it on the backend it names, writes results.
//
//   apiary run [SCENARIO] [--seed N] [--set key=value]... [--out FILE.h5] [--json] [--quiet]
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <cstdlib>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <iostream>
#include <nlohmann/json.hpp>

#include "analysis/h5/results_file.hpp"
#include "apiary/quickstart.hpp"
#include "apiary/version.hpp"
#include "core/runtime/metrics.hpp"
#include "harness/spec.hpp"
#include "cli/campaign.hpp"
#include "cli/sweep.hpp"
#include "real/live_allreduce.hpp"
#include "real/live_dht.hpp"
#include "real/exit_codes.hpp"
#include "real/live_host.hpp"
#include "real/processes.hpp"
#ifdef APIARY_WITH_NS3
#include "sim/sim_host.hpp"
#endif

namespace {

using namespace apiary;
using namespace apiary::real;  // the exit codes

class ProgressBar {
 public:
  explicit ProgressBar(bool enabled) : enabled_(enabled), t0_(std::chrono::steady_clock::now()) {}
  void operator()(double f) {
    if (!enabled_) return;
    const double elapsed = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0_).count();
    const int width = 30, filled = static_cast<int>(f * width);
    std::string bar(static_cast<std::size_t>(filled), '#');
    bar.resize(width, ' ');
    const double eta = f > 0.01 ? elapsed * (1 - f) / f : 0;
    std::fprintf(stderr, "\r[%s] %3d%%  %.1fs elapsed, ~%.1fs left ", bar.c_str(),
                 static_cast<int>(f * 100), elapsed, eta);
    if (f >= 1.0) std::fprintf(stderr, "\n");
    std::fflush(stderr);
  }

 private:
  bool enabled_;
  std::chrono::steady_clock::time_point t0_;
};

nlohmann::json summarize(const SwarmSpec& spec, const Metrics& m, const RunInfo& info,
                         const std::string& out) {
  nlohmann::json metrics;
  for (const auto& [k, v] : m.counters()) metrics["counters"][k] = v;
  for (const auto& [k, v] : m.series()) {
    metrics["series"][k] = {{"count", v.size()},
                            {"mean", m.mean(k)},
                            {"p50", m.quantile(k, 0.5)},
                            {"p95", m.quantile(k, 0.95)},
                            {"p99", m.quantile(k, 0.99)}};
  }
  if (auto it = m.series().find("avg.round.variance"); it != m.series().end())
    metrics["variance_by_round"] = it->second;  // index t: after t rounds
  char hash[32];
  std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(m.trace_hash()));
  metrics["trace_hash"] = hash;
  metrics["trace_events"] = m.trace_events();
  nlohmann::json cost = info.figures;
  cost["wall_seconds"] = info.wall_seconds;
  return {{"scenario", spec.name},
          {"source", spec.scenario_source},
          {"backend", info.backend},
          {"seed", spec.seed},
          {"peers", spec.peers},
          {"run_seconds", info.run_seconds},
          {"results", out},
          {"metrics", metrics},
          {"cost", cost}};
}

// The common header and footer; the workload's own lines in between.
void print_human(const nlohmann::json& j, const SwarmSpec& spec, const Metrics& m, const RunInfo& info) {
  std::printf("%s (%s, %u peers, %.0f s, seed %llu)\n", spec.name.c_str(), info.backend.c_str(), spec.peers,
              info.run_seconds, static_cast<unsigned long long>(spec.seed));
  if (const auto* type = WorkloadRegistry::find(spec.workload); type && type->summarize) type->summarize(stdout, m, info);
  std::printf("  messages: %lld, bad frames: %lld\n", static_cast<long long>(m.counter("transport.messages_sent")),
              static_cast<long long>(m.counter("transport.bad_frames")));
  const auto& cost = j["cost"];
  if (cost.contains("us_per_message"))
    std::printf("  ns-3 cost: %.2f us per message, %.0f bytes per peer, %.1fx real time\n",
                cost["us_per_message"].get<double>(), cost["peak_bytes_per_peer"].get<double>(),
                cost["speedup_vs_real_time"].get<double>());
  std::printf("  wall time: %.2f s; results: %s\n", cost["wall_seconds"].get<double>(),
              j["results"].get<std::string>().c_str());
}

// The results file cannot be written, or exists and --force was not given: found before the run.
struct OutputError : std::runtime_error {
  using std::runtime_error::runtime_error;
};

// Checks, before anything runs, that the results can be written to `out`: an --out that exists
// is kept unless --force (the default out/<name>-seed<N>.h5 is the same run's, so it is
// rewritten); the directory is created and a file can be made in it.
void check_output(const std::string& out, bool given, bool force) {
  namespace fs = std::filesystem;
  std::error_code ec;
  if (fs::is_directory(out, ec)) throw OutputError("--out " + out + " is a directory; give a file name");
  if (given && !force && fs::exists(out, ec)) throw OutputError(out + " exists; pass --force to overwrite it");
  const auto parent = fs::path(out).parent_path();
  if (!parent.empty() && !fs::create_directories(parent, ec) && ec)
    throw OutputError("cannot create the directory of " + out + ": " + ec.message());
  const std::string probe = out + ".partial";
  if (!std::ofstream(probe)) throw OutputError("cannot write " + out + ": " + std::strerror(errno));
  fs::remove(probe, ec);
}

// A simulation of many peers spends much of its host time on memory the caches do not hold: each
// message touches two peers' state, whose pages the TLB does not hold either (and in a virtual
// machine a TLB miss walks two levels of tables). glibc backs its heap with transparent huge
// pages when told so at start (the tunable glibc.malloc.hugetlb), so a simulation restarts itself
// once with it: at a million peers 23-34% less host time per message here (docs/results.md), at
// 10,000 no change. A GLIBC_TUNABLES that names glibc.malloc.hugetlb (=0: without) is left as is.
void restart_with_huge_pages(char** argv) {
  if (!argv) return;
  const char* tunables = std::getenv("GLIBC_TUNABLES");
  if (tunables && std::strstr(tunables, "glibc.malloc.hugetlb")) return;
  std::string modes;
  std::getline(std::ifstream("/sys/kernel/mm/transparent_hugepage/enabled"), modes);
  if (modes.empty() || modes.find("[never]") != std::string::npos) return;
  const std::string before = tunables ? tunables : "";
  const std::string value = (before.empty() ? "" : before + ":") + "glibc.malloc.hugetlb=1";
  ::setenv("GLIBC_TUNABLES", value.c_str(), 1);
  ::execv("/proc/self/exe", argv);
  // Not restarted (no /proc?): run on as we are, the environment as it was.
  if (tunables)
    ::setenv("GLIBC_TUNABLES", before.c_str(), 1);
  else
    ::unsetenv("GLIBC_TUNABLES");
}

int run(const std::string& scenario_path, std::optional<std::uint64_t> seed,
        std::vector<std::string> sets, std::string out, bool json, bool quiet, bool force, char** argv) {
  if (seed) sets.push_back("seed=" + std::to_string(*seed));
  Scenario sc = scenario_path.empty()
                    ? Scenario::from_string(kQuickstartScenario, "<embedded quickstart>", sets)
                    : Scenario::from_file(scenario_path, sets);
  SwarmSpec spec = parse_swarm_spec(sc);
  const bool given = !out.empty();
  if (!given) out = "out/" + spec.name + "-seed" + std::to_string(spec.seed) + ".h5";
  check_output(out, given, force);
  if (spec.backend == "sim") restart_with_huge_pages(argv);

  Metrics metrics;
  ProgressBar bar(!quiet && isatty(STDERR_FILENO));
  ProgressFn progress = [&bar](double f) { bar(f); };
  RunInfo info;
  if (spec.backend == "sim") {
#ifdef APIARY_WITH_NS3
    info = sim::run_sim_swarm(spec, metrics, progress);
#else
    throw std::runtime_error("this build has no ns-3 backend (APIARY_WITH_NS3=OFF)");
#endif
  } else {
    info = real::run_live_swarm(spec, metrics, progress);
  }
  // Written beside, then renamed: an interrupted write never leaves a truncated results file.
  results::write_h5(out + ".partial", spec, metrics, info);
  std::filesystem::rename(out + ".partial", out);
  const auto summary = summarize(spec, metrics, info, out);
  if (!quiet) print_human(summary, spec, metrics, info);
  if (json) std::cout << summary.dump() << std::endl;
  return 0;
}

}  // namespace

int main(int argc, char** argv) {
  CLI::App app{"Apiary: decentralized deep learning in simulation and live"};
  app.set_version_flag("--version", std::string("apiary ") + apiary::kVersion);
  app.require_subcommand(1);
  app.footer("Exit codes: 0 done; 1 failed; 2 broken scenario or option (nothing ran); 3 dht get found no such key; "
             "4 --out exists (use --force) or cannot be written (nothing ran); 5 a peer could not join; "
             "130 / 143 interrupted by SIGINT / SIGTERM (children stopped, temporary files removed).");

  auto* run_cmd = app.add_subcommand("run", "Run a scenario (the embedded quickstart if none)");
  std::string scenario, out;
  std::optional<std::uint64_t> seed;
  std::vector<std::string> sets;
  bool json = false, quiet = false;
  run_cmd->add_option("scenario", scenario, "Scenario file (TOML); see scenarios/README.md");
  run_cmd->add_option("--seed", seed, "Override the scenario's seed");
  run_cmd->add_option("--set", sets, "Override a key: --set peers=1000 --set network.latency=50ms")->allow_extra_args(false);
  run_cmd->add_option("--out", out, "HDF5 results file (default out/<name>-seed<N>.h5)");
  run_cmd->add_flag("--json", json, "Print a JSON summary as the last line of stdout");
  run_cmd->add_flag("--quiet", quiet, "No progress bar or human summary");
  bool force = false;
  run_cmd->add_flag("--force", force, "Overwrite an existing --out file");

  // apiary peer: a live DHT node.
  auto* peer_cmd = app.add_subcommand("peer", "Run a live DHT peer until interrupted");
  apiary::real::LivePeerOptions peer;
  peer_cmd->add_option("--listen", peer.listen, "IPV4:PORT to listen on (port 0: any free port)");
  peer_cmd->add_option("--join", peer.join, "IPV4:PORT of a peer already in the swarm (repeatable)")->allow_extra_args(false);
  peer_cmd->add_option("--identity", peer.identity_file, "Ed25519 identity file (created if missing)");
  peer_cmd->add_option("--k", peer.config.k, "bucket size / replication factor")->check(CLI::Range(1, 64));
  peer_cmd->add_option("--max-storage-bytes", peer.config.storage.max_bytes, "bytes of records this peer keeps")
      ->check(CLI::Range(std::size_t{4096}, std::size_t{1} << 40));
  peer_cmd->add_option("--source-quota-bytes", peer.config.storage.source_bytes, "bytes one sender may hold here")
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 40));
  peer_cmd->add_option("--ip-quota-bytes", peer.config.storage.ip_bytes, "bytes one IP address may hold here")
      ->check(CLI::Range(std::size_t{1024}, std::size_t{1} << 40));
  peer_cmd->add_option("--swarm-secret-file", peer.swarm_secret_file,
                       "a file holding the swarm's secret: only peers that know it are admitted");
  peer_cmd->add_option("--bucket-subnet-limit", peer.config.bucket_subnet_limit, "contacts of one /24 per bucket (0: any)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{64}));
  peer_cmd->add_option("--schema", peer.schema,
                       "a rule for the swarm's own keys, repeatable: '*SUFFIX=owned[:MAX]' or 'PREFIX*=int64|float64|utf8|bytes[:MAX]'");
  peer_cmd->add_flag("--dial-back", peer.dial_back,
                     "answer peers only over connections dialled to them (for peers sharing an address behind one NAT)");
  peer_cmd->add_option("--lookup-subnet-limit", peer.config.lookup_subnet_limit, "peers of one /24 a lookup takes (0: any)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{64}));
  peer_cmd->add_option("--disjoint-paths", peer.config.disjoint_paths, "lookups over this many disjoint paths")
      ->check(CLI::Range(std::size_t{1}, std::size_t{8}));
  peer_cmd->add_option("--id-work-bits", peer.id_work_bits, "the work every peer's id must carry (leading zero bits; ~2^N keys)")
      ->check(CLI::Range(0u, 32u));
  peer_cmd->add_option("--ready-file", peer.ready_file, "write '<id> <endpoint>' here once listening (a line per peer)");
  peer_cmd->add_option("--count", peer.count, "peers this process hosts on one thread, each with its own port and identity")
      ->check(CLI::Range(1u, 1024u));
  peer_cmd->add_flag("--verbose", peer.verbose, "log protocol events to stderr");
  peer_cmd->add_option("--delay-ms", peer.delay_ms, "emulated one-way latency added to every received message")
      ->check(CLI::Range(0.0, 60000.0));

  // apiary dht store|get: talk to a running swarm.
  auto* dht_cmd = app.add_subcommand("dht", "Store or get a value in a running live swarm");
  dht_cmd->require_subcommand(1);
  apiary::real::DhtClientOptions client;
  std::string key, value, subkey, identity;
  long long ttl = 3600;
  bool dht_json = false;
  auto* store_cmd = dht_cmd->add_subcommand("store", "Store KEY VALUE");
  store_cmd->add_option("--swarm-secret-file", client.swarm_secret_file, "the swarm's secret, if it has one");
  store_cmd->add_option("--id-work-bits", client.id_work_bits, "the swarm's id work")->check(CLI::Range(0u, 32u));
  store_cmd->add_option("--via", client.via, "IPV4:PORT of a swarm peer")->required()->allow_extra_args(false);
  store_cmd->add_option("key", key)->required();
  store_cmd->add_option("value", value)->required();
  store_cmd->add_option("--subkey", subkey, "store as a dictionary entry under KEY");
  store_cmd->add_option("--ttl", ttl, "seconds until the record expires")->check(CLI::Range(1LL, 365LL * 86400));
  store_cmd->add_option("--identity", client.identity_file, "sign the record as this identity's owner");
  store_cmd->add_flag("--json", dht_json);
  apiary::real::DhtFloodOptions flood;
  long long flood_ttl = 23 * 3600;
  auto* flood_cmd = dht_cmd->add_subcommand("flood", "Attack client: flood one peer with unsigned records (docs/threat-model.md)");
  flood_cmd->add_option("--swarm-secret-file", client.swarm_secret_file, "the swarm's secret, if it has one");
  flood_cmd->add_option("--id-work-bits", client.id_work_bits, "the swarm's id work")->check(CLI::Range(0u, 32u));
  flood_cmd->add_option("--via", client.via, "IPV4:PORT of the peer to flood")->required()->allow_extra_args(false);
  flood_cmd->add_option("--records", flood.records, "records to send")->check(CLI::Range(1ULL, 100'000'000ULL));
  flood_cmd->add_option("--value-bytes", flood.value_bytes, "bytes of each value")->check(CLI::Range(std::size_t{0}, std::size_t{65536}));
  flood_cmd->add_option("--per-message", flood.per_message, "records per store request")->check(CLI::Range(1, 64));
  flood_cmd->add_option("--in-flight", flood.in_flight, "store requests in flight")->check(CLI::Range(1, 64));
  flood_cmd->add_option("--prefix", flood.prefix, "keys are PREFIX<n>");
  flood_cmd->add_option("--ttl", flood_ttl, "seconds until the records expire")->check(CLI::Range(1LL, 365LL * 86400));
  apiary::real::DhtHoldOptions hold;
  auto* hold_cmd = dht_cmd->add_subcommand("hold", "Attack client: hold idle connections to one peer and measure honest pings "
                                                     "before and during (docs/threat-model.md)");
  hold_cmd->add_option("--via", client.via, "IPV4:PORT of the peer")->required()->allow_extra_args(false);
  hold_cmd->add_option("--swarm-secret-file", client.swarm_secret_file, "the swarm's secret, if it has one");
  hold_cmd->add_option("--connections", hold.connections, "idle connections to hold")
      ->check(CLI::Range(std::size_t{0}, std::size_t{60000}));
  hold_cmd->add_option("--source-addresses", hold.source_addresses, "hold them from this many loopback addresses (127.0.0.2, ...)")
      ->check(CLI::Range(std::size_t{0}, std::size_t{250}));
  hold_cmd->add_option("--calls", hold.calls, "pings per measurement")->check(CLI::Range(std::size_t{1}, std::size_t{100000}));
  auto* get_cmd = dht_cmd->add_subcommand("get", "Get KEY");
  get_cmd->add_option("--swarm-secret-file", client.swarm_secret_file, "the swarm's secret, if it has one");
  get_cmd->add_option("--id-work-bits", client.id_work_bits, "the swarm's id work")->check(CLI::Range(0u, 32u));
  get_cmd->add_option("--via", client.via, "IPV4:PORT of a swarm peer")->required()->allow_extra_args(false);
  get_cmd->add_option("key", key)->required();
  get_cmd->add_flag("--json", dht_json);

  // apiary allreduce-bench: live butterfly all-reduce among N processes on this machine.
  auto* ar_cmd = app.add_subcommand("allreduce-bench", "Time a live all-reduce among N local processes");
  apiary::real::AllReduceBenchOptions ar;
  ar_cmd->add_option("--peers", ar.peers, "processes")->check(CLI::Range(2, 256));
  ar_cmd->add_option("--elements", ar.elements, "float32 values per peer")->check(CLI::Range(1ULL, 1ULL << 31));
  ar_cmd->add_option("--rounds", ar.rounds, "timed rounds")->check(CLI::Range(1, 1000));
  ar_cmd->add_option("--warmup", ar.warmup, "untimed rounds first")->check(CLI::Range(0, 1000));
  ar_cmd->add_option("--codec", ar.codec, "wire codec: float32, float16, scaled-float16, uniform8, quantile8, blockwise8");
  ar_cmd->add_option("--piece-elements", ar.piece_elements, "values per streamed piece")->check(CLI::Range(1ULL, 1ULL << 26));
  ar_cmd->add_option("--window", ar.window, "pieces in flight per reducer")->check(CLI::Range(1, 64));
  ar_cmd->add_option("--max-in-flight", ar.max_in_flight, "bytes in flight per sender over all its reducers (0: no cap)");
  ar_cmd->add_option("--host", ar.host, "IPv4 address to listen on");
  ar_cmd->add_flag("--json", ar.json, "print one JSON object");
  ar_cmd->add_option("--rank", ar.rank)->group("");  // internal: a peer process
  ar_cmd->add_option("--dir", ar.dir)->group("");

  // apiary sweep: every point of a scenario's [sweep], in parallel processes, resumable.
  auto* sweep_cmd = app.add_subcommand("sweep", "Run every point of a scenario's [sweep] (resumable)");
  apiary::cli::SweepOptions sweep;
  sweep_cmd->add_option("scenario", sweep.scenario, "Scenario file with a [sweep] table")->required();
  sweep_cmd->add_option("--jobs", sweep.jobs, "runs at a time")->check(CLI::Range(1, 256));
  sweep_cmd->add_option("--out", sweep.out, "directory for the runs and index.json (default out/sweep-<name>)");
  sweep_cmd->add_option("--set", sweep.sets, "override a key for every run")->allow_extra_args(false);
  sweep_cmd->add_flag("--quiet", sweep.quiet, "no progress lines");
  sweep_cmd->add_option("--executor", sweep.executor,
                        "where the points run: local (default) or dask://HOST:PORT (a Dask cluster sharing --out)");
  sweep_cmd->add_option("--only", sweep.only, "run point I alone and record it in the index (what each remote task runs)");
  sweep_cmd->add_option("--emit", sweep.emit, "print a job array instead of running (slurm)")->check(CLI::IsMember({"slurm"}));

  // apiary campaign: many seeds, each with its own faults, every run checked against the invariants.
  auto* campaign_cmd = app.add_subcommand("campaign", "Run a scenario under many seeds with random faults; report invariant "
                                                      "violations and hangs, each with a command that replays it");
  apiary::cli::CampaignOptions campaign;
  campaign_cmd->add_option("scenario", campaign.scenario, "Scenario file")->required();
  campaign_cmd->add_option("--seeds", campaign.seeds, "seeds 1..N")->check(CLI::Range(1u, 1000000u));
  campaign_cmd->add_option("--jobs", campaign.jobs, "runs at a time")->check(CLI::Range(1, 256));
  campaign_cmd->add_option("--out", campaign.out, "directory (default out/campaign-<name>)");
  campaign_cmd->add_option("--faults", campaign.faults, "which faults to draw: all, network (ns-3), inject (RPC), none")
      ->check(CLI::IsMember({"all", "network", "inject", "none"}));
  campaign_cmd->add_option("--timeout", campaign.timeout_s, "seconds after which a run counts as a hang")
      ->check(CLI::Range(1.0, 86400.0));
  campaign_cmd->add_option("--set", campaign.sets, "override a key for every run")->allow_extra_args(false);
  campaign_cmd->add_flag("--quiet", campaign.quiet, "no progress lines");

  CLI11_PARSE(app, argc, argv);
  try {
    if (*run_cmd) return run(scenario, seed, sets, out, json, quiet || json, force, argv);
    if (*peer_cmd) return apiary::real::run_live_peer(peer);
    if (*ar_cmd) return apiary::real::run_allreduce_bench(ar);
    if (*sweep_cmd) return apiary::cli::run_sweep(sweep);
    if (*campaign_cmd) return apiary::cli::run_campaign(campaign);
    if (*dht_cmd && *hold_cmd) {
      const auto r = apiary::real::dht_client_hold(client, hold);
      nlohmann::json j{{"connections", hold.connections}, {"source_addresses", hold.source_addresses}, {"opened", r.opened},
                       {"failed_to_open", r.failed_to_open},
                       {"still_open", r.still_open}, {"calls", hold.calls}, {"answered_before", r.answered_before},
                       {"answered_during", r.answered_during}, {"answered_new_client", r.answered_new},
                       {"p50_before_ms", r.p50_before_ms}, {"p50_during_ms", r.p50_during_ms},
                       {"p50_new_client_ms", r.p50_new_ms}, {"first_call_new_client_ms", r.first_new_ms}, {"error", r.error}};
      std::cout << j.dump() << std::endl;
      return r.error.empty() ? kExitOk : kExitFailed;
    }
    if (*dht_cmd && *flood_cmd) {
      flood.ttl = std::chrono::seconds(flood_ttl);
      const auto f = apiary::real::dht_client_flood(client, flood);
      nlohmann::json j{{"sent", f.sent}, {"bytes", f.bytes}, {"unanswered", f.unanswered}, {"seconds", f.seconds},
                       {"outcomes", f.outcomes}, {"error", f.error}};
      std::cout << j.dump() << std::endl;
      return f.error.empty() ? kExitOk : kExitFailed;
    }
    if (*dht_cmd) {
      apiary::real::DhtClientResult r;
      if (*store_cmd)
        r = apiary::real::dht_client_store(client, key, value,
                                           subkey.empty() ? std::nullopt : std::optional<std::string>(subkey),
                                           std::chrono::seconds(ttl));
      else
        r = apiary::real::dht_client_get(client, key);
      if (dht_json) {
        nlohmann::json j{{"ok", r.ok}, {"replicas", r.replicas}, {"latency_ms", r.latency_ms}, {"hops", r.hops}, {"error", r.error}};
        if (*store_cmd) {
          j["stale"] = r.stale;
          j["refused"] = r.refused;
          j["refused_why"] = r.refused_why;
          j["unreachable"] = r.unreachable;
        }
        for (const auto& rec : r.records)
          j["values"].push_back({{"subkey", rec.subkey ? *rec.subkey : ""},
                                 {"value", std::string(rec.value.begin(), rec.value.end())}});
        std::cout << j.dump() << std::endl;
      } else if (r.ok && *store_cmd) {
        std::printf("stored on %zu peers in %.1f ms", r.replicas, r.latency_ms);
        if (r.stale) std::printf("; %zu refused it as stale (they hold a newer record)", r.stale);
        if (r.refused) std::printf("; %zu refused it (%s)", r.refused, r.refused_why.c_str());
        if (r.unreachable) std::printf("; %zu did not answer", r.unreachable);
        std::printf("\n");
      } else if (r.ok) {
        for (const auto& rec : r.records)
          std::printf("%s%s\n", rec.subkey ? (*rec.subkey + ": ").c_str() : "",
                      std::string(rec.value.begin(), rec.value.end()).c_str());
      } else {
        std::fprintf(stderr, "apiary dht: %s\n", r.error.c_str());
      }
      return r.ok ? kExitOk : r.not_found ? kExitNotFound : kExitFailed;
    }
  } catch (const apiary::ScenarioError& e) {
    std::fprintf(stderr, "apiary: scenario error: %s\n", e.what());
    return kExitBadInput;
  } catch (const OutputError& e) {
    std::fprintf(stderr, "apiary: %s\n", e.what());
    return kExitOutput;
  } catch (const apiary::real::Interrupted& e) {
    std::fprintf(stderr, "apiary: %s; its processes are stopped and its temporary files removed\n", e.what());
    return 128 + e.signal;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "apiary: %s\n", e.what());
    return kExitFailed;
  }
  return kExitOk;
}
