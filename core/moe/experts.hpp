#pragma once
// Decentralized Mixture-of-Experts: expert uids on a grid, their declarations in the DHT, and the
// search for the best alive experts.
//
// An expert uid is a prefix and grid coordinates, "ffn.3.17" (prefix "ffn", grid 2-d). A server
// declares each expert it hosts and every prefix on the way ("ffn." holds subkey "3", "ffn.3."
// holds subkey "17" with the server's endpoint), with an expiration, and declares again before it
// runs out; a dead server's experts simply expire. A server with an identity signs each entry as
// its owner (subkey "17[owner:<key>]"): no other peer can replace or remove it, and a reader over
// authenticated peers follows only such entries, and calls the server only where the entry's owner
// proves its key (an entry that names another peer's endpoint is not that peer's).
//
// The gating function gives a score per coordinate in each dimension; an expert's score is the sum
// over its coordinates. find_best() returns the k best *alive* experts, exactly as exhaustive
// top-k over the declared experts would, while reading only the prefixes that can still matter: a
// best-first search whose priority is a prefix's score so far plus the best possible score of the
// dimensions left (an upper bound), expanding up to `beam` prefixes per DHT traversal. Prefixes
// found empty are cached as such for a while (negative caching).
#include <array>
#include <map>
#include <optional>
#include <string>
#include <vector>

#include "core/dht/node.hpp"

namespace apiary::moe {

struct ExpertUid {
  std::string prefix;
  std::vector<std::uint32_t> coords;
  std::string str() const;  // "ffn.3.17"
  // "ffn." for depth 0, "ffn.3." for depth 1, ...
  std::string prefix_at(std::size_t depth) const;
  // Parses "ffn.3.17"; nullopt (with `why`) for an empty prefix, a non-numeric or missing coordinate,
  // or coordinates outside `grid` when given.
  static std::optional<ExpertUid> parse(const std::string& text, const std::vector<std::uint32_t>& grid = {},
                                        std::string* why = nullptr);
  bool operator==(const ExpertUid&) const = default;
};

// Declares `uids` as served at `server` until `expiration`, signed by `owner` when given (the
// server's own identity: the key it proves at `server`). Returns how many records were stored on
// at least one peer.
Task<std::size_t> declare_experts(dht::DhtNode& dht, std::vector<ExpertUid> uids, Endpoint server,
                                  TimePoint expiration, const dht::Identity* owner = nullptr);

struct FoundExpert {
  std::string uid;
  Endpoint server;
  double score = 0;
  std::optional<std::array<std::uint8_t, 32>> owner;  // the key that signed the declaration, if any
};

// Whether an answer from `e.server` may be taken as the expert's: when the expert was found by a
// signed declaration over authenticated peers, only if the key proven at `e.server` signed it
// (counted moe.unbound_experts when not); always otherwise (an expert the caller named itself).
bool answered_by_owner(Runtime& rt, const FoundExpert& e);

struct FinderConfig {
  std::size_t beam = 8;             // prefixes expanded per DHT traversal
  std::size_t read_holders = 3;     // DHT holders each read merges (many servers write one dictionary)
  Duration negative_ttl = std::chrono::seconds(30);
  // Found prefixes are reused for this long (0: always read), so that many searches in a row —
  // one per sample of a batch — read each prefix once.
  Duration positive_ttl = Duration::zero();
};

class ExpertFinder {
 public:
  ExpertFinder(Runtime& rt, dht::DhtNode& dht, std::string prefix, std::vector<std::uint32_t> grid,
               FinderConfig config = {});
  // scores[d][i]: the gate's score of coordinate i in dimension d (one row per grid dimension,
  // each as long as that dimension). Best first; fewer than k if fewer are alive. Ties break by
  // uid. Throws std::invalid_argument on a shape mismatch.
  Task<std::vector<FoundExpert>> find_best(std::vector<std::vector<float>> scores, std::size_t k);
  std::size_t traversals() const { return traversals_; }  // DHT lookups made so far
  std::size_t negative_cache_size() const { return empty_until_.size(); }

 private:
  Runtime& rt_;
  dht::DhtNode& dht_;
  std::string prefix_;
  std::vector<std::uint32_t> grid_;
  FinderConfig cfg_;
  std::map<std::string, TimePoint> empty_until_;
  std::map<std::string, std::pair<TimePoint, std::vector<dht::Record>>> found_;  // positive cache
  std::size_t traversals_ = 0;
};

}  // namespace apiary::moe
