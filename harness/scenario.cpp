#include "harness/scenario.hpp"

#include <algorithm>

#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <set>
#include <sstream>
#include <toml++/toml.h>

namespace apiary {

struct Scenario::Impl {
  std::string source;
  std::string text;
  std::vector<std::string> overrides;
  std::map<std::string, std::string> override_of;  // key -> "--set key=value"
  toml::table root;
  mutable std::set<std::string> used;

  toml::node* find(const std::string& key) {
    return root.at_path(key).node();
  }
  std::string where(const std::string& key, const toml::node* n) const {
    auto it = override_of.find(key);
    if (it != override_of.end()) return it->second;
    if (n && n->source().begin.line) return source + ":" + std::to_string(n->source().begin.line);
    return source;
  }
};

namespace {

std::string type_name(const toml::node& n) {
  switch (n.type()) {
    case toml::node_type::string: return "a string";
    case toml::node_type::integer: return "an integer";
    case toml::node_type::floating_point: return "a number";
    case toml::node_type::boolean: return "a boolean";
    case toml::node_type::table: return "a table";
    case toml::node_type::array: return "an array";
    default: return "a date/time";
  }
}

void apply_override(Scenario::Impl& impl, const std::string& ov) {
  const auto eq = ov.find('=');
  if (eq == std::string::npos || eq == 0)
    throw ScenarioError("--set " + ov + ": expected key=value");
  const std::string key = ov.substr(0, eq), value = ov.substr(eq + 1);
  // The value is read as a TOML value if it parses as one (42, 1.5, true, "x", [1,2]) and as a
  // bare string otherwise (50ms, sim).
  std::unique_ptr<toml::node> node;
  try {
    auto t = toml::parse("v = " + value);
    auto* v = t.get("v");
    if (v) {
      v->visit([&](auto& x) { node = std::make_unique<std::decay_t<decltype(x)>>(x); });
    }
  } catch (const toml::parse_error&) {
  }
  if (!node) node = std::make_unique<toml::value<std::string>>(value);

  toml::table* tbl = &impl.root;
  std::string part;
  std::istringstream parts(key);
  std::vector<std::string> path;
  while (std::getline(parts, part, '.')) {
    if (part.empty()) throw ScenarioError("--set " + ov + ": empty key component");
    path.push_back(part);
  }
  for (std::size_t i = 0; i + 1 < path.size(); ++i) {
    auto* next = tbl->get(path[i]);
    if (!next) {
      tbl->insert(path[i], toml::table{});
      next = tbl->get(path[i]);
    }
    if (!next->is_table())
      throw ScenarioError("--set " + ov + ": '" + path[i] + "' is not a table in the scenario");
    tbl = next->as_table();
  }
  node->visit([&](auto& x) { tbl->insert_or_assign(path.back(), std::move(x)); });
  impl.override_of[key] = "--set " + ov;
}

}  // namespace

Scenario::Scenario(std::unique_ptr<Impl> impl) : impl_(std::move(impl)) {}
Scenario::Scenario(Scenario&&) noexcept = default;
Scenario& Scenario::operator=(Scenario&&) noexcept = default;
Scenario::~Scenario() = default;

Scenario Scenario::from_file(const std::string& path, const std::vector<std::string>& overrides) {
  std::error_code ec;
  if (std::filesystem::is_directory(path, ec)) throw ScenarioError(path + ": is a directory, not a scenario file");
  std::ifstream in(path, std::ios::binary);
  if (!in) throw ScenarioError(path + ": cannot open scenario file");
  std::stringstream ss;
  ss << in.rdbuf();
  return from_string(ss.str(), path, overrides);
}

Scenario Scenario::from_string(const std::string& text, const std::string& source_name,
                               const std::vector<std::string>& overrides) {
  auto impl = std::make_unique<Impl>();
  impl->source = source_name;
  impl->text = text;
  impl->overrides = overrides;
  try {
    impl->root = toml::parse(text, source_name);
  } catch (const toml::parse_error& e) {
    throw ScenarioError(source_name + ":" + std::to_string(e.source().begin.line) + ":" +
                        std::to_string(e.source().begin.column) + ": " +
                        std::string(e.description()));
  }
  for (const auto& ov : overrides) apply_override(*impl, ov);
  return Scenario(std::move(impl));
}

const std::string& Scenario::source_name() const { return impl_->source; }
const std::vector<std::string>& Scenario::overrides() const { return impl_->overrides; }

std::string Scenario::text() const {
  std::string t = impl_->text;
  if (!impl_->overrides.empty()) {
    t += "\n# overrides from the command line:\n";
    for (const auto& o : impl_->overrides) t += "# --set " + o + "\n";
  }
  return t;
}

void Scenario::fail(const std::string& key, const std::string& message) const {
  throw ScenarioError(impl_->where(key, impl_->find(key)) + ": key '" + key + "': " + message);
}

bool Scenario::has(const std::string& key) const { return impl_->find(key) != nullptr; }

std::vector<std::string> Scenario::keys_in(const std::string& table) const {
  std::vector<std::string> out;
  const auto* n = impl_->find(table);
  if (n && n->is_table())
    for (const auto& [k, v] : *n->as_table()) out.push_back(table + "." + std::string(k.str()));
  return out;
}

std::int64_t Scenario::get_int(const std::string& key, std::int64_t def, std::int64_t min,
                               std::int64_t max) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  std::optional<std::int64_t> v = n->value_exact<std::int64_t>();
  if (!v) fail(key, "expected an integer, found " + type_name(*n));
  if (*v < min || *v > max)
    fail(key, std::to_string(*v) + " is outside [" + std::to_string(min) + ", " +
                  std::to_string(max) + "]");
  return *v;
}

