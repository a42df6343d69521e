#pragma once
// BTARD's verification around a collaborative step (Gorbunov, Borzunov, Diskin and Ryabinin,
// "Secure Distributed Training at Scale", ICML 2022), on the butterfly all-reduce with CenteredClip.
//
// One step of a group, as every member runs it:
//  1. Commit. Before sending anything, a member tells every other member, in one message signed
//     with its identity key, the BLAKE2b hash of each piece it will send (over the group, its
//     rank, the piece's index and the piece's bytes), its weight, the hash of the parameters it
//     computed on and the hash of a random seed share. A reducer refuses a piece (or a weight)
//     that differs from the commitment, or that was computed on other parameters than its own:
//     the sender is left out of the rest of that part and counted (avg.refused_pieces). A member
//     whose parameters differ from the plurality of its group's downloads the state from one that
//     holds them (a part that failed leaves its own values there: it is out of sync).
//  2. The all-reduce, each reducer aggregating with CenteredClip; it keeps every contribution to
//     each piece of its part until the step is checked. A piece whose aggregate does not come
//     back is a zero step there (not the member's own values, which would set it apart).
//  3. Reveal. Members reveal their seed shares; a share that does not match its commitment gets
//     its sender banned. The shared seed is the hash of all shares that were revealed, so nobody
//     knows it while it can still change what it sends.
//  4. Check the aggregates. For each piece q it took part in, member i announces (with the hash of
//     the aggregate it got, so that a reducer that sent two cannot get anyone banned)
//     s_i = w_i min(1, tau / |g_i - x|) <g_i - x, z_q>, g_i its own piece, x the aggregate it got
//     back and z_q a Gaussian direction drawn from the shared seed. CenteredClip's fixed point
//     makes the s_i of a piece sum to (about) zero; a sum that does not opens a dispute: every
//     member fetches the piece's contributions from its reducer, checks each against its sender's
//     commitment, runs CenteredClip itself and compares. A reducer that sends contributions that
//     were not committed or whose aggregate differs is banned (and a wrong
//     aggregate is replaced by the one recomputed from the committed contributions before the
//     step is applied); otherwise the members whose s_i was false are. A reducer that does not
//     answer (it may have left) is not banned, but its aggregate there is replaced by zero.
//  5. Validate. The shared seed picks `validators` members and, for each, another member to check:
//     the validator fetches that member's gradient, checks it against the commitment and
//     recomputes it on the same seeded batches and the same parameters (the workload's Recompute).
//     A mismatch (beyond `recompute_tolerance`, for floating-point reordering) is an accusation
//     sent to the group (no answer is no verdict: the member may have left); every member repeats
//     the check itself, the accused on its own gradient included, and bans the accused, or, if the
//     accused passes, the accuser (a member on other parameters than the accused's, or not
//     answered, cannot judge and bans nobody).
// Bans are local decisions, each made on evidence the member checked itself. Each member
// publishes its list in the DHT (a signed subkey under "<prefix>:bans"); a peer that did not
// witness a ban takes it once `ban_quorum` distinct reporters it has not banned list it. Banned
// peers are left out of matchmaking (neither taken in nor followed), of the swarm's progress and
// of every later step (their pieces are refused).
//
// What the paper has and this does not: accusations of peers that reveal different commitments
// to different members (it needs a reliable broadcast, an echo round per message); the paper's
// rule that a validator skips computing its own gradient (here it computes on, paying the
// recomputation in compute time); the dispute protocol's cheaper variant in which only the
// reducer checks the s_i. See papers/btard/README.md.
#include <array>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/averaging/allreduce.hpp"
#include "core/dht/node.hpp"
#include "core/dht/validate.hpp"

namespace apiary::optim {

struct BtardConfig {
  bool enabled = false;
  std::uint32_t validators = 2;        // members that check another member's gradient, per step
  double check_tolerance = 1e-2;       // |sum s_i| <= tol x sum |s_i| (+ 1e-9): the aggregate passes
  double recompute_tolerance = 1e-3;   // |revealed - recomputed| <= tol x |recomputed|: the gradient passes
  std::size_t ban_quorum = 2;          // distinct reporters that make a ban read from the DHT hold
  Duration phase_timeout = std::chrono::seconds(5);   // waiting for commits, reveals, checks
  Duration fetch_timeout = std::chrono::seconds(10);  // a gradient or a piece's contributions
  // Byzantine behaviour, for experiments: while this says so, as a validator, accuse the target
  // whatever it sent.
  std::function<bool()> accuse_falsely;
};

using Key = std::array<std::uint8_t, 32>;

// What a validator recomputes: a member's mean gradient over its samples of the step.
struct Contribution {
  Key public_key{};    // whose (its batches derive from it)
  std::uint64_t epoch = 0;
  double weight = 0;   // its samples
  std::vector<float> parameters;  // the step's parameters, before its update
};
// Where local batch `batch` of `epoch` of the peer with `key` draws its rows from: the same in
// ns-3 and live, so that anyone can draw a member's batches again.
Rng batch_rng(std::uint64_t run_seed, const Key& key, std::uint64_t epoch, std::uint64_t batch);
// The workload's recomputation (in simulated or real compute time); nullopt: cannot.
using Recompute = std::function<Task<std::optional<std::vector<float>>>(Contribution)>;

struct Ban {
  Key key{};
  Endpoint endpoint;
  std::uint64_t epoch = 0;
  std::string reason;
};

struct BtardStats {
  std::uint64_t steps = 0, refused_pieces = 0, disputes = 0, validations = 0, accusations = 0;
  std::uint64_t bans = 0, false_accusations_sent = 0;
};

class Btard {
 public:
  Btard(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, dht::Identity identity, std::string prefix, BtardConfig config,
        averaging::AllReduceConfig& allreduce);
  ~Btard();
  Btard(const Btard&) = delete;
  Btard& operator=(const Btard&) = delete;

