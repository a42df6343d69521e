#include "real/processes.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cerrno>
#include <cstdio>
#include <mutex>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace apiary::real {

namespace {

// What the signal handler may touch: lock-free atomics only.
std::atomic<int> g_signal{0};
constexpr std::size_t kMaxChildren = 4096;
std::atomic<pid_t> g_children[kMaxChildren];  // 0: a free slot
std::mutex g_install_mu;
int g_installed = 0;
struct sigaction g_old_int, g_old_term;

void on_stop_signal(int sig) {
  const int saved = errno;  // kill() may set it; the interrupted code may be about to read it
  int none = 0;
  g_signal.compare_exchange_strong(none, sig);
  for (auto& c : g_children)
    if (const pid_t p = c.load(std::memory_order_relaxed); p > 0) kill(-p, SIGTERM);
  errno = saved;
}

// waitpid, again when a signal interrupts it.
pid_t wait_for(pid_t pid, int* status, int options) {
  pid_t r;
  do {
    r = waitpid(pid, status, options);
  } while (r < 0 && errno == EINTR);
  return r;
}

void remember_child(pid_t pid) {
  for (auto& c : g_children) {
    pid_t free = 0;
    if (c.compare_exchange_strong(free, pid)) return;
  }
}

void forget_child(pid_t pid) {
  for (auto& c : g_children) {
    pid_t p = pid;
    if (c.compare_exchange_strong(p, 0)) return;
  }
}

// Polls for an exit every 10 ms until `deadline`; true if it came (status in `status`).
bool reap_by(pid_t pid, std::chrono::steady_clock::time_point deadline, int& status) {
  while (true) {
    const pid_t r = wait_for(pid, &status, WNOHANG);
    if (r == pid || (r < 0 && errno == ECHILD)) return true;
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
}

}  // namespace

Interrupted::Interrupted(int sig)
    : std::runtime_error(std::string("interrupted by ") + (sig == SIGINT ? "SIGINT" : sig == SIGTERM ? "SIGTERM" : "a signal")),
      signal(sig) {}

int interrupted() { return g_signal.load(); }

void throw_if_interrupted() {
  if (const int sig = g_signal.load()) throw Interrupted(sig);
}

ChildProcesses::ChildProcesses() {
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (g_installed++ > 0) return;
  struct sigaction sa {};
  sa.sa_handler = on_stop_signal;
  sa.sa_flags = SA_RESTART;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGINT, &sa, &g_old_int);
  sigaction(SIGTERM, &sa, &g_old_term);
}

ChildProcesses::~ChildProcesses() {
  terminate_all(std::chrono::seconds(10));
  std::lock_guard<std::mutex> lock(g_install_mu);
  if (--g_installed > 0) return;
  sigaction(SIGINT, &g_old_int, nullptr);
  sigaction(SIGTERM, &g_old_term, nullptr);
}

pid_t ChildProcesses::spawn_self(const std::vector<std::string>& args, const std::string& log,
                                 const std::string& netns) {
  return spawn("/proc/self/exe", args, log, netns);
}

