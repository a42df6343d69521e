#pragma once
// State download: a newcomer fetches the current parameters, optimizer state and epoch from a
// peer that has them. Peers holding state declare themselves in the DHT under prefix + ":state"
// (subkey: endpoint, value: epoch); a newcomer asks the one with the highest epoch first and falls
// back to the next. The tensors travel as one bulk payload (streamed in parts by the transport).
#include <functional>
#include <optional>

#include "core/averaging/protocol.hpp"
#include "core/dht/node.hpp"

namespace apiary::averaging {

struct ModelState {
  std::uint64_t epoch = 0;
  TensorSchema schema;
  std::vector<float> tensors;  // flattened, schema order
  Bytes extra;                 // optimizer state and other opaque bytes (at most 1 MiB)
};

class StateSharer {
 public:
  // `provider` returns this peer's current state, or nullopt if it has none to share.
  using Provider = std::function<std::optional<ModelState>()>;
  StateSharer(Runtime& rt, Rpc& rpc, dht::DhtNode* dht, std::string prefix, Provider provider);
  // Declares this peer as a state provider for `ttl` (call again before it expires).
  Task<void> declare(std::uint64_t epoch, Duration ttl);
  // Downloads from the declared peer with the highest epoch, trying the next on failure.
  // `expect` (if set) must match the downloaded schema.
  // Never a state older than `min_epoch`: providers that declare less are skipped, and a state
  // that turns out older than declared is refused (so a peer that catches up never goes back).
  // Never a state newer than `max_epoch` either (what the caller believes the swarm has reached):
  // a provider that declares more is lying or alone, and the freshest-looking state is not taken
  // on its word. Excluded providers (banned ones) are never asked.
  Task<Result<ModelState>> download(std::optional<TensorSchema> expect, Duration timeout, std::uint64_t min_epoch = 0,
                                    std::uint64_t max_epoch = UINT64_MAX);
  void set_excluded(std::function<bool(const Endpoint&)> excluded) { excluded_ = std::move(excluded); }
  // Declares under this identity's owner tag, signed (the endpoint in the value); over a transport
  // that authenticates peers only such declarations are used, and only where their owner proves
  // its key. Without an identity, declarations are plain entries under the peer's endpoint.
  void set_identity(dht::Identity identity) { identity_ = std::move(identity); }
  Task<Result<ModelState>> download_from(Endpoint peer, std::optional<TensorSchema> expect, Duration timeout);

 private:
  Runtime& rt_;
  Rpc& rpc_;
  dht::DhtNode* dht_;
  std::string prefix_;
  Provider provider_;
  std::function<bool(const Endpoint&)> excluded_;
  std::optional<dht::Identity> identity_;
};

}  // namespace apiary::averaging
