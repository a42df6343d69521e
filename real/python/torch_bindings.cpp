// The LibTorch parts of `apiary._apiary`: torch tensors in and out without copies on the Python
// side (Debian's python3-torch shares the project's libtorch). Tensors may live on any device:
// their values are copied to the host only here, at the wire, and the results copied back into
// them on their own device.
#include <torch/extension.h>
#include <pybind11/stl.h>

#include <cmath>

#include "core/averaging/allreduce.hpp"
#include "core/averaging/matchmaking.hpp"
#include "core/compression/codecs.hpp"
#include "core/optim/collaborative.hpp"
#include "core/optim/diloco.hpp"
#include "real/live_runtime.hpp"
#include "real/python/node.hpp"
#include "real/torch/collaborative.hpp"

namespace apiary::python {

namespace {

// The tensors must be defined, floating point, of the shapes the object was made with.
void check_tensors(const std::vector<at::Tensor>& ts, const averaging::TensorSchema* schema, const std::string& what) {
  if (schema && ts.size() != schema->shapes.size())
    throw py::value_error(what + ": " + std::to_string(ts.size()) + " tensors given, " + std::to_string(schema->shapes.size()) +
                          " expected");
  for (std::size_t i = 0; i < ts.size(); ++i) {
    const auto& t = ts[i];
    if (!t.defined()) throw py::value_error(what + ": tensor " + std::to_string(i) + " is undefined");
    if (!at::isFloatingType(t.scalar_type()))
      throw py::type_error(what + ": tensor " + std::to_string(i) + " has dtype " + std::string(c10::toString(t.scalar_type())) +
                           "; a floating-point dtype is needed");
    if (schema && t.sizes().vec() != schema->shapes[i]) {
      averaging::TensorSchema got;
      got.shapes.push_back(t.sizes().vec());
      averaging::TensorSchema want;
      want.shapes.push_back(schema->shapes[i]);
      throw py::value_error(what + ": tensor " + std::to_string(i) + " has shape " + got.describe() + ", expected " +
                            want.describe());
    }
  }
}

averaging::TensorSchema schema_of(const std::vector<at::Tensor>& ts) {
  averaging::TensorSchema s;
  for (const auto& t : ts) s.shapes.push_back(t.sizes().vec());
  return s;
}

// New float32 CPU tensors of `schema`'s shapes holding `flat`.
std::vector<at::Tensor> tensors_of(std::span<const float> flat, const averaging::TensorSchema& schema) {
  std::vector<at::Tensor> out;
  std::size_t at = 0;
  for (const auto& shape : schema.shapes) {
    auto t = torch::empty(shape, at::kFloat);
    std::copy_n(flat.data() + at, t.numel(), t.data_ptr<float>());
    at += static_cast<std::size_t>(t.numel());
    out.push_back(t);
  }
  return out;
}

averaging::MemberKind role_named(const std::string& name) {
  if (name == "full") return averaging::MemberKind::kFull;
  if (name == "client") return averaging::MemberKind::kClient;
  if (name == "aux") return averaging::MemberKind::kAux;
  throw py::value_error("mode '" + name + "' is not one of full, client, aux");
}

struct AveragingOptions {
  std::string prefix = "avg";
  std::size_t target_group_size = 16;
  std::size_t min_group_size = 2;
  double matchmaking_time = 5.0;
  double allreduce_timeout = 30.0;
  std::string compression = "float32";
  std::uint64_t compression_min_elements = 0;
  std::string mode = "full";
  double bandwidth = 1.0;
};

averaging::MatchmakingConfig matchmaking_of(const AveragingOptions& o) {
  if (o.min_group_size < 1 || o.target_group_size < o.min_group_size)
    throw py::value_error("group sizes: need 1 <= min_group_size <= target_group_size");
  averaging::MatchmakingConfig m;
  m.prefix = o.prefix;
  m.target_group_size = o.target_group_size;
  m.min_group_size = o.min_group_size;
  m.budget = seconds(o.matchmaking_time, "matchmaking_time");
  m.poll = std::min<Duration>(std::chrono::milliseconds(200), m.budget / 4);
  return m;
}

averaging::AllReduceConfig allreduce_of(const AveragingOptions& o) {
  averaging::AllReduceConfig a;
  a.codec.codec = codec_named(o.compression);
  a.codec.min_elements = o.compression_min_elements;
  a.sender_timeout = std::min(seconds(o.allreduce_timeout, "allreduce_timeout"), a.sender_timeout);
  a.reducer_timeout = seconds(o.allreduce_timeout, "allreduce_timeout");
  a.min_part = 1;
  return a;
}

py::dict report_of(const averaging::AllReduceReport& r, std::size_t group) {
  py::dict d;
  d["group_id"] = r.group;
  d["group_size"] = group;
  d["bytes_sent"] = r.bytes_sent;
  d["bytes_received"] = r.bytes_received;
  d["pieces_averaged"] = r.pieces_averaged;
  d["pieces_kept"] = r.pieces_kept;
  d["failed_reducers"] = r.failed_reducers.size();
  d["seconds"] = static_cast<double>(r.elapsed.count()) / 1e9;
  return d;
}

// ---- Averager ----------------------------------------------------------------------------------

struct AveragerCore final : Dependent {
  std::unique_ptr<averaging::Matchmaker> matchmaker;
  std::unique_ptr<averaging::Averager> averager;
  void close() override {
    matchmaker.reset();
    averager.reset();
  }
};

struct GroupRound {
  averaging::Group group;
  averaging::AllReduceReport report;
};

Task<Result<GroupRound>> average_once(averaging::Matchmaker* mm, averaging::Averager* av, std::string key,
                                      averaging::TensorSchema schema, averaging::Member me, std::vector<float> local,
                                      double weight) {
  Result<averaging::Group> g = co_await mm->find_group(std::move(key), std::move(schema), me);
  if (!g.ok()) co_return g.error();
  averaging::Group group = *g;
  Result<averaging::AllReduceReport> r = co_await av->all_reduce(std::move(*g), std::move(local), weight);
  if (!r.ok()) co_return r.error();
  co_return GroupRound{std::move(group), std::move(*r)};
}

class TorchAverager {
 public:
  TorchAverager(std::shared_ptr<Node> node, std::vector<at::Tensor> tensors, AveragingOptions o)
      : node_(std::move(node)), tensors_(std::move(tensors)), o_(std::move(o)), core_(std::make_shared<AveragerCore>()) {
    if (tensors_.empty()) throw py::value_error("Averager: no tensors to average");
    check_tensors(tensors_, nullptr, "Averager");
    schema_ = schema_of(tensors_);
    role_ = role_named(o_.mode);
    auto mm = matchmaking_of(o_);
    auto ar = allreduce_of(o_);
    node_->with_loop([&] {
      auto& s = node_->stack();
      node_->claim("averaging");
      core_->matchmaker = std::make_unique<averaging::Matchmaker>(*s.runtime, *s.rpc, *s.node, mm);
      core_->matchmaker->set_identity(node_->identity());
      core_->averager = std::make_unique<averaging::Averager>(*s.runtime, *s.rpc, ar);
      node_->attach(core_);
    }, "Averager");
  }

