#include "core/moe/experts.hpp"

#include <algorithm>
#include <charconv>
#include <queue>
#include <stdexcept>

namespace apiary::moe {

std::string ExpertUid::prefix_at(std::size_t depth) const {
  std::string s = prefix + ".";
  for (std::size_t i = 0; i < depth && i < coords.size(); ++i) s += std::to_string(coords[i]) + ".";
  return s;
}

std::string ExpertUid::str() const {
  std::string s = prefix;
  for (auto c : coords) s += "." + std::to_string(c);
  return s;
}

std::optional<ExpertUid> ExpertUid::parse(const std::string& text, const std::vector<std::uint32_t>& grid,
                                          std::string* why) {
  auto bad = [&](const std::string& w) -> std::optional<ExpertUid> {
    if (why) *why = "expert uid '" + text + "': " + w;
    return std::nullopt;
  };
  const auto dot = text.find('.');
  if (dot == 0 || dot == std::string::npos) return bad("expected PREFIX.COORD[.COORD...]");
  ExpertUid u;
  u.prefix = text.substr(0, dot);
  std::size_t at = dot + 1;
  while (true) {
    const auto next = text.find('.', at);
    const std::string part = text.substr(at, next == std::string::npos ? std::string::npos : next - at);
    std::uint32_t c = 0;
    auto [end, ec] = std::from_chars(part.data(), part.data() + part.size(), c);
    if (part.empty() || ec != std::errc{} || end != part.data() + part.size())
      return bad("coordinate '" + part + "' is not a non-negative integer");
    u.coords.push_back(c);
    if (next == std::string::npos) break;
    at = next + 1;
  }
  if (!grid.empty()) {
    if (u.coords.size() != grid.size())
      return bad("has " + std::to_string(u.coords.size()) + " coordinates, the grid " + std::to_string(grid.size()));
    for (std::size_t d = 0; d < grid.size(); ++d)
      if (u.coords[d] >= grid[d])
        return bad("coordinate " + std::to_string(u.coords[d]) + " outside dimension " + std::to_string(d) + " of size " +
                   std::to_string(grid[d]));
  }
  return u;
}

namespace {

Bytes encode_endpoint(const Endpoint& e) {
  Bytes b;
  wire::Writer w(b);
  w.u32(e.ip);
  w.u16(e.port);
  return b;
}

std::optional<Endpoint> decode_endpoint(std::span<const std::uint8_t> b) {
  try {
    wire::Reader r(b);
    Endpoint e;
    e.ip = r.u32();
    e.port = r.u16();
    r.expect_end();
    return e;
  } catch (const wire::DecodeError&) {
    return std::nullopt;
  }
}

}  // namespace

Task<std::size_t> declare_experts(dht::DhtNode& dht, std::vector<ExpertUid> uids, Endpoint server,
                                  TimePoint expiration, const dht::Identity* owner) {
  // One record per (prefix, next coordinate), deduplicated, plus one per full uid.
  std::map<std::pair<std::string, std::string>, dht::Record> records;
  const Bytes where = encode_endpoint(server);
  const std::string tag = owner ? owner->owner_tag() : "";
  for (const auto& u : uids) {
    for (std::size_t d = 0; d < u.coords.size(); ++d) {
      dht::Record r;
      r.key = u.prefix_at(d);
      r.subkey = std::to_string(u.coords[d]) + tag;
      r.value = where;  // the last level names the server; the others only say "alive below"
      r.expiration = expiration;
      records[{*r.subkey, r.key}] = std::move(r);
    }
    dht::Record full;
    full.key = u.str();
    if (owner) full.subkey = tag;  // signed: a dictionary of its servers, which no plain value can replace
    full.value = where;
    full.expiration = expiration;
    records[{"", full.key}] = std::move(full);
  }
  std::vector<dht::Record> all;
  for (auto& [k, r] : records) {
    if (owner) owner->sign(r);
    all.push_back(std::move(r));
  }
  const std::size_t n = all.size();
  std::size_t stored = 0;
  for (std::size_t at = 0; at < n; at += 64) {  // a store request carries at most 64 records
    std::vector<dht::Record> batch(std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(at)),
                                   std::make_move_iterator(all.begin() + static_cast<std::ptrdiff_t>(std::min(n, at + 64))));
    auto reps = co_await dht.store_all(std::move(batch));
    for (auto r : reps) stored += r > 0;
  }
  co_return stored;
}

bool answered_by_owner(Runtime& rt, const FoundExpert& e) {
  if (!e.owner || !rt.transport.authenticates()) return true;
  if (rt.transport.peer_key(e.server) == e.owner) return true;
  rt.observer.count("moe.unbound_experts");
  return false;
}

ExpertFinder::ExpertFinder(Runtime& rt, dht::DhtNode& dht, std::string prefix, std::vector<std::uint32_t> grid,
                           FinderConfig config)
    : rt_(rt), dht_(dht), prefix_(std::move(prefix)), grid_(std::move(grid)), cfg_(config) {}

