#include "real/moe_expert.hpp"

#include <filesystem>
#include <stdexcept>

#include "real/torch_tensor.hpp"

namespace apiary::real {

namespace {

struct Shape {
  std::vector<std::int64_t> dims;
  void encode(wire::Writer& w) const {
    w.varint(dims.size());
    for (auto d : dims) w.varint(static_cast<std::uint64_t>(d));
  }
  static Shape decode(wire::Reader& r) {
    Shape s;
    const auto n = r.varint_max(8, "tensor dimensions");
    for (std::uint64_t i = 0; i < n; ++i) s.dims.push_back(static_cast<std::int64_t>(r.varint_max(std::uint64_t{1} << 31, "dimension")));
    return s;
  }
};

Shape shape_of(const torch::Tensor& t) { return Shape{t.sizes().vec()}; }

struct ForwardRequest {
  static constexpr std::uint32_t kMethod = 300;
  std::string uid;
  Shape shape;
  Payload payload;
  void encode(wire::Writer& w) const {
    w.str(uid);
    shape.encode(w);
  }
  static ForwardRequest decode(wire::Reader& r) {
    ForwardRequest q;
    q.uid = r.str(256);
    q.shape = Shape::decode(r);
    return q;
  }
};

// Inputs then output gradients, back to back in the payload.
struct BackwardRequest {
  static constexpr std::uint32_t kMethod = 301;
  std::string uid;
  Shape input, grad;
  Payload payload;
  void encode(wire::Writer& w) const {
    w.str(uid);
    input.encode(w);
    grad.encode(w);
  }
  static BackwardRequest decode(wire::Reader& r) {
    BackwardRequest q;
    q.uid = r.str(256);
    q.input = Shape::decode(r);
    q.grad = Shape::decode(r);
    return q;
  }
};

struct TensorReply {
  Shape shape;
  Payload payload;
  void encode(wire::Writer& w) const { shape.encode(w); }
  static TensorReply decode(wire::Reader& r) { return TensorReply{Shape::decode(r), {}}; }
};

Error bad_input(const std::string& uid, const HostedExpert& e, const std::vector<std::int64_t>& dims) {
  std::string got = "[";
  for (std::size_t i = 0; i < dims.size(); ++i) got += (i ? ", " : "") + std::to_string(dims[i]);
  return Error{ErrorCode::kInvalidArgument,
               "expert " + uid + " takes [batch, " + std::to_string(e.input_dim) + "] inputs, got " + got + "]"};
}

}  // namespace

FfnExpertImpl::FfnExpertImpl(std::int64_t dim, std::int64_t hidden)
    : w1(register_module("w1", torch::nn::Linear(dim, hidden))),
      w2(register_module("w2", torch::nn::Linear(hidden, dim))),
      norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))) {}

torch::Tensor FfnExpertImpl::forward(torch::Tensor x) { return norm(x + w2(torch::relu(w1(x)))); }

HostedExpert make_ffn_expert(std::int64_t dim, std::int64_t hidden, double lr) {
  FfnExpert m(dim, hidden);
  HostedExpert e;
  e.module = m.ptr();
  e.forward = [m](const torch::Tensor& x) mutable { return m->forward(x); };
  e.optimizer = std::make_unique<torch::optim::SGD>(m->parameters(), torch::optim::SGDOptions(lr));
  e.input_dim = e.output_dim = dim;
  return e;
}