pid_t ChildProcesses::spawn(const std::string& exe, const std::vector<std::string>& args, const std::string& log,
                            const std::string& netns) {
  // Everything the child needs is prepared before fork: it only makes system calls.
  int ns_fd = -1;
  if (!netns.empty()) {
    const std::string path = "/run/netns/" + netns;
    ns_fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (ns_fd < 0)
      throw std::runtime_error("network namespace '" + netns + "': cannot open " + path + ": " + std::strerror(errno));
  }
  std::vector<char*> argv;
  for (const auto& a : args) argv.push_back(const_cast<char*>(a.c_str()));
  argv.push_back(nullptr);
  const pid_t parent = getpid();
  // SIGINT and SIGTERM wait until the child has dropped this process's handler (which would
  // signal this process's other children from inside the child).
  sigset_t stop_signals, before;
  sigemptyset(&stop_signals);
  sigaddset(&stop_signals, SIGINT);
  sigaddset(&stop_signals, SIGTERM);
  pthread_sigmask(SIG_BLOCK, &stop_signals, &before);
  const pid_t pid = fork();
  if (pid != 0) pthread_sigmask(SIG_SETMASK, &before, nullptr);
  if (pid < 0) {
    if (ns_fd >= 0) ::close(ns_fd);
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
    // Its own process group; the parent's handlers and blocked signals do not carry over; it
    // goes when the parent goes (and if the parent is already gone, it does not start).
    setpgid(0, 0);
    signal(SIGINT, SIG_DFL);
    signal(SIGTERM, SIG_DFL);
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, nullptr);
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    if (getppid() != parent) _exit(1);
    // No terminal input: a child in a background process group that read it would be stopped.
    if (const int null = ::open("/dev/null", O_RDONLY); null >= 0) dup2(null, 0);
    const int fd = ::open(log.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0644);
    if (fd >= 0) {
      dup2(fd, 1);
      dup2(fd, 2);
    }
    if (ns_fd >= 0 && setns(ns_fd, CLONE_NEWNET) != 0) {
      static const char msg[] = "apiary: cannot enter the network namespace (setns failed)\n";
      [[maybe_unused]] auto ignored = ::write(2, msg, sizeof msg - 1);
      _exit(126);
    }
    execv(exe.c_str(), argv.data());
    _exit(127);
  }
  if (ns_fd >= 0) ::close(ns_fd);
  setpgid(pid, pid);  // also here: no race with a signal forwarded before the child ran
  pids_.push_back(pid);
  remember_child(pid);
  if (const int sig = g_signal.load()) {  // the signal came while we forked
    kill(-pid, SIGTERM);
    throw Interrupted(sig);
  }
  return pid;
}

bool ChildProcesses::wait_all(std::chrono::steady_clock::time_point deadline, std::vector<std::string>& failures) {
  std::vector<pid_t> left = pids_;
  while (!left.empty()) {
    for (auto it = left.begin(); it != left.end();) {
      int status = 0;
      const pid_t r = waitpid(*it, &status, WNOHANG);
      if (r == *it) {
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
          failures.push_back("pid " + std::to_string(*it) + " exited with status " + std::to_string(status));
        std::erase(pids_, *it);
        forget_child(*it);
        it = left.erase(it);
      } else {
        ++it;
      }
    }
    if (left.empty()) break;
    throw_if_interrupted();
    if (std::chrono::steady_clock::now() >= deadline) return false;
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  return true;
}

std::optional<std::pair<pid_t, int>> ChildProcesses::reap_one() {
  for (pid_t p : pids_) {
    int status = 0;
    if (waitpid(p, &status, WNOHANG) == p) {
      std::erase(pids_, p);
      forget_child(p);
      return std::make_pair(p, status);
    }
  }
  return std::nullopt;
}

int ChildProcesses::kill_now(pid_t pid) {
  int status = 0;
  if (std::find(pids_.begin(), pids_.end(), pid) == pids_.end()) return status;
  kill(-pid, SIGKILL);
  wait_for(pid, &status, 0);
  std::erase(pids_, pid);
  forget_child(pid);
  return status;
}

void ChildProcesses::signal_all(int sig) {
  for (pid_t p : pids_) kill(-p, sig);
}

void ChildProcesses::freeze(pid_t pid, bool frozen) {
  if (pid <= 0) return;
  if (kill(-pid, frozen ? SIGSTOP : SIGCONT) != 0) kill(pid, frozen ? SIGSTOP : SIGCONT);
}

void ChildProcesses::terminate_all(std::chrono::seconds grace) {
  signal_all(SIGTERM);
  signal_all(SIGCONT);  // a frozen child takes its SIGTERM once it runs again
  const auto deadline = std::chrono::steady_clock::now() + grace;
  for (pid_t p : pids_) {
    int status = 0;
    if (!reap_by(p, deadline, status)) {
      kill(-p, SIGKILL);
      wait_for(p, &status, 0);
    }
    forget_child(p);
  }
  pids_.clear();
}

TempDir::TempDir(const std::string& prefix) : exceptions_(std::uncaught_exceptions()) {
  std::string tmpl = (std::filesystem::temp_directory_path() / (prefix + "-XXXXXX")).string();
  if (!mkdtemp(tmpl.data())) throw std::runtime_error("cannot create a temporary directory " + tmpl + ": " + std::strerror(errno));
  path_ = tmpl;
}

TempDir::~TempDir() {
  if (std::uncaught_exceptions() > exceptions_ && !interrupted()) {
    std::fprintf(stderr, "apiary: kept %s for its logs\n", path_.c_str());
    return;
  }
  std::error_code ec;
  std::filesystem::remove_all(path_, ec);
}

std::string wait_for_file(const std::string& path, std::chrono::steady_clock::time_point deadline,
                          const std::string& what) {
  while (std::chrono::steady_clock::now() < deadline) {
    std::ifstream f(path);
    if (f) {
      std::stringstream ss;
      ss << f.rdbuf();
      return ss.str();
    }
    throw_if_interrupted();
    std::this_thread::sleep_for(std::chrono::milliseconds(10));
  }
  throw std::runtime_error(what + " did not appear in time: " + path);
}

void write_file_atomically(const std::string& path, const std::string& text) {
  {
    std::ofstream f(path + ".tmp");
    f << text;
  }
  std::filesystem::rename(path + ".tmp", path);
}

}  // namespace apiary::real

