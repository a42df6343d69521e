#pragma once
// A swarm of DHT nodes on the fake transport (tests/support/fake_runtime.hpp), for the protocols
// that stand on the DHT: node i has the identity of seed `id_seed + i`.
#include <memory>
#include <vector>

#include "core/dht/node.hpp"
#include "core/dht/validate.hpp"
#include "tests/support/fake_runtime.hpp"

namespace apiary::test {

struct FakeDhtSwarm {
  FakeDhtSwarm(std::size_t n, dht::DhtConfig cfg, std::vector<std::shared_ptr<dht::Validator>> validators = {},
               std::uint64_t id_seed = 100)
      : fake(n, std::chrono::milliseconds(10)) {
    for (std::size_t i = 0; i < n; ++i) {
      rpcs.push_back(std::make_unique<Rpc>(fake[i].runtime()));
      nodes.push_back(std::make_unique<dht::DhtNode>(fake[i].runtime(), *rpcs.back(),
                                                     dht::Identity::from_seed(i + id_seed).id(), cfg, validators));
    }
  }
  ~FakeDhtSwarm() {
    for (auto& r : rpcs) r->shutdown();
    nodes.clear();
    rpcs.clear();
  }
  template <class T>
  T run(Task<T> t) {
    t.start();
    fake.net.run(std::chrono::hours(1), [&] { return t.done(); });
    EXPECT_TRUE(t.done());
    return t.result();
  }
  // Each node bootstraps from node 0 (node 0 from node 1); with `second_pass`, every node then
  // looks itself up again to fill its table now that everybody exists.
  void join_all(bool second_pass = true) {
    for (std::size_t i = 0; i < nodes.size(); ++i) {
      std::vector<Endpoint> seeds{fake[i == 0 ? 1 : 0].local()};
      run(nodes[i]->bootstrap(seeds));
    }
    if (!second_pass) return;
    for (auto& n : nodes) {
      std::vector<dht::DhtId> self{n->id()};
      run(n->lookup(self, false));
    }
  }
  std::vector<dht::DhtId> ids() const {
    std::vector<dht::DhtId> v;
    for (auto& n : nodes) v.push_back(n->id());
    return v;
  }
  FakeSwarm fake;
  std::vector<std::unique_ptr<Rpc>> rpcs;
  std::vector<std::unique_ptr<dht::DhtNode>> nodes;
};

}  // namespace apiary::test
