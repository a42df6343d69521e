#include "core/optim/schema.hpp"

#include "core/optim/progress.hpp"

namespace apiary::optim {

std::vector<std::shared_ptr<dht::Validator>> standard_validators() {
  auto schema = std::make_shared<dht::SchemaValidator>();
  schema->require_owned(":progress", 64, [](std::span<const std::uint8_t> v) -> std::optional<std::string> {
    if (!PeerProgress::decode(v)) return "not a progress report";
    return std::nullopt;
  });
  schema->require_owned(":bans", 64 * 1024);
  return {std::make_shared<dht::SignatureValidator>(), std::move(schema)};
}

}  // namespace apiary::optim