namespace apiary::real {

std::string sibling_program(const std::string& name, const std::string& needs) {
  const std::filesystem::path exe = std::filesystem::read_symlink("/proc/self/exe").parent_path() / name;
  if (!std::filesystem::exists(exe)) throw std::runtime_error("this needs " + exe.string() + " (" + needs + ")");
  return exe.string();
}

std::string start_seed_peer(ChildProcesses& children, const std::string& host, const std::string& dir, std::size_t k) {
  children.spawn_self({"apiary", "peer", "--listen", host + ":0", "--ready-file", dir + "/seed.ready", "--k", std::to_string(k)},
                      dir + "/seed.log");
  const std::string ready = wait_for_file(dir + "/seed.ready", std::chrono::steady_clock::now() + std::chrono::seconds(20),
                                          "the seed DHT peer (see " + dir + "/seed.log)");
  const auto space = ready.find(' '), nl = ready.find('\n');
  return ready.substr(space + 1, nl - space - 1);  // "<id> <endpoint>\n"
}

std::string format_number(double v) {
  char b[64];
  std::snprintf(b, sizeof b, "%.17g", v);
  return b;
}

std::vector<nlohmann::json> read_json_lines(const std::string& path) {
  std::vector<nlohmann::json> out;
  std::ifstream f(path);
  std::string line;
  while (std::getline(f, line)) {
    if (line.empty()) continue;
    try {
      out.push_back(nlohmann::json::parse(line));
    } catch (const nlohmann::json::exception&) {
      // a writer killed mid-line
    }
  }
  return out;
}

double run_baseline(ChildProcesses& children, const std::string& program, const std::vector<std::string>& args,
                    const std::string& out, const std::string& log) {
  const pid_t pid = children.spawn(program, args, log);
  std::vector<std::string> failures;
  if (!children.wait_all(std::chrono::steady_clock::now() + std::chrono::minutes(30), failures) || !failures.empty())
    throw std::runtime_error("the baseline (pid " + std::to_string(pid) + ") failed; see " + log);
  for (const auto& j : read_json_lines(out))
    if (j.value("event", "") == "final") return j.value("accuracy", 0.0);
  throw std::runtime_error("the baseline wrote no final record; see " + log);
}

}  // namespace apiary::real
