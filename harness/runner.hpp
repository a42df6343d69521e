#pragma once
// The runner: one run of a scenario on a host, written once for both worlds. It draws the peers'
// links, brings peers up (the seeds at once, the others over the DHT's join window), applies
// churn (exponential or Weibull sessions, or a trace), hands the workload its peers and its
// schedule, reports progress, and ends the run at the scenario's duration or when the workload
// says so. Everything random it decides comes from its own seeded streams, so a run in ns-3 is
// reproducible event for event.
#include <cstdint>
#include <memory>
#include <optional>
#include <vector>

#include "harness/churn.hpp"
#include "harness/fault_schedule.hpp"
#include "harness/host.hpp"
#include "harness/peer_stack.hpp"

namespace apiary {

class Runner {
 public:
  // Throws std::invalid_argument if the workload is unknown.
  Runner(const SwarmSpec& spec, Metrics& metrics, Host& host);
  ~Runner();
  Runner(const Runner&) = delete;
  Runner& operator=(const Runner&) = delete;

  RunInfo run(const ProgressFn& progress = {});

  // For workloads.
  const SwarmSpec& spec() const { return spec_; }
  Metrics& metrics() { return metrics_; }
  Host& host() { return host_; }
  Duration elapsed() const { return host_.elapsed(); }
  // Runs `fn` at run time `t` / after `d` from now.
  void at(Duration t, std::function<void()> fn) { host_.at(t, std::move(fn)); }
  void after(Duration d, std::function<void()> fn) { host_.at(host_.elapsed() + d, std::move(fn)); }
  // Ends the run now (after the current callback).
  void stop() { host_.stop(); }
  std::uint32_t peers() const { return spec_.peers; }
  // Peer i's stack while it is up, else null.
  PeerStack* peer(std::uint32_t i) { return peers_[i].stack.get(); }
  bool joined(std::uint32_t i) const { return peers_[i].stack && peers_[i].stack->joined(); }
  const std::vector<Endpoint>& directory() const { return directory_; }
  // Every peer's app of type T, indexed by peer: null where the peer is down (or, with
  // `joined_only`, has not joined the DHT yet).
  template <class T>
  std::vector<T*> apps(bool joined_only) {
    std::vector<T*> out(spec_.peers, nullptr);
    for (std::uint32_t i = 0; i < spec_.peers; ++i)
      if (peers_[i].stack && (!joined_only || peers_[i].stack->joined())) out[i] = peers_[i].stack->app_as<T>();
    return out;
  }
  // A random peer that is up and has joined (up to 64 draws from `rng`), if any.
  std::optional<std::uint32_t> pick_joined_peer(Rng& rng);

 private:
  struct Peer {
    std::unique_ptr<PeerStack> stack;
    double bandwidth = 0;
    // churn.keep_state: what its DHT node held when it went down.
    std::vector<dht::Record> kept_records;
    std::vector<dht::Contact> kept_contacts;
    // Network faults in a world that does not simulate them: the peer's transport wrapped.
    std::unique_ptr<FaultyTransport> faulty;
    std::unique_ptr<Runtime> faulty_runtime;
  };
  Runtime& runtime_of(std::uint32_t i);
  void join(std::uint32_t i);
  void leave(std::uint32_t i);

  const SwarmSpec& spec_;
  Metrics& metrics_;
  Host& host_;
  std::unique_ptr<Workload> workload_;
  std::vector<Peer> peers_;
  std::vector<Endpoint> directory_;
  std::unique_ptr<LiveNetworkFaults> network_faults_;
  ChurnDriver churn_;
};

// Runs a scenario on a host: a Runner's run().
RunInfo run_on_host(const SwarmSpec& spec, Metrics& metrics, Host& host, const ProgressFn& progress = {});

}  // namespace apiary
