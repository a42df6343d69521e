#pragma once
// The validators every node of an Apiary swarm runs, in ns-3 and live: owners' signatures, and
// the schema of the keys Apiary's own protocols write. Training progress and BTARD's ban lists are
// owner-signed entries only (no plain value can squat the key, no unsigned entry can speak for a
// peer), with bounded values that must decode (a progress report that does not parse is refused
// by every node, not only by its readers).
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "core/dht/validate.hpp"

namespace apiary::optim {

// A rule a swarm adds for keys of its own (a scenario's [dht.schema] table, `apiary peer
// --schema PATTERN=RULE`):
//   "*SUFFIX" = "owned[:MAX]"     keys ending in SUFFIX hold owner-signed entries only (subkey:
//                                 the owner's tag), values of at most MAX bytes (64 KiB)
//   "PREFIX*" = "TYPE[:MAX]"      values under keys starting with PREFIX are TYPE (int64 and
//                                 float64: 8 bytes; utf8: valid UTF-8; bytes), at most MAX bytes
//                                 when given (MAX: 1 to 1048576)
struct SchemaRule {
  std::string pattern, rule;
};
// Why a rule is malformed (nullopt if it is well formed).
std::optional<std::string> check_schema_rule(const SchemaRule& r);
// "PATTERN=RULE" as on the command line; throws std::invalid_argument naming what is wrong.
SchemaRule parse_schema_rule(const std::string& text);

// The signature validator and the schema of Apiary's own keys, plus `extra` rules (each well
// formed: throws std::invalid_argument otherwise).
std::vector<std::shared_ptr<dht::Validator>> standard_validators(const std::vector<SchemaRule>& extra = {});

}  // namespace apiary::optim
