// Decentralized Mixture-of-Experts for Python: an expert server hosting torch modules (built-in
// ones or the caller's Python modules) declared in the DHT, and the client side's routing and
// expert calls (real/torch/mixture.hpp), driven on the node's loop from the calling thread.
#include <torch/extension.h>
#include <pybind11/functional.h>
#include <pybind11/stl.h>

#include <cmath>

#include "core/moe/experts.hpp"
#include "real/live_runtime.hpp"
#include "real/python/node.hpp"
#include "real/torch/expert_server.hpp"
#include "real/torch/experts.hpp"
#include "real/torch/mixture.hpp"

namespace apiary::python {

namespace {

torch::Device device_of(const std::string& name) {
  try {
    return real::device_named(name);
  } catch (const std::invalid_argument& e) {
    throw py::value_error(e.what());
  }
}

// A Python object that may be dropped without the GIL (its last reference goes with it).
struct PyRef {
  py::object o;
  explicit PyRef(py::object obj) : o(std::move(obj)) {}
  ~PyRef() {
    py::gil_scoped_acquire gil;
    o = py::object();
  }
};

// A Python callable as an expert's forward: called with the GIL, from whichever thread runs the
// loop. Its exceptions become the request's error reply (the server keeps serving).
std::function<torch::Tensor(const torch::Tensor&)> python_forward(std::shared_ptr<PyRef> module) {
  return [module](const torch::Tensor& x) -> torch::Tensor {
    if (_Py_IsFinalizing()) throw std::runtime_error("the server's interpreter is exiting");
    py::gil_scoped_acquire gil;
    try {
      py::object y = module->o(x);
      return y.cast<torch::Tensor>();
    } catch (py::error_already_set& e) {
      throw std::runtime_error(e.what());
    } catch (const py::cast_error&) {
      throw std::runtime_error("the expert's forward did not return a tensor");
    }
  };
}

struct ServerCore final : Dependent {
  std::unique_ptr<real::ExpertServer> server;
  std::vector<moe::ExpertUid> uids;
  TaskScope scope;
  std::vector<std::shared_ptr<PyRef>> modules;
  void close() override {
    scope.destroy_all();
    server.reset();
    py::gil_scoped_acquire gil;
    modules.clear();
  }
};

Task<void> declare_loop(ServerCore* core, dht::DhtNode* dht, Runtime* rt, Endpoint at, const dht::Identity* owner,
                        Duration period) {
  for (;;) {
    co_await moe::declare_experts(*dht, core->uids, at, rt->now() + 3 * period, owner);
    co_await sleep_on(rt->timers, period);
  }
}

struct ServerOptionsPy {
  double update_period = 20.0;   // declarations are renewed this often (they last 3 periods)
  std::int64_t max_batch = 4096;
  std::int64_t min_batch = 1;
  double batch_wait = 0.0;
};

class PyExpertServer {
 public:
  PyExpertServer(std::shared_ptr<Node> node, ServerOptionsPy o) : node_(std::move(node)), core_(std::make_shared<ServerCore>()) {
    moe::ServerOptions so;
    so.max_batch = o.max_batch;
    so.min_batch = o.min_batch;
    if (o.batch_wait < 0 || !std::isfinite(o.batch_wait)) throw py::value_error("batch_wait must be >= 0 seconds");
    so.batch_wait = Duration(static_cast<std::int64_t>(o.batch_wait * 1e9));
    period_ = seconds(o.update_period, "update_period");
    node_->with_loop([&] {
      auto& s = node_->stack();
      node_->claim("experts");
      core_->server = std::make_unique<real::ExpertServer>(*s.runtime, *s.rpc, so);
      node_->attach(core_);
    }, "ExpertServer");
  }

