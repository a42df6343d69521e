#include "harness/workload.hpp"

#include <map>
#include <stdexcept>

namespace apiary {

namespace {
// Function-local statics: registration runs during static initialisation of other files.
std::map<std::string, WorkloadType>& types() {
  static std::map<std::string, WorkloadType> t;
  return t;
}
std::map<std::string, ProcessLauncher>& launchers() {
  static std::map<std::string, ProcessLauncher> l;
  return l;
}
}  // namespace

void WorkloadRegistry::add(WorkloadType type) {
  if (type.name.empty() || !type.parse || !type.make) throw std::logic_error("a workload type needs a name, parse and make");
  const std::string name = type.name;
  if (!types().emplace(name, std::move(type)).second) throw std::logic_error("workload '" + name + "' is registered twice");
}

void WorkloadRegistry::add_launcher(const std::string& workload, ProcessLauncher launcher) {
  launchers()[workload] = std::move(launcher);
}

const WorkloadType* WorkloadRegistry::find(const std::string& name) {
  auto it = types().find(name);
  return it == types().end() ? nullptr : &it->second;
}

const ProcessLauncher* WorkloadRegistry::launcher(const std::string& name) {
  auto it = launchers().find(name);
  return it == launchers().end() ? nullptr : &it->second;
}

std::vector<std::string> WorkloadRegistry::names() {
  std::vector<std::string> out;
  for (const auto& [name, type] : types()) out.push_back(name);
  return out;
}

}  // namespace apiary
