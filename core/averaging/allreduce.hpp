#pragma once
// Butterfly all-reduce on the runtime contract (the same code in ns-3 and live).
//
// Each member's flattened tensors are cut into one part per reducer (partition.hpp). Every sender
// streams its pieces of part j to member j, at most `window` pieces in flight per reducer (fewer
// where those would pass `max_in_flight_bytes` over all its reducers together); the
// reducer accumulates the weighted sum of each piece and answers every sender's request for that
// piece with the weighted mean once all senders have delivered it. A member's own part never
// touches the transport.
//
// Fault tolerance, per round:
//  * A reducer that sees no piece of its part finish for `sender_timeout` leaves out every sender
//    that has not delivered the oldest unfinished piece, for that piece and all later ones; the
//    pieces it already delivered still count. A left-out sender gets an error for the rest and
//    keeps its own values there.
//  * A sender whose request to a reducer fails (unreachable, `reducer_timeout`, a bad reply, the
//    reducer cancelled) keeps its own values for the rest of that part and reports the reducer.
//  * A member that cancels tells the others; they stop waiting for it at once.
//  * Float32 means are received straight into the sender's output (Rpc::call's reply_into, on
//    a transport that reads payloads itself). A reply that begins to arrive and then fails (cut
//    off, or late after a timeout) may leave part of that piece holding the reducer's means
//    rather than the sender's own values; the report still names the reducer as failed.
//  * No request waits past the round's deadline, reducer_timeout + (pieces of the largest part
//    + 1) x sender_timeout after it began: a reducer that answers every request just inside
//    reducer_timeout cannot hold the round for pieces x reducer_timeout.
// So a round always ends by its deadline, with a result and a report of who failed. A round that
// takes longer (not counting time the peer was frozen) counts `invariant.avg.round_over_timeout`.
#include <functional>
#include <map>
#include <memory>
#include <set>
#include <vector>

#include "core/averaging/aggregate.hpp"
#include "core/averaging/protocol.hpp"
#include "core/runtime/rpc.hpp"

namespace apiary::averaging {

// Misbehaviour on purpose, for fault-injection tests and failure scenarios.
struct AllReduceFaults {
  std::int64_t send_limit = -1;         // send only this many pieces to each reducer, then stall
  std::function<void()> on_send_limit;  // called once when that happens (a test may kill the peer)
  std::int64_t reduce_limit = -1;       // answer only pieces of my part below this index, then stall
  std::function<void()> on_reduce_limit;  // called once when the first piece is held back
  Duration answer_delay{};  // answer every request for a reduced piece this late (slow or hostile)
  std::function<void(std::span<float>)> tamper_result;  // rewrite each reduced piece before answering
  std::function<void(std::span<float>)> tamper_sent;    // rewrite my values when a round begins (after a commitment)
};

struct AllReduceConfig {
  std::uint64_t piece_elements = 1u << 16;  // 256 KiB of float32
  std::uint32_t window = 4;                 // pieces in flight per reducer
  // A sender's bytes in flight over all its reducers together: where `window` pieces to each
  // remote reducer would pass this, each gets fewer, but at least two unless `window` is one (a
  // reducer with one piece outstanding idles between a reply and the next request). 0: no cap. On a host whose
  // CPU is the limit (peers on loopback), bytes beyond a few MiB only wait in socket buffers and
  // are copied through memory the caches no longer hold; on a link with a long round trip the
  // window is what keeps the link busy, and a cap idles it (docs/results.md measures both).
  std::uint64_t max_in_flight_bytes = 0;
  std::uint64_t min_part = 1024;            // a reducer gets at least this many values, or none
  PartRule parts = PartRule::kMinMax;       // how bandwidth sizes the parts (partition.hpp)
  Duration sender_timeout = std::chrono::seconds(10);
  Duration reducer_timeout = std::chrono::seconds(30);
  CodecPolicy codec;
  // How a reducer combines contributions (aggregate.hpp). CenteredClip keeps every member's
  // contribution to its part until each piece is complete: members x part values.
  AggregationConfig aggregation;
  AllReduceFaults faults;
  // Verification hooks (BTARD, core/optim/btard.hpp). `admit_piece` sees each piece a sender sends
  // for my part (the index is among my part's pieces) before it is used: a non-empty answer
  // refuses it, and the sender is left out of the rest of my part (counted as avg.refused_pieces).
  std::function<std::string(std::uint64_t group, std::size_t sender, std::size_t piece, std::span<const std::uint8_t> body,
                            double weight)>
      admit_piece;
  // CenteredClip only: called with every contribution to a piece of my part (members x values,
  // weight 0 for those left out) once it is reduced, before the rows are dropped.
  std::function<void(std::uint64_t group, std::size_t piece, std::span<const float> rows, std::span<const double> weights)>
      on_reduced;
};

// Where each member's part begins and its pieces, in member order: what every member of `group`
// derives alike from the group and the configuration.
struct Layout {
  std::vector<std::uint64_t> part_begin, part_size;
  std::vector<std::vector<Piece>> pieces;  // per reducer
  std::size_t total_pieces() const;
  std::size_t first_piece(std::size_t reducer) const;  // the global index of a reducer's first piece
};
Result<Layout> make_layout(const Group& group, const AllReduceConfig& cfg);
// Pieces a sender keeps in flight to each reducer: `window`, capped by max_in_flight_bytes over
// the reducers other than `me` that have a part (their largest piece's encoded size counted), but
// not below min(window, 2). A reducer with fewer pieces has as many lanes as pieces.
std::size_t lanes_per_reducer(const Group& group, const Layout& layout, const AllReduceConfig& cfg, std::size_t me);

struct AllReduceReport {
  std::uint64_t group = 0;                     // the group's id
  std::vector<float> averaged;                 // the result; empty for an auxiliary member
  std::vector<Endpoint> failed_reducers;       // parts (or their tails) that kept my own values
  std::vector<Endpoint> excluded_senders;      // senders my part left out of some pieces
  std::vector<Endpoint> excluded_me;           // reducers that left me out of some pieces
  std::uint64_t pieces_averaged = 0;           // pieces of mine that got the group's mean
  std::uint64_t pieces_kept = 0;               // pieces of mine that kept my own values
  std::uint64_t bytes_sent = 0;                // payload bytes this member sent
  std::uint64_t bytes_received = 0;            // payload bytes it received
  std::uint64_t clipped = 0;  // CenteredClip: contributions to pieces of my part that were clipped
  std::vector<bool> got_mean;  // per piece, in global order (Layout): my values went in and the mean came back
  Duration elapsed{};
};

class Averager {
 public:
  Averager(Runtime& rt, Rpc& rpc, AllReduceConfig config = {});
  ~Averager();
  Averager(const Averager&) = delete;
  Averager& operator=(const Averager&) = delete;

