#pragma once
// The averaging workload: every peer holds a vector (N(0,1) values at the start) and the swarm
// runs rounds of decentralized averaging at fixed times. In each round every peer independently
// fails with probability p (it keeps its values and skips the round); the others form groups and
// run a butterfly all-reduce. Group formation:
//   moshpit    DHT matchmaking under Moshpit grid keys (one dimension left out, rotating)
// and, as baselines with static groups handed out by the driver (as a coordinator would):
//   random     a fresh random partition of the peers that are up into groups of group_size
//   gossip     pairs on a ring, alternating neighbours (a pair with a failed peer skips)
//   allreduce  one group of every peer; the round is void if any peer fails
// Per round the driver records the variance across peers (mean squared distance from the true
// initial mean), the bytes each peer sent, each peer's round time and the failures.
#include <cstdint>
#include <map>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"
#include "core/runtime/metrics.hpp"
#include "harness/workload.hpp"

namespace apiary {

struct AveragingWorkloadSpec final : WorkloadConfig {
  std::string grouping = "moshpit";
  std::uint32_t grid_side = 4;
  std::uint32_t grid_dims = 2;
  // Initial cells: fill (row-major), random (each coordinate drawn on its own, so peers may
  // share a cell), distinct (random cells, each peer its own, as the Moshpit authors' simulation
  // places them; with more peers than cells, every cell gets one before any gets two), auto:
  // fill iff the grid is full, else distinct.
  std::string placement = "auto";
  // After a Moshpit round: rank (the peer's coordinate in the left-out dimension becomes its rank
  // in the group, the paper's algorithm and hivemind's) or fixed (coordinates never change, as in
  // the authors' simulation).
  std::string grid_rule = "rank";
  // Under the rank rule, a peer that skips a round (it failed, was down or still busy): park (its
  // coordinate in the left-out dimension leaves the grid's range until it is next ranked there,
  // so it never shares a cell with a peer ranked in its absence) or keep (it keeps the stale
  // coordinate, which the rank handed out without it may duplicate).
  std::string skip_rule = "park";
  std::uint32_t group_size = 16;   // random groups
  std::uint64_t elements = 1;      // values per peer
  std::uint32_t rounds = 10;
  Duration start = std::chrono::seconds(30);  // first round (after the DHT joins)
  Duration period = std::chrono::seconds(5);  // between round starts
  double fail_probability = 0;
  double target_variance = 1e-9;
  bool stop_at_target = false;  // end the run once the variance is below the target
  double client_fraction = 0;  // peers that send but do not reduce
  double aux_fraction = 0;     // peers that reduce but hold no values
  averaging::MatchmakingConfig matchmaking;
  averaging::AllReduceConfig allreduce;
};

struct SwarmSpec;

// How far an all-reduce's mean may stray from the exact one under `codec` (two encodings on the
// way, a sender's piece and a reducer's mean, plus float32 sums), for inputs of largest magnitude
// `absmax`.
double mean_tolerance(compression::Codec codec, double absmax);

class Scenario;
// The all-reduce keys both averaging and training take under `prefix` ("averaging", "training"):
// aggregation (mean, centered_clip), clip_tau, clip_iterations, clip_stop_step.
void parse_aggregation(Scenario& s, const std::string& prefix, averaging::AggregationConfig& a);

// The all-reduce invariant, checked in-process (peers that share an address space): every member
// that completes a round holds, element by element, a weighted mean of contributions made in that
// round (within its codec's bound), so never a value outside the range of its group's inputs; and
// when every member completed without leaving anyone out or keeping its own values, exactly the
// group's weighted mean. Violations are counted as invariant.avg.*.
class AllReduceLedger {
 public:
  AllReduceLedger(Metrics& metrics, compression::Codec codec, std::size_t max_floats)
      : metrics_(metrics), codec_(codec), max_floats_(max_floats) {}
  // A member begins round t in group `group` (`size` members) with these values (empty: it holds none).
  void contribute(std::uint64_t t, std::uint64_t group, std::size_t size, const std::vector<float>& input, double weight);
  // It completed with `result` (empty for a member that holds no values); `clean` if its report
  // names no failed reducer, no exclusion, no kept piece and no clipped contribution.
  void completed(std::uint64_t t, std::uint64_t group, const std::vector<float>& result, bool clean);
  // It left the round with an error.
  void failed(std::uint64_t t, std::uint64_t group);
  double tolerance(double absmax) const { return mean_tolerance(codec_, absmax); }

