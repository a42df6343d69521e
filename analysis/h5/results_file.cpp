#include "analysis/h5/results_file.hpp"

#include <H5Cpp.h>

#include <cstdio>
#include <filesystem>

#include "apiary/version.hpp"

namespace apiary::results {

namespace {

void attr_string(H5::H5Object& obj, const std::string& name, const std::string& value) {
  H5::StrType type(H5::PredType::C_S1, value.empty() ? 1 : value.size());
  type.setCset(H5T_CSET_UTF8);
  H5::Attribute a = obj.createAttribute(name, type, H5::DataSpace(H5S_SCALAR));
  a.write(type, value.empty() ? std::string(" ").c_str() : value.c_str());
}
void attr_double(H5::H5Object& obj, const std::string& name, double v) {
  H5::Attribute a = obj.createAttribute(name, H5::PredType::NATIVE_DOUBLE, H5::DataSpace(H5S_SCALAR));
  a.write(H5::PredType::NATIVE_DOUBLE, &v);
}
void attr_int(H5::H5Object& obj, const std::string& name, std::int64_t v) {
  H5::Attribute a = obj.createAttribute(name, H5::PredType::NATIVE_INT64, H5::DataSpace(H5S_SCALAR));
  a.write(H5::PredType::NATIVE_INT64, &v);
}

}  // namespace

void write_h5(const std::string& path, const SwarmSpec& spec, const Metrics& metrics,
              const RunInfo& info) {
  H5::Exception::dontPrint();
  const auto parent = std::filesystem::path(path).parent_path();
  if (!parent.empty()) std::filesystem::create_directories(parent);
  try {
    H5::H5File f(path, H5F_ACC_TRUNC);
    H5::Group root = f.openGroup("/");
    attr_string(root, "scenario", spec.scenario_text);
    attr_string(root, "scenario_source", spec.scenario_source);
    attr_string(root, "name", spec.name);
    attr_int(root, "seed", static_cast<std::int64_t>(spec.seed));
    attr_int(root, "peers", spec.peers);
    attr_string(root, "backend", info.backend);
    attr_string(root, "version", kVersion);
    attr_double(root, "wall_seconds", info.wall_seconds);
    attr_double(root, "run_seconds", info.run_seconds);
    char hash[32];
    std::snprintf(hash, sizeof hash, "%016llx", static_cast<unsigned long long>(metrics.trace_hash()));
    attr_string(root, "trace_hash", hash);
    attr_int(root, "trace_events", static_cast<std::int64_t>(metrics.trace_events()));
    attr_string(root, "created_by", std::string("apiary ") + kVersion);

    H5::Group counters = f.createGroup("/counters");
    for (const auto& [name, v] : metrics.counters()) {
      H5::DataSet d = counters.createDataSet(name, H5::PredType::NATIVE_INT64, H5::DataSpace(H5S_SCALAR));
      d.write(&v, H5::PredType::NATIVE_INT64);
    }
    H5::Group series = f.createGroup("/series");
    for (const auto& [name, v] : metrics.series()) {
      hsize_t n = v.size();
      H5::DataSpace space(1, &n);
      H5::DSetCreatPropList props;
      if (n >= 4096) {
        hsize_t chunk = 4096;
        props.setChunk(1, &chunk);
        props.setDeflate(4);
      }
      H5::DataSet d = series.createDataSet(name, H5::PredType::NATIVE_DOUBLE, space, props);
      if (n) d.write(v.data(), H5::PredType::NATIVE_DOUBLE);
    }
    H5::Group cost = f.createGroup("/cost");
    for (const auto& [name, v] : info.figures) {
      H5::DataSet d = cost.createDataSet(name, H5::PredType::NATIVE_DOUBLE, H5::DataSpace(H5S_SCALAR));
      d.write(&v, H5::PredType::NATIVE_DOUBLE);
    }
  } catch (const H5::Exception& e) {
    throw std::runtime_error(path + ": cannot write HDF5 results: " + e.getDetailMsg());
  }
}

std::map<std::string, std::vector<double>> read_h5_metrics(const std::string& path) {
  H5::Exception::dontPrint();
  std::map<std::string, std::vector<double>> out;
  try {
    H5::H5File f(path, H5F_ACC_RDONLY);
    for (const char* group : {"counters", "series"}) {
      H5::Group g = f.openGroup(group);
      for (hsize_t i = 0; i < g.getNumObjs(); ++i) {
        const std::string name = g.getObjnameByIdx(i);
        H5::DataSet d = g.openDataSet(name);
        const auto n = static_cast<std::size_t>(d.getSpace().getSimpleExtentNpoints());
        std::vector<double> v(n);
        if (n) d.read(v.data(), H5::PredType::NATIVE_DOUBLE);
        out[std::string(group) + "/" + name] = std::move(v);
      }
    }
  } catch (const H5::Exception& e) {
    throw std::runtime_error(path + ": cannot read HDF5 results: " + e.getDetailMsg());
  }
  return out;
}

std::string read_h5_string_attribute(const std::string& path, const std::string& name) {
  H5::Exception::dontPrint();
  H5::H5File f(path, H5F_ACC_RDONLY);
  H5::Attribute a = f.openGroup("/").openAttribute(name);
  std::string v;
  a.read(a.getStrType(), v);
  return v;
}

}  // namespace apiary::results