  py::object step(double weight, std::optional<std::string> key, double timeout) {
    if (!std::isfinite(weight) || weight <= 0) throw py::value_error("weight must be a positive number");
    check_tensors(tensors_, &schema_, "Averager.step");
    const std::string k = key ? *key : "round" + std::to_string(rounds_);
    ++rounds_;
    std::vector<float> local = role_ == averaging::MemberKind::kAux ? std::vector<float>{} : real::flat(tensors_);
    Result<GroupRound> r = node_->await(
        [&] {
          if (core_->matchmaker == nullptr) throw ClosedFailure("Averager.step: the DHT is shut down");
          return average_once(core_->matchmaker.get(), core_->averager.get(), k, schema_,
                              averaging::Member{node_->stack().rt->local(), role_, o_.bandwidth}, std::move(local), weight);
        },
        timeout, "Averager.step");
    if (!r.ok()) {
      if (r.error().code == ErrorCode::kTimeout)
        throw TimeoutFailure("Averager.step: " + r.error().message);
      throw std::runtime_error("Averager.step: " + r.error().describe());
    }
    if (!r->report.averaged.empty()) real::unflatten_into(r->report.averaged, tensors_);
    py::dict d = report_of(r->report, r->group.members.size());
    d["key"] = k;
    return d;
  }
  const std::vector<at::Tensor>& tensors() const { return tensors_; }