Task<std::vector<FoundExpert>> ExpertFinder::find_best(std::vector<std::vector<float>> scores, std::size_t k) {
  const std::size_t dims = grid_.size();
  if (scores.size() != dims)
    throw std::invalid_argument("gate scores have " + std::to_string(scores.size()) + " rows, the grid " + std::to_string(dims) +
                                " dimensions");
  for (std::size_t d = 0; d < dims; ++d)
    if (scores[d].size() != grid_[d])
      throw std::invalid_argument("gate scores for dimension " + std::to_string(d) + " have " + std::to_string(scores[d].size()) +
                                  " entries, the grid " + std::to_string(grid_[d]));
  // best_rest[d]: the highest score dimensions d.. can add (the bound's second term).
  std::vector<double> best_rest(dims + 1, 0.0);
  for (std::size_t d = dims; d-- > 0;)
    best_rest[d] = best_rest[d + 1] + (scores[d].empty() ? 0.0 : *std::max_element(scores[d].begin(), scores[d].end()));

  struct Entry {
    double bound;
    double partial;
    ExpertUid uid;  // coords so far
    Endpoint server;
    std::optional<std::array<std::uint8_t, 32>> owner;
  };
  auto worse = [](const Entry& a, const Entry& b) {
    if (a.bound != b.bound) return a.bound < b.bound;
    return a.uid.str() > b.uid.str();  // ties: the smaller uid first
  };
  std::priority_queue<Entry, std::vector<Entry>, decltype(worse)> frontier(worse);
  frontier.push(Entry{best_rest[0], 0.0, ExpertUid{prefix_, {}}, {}, {}});
  std::vector<FoundExpert> out;
  const bool authenticated = rt_.transport.authenticates();
  const TimePoint now = rt_.now();
  for (auto it = empty_until_.begin(); it != empty_until_.end();)
    it = it->second <= now ? empty_until_.erase(it) : std::next(it);
  for (auto it = found_.begin(); it != found_.end();)
    it = it->second.first <= now ? found_.erase(it) : std::next(it);

  while (out.size() < k && !frontier.empty()) {
    if (frontier.top().uid.coords.size() == dims) {  // a complete expert at the top: next best
      const Entry e = frontier.top();
      frontier.pop();
      out.push_back(FoundExpert{e.uid.str(), e.server, e.partial, e.owner});
      continue;
    }
    // Expand the best prefixes (up to `beam`, stopping at the first complete expert) in one traversal.
    std::vector<Entry> batch;
    while (!frontier.empty() && batch.size() < std::max<std::size_t>(1, cfg_.beam) &&
           frontier.top().uid.coords.size() < dims) {
      Entry e = frontier.top();
      frontier.pop();
      if (empty_until_.count(e.uid.prefix_at(e.uid.coords.size()))) continue;
      batch.push_back(std::move(e));
    }
    if (batch.empty()) continue;
    std::vector<std::string> keys;
    std::map<std::string, dht::GetResult> got;
    for (const auto& e : batch) {
      const std::string key = e.uid.prefix_at(e.uid.coords.size());
      auto c = found_.find(key);
      if (c != found_.end() && c->second.first > rt_.now())
        got[key].records = c->second.second;
      else
        keys.push_back(key);
    }
    if (!keys.empty()) {
      ++traversals_;
      std::map<std::string, dht::GetResult> fetched = co_await dht_.get_many(keys, cfg_.read_holders);
      for (auto& [key, r] : fetched) {
        if (cfg_.positive_ttl > Duration::zero() && !r.records.empty())
          found_[key] = {rt_.now() + cfg_.positive_ttl, r.records};
        got[key] = std::move(r);
      }
    }
    for (const auto& e : batch) {
      const std::string key = e.uid.prefix_at(e.uid.coords.size());
      const auto it = got.find(key);
      const std::size_t d = e.uid.coords.size();
      // One child per coordinate: several servers sign entries for one coordinate (each its own
      // subkey), and a prefix pushed once per entry would be searched, and its experts returned,
      // once per server. Of an expert's entries (over authenticated peers), none whose endpoint
      // has proven another key than its owner's; first one whose endpoint proved its owner's;
      // then the one expiring last (the latest declaration, as a single plain entry would hold).
      struct Choice {
        const dht::Record* rec;
        std::optional<std::array<std::uint8_t, 32>> owner;
        bool proven;
      };
      std::map<std::uint32_t, Choice> best;
      if (it != got.end())
        for (const auto& rec : it->second.records) {
          if (!rec.subkey) continue;
          // "17" or, signed, "17[owner:<key>]"; over authenticated peers only the signed count.
          const std::string_view subkey = *rec.subkey;
          const std::string_view coord = subkey.substr(0, subkey.find('['));
          std::optional<std::array<std::uint8_t, 32>> owner;
          if (coord.size() < subkey.size()) {
            owner = dht::owner_of_tag(subkey.substr(coord.size()));
            if (!owner) continue;
          } else if (authenticated) {
            rt_.observer.count("moe.unowned_declarations");
            continue;
          }
          std::uint32_t c = 0;
          auto [end, ec] = std::from_chars(coord.data(), coord.data() + coord.size(), c);
          if (coord.empty() || ec != std::errc{} || end != coord.data() + coord.size() || c >= grid_[d]) continue;
          bool proven = false;
          if (d + 1 == dims) {
            const auto server = decode_endpoint(rec.value);
            if (!server) continue;
            if (authenticated && owner) {
              const auto proved = rt_.transport.peer_key(*server);
              if (proved && *proved != *owner) {
                rt_.observer.count("moe.declarations_unbound");  // another key answers there
                continue;
              }
              proven = proved.has_value();
            }
          }
          const Choice choice{&rec, owner, proven};
          auto [at, fresh] = best.try_emplace(c, choice);
          if (!fresh && std::make_pair(proven, rec.expiration) > std::make_pair(at->second.proven, at->second.rec->expiration))
            at->second = choice;
        }
      const bool any = !best.empty();
      for (const auto& [c, chosen] : best) {
        Entry child{0, e.partial + scores[d][c], e.uid, {}, {}};
        child.uid.coords.push_back(c);
        if (d + 1 == dims) {
          child.server = *decode_endpoint(chosen.rec->value);
          child.owner = chosen.owner;
        }
        child.bound = child.partial + best_rest[d + 1];
        frontier.push(std::move(child));
      }
      if (!any) empty_until_[key] = rt_.now() + cfg_.negative_ttl;
    }
  }
  co_return out;
}

}  // namespace apiary::moe
