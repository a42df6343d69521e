#include <utility>  // before asio: boost/asio/awaitable.hpp needs std::exchange
#include "real/live_allreduce.hpp"

#include <algorithm>
#include <boost/asio.hpp>
#include <cmath>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <malloc.h>
#include <sys/wait.h>
#include <thread>
#include <unistd.h>

#include <nlohmann/json.hpp>

#include "core/averaging/allreduce.hpp"
#include "core/runtime/metrics.hpp"
#include "real/live_runtime.hpp"
#include "real/processes.hpp"

namespace apiary::real {

namespace asio = boost::asio;
using namespace averaging;

namespace {

compression::Codec codec_named(const std::string& name) {
  if (const auto c = compression::codec_from_string(name)) return *c;
  throw std::invalid_argument("unknown codec '" + name + "' (float32, float16, scaled-float16, uniform8, quantile8, blockwise8)");
}

std::string path_in(const std::string& dir, const std::string& name, std::int64_t rank) {
  return (std::filesystem::path(dir) / (name + std::to_string(rank))).string();
}

// The last lines of a peer's log, for an error message (the directory goes with the run).
std::string log_tail(const std::string& path) {
  std::ifstream f(path);
  std::vector<std::string> lines;
  for (std::string l; std::getline(f, l);) {
    lines.push_back(l);
    if (lines.size() > 5) lines.erase(lines.begin());
  }
  std::string out;
  for (const auto& l : lines) out += "\n    | " + l;
  return out.empty() ? " (its log is empty)" : "; its log ends:" + out;
}

// The all-reduce every peer process runs.
AllReduceConfig config_of(const AllReduceBenchOptions& o) {
  AllReduceConfig cfg;
  cfg.piece_elements = o.piece_elements;
  cfg.window = o.window;
  cfg.max_in_flight_bytes = o.max_in_flight;
  cfg.codec.codec = codec_named(o.codec);
  cfg.sender_timeout = std::chrono::seconds(60);
  cfg.reducer_timeout = std::chrono::seconds(120);
  return cfg;
}

// Pieces each peer keeps in flight per reducer (the window, capped by max_in_flight and by the
// pieces of a part), for the report.
std::size_t window_used(const AllReduceBenchOptions& o) {
  Group g;
  g.schema = TensorSchema{{{static_cast<std::int64_t>(o.elements)}}};
  g.members.assign(o.peers, Member{Endpoint{}, MemberKind::kFull, 1.0});
  const AllReduceConfig cfg = config_of(o);
  const auto layout = make_layout(g, cfg);
  if (!layout.ok()) return 0;
  std::size_t most_pieces = 0;  // a reducer with fewer pieces than the window has a lane per piece
  for (const auto& part : layout->pieces) most_pieces = std::max(most_pieces, part.size());
  return std::min(lanes_per_reducer(g, *layout, cfg, 0), most_pieces);
}

struct PeerOutcome {
  std::vector<double> seconds;
  std::uint64_t bytes_sent = 0;
  double max_abs_error = 0;
  std::string error;
  std::vector<float> values;  // my result after the last round
};

Task<void> peer_rounds(Averager& avg, Group group, std::vector<float> values, const AllReduceBenchOptions& o,
                       PeerOutcome& out, bool& done) {
  for (std::uint32_t r = 0; r < o.warmup + o.rounds; ++r) {
    group.id = r + 1;
    const auto t0 = std::chrono::steady_clock::now();
    Result<AllReduceReport> rep = co_await avg.all_reduce(group, std::move(values), 1.0);
    const double secs = std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
    if (!rep.ok()) {
      out.error = "round " + std::to_string(r) + ": " + rep.error().describe();
      break;
    }
    if (!rep->failed_reducers.empty() || !rep->excluded_senders.empty() || !rep->excluded_me.empty()) {
      out.error = "round " + std::to_string(r) + ": a member failed";
      break;
    }
    values = std::move(rep->averaged);
    if (r >= o.warmup) {
      out.seconds.push_back(secs);
      out.bytes_sent += rep->bytes_sent;
    }
  }
  out.values = std::move(values);  // checked after every peer is done: no CPU taken from their rounds
  done = true;
}

int run_peer(const AllReduceBenchOptions& o) {
  // Keep freed buffers in the heap: every piece is a fresh 256 KiB allocation, and handing the
  // memory back to the kernel each time costs a page fault per 4 KiB on the next one.
  mallopt(M_MMAP_THRESHOLD, 256 << 20);
  mallopt(M_TRIM_THRESHOLD, 1 << 30);
  asio::io_context io;
  LiveOptions lo;
  lo.listen = Endpoint{Endpoint::parse(o.host + ":1")->ip, 0};
  LiveRuntime rt(io, lo);
  rt.open();
  Metrics metrics;
  PeerEnv env(rt, metrics, static_cast<std::uint32_t>(o.rank), Rng(static_cast<std::uint64_t>(o.rank) + 1));
  rt.set_observer(env.observer);
  write_file_atomically(path_in(o.dir, "ready", o.rank), rt.local().to_string());

  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(10);
  // The parent writes `abort` when a peer process dies: the others stop waiting for it.
  const std::string abort_file = (std::filesystem::path(o.dir) / "abort").string();
  // Looked at every 50 ms at most: a stat() after every handler would skew the timed rounds.
  auto checked = std::chrono::steady_clock::time_point{};
  bool abort_seen = false;
  auto aborted = [&] {
    const auto now = std::chrono::steady_clock::now();
    if (!abort_seen && now - checked >= std::chrono::milliseconds(50)) {
      checked = now;
      abort_seen = std::filesystem::exists(abort_file);
    }
    return abort_seen;
  };
  Group group;
  group.schema = TensorSchema{{{static_cast<std::int64_t>(o.elements)}}};
  for (std::uint32_t i = 0; i < o.peers; ++i) {
    const std::string ready = path_in(o.dir, "ready", i);
    while (!std::filesystem::exists(ready) && !aborted() && std::chrono::steady_clock::now() < deadline)
      io.run_one_for(std::chrono::milliseconds(10));
    if (aborted()) return 1;
    auto ep = Endpoint::parse(wait_for_file(ready, deadline, "peer " + std::to_string(i)));
    if (!ep) throw std::runtime_error("bad endpoint from peer " + std::to_string(i));
    group.members.push_back(Member{*ep, MemberKind::kFull, 1.0});
  }
  Rpc rpc(env.runtime);
  Averager avg(env.runtime, rpc, config_of(o));

  PeerOutcome out;
  bool done = false;
  std::vector<float> values(o.elements, static_cast<float>(o.rank + 1));
  auto task = peer_rounds(avg, group, std::move(values), o, out, done);
  task.start();
  while (!done && !aborted() && std::chrono::steady_clock::now() < deadline) io.run_one_for(std::chrono::milliseconds(50));
  if (!done) out.error = aborted() ? "stopped: another peer process died" : "timed out";
  // Barrier: keep serving until every peer has its result (late pieces of my part still get answered).
  write_file_atomically(path_in(o.dir, "done", o.rank), "1");
  for (std::uint32_t i = 0; i < o.peers; ++i)
    while (!std::filesystem::exists(path_in(o.dir, "done", i)) && !aborted() && std::chrono::steady_clock::now() < deadline)
      io.run_one_for(std::chrono::milliseconds(10));
  rpc.shutdown();
  const double want = (o.peers + 1) / 2.0;
  for (float v : out.values) out.max_abs_error = std::max(out.max_abs_error, std::abs(static_cast<double>(v) - want));
  if (out.error.empty() && out.values.size() != o.elements) out.error = "result has the wrong size";
  std::ostringstream res;
  for (double s : out.seconds) res << s << ' ';
  res << '\n' << out.bytes_sent << '\n' << out.max_abs_error << '\n' << (out.error.empty() ? "ok" : out.error) << '\n';
  write_file_atomically(path_in(o.dir, "result", o.rank), res.str());
  rt.close();
  return out.error.empty() ? 0 : 1;
}

int run_parent(const AllReduceBenchOptions& o) {
  if (o.peers < 2) throw std::invalid_argument("--peers must be at least 2");
  if (o.rounds < 1) throw std::invalid_argument("--rounds must be at least 1");
  codec_named(o.codec);
  const TempDir tmp("apiary-allreduce");  // before the children: they go first
  const auto& dir = tmp.path();
  ChildProcesses children;
  std::vector<pid_t> pids;
  for (std::uint32_t i = 0; i < o.peers; ++i)
    pids.push_back(children.spawn_self({"apiary", "allreduce-bench", "--peers", std::to_string(o.peers), "--elements",
                         std::to_string(o.elements), "--rounds", std::to_string(o.rounds), "--warmup",
                         std::to_string(o.warmup), "--codec", o.codec, "--piece-elements",
                         std::to_string(o.piece_elements), "--window", std::to_string(o.window), "--max-in-flight",
                         std::to_string(o.max_in_flight), "--host", o.host,
                         "--rank", std::to_string(i), "--dir", dir.string()},
                        path_in(dir.string(), "log", i)));
  // Wait for every peer; when one dies, tell the rest (the abort file) instead of letting them
  // wait for it, and report the dead one.
  std::vector<std::string> failures;
  bool finished = true;
  std::size_t left = o.peers;
  const auto deadline = std::chrono::steady_clock::now() + std::chrono::minutes(11);
  while (left > 0) {
    throw_if_interrupted();
    if (std::chrono::steady_clock::now() >= deadline) {
      finished = false;
      break;
    }
    const auto r = children.reap_one();
    if (!r) {
      std::this_thread::sleep_for(std::chrono::milliseconds(10));
      continue;
    }
    --left;
    const auto rank = std::find(pids.begin(), pids.end(), r->first) - pids.begin();
    if (WIFSIGNALED(r->second)) {
      failures.push_back("peer " + std::to_string(rank) + " (pid " + std::to_string(r->first) + ") was killed by signal " +
                         std::to_string(WTERMSIG(r->second)));
      write_file_atomically((dir / "abort").string(), "peer " + std::to_string(rank) + " died\n");
    } else if (WEXITSTATUS(r->second) != 0) {
      write_file_atomically((dir / "abort").string(), "peer " + std::to_string(rank) + " failed\n");
    }
  }
  std::vector<double> round_max(o.rounds, 0.0);
  std::uint64_t bytes = 0;
  double err = 0;
  for (std::uint32_t i = 0; i < o.peers; ++i) {
    std::ifstream f(path_in(dir.string(), "result", i));
    std::string times_line, status;
    std::uint64_t b = 0;
    double e = 0;
    if (!f || !std::getline(f, times_line) || !(f >> b >> e) || !(f >> std::ws && std::getline(f, status))) {
      failures.push_back("peer " + std::to_string(i) + " wrote no result" + log_tail(path_in(dir.string(), "log", i)));
      continue;
    }
    if (status != "ok") failures.push_back("peer " + std::to_string(i) + ": " + status);
    std::istringstream ts(times_line);
    double t;
    for (std::uint32_t r = 0; r < o.rounds && ts >> t; ++r) round_max[r] = std::max(round_max[r], t);
    bytes = std::max(bytes, b / o.rounds);
    err = std::max(err, e);
  }
  if (!finished) failures.push_back("peers did not finish within 11 minutes");
  if (!failures.empty()) {
    for (const auto& f : failures) std::fprintf(stderr, "allreduce-bench: %s\n", f.c_str());
    return 1;
  }
  auto sorted = round_max;
  std::sort(sorted.begin(), sorted.end());
  const double median = sorted[sorted.size() / 2];
  const std::size_t window = window_used(o);
  if (o.json) {
    nlohmann::json j{{"peers", o.peers},           {"elements", o.elements},  {"rounds", o.rounds},
                     {"round_seconds", round_max}, {"median_seconds", median}, {"bytes_sent_per_peer", bytes},
                     {"max_abs_error", err},       {"codec", o.codec},        {"window", window},
                     {"max_in_flight", o.max_in_flight}};
    std::printf("%s\n", j.dump().c_str());
  } else {
    const double gb = static_cast<double>(o.elements) * 4 / 1e9;
    std::printf("all-reduce of %llu float32 among %u processes (%s): median %.3f s per round over %u rounds, "
                "%.2f GB/s of tensor, %.2f GB/s bus, %.1f MB sent per peer, max error %.2g\n",
                static_cast<unsigned long long>(o.elements), o.peers, o.codec.c_str(), median, o.rounds, gb / median,
                2.0 * (o.peers - 1) / o.peers * gb / median, static_cast<double>(bytes) / 1e6, err);
  }
  return 0;
}

}  // namespace

int run_allreduce_bench(const AllReduceBenchOptions& o) { return o.rank >= 0 ? run_peer(o) : run_parent(o); }

}  // namespace apiary::real
