#include "real/torch/mixture.hpp"

#include <torch/custom_class.h>

#include <map>
#include <stdexcept>

#include "real/torch/tensor.hpp"

namespace apiary::real {

namespace {

// The predicate a Drive runs the loop until: its first call starts the task (so that the task
// starts where the drive runs, on the loop it holds), then tells whether it is done.
template <class T>
std::function<bool()> starting(Task<T>& task) {
  return [&task, started = false]() mutable {
    if (!started) {
      started = true;
      task.start();
    }
    return task.done();
  };
}

}  // namespace

using moe::BackwardRequest;
using moe::ForwardRequest;
using moe::InfoRequest;
using moe::TensorReply;

RemoteExpert::RemoteExpert(Rpc& rpc, Endpoint server, std::string uid, Drive drive, Duration timeout)
    : rpc_(rpc), server_(server), uid_(std::move(uid)), drive_(std::move(drive)), timeout_(timeout) {}

ExpertInfo RemoteExpert::info() {
  InfoRequest q{uid_};
  auto task = rpc_.call<ExpertInfo>(server_, std::move(q), timeout_);
  drive_(starting(task));
  if (!task.done()) throw std::runtime_error("expert " + uid_ + ": the event loop stopped before the reply");
  Result<ExpertInfo> r = task.result();
  if (!r.ok()) throw std::runtime_error("expert " + uid_ + ": " + r.error().describe());
  return *r;
}

namespace {

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

namespace {

Result<torch::Tensor> to_tensor(Result<TensorReply>& r) {
  if (!r.ok()) return r.error();
  std::optional<torch::Tensor> t;
  std::string why;
  try {
    t = unpack(r->payload, r->shape.dims, r->codec);
  } catch (const std::exception& e) {
    why = e.what();
  }
  if (!t) return Error{ErrorCode::kBadMessage, "the reply is not a tensor: " + why};
  return *t;
}

}  // namespace

Task<Result<torch::Tensor>> RemoteExpert::forward_async(torch::Tensor x, std::uint64_t keep, Duration timeout) {
  const std::uint8_t c = codec_for(x);
  ForwardRequest q{uid_, shape_of(x), keep, pack(x, c), c};
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return to_tensor(r);
}

Task<Result<torch::Tensor>> RemoteExpert::backward_async(torch::Tensor x, torch::Tensor grad_output, std::uint64_t keep,
                                                         Duration timeout) {
  const std::uint8_t c = codec_for(x);
  BackwardRequest q = moe::backward_request(uid_, shape_of(x), pack(x, c), shape_of(grad_output), pack(grad_output, c), keep, c);
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return to_tensor(r);
}

torch::Tensor RemoteExpert::await_tensor(Task<Result<torch::Tensor>> task) {
  drive_(starting(task));
  if (!task.done()) throw std::runtime_error("expert " + uid_ + ": the event loop stopped before the reply");
  Result<torch::Tensor> r = task.result();
  if (!r.ok()) throw std::runtime_error("expert " + uid_ + " at " + server_.to_string() + ": " + r.error().describe());
  return *r;
}

torch::Tensor RemoteExpert::call_forward(const torch::Tensor& x, std::uint64_t keep) {
  return await_tensor(forward_async(x, keep, timeout_));
}

torch::Tensor RemoteExpert::call_backward(const torch::Tensor& x, const torch::Tensor& grad_output, std::uint64_t keep) {
  return await_tensor(backward_async(x, grad_output, keep, timeout_));
}

namespace {

moe::MixtureConfig mixture_config(const MoeOptions& o) {
  moe::MixtureConfig c;
  c.prefix = o.prefix;
  c.grid = o.grid;
  c.routing = o.switch_mode ? moe::Routing::kSwitch : o.per_sample ? moe::Routing::kSample : moe::Routing::kBatch;
  c.k = o.k_best;
  c.k_min = o.k_min;
  c.forward_timeout = o.forward_timeout;
  c.backward_timeout = o.backward_timeout;
  c.grace = o.timeout_after_k_min;
  c.searches = o.searches;
  c.finder = moe::FinderConfig{8, 3, std::chrono::seconds(30), o.per_sample || o.switch_mode ? o.cache_ttl : Duration::zero()};
  return c;
}

// Row indices on `device` (the tensors they index live there).
torch::Tensor index_of(const std::vector<std::int64_t>& rows, const torch::Device& device) {
  return torch::tensor(rows, torch::kLong).to(device);
}

std::uint8_t codec_for(const averaging::CodecPolicy& p, const torch::Tensor& t) {
  return static_cast<std::uint8_t>(p.for_tensor(static_cast<std::uint64_t>(t.numel())));
}

moe::MixtureTensors::Body body_of(const averaging::CodecPolicy& p, const torch::Tensor& t) {
  const std::uint8_t c = codec_for(p, t);
  return moe::MixtureTensors::Body{shape_of(t), pack(t, c), c};
}

// A reply as a [rows, dim] tensor, or nothing (an undecodable or misshapen answer).
std::optional<torch::Tensor> rows_reply(const TensorReply& r, std::size_t rows, std::int64_t dim) {
  if (r.shape.dims != std::vector<std::int64_t>{static_cast<std::int64_t>(rows), dim}) return std::nullopt;
  try {
    return unpack(r.payload, r.shape.dims, r.codec);
  } catch (const std::exception&) {  // a peer's bytes that do not decode (wire::DecodeError too)
    return std::nullopt;
  }
}

// The forward's tensors: the inputs sent, the answers kept by slot.
class ForwardTensors final : public moe::MixtureTensors {
 public:
  ForwardTensors(torch::Tensor x, averaging::CodecPolicy codec) : x_(std::move(x)), codec_(codec) {}
  Body inputs(const std::vector<std::int64_t>& rows) override {
    return body_of(codec_, x_.index_select(0, index_of(rows, x_.device())));
  }
  bool take_output(std::size_t slot, const std::vector<std::int64_t>& rows, const TensorReply& r) override {
    auto y = rows_reply(r, rows.size(), x_.size(1));
    if (y) outputs[slot] = y->to(x_.options());  // off the wire onto the inputs' device
    return y.has_value();
  }
  Body output_grads(std::size_t, const std::vector<std::int64_t>&) override { throw std::logic_error("not a backward"); }
  bool take_input_grad(std::size_t, const std::vector<std::int64_t>&, const TensorReply&) override { return false; }
  std::map<std::size_t, torch::Tensor> outputs;

