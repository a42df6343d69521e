#pragma once
// The validators every node of an Apiary swarm runs, in ns-3 and live: owners' signatures, and
// the schema of the keys Apiary's own protocols write. Training progress and BTARD's ban lists are
// owner-signed entries only (no plain value can squat the key, no unsigned entry can speak for a
// peer), with bounded values that must decode (a progress report that does not parse is refused
// by every node, not only by its readers).
#include <memory>
#include <vector>

#include "core/dht/validate.hpp"

namespace apiary::optim {

std::vector<std::shared_ptr<dht::Validator>> standard_validators();

}  // namespace apiary::optim