 private:
  std::shared_ptr<Node> node_;
  std::vector<at::Tensor> tensors_;
  AveragingOptions o_;
  std::shared_ptr<AveragerCore> core_;
  averaging::TensorSchema schema_;
  averaging::MemberKind role_ = averaging::MemberKind::kFull;
  std::uint64_t rounds_ = 0;
};

// ---- Collaborative optimizer -------------------------------------------------------------------

struct CollaborativeOptions {
  std::string prefix = "run";
  std::uint64_t target_batch_size = 4096;
  AveragingOptions averaging;
  std::uint32_t average_state_every = 0;
  bool local_updates = false;
  double max_wait = 60.0;
  double state_timeout = 30.0;
  double progress_ttl = 60.0;
  std::uint32_t powersgd_rank = 0;
};

struct CollaborativeCore final : Dependent {
  std::unique_ptr<optim::CollaborativeOptimizer> opt;
  averaging::TensorSchema state_schema;
  std::vector<float> state;                       // the optimizer state served to others
  std::optional<std::vector<float>> downloaded;   // a state taken from a peer, for Python to load
  optim::SwarmProgress progress;
  void close() override { opt.reset(); }
};

class TorchCollaborative {
 public:
  TorchCollaborative(std::shared_ptr<Node> node, std::vector<at::Tensor> params, std::vector<at::Tensor> state,
                     CollaborativeOptions o)
      : node_(std::move(node)), params_(std::move(params)), core_(std::make_shared<CollaborativeCore>()) {
    if (params_.empty()) throw py::value_error("CollaborativeOptimizer: the optimizer has no parameters");
    check_tensors(params_, nullptr, "CollaborativeOptimizer parameters");
    check_tensors(state, nullptr, "CollaborativeOptimizer optimizer state");
    if (o.target_batch_size == 0) throw py::value_error("target_batch_size must be positive");
    schema_ = schema_of(params_);
    core_->state_schema = schema_of(state);
    core_->state = real::flat(state);
    optim::CollaborativeConfig c;
    c.progress.prefix = o.prefix;
    c.progress.target_batch = o.target_batch_size;
    c.progress.ttl = seconds(o.progress_ttl, "progress_ttl");
    c.matchmaking = matchmaking_of(o.averaging);
    c.matchmaking.prefix = o.prefix;
    c.allreduce = allreduce_of(o.averaging);
    c.role = role_named(o.averaging.mode);
    c.bandwidth = o.averaging.bandwidth;
    c.apply_sgd = false;
    c.momentum = 0;
    c.local_updates = o.local_updates;
    c.average_state_every = o.average_state_every;
    c.powersgd_rank = o.powersgd_rank;
    c.max_wait = seconds(o.max_wait, "max_wait");
    c.state_timeout = seconds(o.state_timeout, "state_timeout");
    c.poll = std::chrono::milliseconds(50);
    local_updates_ = o.local_updates;
    node_->with_loop([&] {
      auto& s = node_->stack();
      node_->claim("averaging");
      core_->opt = std::make_unique<optim::CollaborativeOptimizer>(*s.runtime, *s.rpc, *s.node, node_->identity(), schema_,
                                                                   real::flat(params_), c);
      CollaborativeCore* core = core_.get();
      core_->opt->set_optimizer_state(core_->state_schema, [core] { return core->state; },
                                      [core](std::vector<float> v) { core->downloaded = std::move(v); });
      node_->attach(core_);
    }, "CollaborativeOptimizer");
  }

