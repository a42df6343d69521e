#pragma once
// Matchmaking through the DHT: peers that want to average under a group key find each other and
// agree on one group, with no master.
//
// Each looking peer declares itself under the key (subkey: its endpoint; value: its member entry,
// schema hash and the time it stops looking, which is also the record's expiration). Peers are
// ordered by (that deadline, endpoint): the earliest is the natural leader, because it must begin
// soonest. A peer asks the best-ranked declared peer ahead of it to take it in (a long-poll RPC
// answered when the group is assembled); if refused or the leader is gone, it tries the next. A
// peer that nobody ahead of it takes in leads: it accepts followers until the group reaches the
// target size, or, at its deadline, begins with at least the minimum size or gives up. A leader
// refuses a follower whose tensor schema differs, with an error that names both hashes. A client
// member (it cannot accept connections) never leads: it follows any leader it finds.
#include <functional>
#include <memory>
#include <optional>
#include <string>

#include "core/averaging/protocol.hpp"
#include "core/dht/node.hpp"

namespace apiary::averaging {

struct MatchmakingConfig {
  std::size_t target_group_size = 16;
  std::size_t min_group_size = 2;
  Duration budget = std::chrono::seconds(15);  // how long to look for a group
  Duration poll = std::chrono::milliseconds(500);  // how often to re-read the key
  std::string prefix = "avg";                  // DHT key = prefix + ":" + group key
  std::size_t read_holders = 3;  // DHT holders each poll merges declarations from
};

class Matchmaker {
 public:
  Matchmaker(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MatchmakingConfig config = {});
  ~Matchmaker();
  Matchmaker(const Matchmaker&) = delete;
  Matchmaker& operator=(const Matchmaker&) = delete;

  // Finds a group under `key` for tensors of `schema`, as `self`. Errors: kTimeout when no group
  // of at least min_group_size formed within the budget; kInvalidArgument when the group's
  // leader has a different schema; another search still running.
  Task<Result<Group>> find_group(std::string key, TensorSchema schema, Member self);

  MatchmakingConfig& config() { return cfg_; }
  // Peers this one will not group with (banned ones): it neither takes them in nor follows them.
  void set_excluded(std::function<bool(const Endpoint&)> excluded) { excluded_ = std::move(excluded); }
  // Declares under this identity's owner tag, signed (nobody else can declare for this peer). Over
  // a transport that authenticates peers, only such declarations are followed, and only to the
  // endpoint where their owner proved its key; without an identity, declarations are plain
  // entries under the peer's endpoint.
  void set_identity(dht::Identity identity) { identity_ = std::move(identity); }

 private:
  struct Search;
  Task<Result<JoinReply>> handle_join(Endpoint from, JoinRequest req);
  Group assemble(Search& s);

  Runtime& rt_;
  Rpc& rpc_;
  dht::DhtNode& dht_;
  MatchmakingConfig cfg_;
  std::shared_ptr<Search> current_;
  std::function<bool(const Endpoint&)> excluded_;
  std::optional<dht::Identity> identity_;
  TaskScope scope_;  // background declarations
};

// Moshpit grid keys. A peer sits at coordinates in a d-dimensional grid of side M. In round t the
// group key leaves out dimension t mod d, so the peers that differ only there meet; afterwards a
// peer's coordinate in that dimension becomes its rank in the group (mod M). With a full grid of
// M^d peers, groups of M and no failures, every peer holds the exact global mean after d rounds.
struct GridPosition {
  std::vector<std::uint32_t> coords;
  std::uint32_t side = 1;
  std::string key(std::uint64_t round) const;
  void update(std::uint64_t round, std::size_t rank_in_group);
  // The peer skipped `round` (it was down or busy), so its line handed out ranks without it: its
  // coordinate in the left-out dimension moves out of the grid's range (+ side) until the next
  // update() in that dimension, so no rank given in its absence lands on its cell. A peer parked
  // in another dimension takes that one back first (a peer parked in two dimensions would never
  // meet anyone again). Returns false if nothing moved.
  bool park(std::uint64_t round);
  bool parked() const;
  // The position of peer `index` in a grid filled in row-major order.
  static GridPosition of_index(std::uint64_t index, std::uint32_t side, std::size_t dims);
};

}  // namespace apiary::averaging
