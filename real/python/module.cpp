// The `apiary._apiary` extension: the live node and its DHT (this file), and the LibTorch parts
// (torch_bindings.cpp). The Python package (real/python/apiary) wraps these in documented classes.
#include <pybind11/stl.h>

#include <algorithm>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <system_error>

#include <boost/system/system_error.hpp>

#include "apiary/version.hpp"
#include "core/runtime/endpoint.hpp"
#include "real/live_runtime.hpp"
#include "real/python/node.hpp"

namespace apiary::python {

void bind_torch(py::module_& m);  // torch_bindings.cpp
void bind_moe(py::module_& m);    // moe_bindings.cpp

void check_signals() {
  py::gil_scoped_acquire gil;
  if (PyErr_CheckSignals() != 0) throw py::error_already_set();
}

compression::Codec codec_named(const std::string& name) {
  std::string names;
  for (int c = 0; c <= static_cast<int>(compression::Codec::kBlockwise8); ++c) {
    const auto codec = static_cast<compression::Codec>(c);
    if (name == compression::to_string(codec)) return codec;
    names += std::string(names.empty() ? "" : ", ") + compression::to_string(codec);
  }
  throw py::value_error("compression '" + name + "' is not one of " + names);
}

Duration seconds(double s, const char* what) {
  if (!std::isfinite(s) || s <= 0) throw py::value_error(std::string(what) + " must be a positive number of seconds");
  return Duration(static_cast<std::int64_t>(s * 1e9));
}

Node::Node(const NodeOptions& o) : identity_(real::identity_from(o.identity_path, o.id_work_bits)) {
  real::LiveNodeOptions lo;
  lo.listen = real::parse_endpoint_or_throw(o.listen, "listen");
  if (o.k == 0) throw std::invalid_argument("k must be at least 1");
  if (!(o.rpc_timeout > 0)) throw std::invalid_argument("rpc_timeout must be positive");
  lo.dht.k = o.k;
  lo.dht.rpc_timeout = Duration(static_cast<std::int64_t>(o.rpc_timeout * 1e9));
  lo.dht.client_mode = o.client_mode;
  if (o.client_mode) {
    lo.dht.refresh_period = Duration::zero();
    lo.dht.replicate_period = Duration::zero();
  }
  lo.auth.id_work_bits = o.id_work_bits;
  lo.auth.swarm_secret = o.swarm_secret;
  lo.verbose = o.verbose;
  std::vector<Endpoint> seeds;
  for (const auto& p : o.initial_peers) seeds.push_back(real::parse_endpoint_or_throw(p, "initial peer"));
  with_loop([&] {
    stack_ = std::make_unique<real::LiveNodeStack>(loop_->io(), identity_, lo);
    endpoint_ = stack_->rt->local().to_string();
    if (!o.client_mode) stack_->node->start_maintenance();
  });
  if (seeds.empty()) return;
  try {
    contacts_ = await([&] { return stack_->node->bootstrap(seeds); }, o.join_timeout, "joining the swarm");
  } catch (...) {
    shutdown();
    throw;
  }
  if (contacts_ == 0) {
    shutdown();
    std::string list;
    for (const auto& p : o.initial_peers) list += (list.empty() ? "" : ", ") + p;
    throw ConnectionFailure("could not join the swarm: no answer from " + list);
  }
}

Node::~Node() {
  py::gil_scoped_acquire gil;  // (shutdown releases it while it borrows the loop)
  try {
    shutdown();
  } catch (const std::exception&) {
    // Dropped inside a call on itself (the garbage collector, run by an expert's forward on the
    // loop's thread): closing would destroy what that call is running. Left running instead, to
    // the end of the process.
    (void)loop_.release();
    (void)stack_.release();
    (void)new std::vector<std::shared_ptr<Dependent>>(std::move(dependents_));
  }
}

void Node::claim(const std::string& role) {
  if (std::find(roles_.begin(), roles_.end(), role) != roles_.end())
    throw std::invalid_argument("this DHT already serves " + role + " (one object of each kind per DHT: start another apiary.DHT)");
  roles_.push_back(role);
}

void Node::attach(std::shared_ptr<Dependent> d) { dependents_.push_back(std::move(d)); }

void Node::shutdown() {
  if (closed_) return;
  if (loop_->held_by_this_thread())  // a signal handler or an expert's forward, inside a call on this peer
    throw std::runtime_error("shutdown() from inside a call on this DHT (a signal handler?): call it once the call has returned");
  py::gil_scoped_release nogil;
  {
    real::LoopThread::Borrow b(*loop_);
    if (closed_) return;  // another thread shut it down meanwhile
    for (auto& d : dependents_) d->close();
    dependents_.clear();
    if (stack_) stack_->rpc->shutdown();
    stack_.reset();
    closed_ = true;
  }
  loop_->stop();
}

namespace {

TimePoint to_time(double unix_seconds) {
  return TimePoint(Duration(static_cast<std::int64_t>(std::llround(unix_seconds * 1e9))));
}
double to_seconds(TimePoint t) { return static_cast<double>(to_ns(t)) / 1e9; }

Bytes bytes_of(const py::object& value) {
  std::string s;
  if (py::isinstance<py::str>(value))
    s = value.cast<std::string>();
  else if (py::isinstance<py::bytes>(value) || py::isinstance<py::bytearray>(value) || py::isinstance<py::memoryview>(value))
    s = py::bytes(value).cast<std::string>();
  else
    throw py::type_error("a DHT value is bytes (or str, stored as UTF-8), not " +
                         py::str(py::type::of(value).attr("__name__")).cast<std::string>());
  return Bytes(s.begin(), s.end());
}

py::dict store(Node& n, const std::string& key, const py::object& value, double expiration_time,
               std::optional<std::string> subkey, bool sign, double timeout) {
  if (key.empty()) throw py::value_error("the key is empty");
  if (!std::isfinite(expiration_time)) throw py::value_error("expiration_time must be a finite time (seconds since the epoch)");
  dht::Record r;
  r.key = key;
  r.subkey = std::move(subkey);
  r.value = bytes_of(value);
  r.expiration = to_time(expiration_time);
  const double now = n.with_loop([&] { return to_seconds(n.stack().rt->now()); }, "store");
  if (expiration_time <= now)
    throw py::value_error("expiration_time " + std::to_string(expiration_time) + " is not in the future (now " +
                          std::to_string(now) + ")");
  if (sign) n.identity().sign(r);
  const dht::StoreResult res = n.await([&] { return n.stack().node->store(std::move(r)); }, timeout, "store of '" + key + "'");
  py::dict d;
  d["ok"] = res.replicas > 0;
  d["replicas"] = res.replicas;
  d["stale"] = res.stale;
  d["refused"] = res.refused;
  d["unreachable"] = res.unreachable;
  d["why_refused"] = res.why_refused();
  d["latency"] = static_cast<double>(res.latency.count()) / 1e9;
  return d;
}

// [(subkey or None, value, expiration, signed)] or None when the swarm holds nothing under `key`.
py::object get(Node& n, const std::string& key, double timeout) {
  if (key.empty()) throw py::value_error("the key is empty");
  dht::GetResult res = n.await([&] { return n.stack().node->get(key); }, timeout, "get of '" + key + "'");
  if (!res.found) return py::none();
  py::list out;
  for (const auto& r : res.records) {
    // Subkeys come from other peers: bytes that are not UTF-8 are kept as surrogate escapes.
    py::object sub = py::none();
    if (r.subkey)
      sub = py::reinterpret_steal<py::object>(
          PyUnicode_DecodeUTF8(r.subkey->data(), static_cast<Py_ssize_t>(r.subkey->size()), "surrogateescape"));
    out.append(py::make_tuple(sub, py::bytes(reinterpret_cast<const char*>(r.value.data()), r.value.size()),
                              to_seconds(r.expiration), !r.signature.empty()));
  }
  return out;
}

}  // namespace

}  // namespace apiary::python