  // A built-in expert ("ffn": LN(x + W2 relu(W1 x)); "transformer": a transformer block).
  void add_builtin(const std::string& uid, const std::string& kind, std::int64_t dim, std::int64_t hidden, std::int64_t heads,
                   double lr, const std::string& device) {
    if (dim <= 0 || hidden <= 0) throw py::value_error("dim and hidden_dim must be positive");
    const torch::Device dev = device_of(device);
    real::HostedExpert e;
    if (kind == "ffn")
      e = real::make_ffn_expert(dim, hidden, lr, dev);
    else if (kind == "transformer")
      e = real::make_transformer_expert(dim, heads, hidden, lr, dev);
    else
      throw py::value_error("expert kind '" + kind + "' is not ffn or transformer");
    add(uid, std::move(e));
  }

  // The caller's torch module: `forward` is called on [rows, input_dim] inputs ([rows, seq, dim]
  // with `sequence`); an SGD (or Adam) optimizer over `parameters` steps once per backward batch.
  void add_module(const std::string& uid, py::object forward, std::vector<torch::Tensor> parameters, std::int64_t input_dim,
                  std::int64_t output_dim, bool sequence, const std::string& optimizer, double lr, const std::string& device) {
    if (input_dim <= 0 || output_dim <= 0) throw py::value_error("input_dim and output_dim must be positive");
    if (parameters.empty()) throw py::value_error("expert " + uid + " has no parameters to train");
    auto ref = std::make_shared<PyRef>(std::move(forward));
    real::HostedExpert e;
    auto holder = std::make_shared<torch::nn::Module>();
    for (std::size_t i = 0; i < parameters.size(); ++i) holder->register_parameter("p" + std::to_string(i), parameters[i]);
    e.module = holder;
    e.forward = python_forward(ref);
    if (optimizer == "sgd")
      e.optimizer = std::make_unique<torch::optim::SGD>(parameters, torch::optim::SGDOptions(lr));
    else if (optimizer == "adam")
      e.optimizer = std::make_unique<torch::optim::Adam>(parameters, torch::optim::AdamOptions(lr));
    else
      throw py::value_error("optimizer '" + optimizer + "' is not sgd or adam");
    e.input_dim = input_dim;
    e.output_dim = output_dim;
    e.sequence = sequence;
    e.kind = "python";
    e.device = device_of(device);
    core_->modules.push_back(ref);
    add(uid, std::move(e));
  }

  // Declares every expert in the DHT now and then every update_period (signed by this peer).
  std::size_t start() {
    if (core_->uids.empty()) throw py::value_error("ExpertServer: no experts to serve");
    const std::size_t stored = node_->await(
        [&] {
          auto& s = node_->stack();
          return moe::declare_experts(*s.node, core_->uids, s.rt->local(), s.rt->now() + 3 * period_, &node_->identity());
        },
        0, "declaring the experts");
    node_->with_loop([&] {
      auto& s = node_->stack();
      core_->scope.spawn(declare_loop(core_.get(), s.node.get(), s.runtime.get(), s.rt->local(), &node_->identity(), period_));
    }, "ExpertServer.start");
    return stored;
  }

  std::vector<std::string> uids() const {
    std::vector<std::string> out;
    for (const auto& u : core_->uids) out.push_back(u.str());
    return out;
  }
  std::uint64_t updates(const std::string& uid) {
    return node_->with_loop([&] {
      auto* e = live().find(uid);
      if (!e) throw py::key_error(uid);
      return e->updates;
    });
  }
  void save(const std::string& dir) { node_->with_loop([&] { live().save(dir); }, "save"); }
  void load(const std::string& dir) { node_->with_loop([&] { live().load(dir); }, "load"); }

 private:
  real::ExpertServer& live() {
    if (!core_->server) throw ClosedFailure("ExpertServer: the DHT is shut down");
    return *core_->server;
  }
  void add(const std::string& uid, real::HostedExpert e) {
    std::string why;
    auto parsed = moe::ExpertUid::parse(uid, {}, &why);
    if (!parsed) throw py::value_error("expert uid '" + uid + "': " + why);
    node_->with_loop([&] {
      if (live().find(uid)) throw py::value_error("expert " + uid + " is already served here");
      live().add(uid, std::move(e));
      core_->uids.push_back(*parsed);
    }, "ExpertServer.add");
  }