  // Adds the gradients of `samples` samples (the .grad of the parameters: a mean over them).
  void accumulate(std::uint64_t samples) {
    if (samples == 0) throw py::value_error("batch_size must be positive");
    check_tensors(params_, &schema_, "CollaborativeOptimizer.step");
    std::vector<float> g;
    if (!local_updates_) {
      std::vector<at::Tensor> grads;
      for (const auto& p : params_) grads.push_back(p.grad().defined() ? p.grad() : torch::zeros_like(p));
      g = real::flat(grads);
      for (auto& x : g) x *= static_cast<float>(samples);  // summed: the step averages over the global batch
    }
    std::vector<float> now;
    if (local_updates_) now = real::flat(params_);  // the caller stepped its optimizer: keep the copy current
    node_->with_loop([&] {
      if (local_updates_) live().opt->parameters() = std::move(now);
      live().opt->accumulate(g, samples);
    }, "CollaborativeOptimizer.step");
  }

  py::dict report_progress(double timeout) {
    core_->progress = node_->await([&] { return live().opt->report_progress(); }, timeout, "reporting progress");
    const auto& p = core_->progress;
    py::dict d;
    d["epoch"] = p.epoch;
    d["samples"] = p.samples;
    d["samples_per_second"] = p.samples_per_second;
    d["peers"] = p.peers;
    d["ready"] = p.ready;
    d["estimated_samples"] = node_->with_loop([&] { return live().opt->estimated_samples(p); });
    return d;
  }
  bool step_due(bool early) {
    return node_->with_loop([&] { return live().opt->step_due(core_->progress, early); }, "step_due");
  }

  // One global step. Returns what Python applies: the mean gradient (as tensors of the
  // parameters' shapes) unless local updates; whether the parameters were replaced (state
  // averaged, caught up with the swarm, resynced) and must be loaded from parameters().
  py::dict step(double timeout) {
    Result<optim::StepReport> r = node_->await([&] { return live().opt->step(); }, timeout, "the global step");
    py::dict d;
    if (!r.ok()) {
      if (r.error().code == ErrorCode::kCancelled) {  // behind the swarm: its state was downloaded
        d["caught_up"] = true;
        d["epoch"] = epoch();
        return d;
      }
      if (r.error().code == ErrorCode::kTimeout) throw TimeoutFailure("the global step: " + r.error().message);
      throw std::runtime_error("the global step: " + r.error().describe());
    }
    d["caught_up"] = false;
    d["epoch"] = epoch();
    d["group_size"] = r->group;
    d["swarm_samples"] = r->swarm_samples;
    d["samples"] = r->samples;
    d["state_averaged"] = r->state_averaged;
    d["resynced"] = r->resynced;
    d["bytes_sent"] = r->bytes_sent;
    d["waited"] = static_cast<double>(r->waited.count()) / 1e9;
    d["averaging"] = static_cast<double>(r->averaging.count()) / 1e9;
    if (!r->mean_gradient.empty()) d["mean_gradient"] = tensors_of(r->mean_gradient, schema_);
    return d;
  }

  // The epoch taken from a peer, or (None, why) when no peer had a state to give.
  py::tuple join(double timeout) {
    Result<std::uint64_t> r = node_->await([&] { return live().opt->join(); }, timeout, "the state download");
    if (!r.ok()) return py::make_tuple(py::none(), r.error().describe());
    return py::make_tuple(*r, "");
  }

  std::vector<at::Tensor> parameters() {
    auto flat = node_->with_loop([&] { return live().opt->parameters(); }, "parameters");
    return tensors_of(flat, schema_);
  }
  // After Python's optimizer stepped: what newcomers download (parameters, optimizer state).
  void publish(const std::vector<at::Tensor>& state) {
    check_tensors(params_, &schema_, "CollaborativeOptimizer parameters");
    check_tensors(state, &core_->state_schema, "CollaborativeOptimizer optimizer state");
    auto p = real::flat(params_);
    auto s = real::flat(state);
    node_->with_loop([&] {
      live().opt->parameters() = std::move(p);
      core_->state = std::move(s);
    }, "publish");
  }
  // A state downloaded from a peer since the last call (None if none).
  py::object take_downloaded_state() {
    auto s = node_->with_loop([&] { return std::exchange(core_->downloaded, std::nullopt); }, "state");
    if (!s) return py::none();
    return py::cast(tensors_of(*s, core_->state_schema));
  }
  std::uint64_t epoch() {
    return node_->with_loop([&] { return live().opt->epoch(); }, "epoch");
  }
  std::uint64_t local_samples() {
    return node_->with_loop([&] { return live().opt->local_samples(); }, "local_samples");
  }