PYBIND11_MODULE(_apiary, m) {
  using namespace apiary::python;
  m.doc() = "Apiary's C++ core for Python (see the apiary package)";
  m.attr("__version__") = apiary::kVersion;
  py::register_exception<TimeoutFailure>(m, "Timeout", PyExc_TimeoutError);
  py::register_exception<ConnectionFailure>(m, "Unreachable", PyExc_ConnectionError);
  py::register_exception<ClosedFailure>(m, "Closed", PyExc_RuntimeError);
  py::register_exception_translator([](std::exception_ptr p) {
    try {
      if (p) std::rethrow_exception(p);
    } catch (const std::system_error& e) {
      PyErr_SetString(PyExc_OSError, e.what());
    } catch (const boost::system::system_error& e) {  // a socket the system refused (an address taken)
      PyErr_SetString(PyExc_OSError, e.what());
    } catch (const apiary::ErrorException& e) {
      PyErr_SetString(PyExc_RuntimeError, e.what());
    }
  });

  py::class_<NodeOptions>(m, "NodeOptions")
      .def(py::init<>())
      .def_readwrite("listen", &NodeOptions::listen)
      .def_readwrite("initial_peers", &NodeOptions::initial_peers)
      .def_readwrite("identity_path", &NodeOptions::identity_path)
      .def_readwrite("swarm_secret", &NodeOptions::swarm_secret)
      .def_readwrite("id_work_bits", &NodeOptions::id_work_bits)
      .def_readwrite("client_mode", &NodeOptions::client_mode)
      .def_readwrite("k", &NodeOptions::k)
      .def_readwrite("rpc_timeout", &NodeOptions::rpc_timeout)
      .def_readwrite("join_timeout", &NodeOptions::join_timeout)
      .def_readwrite("verbose", &NodeOptions::verbose);

  py::class_<Node, std::shared_ptr<Node>>(m, "Node")
      .def(py::init<const NodeOptions&>())
      .def("shutdown", &Node::shutdown)
      .def_property_readonly("closed", &Node::closed)
      .def_property_readonly("endpoint", &Node::endpoint)
      .def_property_readonly("peer_id", &Node::peer_id)
      .def_property_readonly("contacts", &Node::contacts)
      .def_property_readonly("owner_tag", [](Node& n) { return n.identity().owner_tag(); })
      .def("now", [](Node& n) { return n.with_loop([&] { return to_seconds(n.stack().rt->now()); }, "now"); })
      .def("store", &store, py::arg("key"), py::arg("value"), py::arg("expiration_time"), py::arg("subkey") = py::none(),
           py::arg("sign") = false, py::arg("timeout") = 30.0)
      .def("get", &get, py::arg("key"), py::arg("timeout") = 30.0)
      .def("counters", [](Node& n) {
        return n.with_loop([&] { return n.stack().metrics.counters(); }, "counters");
      });

  bind_torch(m);
  bind_moe(m);
}
