#include "sim/sim_host.hpp"

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <cmath>
#include <cstdlib>
#include <fstream>
#include <memory>

#include <malloc.h>
#if defined(__SANITIZE_ADDRESS__)
// From the sanitizer runtime (g++ ships no header for it).
extern "C" std::size_t __sanitizer_get_current_allocated_bytes();
#endif

#include <ns3/simulator.h>

#include "harness/fault_schedule.hpp"
#include "harness/log.hpp"
#include "sim/sim_network.hpp"

namespace apiary::sim {

using namespace ns3;

namespace {

std::uint64_t rss_bytes() {
  std::ifstream statm("/proc/self/statm");
  std::uint64_t size = 0, resident = 0;
  statm >> size >> resident;
  return resident * 4096;
}

// Bytes the allocator has handed out (and not taken back): what building a peer's network costs.
// Under AddressSanitizer its own allocator answers (glibc's would report nothing).
std::int64_t heap_bytes() {
#if defined(__SANITIZE_ADDRESS__)
  return static_cast<std::int64_t>(__sanitizer_get_current_allocated_bytes());
#else
  return static_cast<std::int64_t>(mallinfo2().uordblks);
#endif
}

EventQueue event_queue(const std::string& name) {
  if (name == "heap") return EventQueue::kHeap;
  return name == "map" ? EventQueue::kMap : EventQueue::kBuckets;
}

void sim_log(void*, std::uint32_t peer, LogLevel level, std::string_view component, std::string_view msg) {
  print_log_line(Simulator::Now().GetSeconds(), peer, level, component, msg);
}

}  // namespace

// The runner's world in simulated time: peers on the network model, ns-3 events as its timers.
class SimHost final : public Host {
 public:
  SimHost(const SwarmSpec& spec, Metrics& metrics)
      : spec_(spec), metrics_(metrics), net_(spec.lean_stack ? Stack::kLean : Stack::kFull, event_queue(spec.event_queue)) {
    if (spec_.latency_matrix) {
      const auto& matrix = *spec_.latency_matrix;
      const std::uint32_t base = SimNetwork::kBaseIp + 1;  // the first node's address
      net_.links().SetLatencyFunction([&matrix, base](std::uint32_t from, std::uint32_t to) {
        return NanoSeconds(static_cast<std::int64_t>(matrix.between(from - base, to - base) * 1e6));
      });
    }
    if (spec_.faults.loss > 0)
      net_.links().SetLoss(spec_.faults.loss, NanoSeconds(spec_.faults.rto_min.count()), spec_.seed ^ 0x6c6f7373ULL);  // "loss"
  }
  std::string backend() const override { return "sim"; }

  void add_peer(std::uint32_t i, const LinkDraw& link) override {
    LinkParams params;
    params.latency = NanoSeconds(static_cast<std::int64_t>(link.latency_ns));
    params.up_bps = params.down_bps = link.bandwidth_bps;
    // Sampled over the first peers: asking the allocator walks its free lists, which grow.
    const bool sampled = i < kNetworkSample;
    const auto heap0 = sampled ? heap_bytes() : 0;
    net_.add_peer(params);
    if (sampled) network_bytes_ += heap_bytes() - heap0;
    auto& rt = net_.runtime(i);
    envs_.push_back(std::make_unique<PeerEnv>(rt, metrics_, i, Rng(spec_.seed).fork(i + 1)));
    rt.set_observer(envs_.back()->observer);
    if (log_level_) envs_.back()->observer.set_log_sink(&sim_log, nullptr, *log_level_);
    if (spec_.hop_delay) {
      auto rng = std::make_shared<Rng>(Rng(spec_.seed ^ 0x686f70ULL).fork(i + 1));  // "hop"
      const Distribution d = *spec_.hop_delay;
      rt.set_receive_delay([rng, d] { return Duration(static_cast<std::int64_t>(d.sample(*rng))); });
    }
    if (spec_.behind_nat(i))  // the channel's host index of peer i is i + 1
      net_.links().SetNat(i + 1, NanoSeconds(spec_.faults.nat_mapping.count()));
    if (i + 1 == spec_.peers) rss_built_ = rss_bytes();
  }

  PeerEnv& env(std::uint32_t i) override { return *envs_[i]; }
  Endpoint endpoint(std::uint32_t i) const override { return net_.endpoint(i); }
  void set_up(std::uint32_t i, bool up) override { net_.set_up(i, up); }
  bool simulates_network_faults() const override { return true; }
  std::size_t pending_timers(std::uint32_t i) const override { return net_.runtime(i).pending_timers(); }
  Duration elapsed() const override { return Duration(Simulator::Now().GetNanoSeconds()); }

  void at(Duration t, std::function<void()> fn) override {
    const Duration delay = std::max(Duration::zero(), t - elapsed());
    Simulator::Schedule(NanoSeconds(delay.count()), std::move(fn));
  }

