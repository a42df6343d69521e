#include "harness/peer_stack.hpp"

#include "core/optim/schema.hpp"
#include "core/dht/validate.hpp"

namespace apiary {

namespace {
auth::AuthConfig auth_config(const SwarmSpec& spec) {
  auth::AuthConfig c;
  c.swarm_secret = spec.auth.swarm_secret;
  c.id_work_bits = spec.auth.id_work_bits;
  // ns-3 models the crypto's cost in simulated time; live peers pay it in host time.
  c.proof_cost = spec.backend == "sim" ? spec.auth.proof_cost : Duration::zero();
  c.modelled_proofs = spec.backend == "sim" && spec.auth.modelled_proofs;
  return c;
}
}  // namespace

PeerStack::PeerStack(Runtime& rt, const SwarmSpec& spec, const std::vector<Endpoint>& directory, std::uint32_t index,
                     double bandwidth, Workload& workload)
    : identity_(swarm_identity(spec, index)),  // once: with id work, drawing it costs 2^N key derivations
      auth_(spec.auth.on ? std::make_unique<auth::AuthenticatedRuntime>(rt, identity_, auth_config(spec)) : nullptr),
      rt_(auth_ ? auth_->runtime : rt),
      spec_(spec), directory_(directory), index_(index), bandwidth_(bandwidth), rpc_(std::make_unique<Rpc>(rt_)) {
  if (spec.uses_dht) {
    std::vector<optim::SchemaRule> rules;
    for (const auto& [pattern, rule] : spec.dht.schema) rules.push_back({pattern, rule});
    std::vector<std::shared_ptr<dht::Validator>> validators = optim::standard_validators(rules);
    dht::DhtConfig config = spec.dht.config;
    if (spec.behind_nat(index)) config.client_mode = true;  // nobody could reach it to ask
    dht_ = std::make_unique<dht::DhtNode>(rt_, *rpc_, identity_.id(), config, std::move(validators));
  }
  app_ = workload.make_app(*this);
}

void PeerStack::start() {
  app_->start();
  if (!dht_ || !app_->joins_dht()) {
    joined_ = true;
    app_->joined();
    return;
  }
  std::vector<Endpoint> seeds;
  for (std::uint32_t i = 0; i < spec_.dht.bootstrap_peers && i < directory_.size(); ++i)
    if (i != index_) seeds.push_back(directory_[i]);
  dht_->spawn_join(std::move(seeds), [this](std::size_t contacts) {
    joined_ = true;
    rt_.observer.count("dht.joins");
    rt_.observer.sample("dht.join.contacts", static_cast<double>(contacts));
    dht_->start_maintenance();
    app_->joined();
  });
}

PeerStack::~PeerStack() {
  rpc_->shutdown();  // no handler runs after this
  app_.reset();
  dht_.reset();
  rpc_.reset();
}

}  // namespace apiary
