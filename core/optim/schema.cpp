#include "core/optim/schema.hpp"

#include <cstdint>
#include <map>
#include <stdexcept>
#include <variant>

#include "core/optim/progress.hpp"

namespace apiary::optim {

namespace {

struct Parsed {
  bool owned = false;
  std::string key;  // the suffix (owned) or prefix
  dht::SchemaValidator::Type type = dht::SchemaValidator::Type::kBytes;
  std::optional<std::size_t> max_size;  // owned: 64 KiB unless given; typed: any unless given
};

std::variant<Parsed, std::string> parse(const SchemaRule& r) {
  Parsed p;
  const auto colon = r.rule.find(':');
  const std::string kind = r.rule.substr(0, colon);
  if (colon != std::string::npos) {
    const std::string n = r.rule.substr(colon + 1);
    unsigned long long v = 0;
    const bool digits = !n.empty() && n.size() <= 8 && n.find_first_not_of("0123456789") == std::string::npos;
    if (digits) v = std::stoull(n);
    if (!digits || v == 0 || v > (1u << 20))
      return "the size after ':' in '" + r.rule + "' must be a number of bytes from 1 to 1048576";
    p.max_size = static_cast<std::size_t>(v);
  }
  const bool suffix = !r.pattern.empty() && r.pattern.front() == '*';
  const bool prefix = !r.pattern.empty() && r.pattern.back() == '*';
  if (suffix == prefix || r.pattern.size() < 2)
    return "pattern '" + r.pattern + "' must be *SUFFIX (for owned) or PREFIX* (for a type), with a non-empty part";
  if (kind == "owned") {
    if (!suffix) return "'owned' takes a pattern *SUFFIX, not '" + r.pattern + "'";
    p.owned = true;
    p.key = r.pattern.substr(1);
    return p;
  }
  using T = dht::SchemaValidator::Type;
  static const std::map<std::string, T> types{{"int64", T::kInt64}, {"float64", T::kFloat64}, {"utf8", T::kUtf8}, {"bytes", T::kBytes}};
  auto t = types.find(kind);
  if (t == types.end()) return "rule '" + r.rule + "' must be owned, int64, float64, utf8 or bytes (optionally :MAXBYTES)";
  if (!prefix) return "'" + kind + "' takes a pattern PREFIX*, not '" + r.pattern + "'";
  p.type = t->second;
  p.key = r.pattern.substr(0, r.pattern.size() - 1);
  return p;
}

}  // namespace

std::optional<std::string> check_schema_rule(const SchemaRule& r) {
  auto p = parse(r);
  if (auto* why = std::get_if<std::string>(&p)) return *why;
  return std::nullopt;
}

SchemaRule parse_schema_rule(const std::string& text) {
  const auto eq = text.find('=');
  if (eq == std::string::npos) throw std::invalid_argument("schema rule '" + text + "': expected PATTERN=RULE");
  SchemaRule r{text.substr(0, eq), text.substr(eq + 1)};
  if (auto why = check_schema_rule(r)) throw std::invalid_argument("schema rule '" + text + "': " + *why);
  return r;
}

std::vector<std::shared_ptr<dht::Validator>> standard_validators(const std::vector<SchemaRule>& extra) {
  auto schema = std::make_shared<dht::SchemaValidator>();
  for (const auto& r : extra) {
    auto p = parse(r);
    if (auto* why = std::get_if<std::string>(&p)) throw std::invalid_argument("schema rule '" + r.pattern + "': " + *why);
    const Parsed& x = std::get<Parsed>(p);
    if (x.owned)
      schema->require_owned(x.key, x.max_size.value_or(64 * 1024));
    else
      schema->require(x.key, x.type, x.max_size.value_or(SIZE_MAX));
  }
  schema->require_owned(":progress", 64, [](std::span<const std::uint8_t> v) -> std::optional<std::string> {
    if (!PeerProgress::decode(v)) return "not a progress report";
    return std::nullopt;
  });
  schema->require_owned(":bans", 64 * 1024);
  return {std::make_shared<dht::SignatureValidator>(), std::move(schema)};
}

}  // namespace apiary::optim
