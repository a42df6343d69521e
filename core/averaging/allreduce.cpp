#include "core/averaging/allreduce.hpp"

#include <algorithm>
#include <cmath>
#include <cstring>

namespace apiary::averaging {

namespace {

void add_unique(std::vector<Endpoint>& v, const Endpoint& e) {
  if (std::find(v.begin(), v.end(), e) == v.end()) v.push_back(e);
}

// The reducer's one pass over a float32 piece that arrived (y, raw little-endian bytes), into the
// sums s: kOwn folds in my own values x (still only in my output) as well, kAssign starts the sums,
// kScale turns them into the means (the last contribution), which kOut also writes over x (my
// output). The arithmetic is that of separate passes (w*x, then + w*y, then * inv), so the
// result does not depend on which passes were fused.
template <bool kOwn, bool kAssign, bool kScale, bool kOut>
void fold_piece(float* __restrict s, float* __restrict x, float wx, const std::uint8_t* __restrict y, float wy,
                float inv, std::size_t n) {
  for (std::size_t i = 0; i < n; ++i) {
    float v;
    std::memcpy(&v, y + 4 * i, 4);
    float t = wy * v;
    if constexpr (kOwn) {
      const float own = wx * x[i];
      t = own + t;
    } else if constexpr (!kAssign) {
      t = s[i] + t;
    }
    if constexpr (kScale) t = t * inv;
    s[i] = t;
    if constexpr (kOut) x[i] = t;
  }
}

using FoldFn = void (*)(float*, float*, float, const std::uint8_t*, float, float, std::size_t);

FoldFn pick_fold(bool own, bool assign, bool scale, bool out) {
  if (own) {
    if (!scale) return fold_piece<true, false, false, false>;
    return out ? fold_piece<true, false, true, true> : fold_piece<true, false, true, false>;
  }
  if (assign) {
    if (!scale) return fold_piece<false, true, false, false>;
    return out ? fold_piece<false, true, true, true> : fold_piece<false, true, true, false>;
  }
  if (!scale) return fold_piece<false, false, false, false>;
  return out ? fold_piece<false, false, true, true> : fold_piece<false, false, true, false>;
}

}  // namespace

std::size_t Layout::total_pieces() const {
  std::size_t n = 0;
  for (const auto& p : pieces) n += p.size();
  return n;
}

std::size_t Layout::first_piece(std::size_t reducer) const {
  std::size_t n = 0;
  for (std::size_t j = 0; j < reducer && j < pieces.size(); ++j) n += pieces[j].size();
  return n;
}

Result<Layout> make_layout(const Group& group, const AllReduceConfig& cfg) {
  std::vector<double> bw;
  std::vector<MemberKind> kinds;
  for (const auto& m : group.members) {
    bw.push_back(m.bandwidth);
    kinds.push_back(m.kind);
  }
  auto sizes = balance_parts(group.schema.total(), bw, kinds, cfg.min_part, cfg.parts);
  if (!sizes.ok()) return sizes.error();
  Layout l;
  l.part_size = std::move(*sizes);
  std::uint64_t at = 0;
  const auto tensor_sizes = group.schema.sizes();
  for (std::size_t j = 0; j < group.members.size(); ++j) {
    l.part_begin.push_back(at);
    l.pieces.push_back(make_pieces(tensor_sizes, at, at + l.part_size[j], cfg.piece_elements));
    at += l.part_size[j];
  }
  return l;
}

std::size_t lanes_per_reducer(const Group& group, const Layout& layout, const AllReduceConfig& cfg, std::size_t me) {
  const std::size_t window = std::max<std::uint32_t>(cfg.window, 1);
  if (cfg.max_in_flight_bytes == 0) return window;
  std::uint64_t remote = 0, piece_bytes = 0;
  for (std::size_t j = 0; j < layout.pieces.size(); ++j) {
    if (j == me || layout.pieces[j].empty()) continue;
    ++remote;
    for (const Piece& pc : layout.pieces[j])
      piece_bytes = std::max(piece_bytes, compression::body_size(cfg.codec.for_tensor(group.schema.numel(pc.tensor)), pc.size()));
  }
  if (remote == 0 || piece_bytes == 0) return window;
  // Never fewer than two (unless the window is one): with one piece outstanding, a reducer idles
  // from each reply until the next request arrives.
  const std::uint64_t fit = cfg.max_in_flight_bytes / (remote * piece_bytes);
  return static_cast<std::size_t>(std::clamp<std::uint64_t>(fit, std::min<std::size_t>(window, 2), window));
}

struct Averager::Round {
  Group group;
  std::size_t me = 0;
  std::size_t window = 1;  // pieces in flight per reducer (lanes_per_reducer)
  std::vector<std::uint64_t> part_begin, part_size;
  std::vector<std::vector<Piece>> pieces;  // per reducer
  std::vector<std::size_t> first_piece;    // per reducer: the global index of its first piece
  TimePoint started;
  Duration frozen_at_start{};  // the clock's frozen time when the round began
  TimePoint deadline;          // no request of mine waits past it (round_bound)
  double weight = 0;  // my weight as a sender