double Scenario::get_double(const std::string& key, double def, double min, double max) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  std::optional<double> v = n->value<double>();
  if (!v || n->is_boolean() || n->is_string()) fail(key, "expected a number, found " + type_name(*n));
  if (*v < min || *v > max)
    fail(key, std::to_string(*v) + " is outside [" + std::to_string(min) + ", " +
                  std::to_string(max) + "]");
  return *v;
}

bool Scenario::get_bool(const std::string& key, bool def) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  if (!n->is_boolean()) fail(key, "expected true or false, found " + type_name(*n));
  return *n->value<bool>();
}

std::string Scenario::get_string(const std::string& key, const std::string& def,
                                 const std::vector<std::string>& allowed) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  if (!n->is_string()) fail(key, "expected a string, found " + type_name(*n));
  std::string v = *n->value<std::string>();
  if (!allowed.empty()) {
    bool ok = false;
    std::string list;
    for (const auto& a : allowed) {
      ok = ok || a == v;
      list += (list.empty() ? "" : ", ") + a;
    }
    if (!ok) fail(key, "'" + v + "' is not one of: " + list);
  }
  return v;
}

std::string Scenario::get_device(const std::string& key, const std::string& def) {
  const std::string v = get_string(key, def);
  bool ok = v == "cpu" || v == "cuda";
  if (!ok && v.rfind("cuda:", 0) == 0 && v.size() > 5 && v.size() <= 8)
    ok = std::all_of(v.begin() + 5, v.end(), [](char c) { return c >= '0' && c <= '9'; });
  if (!ok) fail(key, "'" + v + "' is not a device: cpu, cuda or cuda:N");
  return v;
}

std::vector<std::pair<std::string, std::string>> Scenario::get_string_table(
    const std::string& key, const std::function<std::optional<std::string>(const std::string&, const std::string&)>& check) {
  impl_->used.insert(key);
  std::vector<std::pair<std::string, std::string>> out;
  auto* n = impl_->find(key);
  if (!n) return out;
  if (!n->is_table()) fail(key, "expected a table of \"name\" = \"value\", found " + type_name(*n));
  for (const auto& [k, v] : *n->as_table()) {
    const std::string entry = key + "." + std::string(k.str());
    if (!v.is_string()) throw ScenarioError(impl_->where(entry, &v) + ": key '" + entry + "': expected a string, found " + type_name(v));
    std::string value = *v.value<std::string>();
    if (auto why = check(std::string(k.str()), value)) throw ScenarioError(impl_->where(entry, &v) + ": key '" + entry + "': " + *why);
    out.emplace_back(std::string(k.str()), std::move(value));
  }
  return out;
}

