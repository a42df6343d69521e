#pragma once
// Live swarms as separate processes on this machine: spawn this binary again with other
// arguments, and wait for the files the children write when they are ready.
#include <chrono>
#include <filesystem>
#include <stdexcept>
#include <optional>
#include <utility>
#include <string>
#include <vector>

#include <sys/types.h>

#include <nlohmann/json.hpp>

namespace apiary::real {

// SIGINT or SIGTERM reached a parent while it ran children: thrown by the waits below (and by
// throw_if_interrupted) so that the parent unwinds, stopping its children and removing its
// temporary directory on the way; main() exits with 128 + signal.
struct Interrupted : std::runtime_error {
  explicit Interrupted(int sig);
  int signal;
};
// The signal that interrupted this process (0: none yet).
int interrupted();
void throw_if_interrupted();

// Children that are terminated (SIGTERM, then SIGKILL after a grace period) and reaped when this
// object goes away. While any ChildProcesses exists, SIGINT and SIGTERM to this process are
// caught: they are forwarded to every child at once (as SIGTERM) and make interrupted() true.
// Each child runs in a process group of its own (a signal to it reaches its own children too)
// and receives SIGTERM if this process dies, even by SIGKILL (PR_SET_PDEATHSIG; spawn from a
// thread that lives as long as the child should).
class ChildProcesses {
 public:
  ChildProcesses();
  ChildProcesses(const ChildProcesses&) = delete;
  ChildProcesses& operator=(const ChildProcesses&) = delete;
  ~ChildProcesses();
  // Runs /proc/self/exe with `args` (args[0] is the program name), stdout and stderr to `log`;
  // inside the named network namespace (`ip netns add NAME`, /run/netns/NAME) if one is given.
  pid_t spawn_self(const std::vector<std::string>& args, const std::string& log, const std::string& netns = {});
  // Runs the program at `exe` the same way.
  pid_t spawn(const std::string& exe, const std::vector<std::string>& args, const std::string& log,
              const std::string& netns = {});
  // Waits for every child to exit, up to `deadline`; returns false on timeout. A child that
  // exited non-zero is reported in `failures` ("pid N exited with status S"). Throws Interrupted.
  bool wait_all(std::chrono::steady_clock::time_point deadline, std::vector<std::string>& failures);
  // A child that has exited, if any (non-blocking): its pid and raw wait status.
  std::optional<std::pair<pid_t, int>> reap_one();
  // SIGKILL to one child (it dies mid-whatever, no goodbye), reaped at once; returns its status.
  int kill_now(pid_t pid);
  // Sends `sig` to every running child.
  void signal_all(int sig);
  // Freezes a child's process group (SIGSTOP: a stalled peer, as `faults.stall` asks) or lets it
  // go on (SIGCONT).
  void freeze(pid_t pid, bool frozen);
  // SIGTERM to every child, then waits for them (up to `grace`), whatever their exit status.
  void terminate_all(std::chrono::seconds grace = std::chrono::seconds(20));
  const std::vector<pid_t>& pids() const { return pids_; }

 private:
  std::vector<pid_t> pids_;
};

// A fresh directory under the system's temporary directory (prefix-XXXXXX), removed with its
// contents when this object goes away, unless it goes away during an error (not an interruption):
// then it is kept for the logs the error message points to, and stderr says so.
class TempDir {
 public:
  explicit TempDir(const std::string& prefix);
  ~TempDir();
  TempDir(const TempDir&) = delete;
  TempDir& operator=(const TempDir&) = delete;
  const std::filesystem::path& path() const { return path_; }
  std::string str() const { return path_.string(); }

 private:
  std::filesystem::path path_;
  int exceptions_ = 0;
};

// Polls (every 10 ms) until `path` exists, then returns its contents. Writers create the file
// atomically (write path.tmp, rename). Throws std::runtime_error naming `what` on timeout, and
// Interrupted.
std::string wait_for_file(const std::string& path, std::chrono::steady_clock::time_point deadline,
                          const std::string& what);
// Writes `text` to `path` atomically.
void write_file_atomically(const std::string& path, const std::string& text);

// For runners that start helper processes and read their records:
// a program installed next to this one (throws naming what to build if it is missing);
std::string sibling_program(const std::string& name, const std::string& needs);
// starts `apiary peer` (this binary) as the swarm's seed DHT peer and returns its IPV4:PORT;
std::string start_seed_peer(ChildProcesses& children, const std::string& host, const std::string& dir, std::size_t k);
// a number as a command-line argument, exactly;
std::string format_number(double v);
// the JSON objects of a JSON-lines file (a partial last line, from a killed writer, is skipped);
std::vector<nlohmann::json> read_json_lines(const std::string& path);
// runs a baseline child (the same model trained in one process) to its end, within 30 minutes,
// and returns the accuracy of its "final" record at `out` (throws naming `log` if it fails).
double run_baseline(ChildProcesses& children, const std::string& program, const std::vector<std::string>& args,
                    const std::string& out, const std::string& log);

}  // namespace apiary::real