  // Reducer side: my part.
  struct PieceState {
    std::vector<bool> got;  // per member
    double weight = 0;
    std::uint32_t contributors = 0;
    bool done = false;
    bool stalled = false;  // fault injection: never answered
    bool own_pending = false;  // my contribution is counted but its values are still only in my output
    bool means_ready = false;  // the sums are already the means (fused into the last contribution)
    bool out_written = false;  // my output already holds the mean
    compression::Codec codec = compression::Codec::kFloat32;
    Payload result;  // the mean, the codec's body (float32: a view of `sum`); no data: no weight
    // CenteredClip keeps every contribution until the piece is complete: one row per member.
    std::vector<float> rows;
    std::vector<double> row_weight;
  };
  // Weighted sums over my part, then the means; replies are views of it, so it is reused by a
  // later round only once no reply holds it.
  std::shared_ptr<float[]> sum;
  std::size_t sum_size = 0;
  std::vector<PieceState> mine;
  std::size_t finalized = 0;
  std::vector<bool> banned;  // senders left out of the rest of my part
  std::vector<bool> gone;    // members that cancelled
  TimerId progress_timer = 0;
  std::size_t waiting_handlers = 0;
  Notifier changed;  // a piece finished, a member left, the round closed

  // Sender side. My values, then the means as they come back; requests are views of it, so it
  // is handed to the caller without a copy only once no request holds it.
  std::shared_ptr<std::vector<float>> output;
  std::vector<bool> part_failed;  // per reducer: keep my own values for the rest
  std::size_t lanes = 0, lanes_done = 0;
  std::int64_t sent_to_limit = 0;
  bool limit_reported = false;
  bool reduce_limit_reported = false;
  Notifier main_wake;

