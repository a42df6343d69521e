#pragma once
// Scenario files (TOML) with validation that names the file, line and key of every error.
// Accessors read a key (dotted path, "network.latency"), check its type and range, and mark it
// used; check_unused() then rejects keys nobody read, so a typo is an error, not a silent
// default. Overrides from the command line (`--set key=value`) replace or add keys; errors in
// them name the override instead of a file line.
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <stdexcept>
#include <string>
#include <vector>

#include "harness/units.hpp"

namespace apiary {

class ScenarioError : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

// A sweep declared in a scenario's [sweep] table: `grid` axes combine as a cartesian product,
// `zip` axes advance together (equal lengths), every point runs once per seed. Values are kept
// as `--set` strings.
struct SweepAxis {
  std::string key;
  std::vector<std::string> values;
};
struct SweepSpec {
  std::vector<SweepAxis> grid;
  std::vector<SweepAxis> zip;
  std::vector<std::uint64_t> seeds;  // empty: the scenario's seed
  bool present() const { return !grid.empty() || !zip.empty() || !seeds.empty(); }
};

class Scenario {
 public:
  // Throws ScenarioError (also for a file that cannot be read or parsed).
  static Scenario from_file(const std::string& path, const std::vector<std::string>& overrides = {});
  static Scenario from_string(const std::string& text, const std::string& source_name,
                              const std::vector<std::string>& overrides = {});
  Scenario(Scenario&&) noexcept;
  Scenario& operator=(Scenario&&) noexcept;
  ~Scenario();

  bool has(const std::string& key) const;
  // The keys present in table `table` (its own entries, as "table.name"), in the file's order.
  std::vector<std::string> keys_in(const std::string& table) const;
  std::int64_t get_int(const std::string& key, std::int64_t def, std::int64_t min, std::int64_t max);
  double get_double(const std::string& key, double def, double min, double max);
  bool get_bool(const std::string& key, bool def);
  std::string get_string(const std::string& key, const std::string& def,
                         const std::vector<std::string>& allowed = {});
  // A LibTorch device name: "cpu", "cuda" or "cuda:N" (whether the machine has it is checked where
  // the device is used, in the live trainer processes).
  std::string get_device(const std::string& key, const std::string& def);
  Duration get_duration(const std::string& key, Duration def);
  std::uint64_t get_bytes(const std::string& key, std::uint64_t def);
  double get_rate(const std::string& key, double def);  // per second
  // A fixed quantity ("20ms") or a table {dist = "uniform", min = "10ms", max = "50ms"}.
  // `unit` is "duration" (value in ns), "bitrate" (value in bit/s) or "rate" (per second).
  Distribution get_distribution(const std::string& key, Distribution def, const std::string& unit);

  // A table of strings, `"name" = "value"` per entry (absent: empty), each entry passed to `check`,
  // whose message (if any) fails the scenario at that entry's line.
  std::vector<std::pair<std::string, std::string>> get_string_table(
      const std::string& key, const std::function<std::optional<std::string>(const std::string&, const std::string&)>& check);

  // Reads and validates [sweep] (grid, zip, seeds) and marks it used.
  SweepSpec get_sweep();

  // Throws ScenarioError naming every key present in the file but never read.
  void check_unused() const;

  const std::string& source_name() const;
  // The text as read plus the overrides applied, for the results file.
  std::string text() const;
  const std::vector<std::string>& overrides() const;

  // "file:line: key 'k': message" (or "--set k=v: message").
  [[noreturn]] void fail(const std::string& key, const std::string& message) const;

  struct Impl;  // public so the parser's helpers can reach it; defined in scenario.cpp

 private:
  explicit Scenario(std::unique_ptr<Impl> impl);
  std::unique_ptr<Impl> impl_;
};

}  // namespace apiary