 private:
  torch::Tensor x_;
  averaging::CodecPolicy codec_;
};

// The backward's tensors: the saved inputs, the output gradients by call, the input gradients
// summed into the rows each expert served.
class BackwardTensors final : public moe::MixtureTensors {
 public:
  BackwardTensors(torch::Tensor x, torch::Tensor g, std::vector<std::int64_t> offsets, averaging::CodecPolicy codec)
      : x_(std::move(x)), g_(std::move(g)), offsets_(std::move(offsets)), codec_(codec), gx(torch::zeros_like(x_)) {}
  Body inputs(const std::vector<std::int64_t>& rows) override {
    return body_of(codec_, x_.index_select(0, index_of(rows, x_.device())));
  }
  bool take_output(std::size_t, const std::vector<std::int64_t>&, const TensorReply&) override { return false; }
  Body output_grads(std::size_t j, const std::vector<std::int64_t>& rows) override {
    return body_of(codec_, g_.narrow(0, offsets_[j], static_cast<std::int64_t>(rows.size())).contiguous());
  }
  bool take_input_grad(std::size_t, const std::vector<std::int64_t>& rows, const TensorReply& r) override {
    auto d = rows_reply(r, rows.size(), x_.size(1));
    if (d) gx.index_add_(0, index_of(rows, x_.device()), d->to(gx.options()));
    return d.has_value();
  }

 private:
  torch::Tensor x_, g_;
  std::vector<std::int64_t> offsets_;
  averaging::CodecPolicy codec_;

