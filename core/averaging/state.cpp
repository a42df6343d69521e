#include "core/averaging/state.hpp"

#include <algorithm>
#include <cstring>
#include <map>

namespace apiary::averaging {

StateSharer::StateSharer(Runtime& rt, Rpc& rpc, dht::DhtNode* dht, std::string prefix, Provider provider)
    : rt_(rt), rpc_(rpc), dht_(dht), prefix_(std::move(prefix)), provider_(std::move(provider)) {
  rpc_.serve<StateRequest, StateReply>([this](const Endpoint&, StateRequest req) -> Task<Result<StateReply>> {
    if (req.prefix != prefix_) co_return Error{ErrorCode::kInvalidArgument, "no state under '" + req.prefix + "'"};
    std::optional<ModelState> st = provider_ ? provider_() : std::nullopt;
    if (!st) co_return Error{ErrorCode::kRejected, "this peer has no state to share yet"};
    StateReply rep;
    rep.epoch = st->epoch;
    rep.schema = st->schema;
    rep.extra = std::move(st->extra);
    Bytes raw(st->tensors.size() * sizeof(float));
    if (!raw.empty()) std::memcpy(raw.data(), st->tensors.data(), raw.size());  // little-endian hosts
    rep.payload = Payload::bytes(std::move(raw));
    rt_.observer.count("avg.state_served");
    co_return rep;
  });
}

Task<void> StateSharer::declare(std::uint64_t epoch, Duration ttl) {
  if (!dht_) co_return;
  if (rt_.transport.authenticates() && !identity_) {
    rt_.observer.log(LogLevel::kWarn, "avg.state", "not declared: peers here use only signed declarations (no identity given)");
    co_return;
  }
  dht::Record rec;
  rec.key = prefix_ + ":state";
  rec.expiration = rt_.now() + ttl;
  wire::Writer w(rec.value);
  w.varint(epoch);
  if (identity_) {
    // Owned: the subkey names (and the signature proves) who declares; the endpoint rides in the value.
    rec.subkey = identity_->owner_tag();
    w.u32(rt_.transport.local().ip);
    w.u16(rt_.transport.local().port);
    identity_->sign(rec);
  } else {
    rec.subkey = rt_.transport.local().to_string();
  }
  co_await dht_->store(std::move(rec));
}

Task<Result<ModelState>> StateSharer::download_from(Endpoint peer, std::optional<TensorSchema> expect,
                                                    Duration timeout) {
  StateRequest req{prefix_};
  Result<StateReply> r = co_await rpc_.call<StateReply>(peer, std::move(req), timeout);
  if (!r.ok()) co_return r.error();
  if (expect && !(*expect == r->schema))
    co_return Error{ErrorCode::kInvalidArgument, "state from " + peer.to_string() + " has schema " +
                                                     r->schema.describe() + ", expected " + expect->describe()};
  const std::uint64_t want = r->schema.total() * sizeof(float);
  if (r->payload.size() != want || !r->payload.has_data())
    co_return Error{ErrorCode::kBadMessage, "state from " + peer.to_string() + " carries " +
                                                std::to_string(r->payload.size()) + " bytes of tensors, schema needs " +
                                                std::to_string(want)};
  ModelState st;
  st.epoch = r->epoch;
  st.schema = r->schema;
  st.extra = std::move(r->extra);
  st.tensors.resize(r->schema.total());
  if (want) std::memcpy(st.tensors.data(), r->payload.data().data(), want);
  rt_.observer.count("avg.state_downloads");
  co_return st;
}

Task<Result<ModelState>> StateSharer::download(std::optional<TensorSchema> expect, Duration timeout, std::uint64_t min_epoch,
                                               std::uint64_t max_epoch) {
  if (!dht_) co_return Error{ErrorCode::kInvalidArgument, "no DHT to find state providers in"};
  dht::GetResult got = co_await dht_->get(prefix_ + ":state");
  std::vector<std::pair<std::uint64_t, Endpoint>> providers;
  // Over authenticated peers, only owned declarations count, each bound to its owner's key.
  const bool authenticated = rt_.transport.authenticates();
  std::map<Endpoint, std::array<std::uint8_t, 32>> owners;
  for (const auto& rec : got.records) {
    if (!rec.subkey) continue;
    const auto owner = dht::owner_of_tag(*rec.subkey);
    if (authenticated && !owner) {
      rt_.observer.count("avg.unowned_declarations");
      continue;
    }
    std::optional<Endpoint> ep = owner ? std::nullopt : Endpoint::parse(*rec.subkey);
    std::uint64_t epoch = 0;
    try {
      wire::Reader r(rec.value);
      epoch = r.varint();
      if (owner) {
        Endpoint e;
        e.ip = r.u32();
        e.port = r.u16();
        ep = e;
      }
      r.expect_end();
    } catch (const wire::DecodeError&) {
      continue;
    }
    if (!ep || !ep->valid() || *ep == rt_.transport.local()) continue;
    if (owner) owners[*ep] = *owner;
    if (excluded_ && excluded_(*ep)) {
      rt_.observer.count("avg.state_providers_excluded");
      continue;
    }
    if (epoch > max_epoch) {
      rt_.observer.count("avg.state_providers_ahead");
      continue;
    }
    if (epoch >= min_epoch) providers.emplace_back(epoch, *ep);
  }
  std::sort(providers.begin(), providers.end(), [](const auto& a, const auto& b) {
    return a.first != b.first ? a.first > b.first : a.second < b.second;
  });
  std::string why = "no peer declares state under '" + prefix_ + "'";
  for (const auto& [epoch, ep] : providers) {
    Result<ModelState> r = co_await download_from(ep, expect, timeout);
    if (r.ok() && authenticated && rt_.transport.peer_key(ep) != owners[ep]) {
      rt_.observer.count("avg.state_providers_unbound");  // another key answers at the declared endpoint
      why = ep.to_string() + " is not the peer that declared it";
      continue;
    }
    if (r.ok() && (r->epoch < min_epoch || r->epoch > max_epoch)) {
      rt_.observer.count("avg.state_older_than_declared");
      why = ep.to_string() + " declared epoch " + std::to_string(epoch) + " but served " + std::to_string(r->epoch);
      continue;
    }
    if (r.ok()) co_return std::move(r.value());
    why = r.error().describe();
  }
  co_return Error{ErrorCode::kUnreachable, "state download failed: " + why};
}

}  // namespace apiary::averaging