 private:
  CollaborativeCore& live() {
    if (!core_->opt) throw ClosedFailure("CollaborativeOptimizer: the DHT is shut down");
    return *core_;
  }
  std::shared_ptr<Node> node_;
  std::vector<at::Tensor> params_;
  averaging::TensorSchema schema_;
  std::shared_ptr<CollaborativeCore> core_;
  bool local_updates_ = false;
};

// ---- DiLoCo ------------------------------------------------------------------------------------

struct DilocoOptions {
  std::string prefix = "run";
  std::size_t inner_steps = 500;
  double outer_lr = 0.7;
  double outer_momentum = 0.9;
  bool nesterov = true;
  AveragingOptions averaging;
};

struct DilocoCore final : Dependent {
  std::unique_ptr<optim::DilocoOptimizer> opt;
  void close() override { opt.reset(); }
};

class TorchDilocoPy {
 public:
  TorchDilocoPy(std::shared_ptr<Node> node, std::vector<at::Tensor> params, DilocoOptions o)
      : node_(std::move(node)), params_(std::move(params)), core_(std::make_shared<DilocoCore>()) {
    if (params_.empty()) throw py::value_error("DiLoCo: the optimizer has no parameters");
    check_tensors(params_, nullptr, "DiLoCo parameters");
    if (o.inner_steps == 0) throw py::value_error("inner_steps must be positive");
    if (!std::isfinite(o.outer_lr) || o.outer_lr <= 0) throw py::value_error("outer_lr must be positive");
    if (!std::isfinite(o.outer_momentum) || o.outer_momentum < 0 || o.outer_momentum >= 1)
      throw py::value_error("outer_momentum must be in [0, 1)");
    schema_ = schema_of(params_);
    optim::DilocoConfig c;
    c.identity = node_->identity();
    c.prefix = o.prefix;
    c.inner_steps = o.inner_steps;
    c.outer_lr = o.outer_lr;
    c.outer_momentum = o.outer_momentum;
    c.nesterov = o.nesterov;
    c.matchmaking = matchmaking_of(o.averaging);
    c.matchmaking.prefix = o.prefix;
    c.allreduce = allreduce_of(o.averaging);
    c.role = role_named(o.averaging.mode);
    c.bandwidth = o.averaging.bandwidth;
    node_->with_loop([&] {
      auto& s = node_->stack();
      node_->claim("averaging");
      core_->opt = std::make_unique<optim::DilocoOptimizer>(*s.runtime, *s.rpc, *s.node, schema_, real::flat(params_), c);
      node_->attach(core_);
    }, "DiLoCo");
  }
  bool inner_step_done(std::uint64_t samples) {
    return node_->with_loop([&] { return live().opt->inner_step_done(samples); }, "DiLoCo.step");
  }
  // The outer step from where the inner steps got to; the parameters then hold the swarm's.
  py::dict outer_step(double timeout) {
    check_tensors(params_, &schema_, "DiLoCo parameters");
    auto now = real::flat(params_);
    Result<optim::OuterReport> r = node_->await(
        [&] {
          live().opt->parameters() = std::move(now);
          return live().opt->outer_step();
        },
        timeout, "the outer step");
    if (!r.ok()) {
      if (r.error().code == ErrorCode::kTimeout) throw TimeoutFailure("the outer step: " + r.error().message);
      throw std::runtime_error("the outer step: " + r.error().describe());
    }
    auto params = node_->with_loop([&] { return live().opt->parameters(); });
    real::unflatten_into(params, params_);
    py::dict d;
    d["round"] = r->round;
    d["group_size"] = r->group;
    d["bytes_sent"] = r->bytes_sent;
    d["samples"] = r->samples;
    return d;
  }
  std::uint64_t round() {
    return node_->with_loop([&] { return live().opt->round(); });
  }