  std::shared_ptr<Node> node_;
  std::shared_ptr<ServerCore> core_;
  Duration period_{};
};

// ---- the client: routing and expert calls ------------------------------------------------------

struct MixtureOptionsPy {
  std::string uid_prefix = "expert";
  std::vector<std::uint32_t> grid;
  std::int64_t dim = 0;
  std::size_t k_best = 4;
  std::size_t k_min = 1;
  double forward_timeout = 10.0;
  double backward_timeout = 10.0;
  double timeout_after_k_min = 1.0;
  std::string routing = "batch";
  std::string compression = "float32";
};

// Ctrl-C during a forward: the signal is taken (and its exception kept) while the experts' calls
// run to their end or timeout; the forward then raises it. Throwing from inside the calls would
// leave their callbacks pointing into destroyed frames.
struct PendingSignal {
  PyObject *type = nullptr, *value = nullptr, *traceback = nullptr;
  bool taken = false;
  void check() {
    if (taken) return;
    py::gil_scoped_acquire gil;
    if (PyErr_CheckSignals() != 0) {
      PyErr_Fetch(&type, &value, &traceback);
      taken = true;
    }
  }
  ~PendingSignal() {
    if (!taken) return;
    py::gil_scoped_acquire gil;
    Py_XDECREF(type);
    Py_XDECREF(value);
    Py_XDECREF(traceback);
  }
};
thread_local PendingSignal* t_forward_signal = nullptr;  // set while this thread runs a forward

struct MixtureCore final : Dependent {
  std::unique_ptr<real::RemoteMixtureOfExpertsImpl> mixture;
  void close() override { mixture.reset(); }
};

class PyMixture {
 public:
  PyMixture(std::shared_ptr<Node> node, MixtureOptionsPy o) : node_(std::move(node)), core_(std::make_shared<MixtureCore>()) {
    if (o.grid.empty()) throw py::value_error("grid_size is empty");
    for (auto g : o.grid)
      if (g == 0) throw py::value_error("grid_size has a zero dimension");
    if (o.dim <= 0) throw py::value_error("in_features must be positive");
    if (o.k_best == 0 || o.k_min == 0 || o.k_min > o.k_best) throw py::value_error("need 1 <= k_min <= k_best");
    real::MoeOptions mo;
    mo.prefix = o.uid_prefix;
    mo.grid = o.grid;
    mo.dim = o.dim;
    mo.k_best = o.k_best;
    mo.k_min = o.k_min;
    mo.forward_timeout = seconds(o.forward_timeout, "forward_timeout");
    mo.backward_timeout = seconds(o.backward_timeout, "backward_timeout");
    mo.timeout_after_k_min = seconds(o.timeout_after_k_min, "timeout_after_k_min");
    if (o.routing == "sample")
      mo.per_sample = true;
    else if (o.routing == "switch")
      mo.switch_mode = true;
    else if (o.routing != "batch")
      throw py::value_error("routing '" + o.routing + "' is not batch, sample or switch");
    mo.codec.codec = codec_named(o.compression);
    // The loop is driven from the thread that calls forward (or runs the backward), holding it.
    Node* n = node_.get();
    real::RemoteExpert::Drive drive = [n](const std::function<bool()>& done) {
      real::LoopThread::Borrow b(n->loop());
      auto last = std::chrono::steady_clock::now();
      while (!done()) {
        if (n->closed()) return;
        n->loop().run_for(std::chrono::milliseconds(5));
        if (t_forward_signal && std::chrono::steady_clock::now() - last > std::chrono::milliseconds(100)) {
          t_forward_signal->check();
          last = std::chrono::steady_clock::now();
        }
      }
    };
    node_->with_loop([&] {
      auto& s = node_->stack();
      core_->mixture = std::make_unique<real::RemoteMixtureOfExpertsImpl>(*s.runtime, *s.rpc, *s.node, mo, drive);
      node_->attach(core_);
    }, "RemoteMixtureOfExperts");
  }