  // Runs one all-reduce in `group`, as the member whose endpoint is this peer's. `local` is the
  // flattened tensors (empty for an auxiliary member), `weight` its weight (e.g. samples).
  // Errors: not a member, wrong length for the schema, bad weight, a round with this id already
  // running, no reducer; kCancelled if cancel() is called meanwhile.
  Task<Result<AllReduceReport>> all_reduce(Group group, std::vector<float> local, double weight);
  // Leaves a running round: the others are told and stop waiting for this member.
  void cancel(std::uint64_t group_id);

  AllReduceConfig& config() { return cfg_; }
  std::size_t rounds() const { return rounds_.size(); }

 private:
  struct Round;
  Task<Result<PieceReply>> handle_piece(Endpoint from, PieceRequest req);
  void handle_cancel(const Endpoint& from, std::uint64_t group);
  Task<std::shared_ptr<Round>> find_round(std::uint64_t group);
  void fold_own(Round& r, std::size_t piece);
  bool clips() const;
  std::span<float> clip_row(Round& r, std::size_t piece, std::size_t member);
  bool writes_own_output(const Round& r, std::size_t piece) const;
  bool completes(const Round& r, std::size_t piece, std::size_t sender) const;
  void contributed(Round& r, std::size_t sender, std::size_t piece, double weight);
  void check_piece(Round& r, std::size_t piece);
  void finalize(Round& r, std::size_t piece);
  void arm_progress_timer(const std::shared_ptr<Round>& r);
  Duration round_bound(const Round& r) const;
  void check_bounded(const Round& r);
  void on_no_progress(const std::shared_ptr<Round>& r);
  void wake_main(const std::shared_ptr<Round>& r);
  Task<void> send_lane(std::shared_ptr<Round> r, std::size_t reducer, std::size_t first);
  Task<void> linger(std::shared_ptr<Round> r);
  void close(Round& r);

  Runtime& rt_;
  Rpc& rpc_;
  AllReduceConfig cfg_;
  std::map<std::uint64_t, std::shared_ptr<Round>> rounds_;
  std::set<std::uint64_t> closed_;  // recently finished rounds: late pieces get an error at once
  std::vector<std::uint64_t> closed_order_;
  std::map<std::uint64_t, std::set<Endpoint>> early_cancels_;  // cancels for rounds not yet begun
  Notifier registered_;
  std::shared_ptr<float[]> spare_sum_;  // the last round's accumulator, reused once no reply holds it
  std::size_t spare_size_ = 0;
  TaskScope scope_;
};

}  // namespace apiary::averaging