namespace {
template <class F>
auto unit_value(Scenario& s, const std::string& key, const toml::node* n, F parse) {
  if (!n->is_string())
    s.fail(key, "expected a quantity with a unit as a string (e.g. \"50ms\"), found " +
                    type_name(*n));
  std::string why;
  auto v = parse(*n->value<std::string>(), &why);
  if (!v) s.fail(key, why);
  return *v;
}
}  // namespace

Duration Scenario::get_duration(const std::string& key, Duration def) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  return unit_value(*this, key, n, [](std::string_view t, std::string* w) { return parse_duration(t, w); });
}

std::uint64_t Scenario::get_bytes(const std::string& key, std::uint64_t def) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  if (auto i = n->value_exact<std::int64_t>(); i && *i >= 0) return static_cast<std::uint64_t>(*i);
  return unit_value(*this, key, n, [](std::string_view t, std::string* w) { return parse_bytes(t, w); });
}

double Scenario::get_rate(const std::string& key, double def) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  return unit_value(*this, key, n, [](std::string_view t, std::string* w) { return parse_rate(t, w); });
}

Distribution Scenario::get_distribution(const std::string& key, Distribution def,
                                        const std::string& unit) {
  impl_->used.insert(key);
  auto* n = impl_->find(key);
  if (!n) return def;
  auto parse = [&](const std::string& k, const toml::node* node) -> double {
    if (unit == "duration")
      return static_cast<double>(
          unit_value(*this, k, node, [](std::string_view t, std::string* w) {
            return parse_duration(t, w);
          }).count());
    if (unit == "rate")
      return unit_value(*this, k, node, [](std::string_view t, std::string* w) { return parse_rate(t, w); });
    return unit_value(*this, k, node,
                      [](std::string_view t, std::string* w) { return parse_bitrate(t, w); });
  };
  if (!n->is_table()) return Distribution::fixed(parse(key, n));
  auto* t = n->as_table();
  std::set<std::string> known{"dist"};
  const std::string dist_key = key + ".dist";
  impl_->used.insert(dist_key);
  auto* d = t->get("dist");
  if (!d || !d->is_string()) fail(dist_key, "expected one of fixed, uniform, exponential, normal, lognormal");
  const std::string kind = *d->value<std::string>();
  auto need = [&](const char* name) {
    const std::string k = key + "." + name;
    impl_->used.insert(k);
    auto* v = t->get(name);
    if (!v) fail(key, "distribution '" + kind + "' needs '" + name + "'");
    return parse(k, v);
  };
  auto num = [&](const char* name) {
    const std::string k = key + "." + name;
    impl_->used.insert(k);
    auto* v = t->get(name);
    if (!v || !v->value<double>() || v->is_string()) fail(k, "expected a number");
    return *v->value<double>();
  };
  Distribution out;
  if (kind == "fixed") {
    out = Distribution::fixed(need("value"));
  } else if (kind == "uniform") {
    out = {Distribution::Kind::kUniform, need("min"), need("max")};
    if (out.b < out.a) fail(key, "uniform max is below min");
  } else if (kind == "exponential") {
    out = {Distribution::Kind::kExponential, need("mean"), 0};
  } else if (kind == "normal") {
    out = {Distribution::Kind::kNormal, need("mean"), need("stddev")};
  } else if (kind == "lognormal") {
    out = {Distribution::Kind::kLogNormal, need("median"), num("sigma")};
  } else {
    fail(dist_key, "'" + kind + "' is not one of fixed, uniform, exponential, normal, lognormal");
  }
  return out;
}

