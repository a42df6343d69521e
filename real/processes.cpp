#include "real/processes.hpp"

#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <stdexcept>
#include <thread>

namespace apiary::real {

ChildProcesses::~ChildProcesses() {
  for (pid_t p : pids_) kill(p, SIGTERM);
  for (pid_t p : pids_) waitpid(p, nullptr, 0);
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
  const pid_t pid = fork();
  if (pid < 0) {
    if (ns_fd >= 0) ::close(ns_fd);
    throw std::runtime_error("fork failed");
  }
  if (pid == 0) {
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
  pids_.push_back(pid);
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
        it = left.erase(it);
      } else {
        ++it;
      }
    }
    if (left.empty()) break;
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
      return std::make_pair(p, status);
    }
  }
  return std::nullopt;
}

int ChildProcesses::kill_now(pid_t pid) {
  int status = 0;
  if (std::find(pids_.begin(), pids_.end(), pid) == pids_.end()) return status;
  kill(pid, SIGKILL);
  waitpid(pid, &status, 0);
  std::erase(pids_, pid);
  return status;
}

void ChildProcesses::signal_all(int sig) {
  for (pid_t p : pids_) kill(p, sig);
}

void ChildProcesses::terminate_all(std::chrono::seconds grace) {
  signal_all(SIGTERM);
  std::vector<std::string> ignored;
  wait_all(std::chrono::steady_clock::now() + grace, ignored);
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

std::string start_seed_peer(ChildProcesses& children, const std::string& host, const std::string& dir) {
  children.spawn_self({"apiary", "peer", "--listen", host + ":0", "--ready-file", dir + "/seed.ready"}, dir + "/seed.log");
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