  void run(Duration end) override {
    schedule_faults(end);
    Simulator::Stop(NanoSeconds(end.count()));
    const auto w0 = std::chrono::steady_clock::now();
    Simulator::Run();
    sim_wall_ = std::chrono::duration<double>(std::chrono::steady_clock::now() - w0).count();
    rss_end_ = rss_bytes();
    const auto& st = net_.links().stats();
    metrics_.count("network.retransmissions", static_cast<std::int64_t>(st.retransmissions - counted_.retransmissions));
    metrics_.count("network.partition_drops", static_cast<std::int64_t>(st.dropped_partition - counted_.dropped_partition));
    metrics_.count("network.nat_drops", static_cast<std::int64_t>(st.dropped_nat - counted_.dropped_nat));
    counted_ = st;
  }

  void stop() override { Simulator::Stop(); }

  // The simulator's cost: wall time per message, memory per peer, speed against real time.
  void add_figures(RunInfo& info, const Metrics& metrics) override {
    const auto messages = metrics.counter("transport.messages_sent");
    auto per_peer = [&](std::uint64_t rss) { return static_cast<double>(rss > rss0_ ? rss - rss0_ : 0) / spec_.peers; };
    info.wall_seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - wall0_).count();
    info.figures["sim_wall_seconds"] = sim_wall_;
    info.figures["us_per_message"] = messages ? sim_wall_ * 1e6 / static_cast<double>(messages) : 0;
    info.figures["speedup_vs_real_time"] = sim_wall_ > 0 ? info.run_seconds / sim_wall_ : 0;
    info.figures["build_bytes_per_peer"] = per_peer(rss_built_);
    info.figures["peak_bytes_per_peer"] = per_peer(rss_end_);
    // The network stack alone (ns-3 objects or the lean entries, the runtime): heap bytes
    // allocated while each of the first 1,000 peers' network was built, per peer.
    info.figures["network_bytes_per_peer"] = static_cast<double>(network_bytes_) / std::min(spec_.peers, kNetworkSample);
    info.figures["channel_packets"] = static_cast<double>(net_.links().stats().packets);
    info.figures["channel_dropped_down"] = static_cast<double>(net_.links().stats().dropped_down);
    info.figures["sidecar_swept"] = static_cast<double>(net_.sidecar().swept());
  }

 private:
  // The scenario's fault windows (harness/fault_schedule.hpp), applied to the channel and runtimes.
  void schedule_faults(Duration end) {
    auto& ch = net_.links();
    auto host = [this](std::uint32_t i) { return net_.endpoint(i).ip - SimNetwork::kBaseIp; };
    const auto& f = spec_.faults;
    FaultHooks h;
    h.at = [this](Duration t, std::function<void()> fn) { at(t, std::move(fn)); };
    h.partition = [&ch, host](std::uint32_t i, bool on) { ch.SetSide(host(i), on ? 1 : 0); };
    h.partitioned = [&ch](bool on) { ch.SetPartitioned(on); };
    if (f.stall) {
      const auto length = NanoSeconds(f.stall->duration.count());
      h.stall = [this, length](std::uint32_t i, bool on) {
        if (on) net_.runtime(i).stall_until(Simulator::Now() + length);
      };
    }
    if (f.latency_spike) {
      const auto extra = NanoSeconds(f.latency_spike->extra_latency.count());
      h.latency_spike = [&ch, extra, host](std::uint32_t i, bool on) { ch.SetExtraLatency(host(i), on ? extra : Time(0)); };
    }
    if (f.bandwidth_drop) {
      const double factor = f.bandwidth_drop->bandwidth_factor;
      h.bandwidth_drop = [&ch, factor, host](std::uint32_t i, bool on) { ch.SetBandwidthFactor(host(i), on ? factor : 1.0); };
    }
    schedule_fault_windows(spec_, metrics_, end, h);
  }

  const SwarmSpec& spec_;
  Metrics& metrics_;
  SimNetwork net_;
  std::vector<std::unique_ptr<PeerEnv>> envs_;  // after net_: destroyed before the runtimes
  std::optional<LogLevel> log_level_ = log_level_from_env();
  std::uint64_t rss0_ = rss_bytes(), rss_built_ = 0, rss_end_ = 0;
  double sim_wall_ = 0;
  std::int64_t network_bytes_ = 0;  // over the first kNetworkSample peers
  static constexpr std::uint32_t kNetworkSample = 1000;
  ChannelStats counted_;  // what run() already put into the metrics
  std::chrono::steady_clock::time_point wall0_ = std::chrono::steady_clock::now();
};

std::unique_ptr<Host> make_sim_host(const SwarmSpec& spec, Metrics& metrics) {
  return std::make_unique<SimHost>(spec, metrics);
}

RunInfo run_sim_swarm(const SwarmSpec& spec, Metrics& metrics, const ProgressFn& progress) {
  SimHost host(spec, metrics);
  return run_on_host(spec, metrics, host, progress);
}

}  // namespace apiary::sim