  AllReduceReport report;
  bool main_done = false;
  bool cancelled = false;
  bool closed = false;
};

Averager::Averager(Runtime& rt, Rpc& rpc, AllReduceConfig config) : rt_(rt), rpc_(rpc), cfg_(std::move(config)) {
  rpc_.serve<PieceRequest, PieceReply>(
      [this](const Endpoint& from, PieceRequest req) { return handle_piece(from, std::move(req)); });
  rpc_.on(CancelNotice::kMethod, [this](Request in) -> Task<Result<Reply>> {
    const auto n = detail::decode_message<CancelNotice>(in.body, in.payload);
    handle_cancel(in.from, n.group);
    co_return Reply{};
  });
}

Averager::~Averager() {
  scope_.destroy_all();
  for (auto& [id, r] : rounds_) {
    r->closed = true;
    if (r->progress_timer) rt_.timers.cancel(r->progress_timer);
    r->progress_timer = 0;
  }
}

Task<Result<AllReduceReport>> Averager::all_reduce(Group group, std::vector<float> local, double weight) {
  const auto me = group.index_of(rt_.transport.local());
  if (!me)
    co_return Error{ErrorCode::kInvalidArgument,
                    "this peer (" + rt_.transport.local().to_string() + ") is not a member of group " + std::to_string(group.id)};
  const Member self = group.members[*me];
  const std::uint64_t total = group.schema.total();
  if (sends(self.kind) && local.size() != total)
    co_return Error{ErrorCode::kInvalidArgument, "local tensors have " + std::to_string(local.size()) + " values; the group's schema " +
                                                     group.schema.describe() + " has " + std::to_string(total)};
  if (!sends(self.kind) && !local.empty())
    co_return Error{ErrorCode::kInvalidArgument, "an auxiliary member contributes no tensors"};
  if (cfg_.aggregation.rule == AggregationRule::kCenteredClip &&
      (!(cfg_.aggregation.tau > 0) || !std::isfinite(cfg_.aggregation.tau) || !(cfg_.aggregation.stop_step >= 0)))
    co_return Error{ErrorCode::kInvalidArgument, "CenteredClip needs tau > 0 (finite) and stop_step >= 0"};
  if (!std::isfinite(weight) || weight < 0)
    co_return Error{ErrorCode::kInvalidArgument, "weight must be finite and >= 0"};
  if (rounds_.count(group.id))
    co_return Error{ErrorCode::kInvalidArgument, "group " + std::to_string(group.id) + " is already running here"};
  auto layout = make_layout(group, cfg_);
  if (!layout.ok()) co_return layout.error();

  auto r = std::make_shared<Round>();
  const std::size_t n = group.members.size();
  r->group = std::move(group);
  r->me = *me;
  r->window = lanes_per_reducer(r->group, *layout, cfg_, r->me);
  r->started = rt_.now();
  r->frozen_at_start = rt_.clock.frozen();
  r->weight = weight;
  r->part_begin = std::move(layout->part_begin);
  r->part_size = std::move(layout->part_size);
  r->pieces = std::move(layout->pieces);
  std::size_t global = 0;
  for (const auto& part : r->pieces) {
    r->first_piece.push_back(global);
    global += part.size();
  }
  r->report.got_mean.assign(global, false);
  r->deadline = r->started + round_bound(*r);
  r->banned.assign(n, false);
  r->gone.assign(n, false);
  r->part_failed.assign(n, false);
  r->output = std::make_shared<std::vector<float>>(std::move(local));
  if (cfg_.faults.tamper_sent && !r->output->empty()) cfg_.faults.tamper_sent(*r->output);  // a hostile sender
  if (auto it = early_cancels_.find(r->group.id); it != early_cancels_.end()) {
    for (const auto& e : it->second)
      if (auto i = r->group.index_of(e)) r->gone[*i] = true;
    early_cancels_.erase(it);
  }
  const auto& my_pieces = r->pieces[r->me];
  r->mine.resize(my_pieces.size());
  for (auto& ps : r->mine) ps.got.assign(n, false);
  r->sum_size = r->part_size[r->me];
  if (spare_sum_ && spare_sum_.use_count() == 1 && spare_size_ >= r->sum_size) {
    r->sum = std::move(spare_sum_);
    r->sum_size = spare_size_;
  } else if (r->sum_size) {
    r->sum = std::shared_ptr<float[]>(new float[r->sum_size]);  // uninitialised: written before read
  }
  spare_sum_.reset();
  rounds_[r->group.id] = r;
  rt_.observer.trace("avg.round.begin", r->group.id, r->me);

  // My own contribution to my part is folded into the first pass over each piece (the first
  // remote contribution, or the finalisation), not copied here.
  if (sends(self.kind))
    for (std::size_t p = 0; p < my_pieces.size(); ++p) {
      contributed(*r, r->me, p, weight);
      if (clips()) {
        const Piece& pc = my_pieces[p];
        auto row = clip_row(*r, p, r->me);
        std::copy_n(r->output->data() + pc.begin, pc.size(), row.begin());
        r->mine[p].row_weight[r->me] = weight;
      } else {
        r->mine[p].own_pending = true;
      }
    }
  for (std::size_t p = 0; p < my_pieces.size(); ++p) check_piece(*r, p);
  if (r->finalized < r->mine.size()) arm_progress_timer(r);
  registered_.notify_all();  // pieces that arrived before this round began

  // Sender lanes: `window` per reducer, each taking every window-th piece.
  if (sends(self.kind)) {
    for (std::size_t j = 0; j < n; ++j) {
      if (r->pieces[j].empty()) continue;
      const std::size_t lanes = std::min(r->window, r->pieces[j].size());
      for (std::size_t l = 0; l < lanes; ++l) {
        ++r->lanes;
        scope_.spawn(send_lane(r, j, l));
      }
    }
  }
  Round& round = *r;
  const bool is_sender = sends(self.kind);
  while (!round.cancelled && !round.closed &&
         !((round.lanes_done == round.lanes) && (is_sender || round.finalized == round.mine.size())))
    co_await round.main_wake.wait();

  // Pieces of my part still open (a failed round) need my values after the caller has them.
  for (std::size_t p = 0; p < round.mine.size(); ++p) fold_own(round, p);
  round.main_done = true;
  const bool cancelled = round.cancelled;
  AllReduceReport rep = std::move(round.report);
  rep.group = round.group.id;
  if (round.output.use_count() == 1)
    rep.averaged = std::move(*round.output);
  else  // a request still in flight (a reducer that timed out) reads these values: copy
    rep.averaged = *round.output;
  for (std::size_t j = 0; j < n; ++j)
    if (round.banned[j] || (round.gone[j] && sends(round.group.members[j].kind)))
      add_unique(rep.excluded_senders, round.group.members[j].endpoint);
  rep.elapsed = rt_.now() - round.started;
  check_bounded(round);
  rt_.observer.trace("avg.round.end", round.group.id, rep.pieces_kept);
  if (!round.closed) scope_.spawn(linger(r));
  if (cancelled) co_return Error{ErrorCode::kCancelled, "left group " + std::to_string(round.group.id)};
  co_return rep;
}

bool Averager::clips() const { return cfg_.aggregation.rule == AggregationRule::kCenteredClip; }

std::span<float> Averager::clip_row(Round& r, std::size_t piece, std::size_t member) {
  auto& ps = r.mine[piece];
  const std::size_t m = r.pieces[r.me][piece].size();
  if (ps.rows.empty()) {
    ps.rows.assign(r.group.members.size() * m, 0.0f);
    ps.row_weight.assign(r.group.members.size(), 0.0);
  }
  return std::span<float>(ps.rows).subspan(member * m, m);
}

// Moves my pending contribution to a piece into the sums (s = w * x).
void Averager::fold_own(Round& r, std::size_t piece) {
  auto& ps = r.mine[piece];
  if (!ps.own_pending) return;
  ps.own_pending = false;
  if (r.closed || !r.sum) return;  // no sums will be read again
  const Piece& pc = r.pieces[r.me][piece];
  float* s = r.sum.get() + (pc.begin - r.part_begin[r.me]);
  const float* x = r.output->data() + pc.begin;
  const float w = static_cast<float>(r.weight);
  const bool assign = ps.contributors == 1;  // only mine so far
  for (std::size_t i = 0; i < pc.size(); ++i) s[i] = assign ? w * x[i] : s[i] + w * x[i];
}

// Whether the mean of a piece of my part may go straight into my output when it is computed: I
// send (so I have an output), the round still owns it and trusts its own part, the piece will be
// answered, and its codec is exact (else the output must hold the decoded mean others receive).
bool Averager::writes_own_output(const Round& r, std::size_t piece) const {
  const Piece& pc = r.pieces[r.me][piece];
  return sends(r.group.members[r.me].kind) && !r.main_done && !r.cancelled && !r.closed && !r.part_failed[r.me] &&
         !(cfg_.faults.reduce_limit >= 0 && static_cast<std::int64_t>(piece) >= cfg_.faults.reduce_limit) &&
         cfg_.codec.for_tensor(r.group.schema.numel(pc.tensor)) == compression::Codec::kFloat32 &&
         compression::kFloat32IsNative;
}

void Averager::contributed(Round& r, std::size_t sender, std::size_t piece, double weight) {
  auto& ps = r.mine[piece];
  ps.got[sender] = true;
  ps.weight += weight;
  ++ps.contributors;
}

// Whether `sender`'s contribution is the last one a piece waits for.
bool Averager::completes(const Round& r, std::size_t piece, std::size_t sender) const {
  const auto& ps = r.mine[piece];
  for (std::size_t s = 0; s < r.group.members.size(); ++s)
    if (s != sender && sends(r.group.members[s].kind) && !ps.got[s] && !r.banned[s] && !r.gone[s]) return false;
  return true;
}

void Averager::check_piece(Round& r, std::size_t piece) {
  auto& ps = r.mine[piece];
  if (ps.done) return;
  for (std::size_t s = 0; s < r.group.members.size(); ++s)
    if (sends(r.group.members[s].kind) && !ps.got[s] && !r.banned[s] && !r.gone[s]) return;
  finalize(r, piece);
}

void Averager::finalize(Round& r, std::size_t piece) {
  auto& ps = r.mine[piece];
  const Piece& pc = r.pieces[r.me][piece];
  ps.done = true;
  if (ps.weight > 0) {
    float* s = r.sum.get() + (pc.begin - r.part_begin[r.me]);
    const std::size_t n = pc.size();
    if (clips() && !ps.means_ready) {
      // Contributions that never came have weight 0 and count for nothing.
      const ClipStats st = centered_clip(ps.rows, ps.row_weight, std::span<float>(s, n), cfg_.aggregation);
      if (cfg_.on_reduced) cfg_.on_reduced(r.group.id, piece, ps.rows, ps.row_weight);
      r.report.clipped += st.clipped;
      rt_.observer.count("avg.clip.clipped", st.clipped);
      rt_.observer.count("avg.clip.iterations", st.iterations);
      if (writes_own_output(r, piece)) {
        std::copy_n(s, n, r.output->data() + pc.begin);
        ps.out_written = true;
      }
      ps.means_ready = true;
      std::vector<float>().swap(ps.rows);
    }
    if (!ps.means_ready) {
      fold_own(r, piece);
      const float inv = static_cast<float>(1.0 / ps.weight);
      if (writes_own_output(r, piece)) {
        float* out = r.output->data() + pc.begin;
        for (std::size_t i = 0; i < n; ++i) out[i] = s[i] = s[i] * inv;
        ps.out_written = true;
      } else {
        for (std::size_t i = 0; i < n; ++i) s[i] *= inv;
      }
      ps.means_ready = true;
    }
    if (cfg_.faults.tamper_result) cfg_.faults.tamper_result(std::span<float>(s, n));  // a hostile reducer
    ps.codec = cfg_.codec.for_tensor(r.group.schema.numel(pc.tensor));
    if (ps.codec == compression::Codec::kFloat32 && compression::kFloat32IsNative)
      ps.result = Payload::view(r.sum, {reinterpret_cast<const std::uint8_t*>(s), 4 * n});
    else
      ps.result = Payload::bytes(compression::encode_body(std::span<const float>(s, n), ps.codec));
  }
  ++r.finalized;
  if (cfg_.faults.reduce_limit >= 0 && static_cast<std::int64_t>(piece) >= cfg_.faults.reduce_limit) {
    ps.stalled = true;
    if (!r.reduce_limit_reported) {
      r.reduce_limit_reported = true;
      if (cfg_.faults.on_reduce_limit) cfg_.faults.on_reduce_limit();
    }
  }
  r.changed.notify_all();
}

Duration Averager::round_bound(const Round& r) const {
  // An honest reducer finishes at least one piece of its part per sender_timeout (it leaves out
  // whoever holds the oldest one back), and one that stops is given up after reducer_timeout. A
  // reducer that answers each request just inside reducer_timeout would hold my lanes for pieces
  // x reducer_timeout: the round's deadline cuts that short (the rest keeps my own values).
  std::size_t most = 0;
  for (const auto& part : r.pieces) most = std::max(most, part.size());
  return cfg_.reducer_timeout + static_cast<std::int64_t>(most + 1) * cfg_.sender_timeout;
}

void Averager::check_bounded(const Round& r) {
  // Invariant: no member waits beyond its timeouts. Time this peer was frozen does not count
  // (its timers could not fire), and a live process's timers may fire a little late (100 ms).
  const Duration waited = rt_.now() - r.started - (rt_.clock.frozen() - r.frozen_at_start);
  if (waited <= r.deadline - r.started + std::chrono::milliseconds(100)) return;
  rt_.observer.count("invariant.avg.round_over_timeout");
  rt_.observer.log(LogLevel::kWarn, "invariant", "all-reduce of group " + std::to_string(r.group.id) + " took " +
                                                     format_duration(waited) + ", over its bound " + format_duration(round_bound(r)));
}

void Averager::arm_progress_timer(const std::shared_ptr<Round>& r) {
  if (r->progress_timer) rt_.timers.cancel(r->progress_timer);
  std::weak_ptr<Round> weak = r;
  r->progress_timer = rt_.timers.schedule(cfg_.sender_timeout, [this, weak] {
    if (auto s = weak.lock()) {
      s->progress_timer = 0;
      on_no_progress(s);
    }
  });
}

// No piece of my part finished for sender_timeout: leave out whoever has not delivered the oldest
// unfinished piece.
void Averager::on_no_progress(const std::shared_ptr<Round>& r) {
  if (r->closed) return;
  std::size_t oldest = r->mine.size();
  for (std::size_t p = 0; p < r->mine.size(); ++p)
    if (!r->mine[p].done) {
      oldest = p;
      break;
    }
  if (oldest == r->mine.size()) return;
  for (std::size_t s = 0; s < r->group.members.size(); ++s)
    if (sends(r->group.members[s].kind) && !r->mine[oldest].got[s] && !r->banned[s] && !r->gone[s]) {
      r->banned[s] = true;
      rt_.observer.count("avg.senders_left_out");
      rt_.observer.trace("avg.left_out", r->group.id, s);
    }
  const std::size_t before = r->finalized;
  for (std::size_t p = 0; p < r->mine.size(); ++p) check_piece(*r, p);
  if (r->finalized < r->mine.size()) arm_progress_timer(r);
  if (r->finalized != before) wake_main(r);
}

void Averager::wake_main(const std::shared_ptr<Round>& r) {
  // Deferred: the main task may finish and drop the round, which must not happen inside a lane
  // or handler that is still running.
  std::weak_ptr<Round> weak = r;
  rt_.timers.schedule(Duration::zero(), [weak] {
    if (auto s = weak.lock()) s->main_wake.notify_all();
  });
}

Task<std::shared_ptr<Averager::Round>> Averager::find_round(std::uint64_t group) {
  if (auto it = rounds_.find(group); it != rounds_.end()) co_return it->second;
  if (closed_.count(group)) co_return nullptr;
  // A sender may start before this member has heard that the group is assembled.
  const TimePoint deadline = rt_.now() + cfg_.sender_timeout;
  std::function<bool()> known = [this, group] { return rounds_.count(group) || closed_.count(group); };
  co_await wait_until(rt_, registered_, deadline, std::move(known));
  auto it = rounds_.find(group);
  co_return it == rounds_.end() ? nullptr : it->second;
}

Task<Result<PieceReply>> Averager::handle_piece(Endpoint from, PieceRequest req) {
  std::shared_ptr<Round> r = co_await find_round(req.group);
  if (!r) co_return Error{ErrorCode::kInvalidArgument, "unknown or finished group " + std::to_string(req.group)};
  const auto s = r->group.index_of(from);
  if (!s || !sends(r->group.members[*s].kind))
    co_return Error{ErrorCode::kInvalidArgument, from.to_string() + " is not a sending member of group " + std::to_string(req.group)};
  if (req.piece >= r->mine.size())
    co_return Error{ErrorCode::kInvalidArgument,
                    "piece " + std::to_string(req.piece) + " out of range (my part has " + std::to_string(r->mine.size()) + ")"};
  if (r->closed || r->cancelled) co_return Error{ErrorCode::kCancelled, "round is over"};
  if (r->banned[*s] || r->gone[*s])
    co_return Error{ErrorCode::kRejected, "left out of the rest of this part after missing a deadline"};
  auto& ps = r->mine[req.piece];
  if (ps.got[*s]) co_return Error{ErrorCode::kInvalidArgument, "duplicate piece " + std::to_string(req.piece)};
  if (!std::isfinite(req.weight) || req.weight < 0) co_return Error{ErrorCode::kInvalidArgument, "weight must be finite and >= 0"};
  const Piece& pc = r->pieces[r->me][req.piece];
  float* sum = r->sum.get() + (pc.begin - r->part_begin[r->me]);
  std::string why;
  if (cfg_.admit_piece) {
    if (std::string refused = cfg_.admit_piece(req.group, *s, req.piece, req.payload.data(), req.weight); !refused.empty()) {
      // The sender broke what it committed to: none of its pieces count for the rest of my part.
      rt_.observer.count("avg.refused_pieces");
      r->banned[*s] = true;
      const std::size_t before = r->finalized;
      for (std::size_t p = 0; p < r->mine.size(); ++p) check_piece(*r, p);
      if (r->finalized != before) {
        if (r->finalized < r->mine.size()) arm_progress_timer(r);
        wake_main(r);
      }
      co_return Error{ErrorCode::kRejected, "piece " + std::to_string(req.piece) + " refused: " + refused};
    }
  }
  if (clips()) {
    // Kept whole until the piece is complete; a value that is not finite cannot be clipped.
    auto row = clip_row(*r, req.piece, *s);
    try {
      compression::decode_body_into(req.codec, req.payload.data(), row);
      if (!std::all_of(row.begin(), row.end(), [](float x) { return std::isfinite(x); })) why = "a value is not finite";
    } catch (const wire::DecodeError& e) {
      why = e.what();
    }
    if (why.empty()) ps.row_weight[*s] = req.weight;
  } else if (req.codec == compression::Codec::kFloat32 && compression::kFloat32IsNative) {
    // One pass: my own values (if still pending), this sender's, and the means if it is the last.
    if (req.payload.size() != 4 * pc.size()) {
      why = "float32 piece of " + std::to_string(pc.size()) + " values needs " + std::to_string(4 * pc.size()) +
            " bytes, got " + std::to_string(req.payload.size());
    } else {
      const bool own = ps.own_pending;
      const double total = ps.weight + req.weight;
      const bool last = total > 0 && completes(*r, req.piece, *s);
      const bool out = last && writes_own_output(*r, req.piece);
      float* x = (own || out) ? r->output->data() + pc.begin : nullptr;
      pick_fold(own, ps.contributors == 0, last, out)(sum, x, static_cast<float>(r->weight), req.payload.data().data(),
                                                      static_cast<float>(req.weight), static_cast<float>(1.0 / total),
                                                      pc.size());
      ps.own_pending = false;
      ps.means_ready = last;
      ps.out_written = out;
    }
  } else {
    fold_own(*r, req.piece);
    try {  // decoded straight into the sums; a bad piece is refused before it touches them
      compression::accumulate_body(req.codec, req.payload.data(), std::span<float>(sum, pc.size()),
                                   static_cast<float>(req.weight), ps.contributors == 0);
    } catch (const wire::DecodeError& e) {
      why = e.what();
    }
  }
  if (!why.empty()) {
    rt_.observer.count("avg.bad_pieces");
    co_return Error{ErrorCode::kBadMessage, "piece " + std::to_string(req.piece) + ": " + why};
  }
  r->report.bytes_received += req.payload.size();
  contributed(*r, *s, req.piece, req.weight);
  const std::size_t before = r->finalized;
  check_piece(*r, req.piece);
  if (r->finalized != before) {
    if (r->finalized < r->mine.size()) arm_progress_timer(r);
    else if (r->progress_timer) {
      rt_.timers.cancel(r->progress_timer);
      r->progress_timer = 0;
    }
    wake_main(r);
  }
  ++r->waiting_handlers;
  Round& round = *r;
  const std::size_t p = req.piece;
  while (!(round.mine[p].done && !round.mine[p].stalled) && !round.closed && !round.cancelled)
    co_await round.changed.wait();
  if (cfg_.faults.answer_delay > Duration::zero() && round.mine[p].done) co_await sleep_on(rt_.timers, cfg_.faults.answer_delay);
  --round.waiting_handlers;
  if (round.waiting_handlers == 0 && round.finalized == round.mine.size()) round.changed.notify_all();  // linger
  if (!round.mine[p].done || round.mine[p].stalled || round.cancelled || round.closed)
    co_return Error{ErrorCode::kCancelled, "round ended before piece " + std::to_string(p) + " was reduced"};
  if (!round.mine[p].result.has_data()) co_return Error{ErrorCode::kInvalidArgument, "every contribution to this piece had weight 0"};
  round.report.bytes_sent += round.mine[p].result.size();
  co_return PieceReply{round.mine[p].codec, round.mine[p].result};
}

Task<void> Averager::send_lane(std::shared_ptr<Round> r, std::size_t j, std::size_t first) {
  Round& round = *r;
  const auto& pieces = round.pieces[j];
  const std::size_t stride = std::min(round.window, pieces.size());
  const Endpoint to = round.group.members[j].endpoint;
  for (std::size_t p = first; p < pieces.size(); p += stride) {
    if (round.main_done) break;
    const Piece pc = pieces[p];
    if (round.part_failed[j] || round.gone[j] || round.cancelled) {
      round.report.pieces_kept += 1;
      continue;
    }
    if (cfg_.faults.send_limit >= 0 && static_cast<std::int64_t>(p) >= cfg_.faults.send_limit) {
      if (!round.limit_reported) {
        round.limit_reported = true;
        if (cfg_.faults.on_send_limit) cfg_.faults.on_send_limit();
      }
      // Stall: wait for the round to end without sending.
      while (!round.closed && !round.cancelled && !round.main_done) co_await round.changed.wait();
      break;
    }
    Payload result;
    compression::Codec result_codec = compression::Codec::kFloat32;
    bool written = false;
    std::optional<Error> failure;
    if (j == round.me) {
      // My own part: the reducer side takes my values; wait for the piece to be reduced.
      const TimePoint deadline = std::min(rt_.now() + cfg_.reducer_timeout, round.deadline);
      std::function<bool()> reduced = [&round, p] {
        return (round.mine[p].done && !round.mine[p].stalled) || round.closed || round.cancelled;
      };
      const bool ok = co_await wait_until(rt_, round.changed, deadline, std::move(reduced));
      if (!ok || !round.mine[p].done || round.mine[p].stalled)
        failure = Error{ErrorCode::kTimeout, "own part stalled"};
      else if (!round.mine[p].result.has_data())
        failure = Error{ErrorCode::kInvalidArgument, "no weight"};
      else if (round.mine[p].out_written)
        written = true;  // the reducer side wrote the mean into my output in the same pass
      else {
        result = round.mine[p].result;
        result_codec = round.mine[p].codec;
      }
    } else {
      const auto codec = cfg_.codec.for_tensor(round.group.schema.numel(pc.tensor));
      Payload body;
      PayloadTarget reply_into;
      auto* const mine = reinterpret_cast<std::uint8_t*>(round.output->data() + pc.begin);
      if (codec == compression::Codec::kFloat32 && compression::kFloat32IsNative) {
        // Sent as it is: the request is a view of my values, which stay put until its reply. The
        // reply (float32 means of the same size) may be received straight into the same place:
        // the reducer answers only after it has all of my request.
        body = Payload::view(round.output, {mine, 4 * pc.size()});
        reply_into = PayloadTarget{round.output, {mine, 4 * pc.size()}};
      } else {
        const auto values = std::span<const float>(*round.output).subspan(pc.begin, pc.size());
        body = Payload::bytes(compression::encode_body(values, codec));
      }
      const std::uint64_t n = body.size();
      PieceRequest req{round.group.id, p, round.weight, codec, std::move(body)};
      round.report.bytes_sent += n;
      const Duration timeout = std::min(cfg_.reducer_timeout, round.deadline - rt_.now());
      Result<PieceReply> reply = Error{ErrorCode::kTimeout, "the round's deadline has passed"};
      if (timeout > Duration::zero()) {
        Task<Result<PieceReply>> sent = rpc_.call<PieceReply>(to, std::move(req), timeout, std::move(reply_into));
        reply = co_await std::move(sent);
      }
      if (round.main_done) break;
      if (!reply.ok()) {
        failure = reply.error();
      } else {
        round.report.bytes_received += reply->payload.size();
        result = std::move(reply->payload);
        result_codec = reply->codec;
        if (!result.has_data()) {
          failure = Error{ErrorCode::kBadMessage, "reply without data"};
        } else if (result.data().data() == mine) {  // received into my output already
          written = true;
          if (result_codec != compression::Codec::kFloat32)
            failure = Error{ErrorCode::kBadMessage, "reduced piece from " + to.to_string() + " is " +
                                                        compression::to_string(result_codec) + ", float32 expected"};
        }
      }
    }
    if (!failure && !written) {  // the mean goes straight into my output; a bad buffer leaves it untouched
      std::string why;
      try {
        compression::decode_body_into(result_codec, result.data(),
                                      std::span<float>(*round.output).subspan(pc.begin, pc.size()));
      } catch (const wire::DecodeError& e) {
        why = e.what();
      }
      if (!why.empty()) failure = Error{ErrorCode::kBadMessage, "bad reduced piece from " + to.to_string() + ": " + why};
    }
    if (failure) {
      round.report.pieces_kept += 1;
      if (!round.part_failed[j]) {
        round.part_failed[j] = true;
        rt_.observer.count("avg.part_failures");
        if (failure->code == ErrorCode::kRejected)
          add_unique(round.report.excluded_me, to);
        else
          add_unique(round.report.failed_reducers, to);
      }
      continue;
    }
    round.report.pieces_averaged += 1;
    round.report.got_mean[round.first_piece[j] + p] = true;
  }
  ++round.lanes_done;
  wake_main(r);
}

void Averager::handle_cancel(const Endpoint& from, std::uint64_t group) {
  auto it = rounds_.find(group);
  if (it == rounds_.end()) {
    if (closed_.count(group)) return;
    if (early_cancels_.size() < 256) early_cancels_[group].insert(from);
    return;
  }
  auto r = it->second;
  const auto s = r->group.index_of(from);
  if (!s || r->gone[*s]) return;
  r->gone[*s] = true;
  rt_.observer.trace("avg.member_left", group, *s);
  if (r->pieces[*s].size() && *s != r->me) {
    r->part_failed[*s] = true;
    add_unique(r->report.failed_reducers, from);
  }
  const std::size_t before = r->finalized;
  for (std::size_t p = 0; p < r->mine.size(); ++p) check_piece(*r, p);
  if (r->finalized != before && r->finalized < r->mine.size()) arm_progress_timer(r);
  r->changed.notify_all();
  wake_main(r);
}

void Averager::cancel(std::uint64_t group_id) {
  auto it = rounds_.find(group_id);
  if (it == rounds_.end()) return;
  auto r = it->second;
  if (r->cancelled) return;
  r->cancelled = true;
  rt_.observer.trace("avg.cancel", group_id, r->me);
  for (std::size_t j = 0; j < r->group.members.size(); ++j)
    if (j != r->me) rpc_.notify(r->group.members[j].endpoint, CancelNotice{group_id});
  close(*r);
  wake_main(r);
}

// After my result is in, keep answering late senders until every piece is reduced and answered,
// or reducer_timeout passes.
Task<void> Averager::linger(std::shared_ptr<Round> r) {
  Round& round = *r;
  const TimePoint deadline = rt_.now() + cfg_.reducer_timeout;
  std::function<bool()> answered = [&round] {
    return round.closed || (round.finalized == round.mine.size() && round.waiting_handlers == 0);
  };
  co_await wait_until(rt_, round.changed, deadline, std::move(answered));
  close(round);
}

void Averager::close(Round& r) {
  if (r.progress_timer) rt_.timers.cancel(r.progress_timer);
  r.progress_timer = 0;
  if (!r.closed) {
    r.closed = true;
    r.changed.notify_all();
  }
  const std::uint64_t id = r.group.id;
  auto it = rounds_.find(id);
  if (it != rounds_.end() && it->second.get() == &r) {
    if (r.sum && r.sum_size > spare_size_) {
      spare_sum_ = std::move(r.sum);
      spare_size_ = r.sum_size;
    }
    rounds_.erase(it);
    closed_.insert(id);
    closed_order_.push_back(id);
    if (closed_order_.size() > 1024) {
      closed_.erase(closed_order_.front());
      closed_order_.erase(closed_order_.begin());
    }
  }
}

}  // namespace apiary::averaging