 private:
  DilocoCore& live() {
    if (!core_->opt) throw ClosedFailure("DiLoCo: the DHT is shut down");
    return *core_;
  }
  std::shared_ptr<Node> node_;
  std::vector<at::Tensor> params_;
  averaging::TensorSchema schema_;
  std::shared_ptr<DilocoCore> core_;
};

}  // namespace

void bind_torch(py::module_& m) {
  py::class_<AveragingOptions>(m, "AveragingOptions")
      .def(py::init<>())
      .def_readwrite("prefix", &AveragingOptions::prefix)
      .def_readwrite("target_group_size", &AveragingOptions::target_group_size)
      .def_readwrite("min_group_size", &AveragingOptions::min_group_size)
      .def_readwrite("matchmaking_time", &AveragingOptions::matchmaking_time)
      .def_readwrite("allreduce_timeout", &AveragingOptions::allreduce_timeout)
      .def_readwrite("compression", &AveragingOptions::compression)
      .def_readwrite("compression_min_elements", &AveragingOptions::compression_min_elements)
      .def_readwrite("mode", &AveragingOptions::mode)
      .def_readwrite("bandwidth", &AveragingOptions::bandwidth);
  py::class_<TorchAverager, std::shared_ptr<TorchAverager>>(m, "Averager")
      .def(py::init<std::shared_ptr<Node>, std::vector<at::Tensor>, AveragingOptions>())
      .def("step", &TorchAverager::step, py::arg("weight") = 1.0, py::arg("key") = py::none(), py::arg("timeout") = 0.0)
      .def_property_readonly("tensors", &TorchAverager::tensors);

  py::class_<CollaborativeOptions>(m, "CollaborativeOptions")
      .def(py::init<>())
      .def_readwrite("prefix", &CollaborativeOptions::prefix)
      .def_readwrite("target_batch_size", &CollaborativeOptions::target_batch_size)
      .def_readwrite("averaging", &CollaborativeOptions::averaging)
      .def_readwrite("average_state_every", &CollaborativeOptions::average_state_every)
      .def_readwrite("local_updates", &CollaborativeOptions::local_updates)
      .def_readwrite("max_wait", &CollaborativeOptions::max_wait)
      .def_readwrite("state_timeout", &CollaborativeOptions::state_timeout)
      .def_readwrite("progress_ttl", &CollaborativeOptions::progress_ttl)
      .def_readwrite("powersgd_rank", &CollaborativeOptions::powersgd_rank);
  py::class_<TorchCollaborative, std::shared_ptr<TorchCollaborative>>(m, "Collaborative")
      .def(py::init<std::shared_ptr<Node>, std::vector<at::Tensor>, std::vector<at::Tensor>, CollaborativeOptions>())
      .def("accumulate", &TorchCollaborative::accumulate)
      .def("report_progress", &TorchCollaborative::report_progress, py::arg("timeout") = 0.0)
      .def("step_due", &TorchCollaborative::step_due, py::arg("early") = false)
      .def("step", &TorchCollaborative::step, py::arg("timeout") = 0.0)
      .def("join", &TorchCollaborative::join, py::arg("timeout") = 0.0)
      .def("parameters", &TorchCollaborative::parameters)
      .def("publish", &TorchCollaborative::publish)
      .def("take_downloaded_state", &TorchCollaborative::take_downloaded_state)
      .def_property_readonly("epoch", &TorchCollaborative::epoch)
      .def_property_readonly("local_samples", &TorchCollaborative::local_samples);

  py::class_<DilocoOptions>(m, "DilocoOptions")
      .def(py::init<>())
      .def_readwrite("prefix", &DilocoOptions::prefix)
      .def_readwrite("inner_steps", &DilocoOptions::inner_steps)
      .def_readwrite("outer_lr", &DilocoOptions::outer_lr)
      .def_readwrite("outer_momentum", &DilocoOptions::outer_momentum)
      .def_readwrite("nesterov", &DilocoOptions::nesterov)
      .def_readwrite("averaging", &DilocoOptions::averaging);
  py::class_<TorchDilocoPy, std::shared_ptr<TorchDilocoPy>>(m, "Diloco")
      .def(py::init<std::shared_ptr<Node>, std::vector<at::Tensor>, DilocoOptions>())
      .def("inner_step_done", &TorchDilocoPy::inner_step_done)
      .def("outer_step", &TorchDilocoPy::outer_step, py::arg("timeout") = 0.0)
      .def_property_readonly("round", &TorchDilocoPy::round);
}

}  // namespace apiary::python