 public:
  torch::Tensor gx;
};

template <class T>
T drive_task(Task<T>& task, const RemoteExpert::Drive& drive, const char* what) {
  drive(starting(task));
  if (!task.done()) throw std::runtime_error(std::string(what) + " did not finish: the event loop stopped");
  return task.result();
}

}  // namespace

// The experts one forward used, for its backward: the router's plan and where each expert's
// output sits in the concatenated outputs.
struct RemoteMixtureOfExpertsImpl::CallSet {
  moe::MixtureRouter* router = nullptr;  // valid while `alive` holds: the layer still exists
  std::weak_ptr<void> alive;
  moe::MixturePlan plan;
  std::vector<std::int64_t> offsets;
  averaging::CodecPolicy codec;
  RemoteExpert::Drive drive;
};

namespace {

// A forward's CallSet, held by its autograd graph (as long as a backward may come, and no longer).
struct CallSetRef : torch::CustomClassHolder {
  explicit CallSetRef(std::shared_ptr<RemoteMixtureOfExpertsImpl::CallSet> c) : calls(std::move(c)) {}
  std::shared_ptr<RemoteMixtureOfExpertsImpl::CallSet> calls;
};
const auto kCallSetRefClass = torch::class_<CallSetRef>("apiary", "MixtureCallSet");

// y_all = the experts' outputs, concatenated; backward: core's parallel backward, every expert's
// input gradients added into the rows it served (a failed expert contributes none).
struct ParallelExpertsFunction : torch::autograd::Function<ParallelExpertsFunction> {
  // `anchor` requires grad, so the backward runs (and the experts train) even when neither x nor
  // the outputs need gradients, e.g. a mixture right on the data.
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor y_all, torch::Tensor anchor,
                               c10::intrusive_ptr<CallSetRef> calls) {
    (void)anchor;
    ctx->save_for_backward({x});
    ctx->saved_data["calls"] = std::move(calls);
    return y_all;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    const std::shared_ptr<RemoteMixtureOfExpertsImpl::CallSet> cs = ctx->saved_data["calls"].toCustomClass<CallSetRef>()->calls;
    if (cs->alive.expired()) throw std::runtime_error("the mixture-of-experts layer is gone: its backward cannot run");
    BackwardTensors tensors(ctx->get_saved_variables()[0], grads[0].contiguous(), cs->offsets, cs->codec);
    auto task = cs->router->backward(cs->plan, tensors);
    drive_task(task, cs->drive, "the experts' backward");
    return {tensors.gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

RemoteMixtureOfExpertsImpl::RemoteMixtureOfExpertsImpl(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MoeOptions options,
                                                       RemoteExpert::Drive drive)
    : rt_(rt), opt_(std::move(options)), drive_(std::move(drive)), router_(rt, rpc, dht, mixture_config(opt_)) {
  std::int64_t scores = 0;
  for (auto g : opt_.grid) scores += g;
  gate = register_module("gate", torch::nn::Linear(opt_.dim, scores));
}

torch::Tensor RemoteMixtureOfExpertsImpl::forward(torch::Tensor x) {
  if (x.dim() != 2 || x.size(1) != opt_.dim)
    throw std::invalid_argument("the mixture takes [batch, " + std::to_string(opt_.dim) + "] inputs");
  return mix(x, gate(x));
}

torch::Tensor RemoteMixtureOfExpertsImpl::mix(torch::Tensor x, torch::Tensor logits) {
  if (x.dim() != 2 || x.size(1) != opt_.dim)
    throw std::invalid_argument("the mixture takes [batch, " + std::to_string(opt_.dim) + "] inputs, not " +
                                c10::str(x.sizes()));
  std::int64_t coordinates = 0;
  for (auto g : opt_.grid) coordinates += g;
  if (logits.dim() != 2 || logits.size(0) != x.size(0) || logits.size(1) != coordinates)
    throw std::invalid_argument("the gate's scores must be [batch, " + std::to_string(coordinates) + "], not " +
                                c10::str(logits.sizes()));
  if (logits.device() != x.device()) throw std::invalid_argument("the gate's scores and the inputs are on different devices");
  const std::int64_t batch = x.size(0);
  const std::size_t dims = opt_.grid.size();
  const auto longs = torch::TensorOptions().dtype(torch::kLong).device(x.device());
  std::vector<torch::Tensor> per_dim;
  std::int64_t at = 0;
  for (auto g : opt_.grid) {
    per_dim.push_back(logits.narrow(1, at, g));
    at += g;
  }
  const torch::Tensor flat = logits.detach().to(torch::kFloat).contiguous();
  moe::GateScores scores{static_cast<std::size_t>(batch),
                         std::vector<float>(flat.data_ptr<float>(), flat.data_ptr<float>() + flat.numel())};
  ForwardTensors tensors(x.detach().contiguous(), opt_.codec);
  auto task = router_.forward(std::move(scores), tensors);
  Result<moe::MixturePlan> routed = drive_task(task, drive_, "the expert calls");
  if (!routed.ok()) throw std::runtime_error(routed.error().message);

  // The answering experts' outputs as one tensor whose backward calls them all in parallel.
  auto kept = std::make_shared<CallSet>();
  kept->router = &router_;
  kept->alive = alive_;
  kept->plan = std::move(*routed);
  kept->codec = opt_.codec;
  kept->drive = drive_;
  std::vector<torch::Tensor> outs, rows;
  std::vector<std::vector<torch::Tensor>> coords(dims);
  std::vector<torch::Tensor> e_idx;
  std::int64_t offset = 0;
  last_responders_.clear();
  for (std::size_t n = 0; n < kept->plan.calls.size(); ++n) {
    const moe::ExpertCall& c = kept->plan.calls[n];
    const std::int64_t count = static_cast<std::int64_t>(c.rows.size());
    kept->offsets.push_back(offset);
    offset += count;
    outs.push_back(tensors.outputs.at(c.slot));
    rows.push_back(index_of(c.rows, x.device()));
    const auto u = moe::ExpertUid::parse(c.expert.uid, opt_.grid);
    if (!u) throw std::runtime_error("expert uid " + c.expert.uid + " is not on the layer's grid");
    for (std::size_t d = 0; d < dims; ++d) coords[d].push_back(torch::full({count}, static_cast<std::int64_t>(u->coords[d]), longs));
    e_idx.push_back(torch::full({count}, static_cast<std::int64_t>(n), longs));
    last_responders_.push_back(c.expert.uid);
  }
  last_routes_ = kept->plan.routes;
  const torch::Tensor b_idx = torch::cat(rows);
  const torch::Tensor anchor = torch::zeros({1}, x.options()).requires_grad_(torch::GradMode::is_enabled());
  const torch::Tensor y_all =
      ParallelExpertsFunction::apply(x, torch::cat(outs), anchor, c10::make_intrusive<CallSetRef>(kept));
  torch::Tensor w;
  if (opt_.switch_mode) {
    // The gate's probability of the chosen expert: the product of the per-dimension softmaxes.
    w = torch::ones({b_idx.size(0)}, x.options());
    torch::Tensor balance = torch::zeros({}, x.options());
    for (std::size_t d = 0; d < dims; ++d) {
      const torch::Tensor prob = torch::softmax(per_dim[d], 1);  // [batch, g_d]
      w = w * prob.index({b_idx, torch::cat(coords[d])});
      const torch::Tensor share = torch::bincount(torch::cat(coords[d]), {}, static_cast<std::int64_t>(opt_.grid[d])).to(x.dtype()) /
                                  static_cast<double>(b_idx.size(0));
      balance = balance + static_cast<double>(opt_.grid[d]) * (share * prob.mean(0)).sum();
    }
    balance_loss_ = balance / static_cast<double>(dims);
  } else {
    // Softmax of each sample's gate scores over its experts that answered.
    torch::Tensor s = torch::zeros({b_idx.size(0)}, x.options());
    for (std::size_t d = 0; d < dims; ++d) s = s + per_dim[d].index({b_idx, torch::cat(coords[d])});
    const torch::Tensor ei = torch::cat(e_idx);
    torch::Tensor m = torch::full({batch, static_cast<std::int64_t>(kept->plan.calls.size())}, -std::numeric_limits<float>::infinity(),
                                  x.options());
    m = m.index_put({b_idx, ei}, s);
    w = torch::softmax(m, 1).index({b_idx, ei});
  }
  return torch::zeros_like(x).index_add(0, b_idx, w.unsqueeze(1) * y_all);
}

torch::Tensor RemoteExpert::forward(torch::Tensor x) {
  return RemoteExpertFunction::apply(x, reinterpret_cast<std::int64_t>(this));
}

}  // namespace apiary::real