  void set_recompute(Recompute r) { recompute_ = std::move(r); }
  // Phase 1, before the all-reduce: commit to `mine` (empty for an auxiliary member) and wait for
  // the others' commitments (or phase_timeout).
  Task<std::optional<Error>> commit(averaging::Group group, std::uint64_t epoch, std::span<const float> mine, double weight,
                            std::span<const float> parameters);
  // Phases 3 to 5, after it: reveal, check the aggregates (disputes resolved before it returns),
  // start this member's validations (they go on in the background).
  // `averaged`: what the all-reduce gave this member, where the pieces that did not come back are
  // set to zero (the step leaves those parameters alone); `got_mean`: AllReduceReport::got_mean.
  Task<void> verify(averaging::Group group, std::span<float> averaged, std::vector<bool> got_mean);
  // The member to download the state from when this one computed the step on other parameters
  // than the plurality of the group's (its pieces were refused as out of sync); nullopt when in sync.
  std::optional<Endpoint> resync_source(std::uint64_t group) const;
  // The round of `group` failed: forget it.
  void abandon(std::uint64_t group);

  bool banned(const Endpoint& e) const;
  bool banned_tag(const std::string& owner_tag) const;  // "[owner:<hex>]", as progress subkeys name peers
  const std::vector<Ban>& bans() const { return bans_; }
  const BtardStats& stats() const { return stats_; }
  const Key& public_key() const { return identity_.public_key; }
  // Reads the swarm's ban lists and takes the bans that `ban_quorum` reporters agree on.
  Task<void> refresh_bans();

 private:
  struct Round;
  struct Peer;
  std::shared_ptr<Round> round_of(std::uint64_t group) const;
  Result<std::shared_ptr<Round>> shown_round(const Request& in, std::uint64_t* piece) const;
  void on_message(std::uint32_t method, const Endpoint& from, std::span<const std::uint8_t> body);
  void apply(Round& r, std::uint32_t method, std::size_t from, std::span<const std::uint8_t> body);
  std::string admit(std::uint64_t group, std::size_t sender, std::size_t piece, std::span<const std::uint8_t> body,
                    double weight);
  void keep_rows(std::uint64_t group, std::size_t piece, std::span<const float> rows, std::span<const double> weights);
  Key piece_hash(std::uint64_t group, std::size_t sender, std::size_t piece, std::span<const std::uint8_t> body) const;
  // The hash of piece `piece` (global index) holding `values`, encoded as the all-reduce sends it.
  Key values_hash(const Round& r, std::size_t sender, std::size_t piece, std::span<const float> values) const;
  std::vector<float> direction(const Round& r, std::size_t piece) const;
  // `out`: where this member's copy of the piece's aggregate is; a wrong one is replaced there.
  Task<void> dispute(std::shared_ptr<Round> r, std::size_t piece, std::vector<float> aggregate, std::span<float> out);
  // Why `target`'s gradient fails the check: empty if it passes, nullopt if this member cannot
  // judge (it computed on other parameters, or committed nothing).
  Task<std::optional<std::string>> gradient_fault(std::shared_ptr<Round> r, std::size_t target);
  Task<void> validate(std::shared_ptr<Round> r, std::size_t target);
  Task<void> judge_accusation(std::shared_ptr<Round> r, std::size_t accuser, std::size_t target);
  void ban(const Round& r, std::size_t member, std::string reason);
  Task<void> publish_bans();
  void broadcast(const Round& r, std::uint32_t method, const Bytes& body);
  // A member's weight in the check of CenteredClip's fixed point: the one the aggregate gave it
  // (1 for every member that sent something, under equal weights; else its committed weight).
  double check_weight(double committed) const {
    return allreduce_.aggregation.equal_weights ? (committed > 0 ? 1.0 : 0.0) : committed;
  }
  Task<void> wait_phase(std::shared_ptr<Round> r, std::function<bool()> done);

  Runtime& rt_;
  Rpc& rpc_;
  dht::DhtNode& dht_;
  dht::Identity identity_;
  std::string prefix_;
  BtardConfig cfg_;
  averaging::AllReduceConfig& allreduce_;
  Recompute recompute_;
  std::map<std::uint64_t, std::shared_ptr<Round>> rounds_;  // the last few steps' (validations need them)
  std::vector<std::uint64_t> round_order_;
  // Messages for rounds this member has not begun yet, bounded.
  std::map<std::uint64_t, std::vector<std::tuple<std::uint32_t, Endpoint, Bytes>>> early_;
  std::vector<Ban> bans_;
  std::set<Key> banned_keys_;
  std::set<Endpoint> banned_endpoints_;
  BtardStats stats_;
  bool publishing_ = false, republish_ = false;
  TaskScope scope_;
};

}  // namespace apiary::optim
