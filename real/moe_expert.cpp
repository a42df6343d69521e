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

// keep != 0: the server keeps this forward's activations for the backward with the same id.
struct ForwardRequest {
  static constexpr std::uint32_t kMethod = 300;
  std::string uid;
  Shape shape;
  std::uint64_t keep = 0;
  Payload payload;
  void encode(wire::Writer& w) const {
    w.str(uid);
    shape.encode(w);
    w.u64(keep);
  }
  static ForwardRequest decode(wire::Reader& r) {
    ForwardRequest q;
    q.uid = r.str(256);
    q.shape = Shape::decode(r);
    q.keep = r.u64();
    return q;
  }
};

// Inputs then output gradients, back to back in the payload.
struct BackwardRequest {
  static constexpr std::uint32_t kMethod = 301;
  std::string uid;
  Shape input, grad;
  std::uint64_t keep = 0;  // the forward whose activations the server may still hold
  Payload payload;
  void encode(wire::Writer& w) const {
    w.str(uid);
    input.encode(w);
    grad.encode(w);
    w.u64(keep);
  }
  static BackwardRequest decode(wire::Reader& r) {
    BackwardRequest q;
    q.uid = r.str(256);
    q.input = Shape::decode(r);
    q.grad = Shape::decode(r);
    q.keep = r.u64();
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
  rpc.serve<ForwardRequest, TensorReply>([this](const Endpoint& from, ForwardRequest q) -> Task<Result<TensorReply>> {
    HostedExpert* e = find(q.uid);
    if (!e) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    if (q.shape.dims.size() != 2 || q.shape.dims[1] != e->input_dim) co_return bad_input(q.uid, *e, q.shape.dims);
    std::optional<TensorReply> out;
    std::string why;
    try {
      if (q.keep) {  // keep the graph: the backward need not compute the forward again
        torch::AutoGradMode grad_on(true);
        torch::Tensor x = payload_to_tensor(q.payload, q.shape.dims).requires_grad_(true);
        torch::Tensor y = e->forward(x);
        out = TensorReply{shape_of(y), tensor_to_payload(y)};
        keep(from, q.uid, q.keep, x, y);
      } else {
        torch::NoGradGuard no_grad;
        const torch::Tensor y = e->forward(payload_to_tensor(q.payload, q.shape.dims));
        out = TensorReply{shape_of(y), tensor_to_payload(y)};
      }
    } catch (const std::exception& ex) {
      why = ex.what();
    }
    if (!out) co_return Error{ErrorCode::kInvalidArgument, "expert " + q.uid + ": " + why};
    rt_.observer.count("moe.forwards");
    co_return std::move(*out);
  });
  rpc.serve<BackwardRequest, TensorReply>([this](const Endpoint& from, BackwardRequest q) -> Task<Result<TensorReply>> {
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
      const torch::Tensor g = payload_to_tensor(gs, q.grad.dims);
      e->optimizer->zero_grad();
      torch::Tensor x;
      bool done = false;
      if (auto kept = take(from, q.uid, q.keep)) {
        try {
          x = kept->first;
          kept->second.backward(g);
          done = true;
          rt_.observer.count("moe.backwards_from_kept");
        } catch (const c10::Error&) {
          // The parameters moved since that forward (another client's update): recompute.
          e->optimizer->zero_grad();
        }
      }
      if (!done) {
        x = payload_to_tensor(xs, q.input.dims).requires_grad_(true);
        e->forward(x).backward(g);
      }
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

void ExpertServer::keep(const Endpoint& from, const std::string& uid, std::uint64_t id, torch::Tensor x, torch::Tensor y) {
  const TimePoint now = rt_.now();
  for (auto it = kept_.begin(); it != kept_.end();)  // drop what its client never came back for
    it = (now - it->second.at > kKeepFor) ? kept_.erase(it) : std::next(it);
  if (kept_.size() >= kMaxKept) kept_.erase(kept_.begin());
  kept_[{from, uid, id}] = Kept{std::move(x), std::move(y), now};
}

std::optional<std::pair<torch::Tensor, torch::Tensor>> ExpertServer::take(const Endpoint& from, const std::string& uid,
                                                                         std::uint64_t id) {
  if (!id) return std::nullopt;
  auto it = kept_.find({from, uid, id});
  if (it == kept_.end()) return std::nullopt;
  auto out = std::make_pair(std::move(it->second.x), std::move(it->second.y));
  kept_.erase(it);
  return out;
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
    auto* expert = reinterpret_cast<RemoteExpert*>(self);
    const std::int64_t keep = static_cast<std::int64_t>(expert->next_keep());
    ctx->saved_data["keep"] = keep;
    return expert->call_forward(x, static_cast<std::uint64_t>(keep));
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* self = reinterpret_cast<RemoteExpert*>(ctx->saved_data["self"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    return {self->call_backward(x, grads[0], static_cast<std::uint64_t>(ctx->saved_data["keep"].toInt())), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RemoteExpert::call_forward(const torch::Tensor& x, std::uint64_t keep) {
  ForwardRequest q{uid_, shape_of(x), keep, tensor_to_payload(x)};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

torch::Tensor RemoteExpert::call_backward(const torch::Tensor& x, const torch::Tensor& grad_output, std::uint64_t keep) {
  Payload xs = tensor_to_payload(x), gs = tensor_to_payload(grad_output);
  Bytes both(xs.data().begin(), xs.data().end());
  both.insert(both.end(), gs.data().begin(), gs.data().end());
  BackwardRequest q{uid_, shape_of(x), shape_of(grad_output), keep, Payload::bytes(std::move(both))};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

torch::Tensor RemoteExpert::forward(torch::Tensor x) {
  return RemoteExpertFunction::apply(x, reinterpret_cast<std::int64_t>(this));
}

}  // namespace apiary::real