SweepSpec Scenario::get_sweep() {
  SweepSpec out;
  toml::node* sweep = impl_->find("sweep");
  if (!sweep) return out;
  if (!sweep->is_table()) fail("sweep", "must be a table with grid, zip and/or seeds");
  impl_->used.insert("sweep");
  auto scalar = [&](const std::string& key, const toml::node& v) -> std::string {
    if (auto x = v.as_string()) return x->get();
    if (auto x = v.as_integer()) return std::to_string(x->get());
    if (auto x = v.as_floating_point()) {
      std::ostringstream os;
      os.precision(17);
      os << x->get();
      return os.str();
    }
    if (auto x = v.as_boolean()) return x->get() ? "true" : "false";
    throw ScenarioError(impl_->where(key, &v) + ": key '" + key + "': sweep values must be strings, numbers or booleans, not " +
                        type_name(v));
  };
  auto axes = [&](const char* name, std::vector<SweepAxis>& into) {
    const std::string where_key = std::string("sweep.") + name;
    toml::node* n = impl_->find(where_key);
    if (!n) return;
    if (!n->is_table()) throw ScenarioError(impl_->where(where_key, n) + ": key '" + where_key + "': must be a table of key = [values]");
    for (const auto& [k, v] : *n->as_table()) {
      const std::string key = where_key + "." + std::string(k.str());
      // Dotted scenario keys are written quoted: grid = { "network.latency" = ["10ms", "50ms"] }.
      const auto* arr = v.as_array();
      if (!arr || arr->empty())
        throw ScenarioError(impl_->where(key, &v) + ": key '" + key + "': must be a non-empty array of values");
      SweepAxis axis{std::string(k.str()), {}};
      for (const auto& e : *arr) axis.values.push_back(scalar(key, e));
      into.push_back(std::move(axis));
    }
  };
  for (const auto& [k, v] : *sweep->as_table()) {
    const std::string key = "sweep." + std::string(k.str());
    if (k.str() != "grid" && k.str() != "zip" && k.str() != "seeds")
      throw ScenarioError(impl_->where(key, &v) + ": unknown key '" + key + "' (sweep has grid, zip and seeds)");
  }
  axes("grid", out.grid);
  axes("zip", out.zip);
  for (std::size_t i = 1; i < out.zip.size(); ++i)
    if (out.zip[i].values.size() != out.zip[0].values.size())
      fail("sweep.zip", "'" + out.zip[i].key + "' has " + std::to_string(out.zip[i].values.size()) + " values but '" +
                            out.zip[0].key + "' has " + std::to_string(out.zip[0].values.size()) + "; zipped axes advance together");
  if (toml::node* seeds = impl_->find("sweep.seeds")) {
    const auto* arr = seeds->as_array();
    if (!arr || arr->empty()) fail("sweep.seeds", "must be a non-empty array of integers");
    for (const auto& e : *arr) {
      const auto* i = e.as_integer();
      if (!i || i->get() < 0) fail("sweep.seeds", "seeds must be integers >= 0");
      out.seeds.push_back(static_cast<std::uint64_t>(i->get()));
    }
  }
  return out;
}

void Scenario::check_unused() const {
  std::vector<std::string> unknown;
  std::function<void(const toml::table&, const std::string&)> walk =
      [&](const toml::table& t, const std::string& prefix) {
        for (const auto& [k, v] : t) {
          const std::string key = prefix + std::string(k.str());
          if (impl_->used.count(key)) continue;
          if (v.is_table()) {
            walk(*v.as_table(), key + ".");
            continue;
          }
          unknown.push_back(impl_->where(key, &v) + ": unknown key '" + key + "'");
        }
      };
  walk(impl_->root, "");
  if (unknown.empty()) return;
  std::string msg;
  for (const auto& u : unknown) msg += (msg.empty() ? "" : "\n") + u;
  throw ScenarioError(msg);
}

}  // namespace apiary