  torch::Tensor forward(const torch::Tensor& x, const torch::Tensor& logits) {
    PendingSignal signal;
    torch::Tensor y;
    {
      py::gil_scoped_release nogil;
      real::LoopThread::Borrow b(node_->loop());
      if (!core_->mixture) throw ClosedFailure("RemoteMixtureOfExperts: the DHT is shut down");
      t_forward_signal = &signal;
      try {
        y = core_->mixture->mix(x, logits);
      } catch (const std::invalid_argument& e) {
        t_forward_signal = nullptr;
        throw py::value_error(e.what());
      } catch (...) {
        t_forward_signal = nullptr;
        throw;
      }
      t_forward_signal = nullptr;
    }
    if (signal.taken) {  // Ctrl-C came during the calls: raise it now
      PyErr_Restore(signal.type, signal.value, signal.traceback);
      signal.taken = false;
      throw py::error_already_set();
    }
    return y;
  }
  std::vector<std::string> last_responders() {
    return node_->with_loop([&] { return live().last_responders(); });
  }
  torch::Tensor balance_loss() {
    return node_->with_loop([&] { return live().last_balance_loss(); });
  }

 private:
  real::RemoteMixtureOfExpertsImpl& live() {
    if (!core_->mixture) throw ClosedFailure("RemoteMixtureOfExperts: the DHT is shut down");
    return *core_->mixture;
  }
  std::shared_ptr<Node> node_;
  std::shared_ptr<MixtureCore> core_;
};

}  // namespace

void bind_moe(py::module_& m) {
  py::class_<ServerOptionsPy>(m, "ServerOptions")
      .def(py::init<>())
      .def_readwrite("update_period", &ServerOptionsPy::update_period)
      .def_readwrite("max_batch", &ServerOptionsPy::max_batch)
      .def_readwrite("min_batch", &ServerOptionsPy::min_batch)
      .def_readwrite("batch_wait", &ServerOptionsPy::batch_wait);
  py::class_<PyExpertServer, std::shared_ptr<PyExpertServer>>(m, "ExpertServer")
      .def(py::init<std::shared_ptr<Node>, ServerOptionsPy>())
      .def("add_builtin", &PyExpertServer::add_builtin)
      .def("add_module", &PyExpertServer::add_module)
      .def("start", &PyExpertServer::start)
      .def("uids", &PyExpertServer::uids)
      .def("updates", &PyExpertServer::updates)
      .def("save", &PyExpertServer::save)
      .def("load", &PyExpertServer::load);
  py::class_<MixtureOptionsPy>(m, "MixtureOptions")
      .def(py::init<>())
      .def_readwrite("uid_prefix", &MixtureOptionsPy::uid_prefix)
      .def_readwrite("grid", &MixtureOptionsPy::grid)
      .def_readwrite("dim", &MixtureOptionsPy::dim)
      .def_readwrite("k_best", &MixtureOptionsPy::k_best)
      .def_readwrite("k_min", &MixtureOptionsPy::k_min)
      .def_readwrite("forward_timeout", &MixtureOptionsPy::forward_timeout)
      .def_readwrite("backward_timeout", &MixtureOptionsPy::backward_timeout)
      .def_readwrite("timeout_after_k_min", &MixtureOptionsPy::timeout_after_k_min)
      .def_readwrite("routing", &MixtureOptionsPy::routing)
      .def_readwrite("compression", &MixtureOptionsPy::compression);
  py::class_<PyMixture, std::shared_ptr<PyMixture>>(m, "Mixture")
      .def(py::init<std::shared_ptr<Node>, MixtureOptionsPy>())
      .def("forward", &PyMixture::forward)
      .def("last_responders", &PyMixture::last_responders)
      .def("balance_loss", &PyMixture::balance_loss);
}

}  // namespace apiary::python