ExpertServer::ExpertServer(Runtime& rt, Rpc& rpc) : rt_(rt) {
  rpc.serve<ForwardRequest, TensorReply>([this](const Endpoint&, ForwardRequest q) -> Task<Result<TensorReply>> {
    HostedExpert* e = find(q.uid);
    if (!e) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    if (q.shape.dims.size() != 2 || q.shape.dims[1] != e->input_dim) co_return bad_input(q.uid, *e, q.shape.dims);
    std::optional<TensorReply> out;
    std::string why;
    try {
      torch::NoGradGuard no_grad;
      const torch::Tensor y = e->forward(payload_to_tensor(q.payload, q.shape.dims));
      out = TensorReply{shape_of(y), tensor_to_payload(y)};
    } catch (const std::exception& ex) {
      why = ex.what();
    }
    if (!out) co_return Error{ErrorCode::kInvalidArgument, "expert " + q.uid + ": " + why};
    rt_.observer.count("moe.forwards");
    co_return std::move(*out);
  });
  rpc.serve<BackwardRequest, TensorReply>([this](const Endpoint&, BackwardRequest q) -> Task<Result<TensorReply>> {
    HostedExpert* e = find(q.uid);
    if (!e) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    if (q.input.dims.size() != 2 || q.input.dims[1] != e->input_dim) co_return bad_input(q.uid, *e, q.input.dims);
    if (q.grad.dims.size() != 2 || q.grad.dims[0] != q.input.dims[0] || q.grad.dims[1] != e->output_dim)
      co_return Error{ErrorCode::kInvalidArgument, "expert " + q.uid + ": output gradients must be [batch, " +
                                                       std::to_string(e->output_dim) + "]"};
    const std::uint64_t in_bytes = static_cast<std::uint64_t>(q.input.dims[0] * q.input.dims[1]) * 4;
    if (q.payload.size() < in_bytes || !q.payload.has_data())
      co_return Error{ErrorCode::kBadMessage, "backward payload too short"};
    std::optional<TensorReply> out;
    std::string why;
    try {
      auto bytes = q.payload.data();
      Payload xs = Payload::bytes(Bytes(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(in_bytes)));
      Payload gs = Payload::bytes(Bytes(bytes.begin() + static_cast<std::ptrdiff_t>(in_bytes), bytes.end()));
      torch::AutoGradMode grad_on(true);  // (the handler may run inside a client's backward, in-process)
      torch::Tensor x = payload_to_tensor(xs, q.input.dims).requires_grad_(true);
      const torch::Tensor g = payload_to_tensor(gs, q.grad.dims);
      e->optimizer->zero_grad();
      torch::Tensor y = e->forward(x);
      y.backward(g);
      out = TensorReply{shape_of(x.grad()), tensor_to_payload(x.grad())};
      e->optimizer->step();  // the expert learns from every client, asynchronously
      ++e->updates;
    } catch (const std::exception& ex) {
      why = ex.what();
    }
    if (!out) co_return Error{ErrorCode::kInvalidArgument, "expert " + q.uid + ": " + why};
    rt_.observer.count("moe.backwards");
    co_return std::move(*out);
  });
}

void ExpertServer::add(std::string uid, HostedExpert expert) { experts_[std::move(uid)] = std::move(expert); }

HostedExpert* ExpertServer::find(const std::string& uid) {
  auto it = experts_.find(uid);
  return it == experts_.end() ? nullptr : &it->second;
}

void ExpertServer::save(const std::string& dir) {
  std::filesystem::create_directories(dir);
  for (auto& [uid, e] : experts_) {
    torch::serialize::OutputArchive ar;
    e.module->save(ar);
    ar.save_to(dir + "/" + uid + ".pt");
  }
}

void ExpertServer::load(const std::string& dir) {
  for (auto& [uid, e] : experts_) {
    torch::serialize::InputArchive ar;
    ar.load_from(dir + "/" + uid + ".pt");
    e.module->load(ar);
  }
}

RemoteExpert::RemoteExpert(Rpc& rpc, Endpoint server, std::string uid, Drive drive, Duration timeout)
    : rpc_(rpc), server_(server), uid_(std::move(uid)), drive_(std::move(drive)), timeout_(timeout) {}

namespace {

template <class Req>
torch::Tensor call(Rpc& rpc, const Endpoint& to, Req req, Duration timeout, const RemoteExpert::Drive& drive,
                   const std::string& uid) {
  auto task = rpc.call<TensorReply>(to, std::move(req), timeout);
  task.start();
  drive([&] { return task.done(); });
  if (!task.done()) throw std::runtime_error("expert " + uid + ": the event loop stopped before the reply");
  Result<TensorReply> r = task.result();
  if (!r.ok()) throw std::runtime_error("expert " + uid + " at " + to.to_string() + ": " + r.error().describe());
  return payload_to_tensor(r->payload, r->shape.dims);
}

struct RemoteExpertFunction : torch::autograd::Function<RemoteExpertFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, std::int64_t self) {
    ctx->save_for_backward({x});
    ctx->saved_data["self"] = self;
    return reinterpret_cast<RemoteExpert*>(self)->call_forward(x);
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* self = reinterpret_cast<RemoteExpert*>(ctx->saved_data["self"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    return {self->call_backward(x, grads[0]), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RemoteExpert::call_forward(const torch::Tensor& x) {
  ForwardRequest q{uid_, shape_of(x), tensor_to_payload(x)};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

torch::Tensor RemoteExpert::call_backward(const torch::Tensor& x, const torch::Tensor& grad_output) {
  Payload xs = tensor_to_payload(x), gs = tensor_to_payload(grad_output);
  Bytes both(xs.data().begin(), xs.data().end());
  both.insert(both.end(), gs.data().begin(), gs.data().end());
  BackwardRequest q{uid_, shape_of(x), shape_of(grad_output), Payload::bytes(std::move(both))};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

torch::Tensor RemoteExpert::forward(torch::Tensor x) {
  return RemoteExpertFunction::apply(x, reinterpret_cast<std::int64_t>(this));
}

}  // namespace apiary::real