 private:
  struct Round {
    std::size_t size = 0, done = 0, inputs = 0;
    bool clean = true, unrecorded = false;
    std::vector<double> lo, hi, sum;  // per element, over the inputs so far (sum weighted)
    double weight = 0, absmax = 0;
    std::vector<std::vector<float>> results;  // of the members that completed whole
    std::size_t recorded() const { return lo.size() + hi.size() + sum.size(); }
  };
  void settle(std::uint64_t t, std::uint64_t group);
  Metrics& metrics_;
  compression::Codec codec_;
  std::size_t max_floats_;  // beyond this many recorded values (3 per element per round) the ledger stops
  std::size_t floats_ = 0;
  std::uint64_t forgotten_below_ = 0;  // rounds before this one are no longer recorded
  std::map<std::pair<std::uint64_t, std::uint64_t>, Round> rounds_;
};

// One peer's side: runs the rounds it is told to run.
class AveragingApp final : public PeerApp {
 public:
  AveragingApp(Runtime& rt, Rpc& rpc, dht::DhtNode* dht, const AveragingWorkloadSpec& spec,
               averaging::MemberKind kind, averaging::GridPosition position);
  ~AveragingApp() override;
  // Its matchmaking declarations are signed with this identity (its key is the one it proves).
  void set_identity(dht::Identity identity) {
    if (mm_) mm_->set_identity(std::move(identity));
  }
  // Static groups are handed out by the driver: no DHT join needed.
  bool joins_dht() const override { return spec_.grouping == "moshpit"; }
  std::vector<float>& values() { return values_; }
  averaging::GridPosition& position() { return position_; }
  averaging::MemberKind kind() const { return kind_; }
  void set_bandwidth(double bps) { bandwidth_ = bps; }
  void set_ledger(AllReduceLedger* ledger) { ledger_ = ledger; }
  double bandwidth() const { return bandwidth_; }
  bool busy() const { return busy_; }
  // Round t by matchmaking under `key`; or with a known group (allreduce grouping).
  void start_round(std::uint64_t t, std::string key);
  void start_static_round(std::uint64_t t, averaging::Group group);
  // The peer sits round t out (it failed): the grid rule's skip_rule applies.
  void skip_round(std::uint64_t t);

 private:
  Task<void> round(std::uint64_t t, std::string key, std::optional<averaging::Group> group);
  Runtime& rt_;
  const AveragingWorkloadSpec& spec_;
  averaging::MemberKind kind_;
  averaging::GridPosition position_;
  std::vector<float> values_;
  double bandwidth_ = 1.0;
  bool busy_ = false;
  AllReduceLedger* ledger_ = nullptr;
  std::unique_ptr<averaging::Matchmaker> mm_;
  std::unique_ptr<averaging::Averager> avg_;
  TaskScope scope_;
};

// The swarm's side, the same for every backend: initial values and positions, failure draws,
// group keys, the per-round variance. The backend calls begin_round(t) at start + t * period
// (and finish() one period after the last round), passing the apps of the peers that are up.
class AveragingDriver {
 public:
  AveragingDriver(const SwarmSpec& spec, Metrics& metrics);
  AveragingDriver(SwarmSpec&&, Metrics&) = delete;  // it keeps a reference: no temporaries
  const AveragingWorkloadSpec& config() const { return avg_; }
  averaging::MemberKind kind_of(std::uint32_t peer) const;
  std::vector<float> initial_values(std::uint32_t peer) const;
  averaging::GridPosition initial_position(std::uint32_t peer) const;
  // `apps[i]` is peer i's app, or null if it is down. Records the variance after t rounds, then
  // starts round t; returns false (and starts nothing) when the run should stop here.
  bool begin_round(std::uint64_t t, const std::vector<AveragingApp*>& apps, const std::vector<Endpoint>& directory);
  // Static groupings need no DHT: their peers count as joined at once.
  bool uses_dht() const { return avg_.grouping == "moshpit"; }
  void finish(const std::vector<AveragingApp*>& apps);
  // Rounds until the variance first fell below the target (spec.rounds + 1 if it never did).
  double rounds_to_target() const { return reached_ ? static_cast<double>(reached_round_) : -1; }

 private:
  void record_variance(std::uint64_t completed, const std::vector<AveragingApp*>& apps);
  const SwarmSpec& spec_;
  const AveragingWorkloadSpec& avg_;
  Metrics& metrics_;
  Rng rng_;
  std::vector<double> true_mean_;
  mutable std::vector<std::uint64_t> distinct_cells_;  // placement = distinct: peer i's cell, drawn once
  bool reached_ = false;
  std::uint64_t reached_round_ = 0;
};

}  // namespace apiary
