#include "real/moe_expert.hpp"

#include "core/moe/quorum.hpp"

#include <filesystem>
#include <set>
#include <stdexcept>

#include "core/compression/codecs.hpp"
#include "real/torch_tensor.hpp"

namespace apiary::real {

namespace moe_wire {

using Shape = moe::TensorShape;

Shape shape_of(const torch::Tensor& t) { return Shape{t.sizes().vec()}; }

// A tensor in a payload: float32 as its raw bytes, any other codec as compression::encode's
// self-describing blob.
Payload pack(const torch::Tensor& t, std::uint8_t codec) {
  if (codec == 0) return tensor_to_payload(t);
  const torch::Tensor c = t.detach().to(torch::kFloat).contiguous();
  return Payload::bytes(compression::encode(std::span<const float>(c.data_ptr<float>(), static_cast<std::size_t>(c.numel())),
                                            static_cast<compression::Codec>(codec)));
}

torch::Tensor unpack(const Payload& p, const std::vector<std::int64_t>& dims, std::uint8_t codec) {
  if (codec == 0) return payload_to_tensor(p, dims);
  std::int64_t n = 1;
  for (auto d : dims) n *= d;
  if (!p.has_data()) throw std::invalid_argument("a compressed tensor without bytes");
  std::vector<float> v = compression::decode(p.data(), static_cast<std::size_t>(n));
  if (static_cast<std::int64_t>(v.size()) != n)
    throw std::invalid_argument("the payload holds " + std::to_string(v.size()) + " values, the shape " + std::to_string(n));
  return torch::from_blob(v.data(), dims, torch::kFloat).clone();
}

}  // namespace moe_wire

using moe_wire::Shape;
using moe_wire::shape_of;
using moe::BackwardRequest;
using moe::ForwardRequest;
using moe::InfoRequest;
using moe::TensorReply;
using moe_wire::pack;
using moe_wire::unpack;

namespace {

ExpertInfo info_of_hosted(const HostedExpert& e) { return ExpertInfo{e.input_dim, e.output_dim, e.sequence, e.kind}; }

Error bad_input(const std::string& uid, const HostedExpert& e, const std::vector<std::int64_t>& dims) {
  return Error{ErrorCode::kInvalidArgument, moe::misfit(uid, info_of_hosted(e), dims)};
}

}  // namespace

FfnExpertImpl::FfnExpertImpl(std::int64_t dim, std::int64_t hidden)
    : w1(register_module("w1", torch::nn::Linear(dim, hidden))),
      w2(register_module("w2", torch::nn::Linear(hidden, dim))),
      norm(register_module("norm", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))) {}

torch::Tensor FfnExpertImpl::forward(torch::Tensor x) { return norm(x + w2(torch::relu(w1(x)))); }

TransformerExpertImpl::TransformerExpertImpl(std::int64_t dim, std::int64_t heads, std::int64_t hidden)
    : attention(register_module("attention", torch::nn::MultiheadAttention(torch::nn::MultiheadAttentionOptions(dim, heads)))),
      norm1(register_module("norm1", torch::nn::LayerNorm(torch::nn::LayerNormOptions({dim})))),
      ffn(register_module("ffn", FfnExpert(dim, hidden))) {}

torch::Tensor TransformerExpertImpl::forward(torch::Tensor x) {
  const torch::Tensor s = x.transpose(0, 1);  // [seq, batch, dim] for the attention
  const torch::Tensor a = std::get<0>(attention(s, s, s)).transpose(0, 1);
  return ffn(norm1(x + a));
}

HostedExpert make_transformer_expert(std::int64_t dim, std::int64_t heads, std::int64_t hidden, double lr) {
  TransformerExpert m(dim, heads, hidden);
  HostedExpert e;
  e.module = m.ptr();
  e.forward = [m](const torch::Tensor& x) mutable { return m->forward(x); };
  e.optimizer = std::make_unique<torch::optim::SGD>(m->parameters(), torch::optim::SGDOptions(lr));
  e.input_dim = e.output_dim = dim;
  e.sequence = true;
  e.kind = "transformer";
  return e;
}

ExpertInfo RemoteExpert::info() {
  InfoRequest q{uid_};
  auto task = rpc_.call<ExpertInfo>(server_, std::move(q), timeout_);
  task.start();
  drive_([&] { return task.done(); });
  if (!task.done()) throw std::runtime_error("expert " + uid_ + ": the event loop stopped before the reply");
  Result<ExpertInfo> r = task.result();
  if (!r.ok()) throw std::runtime_error("expert " + uid_ + ": " + r.error().describe());
  return *r;
}

HostedExpert make_ffn_expert(std::int64_t dim, std::int64_t hidden, double lr) {
  FfnExpert m(dim, hidden);
  HostedExpert e;
  e.module = m.ptr();
  e.forward = [m](const torch::Tensor& x) mutable { return m->forward(x); };
  e.optimizer = std::make_unique<torch::optim::SGD>(m->parameters(), torch::optim::SGDOptions(lr));
  e.input_dim = e.output_dim = dim;
  return e;
}

struct ExpertServer::Job {
  Endpoint from;
  std::uint64_t keep = 0;
  torch::Tensor x, g;
  std::uint8_t codec = 0;  // the reply's, as the request's
  TimePoint arrived{};
  std::optional<Result<TensorReply>> reply;
  Notifier done;
};

ExpertServer::ExpertServer(Runtime& rt, Rpc& rpc, ServerOptions options) : rt_(rt), opt_(options) {
  if (opt_.max_batch < 1 || opt_.min_batch < 1) throw std::invalid_argument("batch sizes must be at least 1");
  rpc.serve<ForwardRequest, TensorReply>([this](const Endpoint& from, ForwardRequest q) -> Task<Result<TensorReply>> {
    HostedExpert* e = find(q.uid);
    if (!e) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    if (!moe::fits(info_of_hosted(*e), q.shape.dims)) co_return bad_input(q.uid, *e, q.shape.dims);
    auto job = std::make_shared<Job>();
    job->from = from;
    job->keep = q.keep;
    try {
      job->x = unpack(q.payload, q.shape.dims, q.codec);
      job->codec = q.codec;
    } catch (const std::exception& ex) {
      job->reply = Error{ErrorCode::kBadMessage, "expert " + q.uid + ": " + ex.what()};
    }
    if (job->reply) co_return std::move(*job->reply);
    Result<TensorReply> r = co_await enqueue(q.uid, false, job);
    co_return r;
  });
  rpc.serve<BackwardRequest, TensorReply>([this](const Endpoint& from, BackwardRequest q) -> Task<Result<TensorReply>> {
    HostedExpert* e = find(q.uid);
    if (!e) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    if (!moe::fits(info_of_hosted(*e), q.input.dims)) co_return bad_input(q.uid, *e, q.input.dims);
    {
      std::vector<std::int64_t> want = q.input.dims;
      want.back() = e->output_dim;
      if (q.grad.dims != want)
        co_return Error{ErrorCode::kInvalidArgument, "expert " + q.uid + ": output gradients must have the output's shape"};
    }
    const std::uint64_t in_bytes = q.input_bytes;
    if (q.payload.size() < in_bytes || !q.payload.has_data())
      co_return Error{ErrorCode::kBadMessage, "backward payload too short"};
    auto job = std::make_shared<Job>();
    job->from = from;
    job->keep = q.keep;
    try {
      auto bytes = q.payload.data();
      Payload xs = Payload::bytes(Bytes(bytes.begin(), bytes.begin() + static_cast<std::ptrdiff_t>(in_bytes)));
      Payload gs = Payload::bytes(Bytes(bytes.begin() + static_cast<std::ptrdiff_t>(in_bytes), bytes.end()));
      job->x = unpack(xs, q.input.dims, q.codec);
      job->g = unpack(gs, q.grad.dims, q.codec);
      job->codec = q.codec;
    } catch (const std::exception& ex) {
      job->reply = Error{ErrorCode::kBadMessage, "expert " + q.uid + ": " + ex.what()};
    }
    if (job->reply) co_return std::move(*job->reply);
    Result<TensorReply> r = co_await enqueue(q.uid, true, job);
    co_return r;
  });
  rpc.serve<InfoRequest, ExpertInfo>([this](const Endpoint&, InfoRequest q) -> Task<Result<ExpertInfo>> {
    HostedExpert* e = find(q.uid);
    if (!e) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    co_return info_of(*e);
  });
}

ExpertServer::~ExpertServer() { scope_.destroy_all(); }

Task<Result<TensorReply>> ExpertServer::enqueue(std::string uid, bool backward, std::shared_ptr<Job> job) {
  if (opt_.fail_probability > 0 && rt_.rng.uniform(0, 1) < opt_.fail_probability) {
    rt_.observer.count("moe.injected_failures");
    co_return Error{ErrorCode::kRejected, "expert " + uid + ": injected failure"};
  }
  job->arrived = rt_.now();
  const Lane key{uid, backward};
  lanes_[key].push_back(job);
  arrivals_.notify_all();  // a lane holding out for min_batch may be full now
  schedule(key);
  while (!job->reply) co_await job->done.wait();
  co_return std::move(*job->reply);
}

void ExpertServer::schedule(const Lane& key) {
  if (scheduled_.count(key)) return;
  auto& q = lanes_[key];
  if (q.empty()) return;
  scheduled_.insert(key);
  scope_.spawn([](ExpertServer* self, Lane key) -> Task<void> {
    co_await sleep_on(self->rt_.timers, Duration::zero());  // requests arriving meanwhile join the batch
    // Below min_batch rows, wait for more, up to batch_wait after the oldest request.
    auto& q = self->lanes_[key];
    if (!q.empty()) {
      const std::int64_t min_batch = self->opt_.min_batch;
      std::function<bool()> enough = [&q, min_batch] {
        std::int64_t rows = 0;
        for (const auto& j : q) rows += j->x.size(0);
        return rows >= min_batch;
      };
      co_await wait_until(self->rt_, self->arrivals_, q.front()->arrived + self->opt_.batch_wait, std::move(enough));
    }
    self->scheduled_.erase(key);
    self->run_batch(key);
    self->schedule(key);
  }(this, key));
}

void ExpertServer::run_batch(const Lane& key) {
  auto& q = lanes_[key];
  if (q.empty()) return;
  // The oldest requests first, as many as fit in max_batch rows (at least one), with the same
  // trailing shape as the oldest.
  std::vector<std::shared_ptr<Job>> jobs;
  std::int64_t rows = 0;
  const auto trailing = q.front()->x.sizes().slice(1).vec();
  for (auto it = q.begin(); it != q.end();) {
    const std::int64_t n = (*it)->x.size(0);
    if (!jobs.empty() && rows + n > opt_.max_batch) break;
    if ((*it)->x.sizes().slice(1).vec() != trailing) {
      ++it;
      continue;
    }
    rows += n;
    jobs.push_back(*it);
    it = q.erase(it);
  }
  HostedExpert* e = find(key.first);
  auto fail_all = [&](const std::string& why) {
    for (auto& j : jobs) j->reply = Error{ErrorCode::kInvalidArgument, "expert " + key.first + ": " + why};
  };
  try {
    if (!e) throw std::runtime_error("removed");
    if (key.second)
      backward_batch(key.first, *e, jobs);
    else
      forward_batch(key.first, *e, jobs);
  } catch (const std::exception& ex) {
    fail_all(ex.what());
  }
  rt_.observer.count("moe.batches");
  rt_.observer.sample("moe.batch_requests", static_cast<double>(jobs.size()));
  rt_.observer.sample("moe.batch_rows", static_cast<double>(rows));
  for (auto& j : jobs) {
    if (!j->reply) j->reply = Error{ErrorCode::kInvalidArgument, "expert " + key.first + ": no result"};
    j->done.notify_all();
  }
}

void ExpertServer::forward_batch(const std::string& uid, HostedExpert& e, std::vector<std::shared_ptr<Job>>& jobs) {
  if (jobs.size() == 1 && jobs[0]->keep) {  // alone: keep the graph, the backward need not recompute
    auto& j = *jobs[0];
    torch::AutoGradMode grad_on(true);
    torch::Tensor x = j.x.requires_grad_(true);
    torch::Tensor y = e.forward(x);
    j.reply = TensorReply{shape_of(y), pack(y, j.codec), j.codec};
    keep(j.from, uid, j.keep, x, y);
  } else {
    torch::NoGradGuard no_grad;
    std::vector<torch::Tensor> xs;
    for (auto& j : jobs) xs.push_back(j->x);
    const torch::Tensor y = e.forward(jobs.size() == 1 ? xs[0] : torch::cat(xs, 0));
    std::int64_t at = 0;
    for (auto& j : jobs) {
      const torch::Tensor part = y.narrow(0, at, j->x.size(0));
      at += j->x.size(0);
      j->reply = TensorReply{shape_of(part), pack(part.contiguous(), j->codec), j->codec};
    }
  }
  rt_.observer.count("moe.forwards", static_cast<std::int64_t>(jobs.size()));
}

void ExpertServer::backward_batch(const std::string& uid, HostedExpert& e, std::vector<std::shared_ptr<Job>>& jobs) {
  torch::AutoGradMode grad_on(true);  // (this may run inside a client's backward, in-process)
  e.optimizer->zero_grad();
  bool done = false;
  if (jobs.size() == 1) {
    auto& j = *jobs[0];
    if (auto kept = take(j.from, uid, j.keep)) {
      try {
        kept->second.backward(j.g);
        j.reply = TensorReply{shape_of(kept->first.grad()), pack(kept->first.grad(), j.codec), j.codec};
        done = true;
        rt_.observer.count("moe.backwards_from_kept");
      } catch (const c10::Error&) {
        e.optimizer->zero_grad();  // the parameters moved since that forward: recompute
      }
    }
  } else {
    for (auto& j : jobs) take(j->from, uid, j->keep);  // batched: recompute once for all
  }
  if (!done) {
    std::vector<torch::Tensor> xs, gs;
    for (auto& j : jobs) {
      xs.push_back(j->x);
      gs.push_back(j->g);
    }
    torch::Tensor x = (jobs.size() == 1 ? xs[0] : torch::cat(xs, 0)).detach().requires_grad_(true);
    e.forward(x).backward(jobs.size() == 1 ? gs[0] : torch::cat(gs, 0));
    std::int64_t at = 0;
    for (auto& j : jobs) {
      const torch::Tensor part = x.grad().narrow(0, at, j->x.size(0)).contiguous();
      at += j->x.size(0);
      j->reply = TensorReply{shape_of(part), pack(part, j->codec), j->codec};
    }
  }
  e.optimizer->step();  // one step per batch; the expert learns from every client, asynchronously
  ++e.updates;
  rt_.observer.count("moe.backwards", static_cast<std::int64_t>(jobs.size()));
}

ExpertInfo ExpertServer::info_of(const HostedExpert& e) {
  return ExpertInfo{e.input_dim, e.output_dim, e.sequence, e.kind};
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
  return unpack(r->payload, r->shape.dims, r->codec);
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
  const std::uint8_t c = codec_for(x);
  ForwardRequest q{uid_, shape_of(x), keep, pack(x, c), c};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

torch::Tensor RemoteExpert::call_backward(const torch::Tensor& x, const torch::Tensor& grad_output, std::uint64_t keep) {
  const std::uint8_t c = codec_for(x);
  Payload xs = pack(x, c), gs = pack(grad_output, c);
  Bytes both(xs.data().begin(), xs.data().end());
  both.insert(both.end(), gs.data().begin(), gs.data().end());
  BackwardRequest q{uid_, shape_of(x), shape_of(grad_output), keep, Payload::bytes(std::move(both)), c, xs.size()};
  return call(rpc_, server_, std::move(q), timeout_, drive_, uid_);
}

// An expert's output computed already (in the layer's parallel round of calls), as a node of the
// autograd graph whose backward asks that expert for the input gradients.
struct PrecomputedRemoteFunction : torch::autograd::Function<PrecomputedRemoteFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor out,
                               std::int64_t self, std::int64_t keep) {
    ctx->save_for_backward({x});
    ctx->saved_data["self"] = self;
    ctx->saved_data["keep"] = keep;
    return out;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* expert = reinterpret_cast<RemoteExpert*>(ctx->saved_data["self"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    torch::Tensor gx;
    try {
      gx = expert->call_backward(x, grads[0], static_cast<std::uint64_t>(ctx->saved_data["keep"].toInt()));
    } catch (const std::runtime_error&) {
      gx = torch::zeros_like(x);  // the expert failed after answering: it contributes no gradient
      expert->count_backward_failure();
    }
    return {gx, torch::Tensor(), torch::Tensor(), torch::Tensor()};
  }
};

Task<Result<TensorReply>> RemoteExpert::start_forward(torch::Tensor x, std::uint64_t keep, Duration timeout) {
  const std::uint8_t c = codec_for(x);
  ForwardRequest q{uid_, shape_of(x), keep, pack(x, c), c};
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return r;
}

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
  Payload xs = pack(x, c), gs = pack(grad_output, c);
  Bytes both(xs.data().begin(), xs.data().end());
  both.insert(both.end(), gs.data().begin(), gs.data().end());
  BackwardRequest q{uid_, shape_of(x), shape_of(grad_output), keep, Payload::bytes(std::move(both)), c, xs.size()};
  Result<TensorReply> r = co_await rpc_.call<TensorReply>(server_, std::move(q), timeout);
  co_return to_tensor(r);
}

RemoteMixtureOfExpertsImpl::RemoteMixtureOfExpertsImpl(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MoeOptions options,
                                                       RemoteExpert::Drive drive)
    : rt_(rt),
      rpc_(rpc),
      opt_(std::move(options)),
      drive_(std::move(drive)),
      finder_(rt, dht, opt_.prefix, opt_.grid,
              moe::FinderConfig{8, 3, std::chrono::seconds(30),
                                opt_.cache_ttl}) {
  if (opt_.switch_mode) {
    opt_.per_sample = true;
    opt_.k_best = 1;
    opt_.k_min = std::min<std::size_t>(opt_.k_min, 1);
  }
  std::int64_t scores = 0;
  for (auto g : opt_.grid) scores += g;
  gate = register_module("gate", torch::nn::Linear(opt_.dim, scores));
}

torch::Tensor RemoteMixtureOfExpertsImpl::forward(torch::Tensor x) {
  if (x.dim() != 2 || x.size(1) != opt_.dim)
    throw std::invalid_argument("the mixture takes [batch, " + std::to_string(opt_.dim) + "] inputs");
  const torch::Tensor logits = gate(x);  // [batch, sum(grid)]
  std::vector<torch::Tensor> per_dim;
  std::int64_t at = 0;
  for (auto g : opt_.grid) {
    per_dim.push_back(logits.narrow(1, at, g));
    at += g;
  }
  if (opt_.per_sample) return forward_per_sample(x, per_dim);
  std::set<std::string> failed;
  for (std::size_t attempt = 0; attempt < std::max<std::size_t>(1, opt_.searches); ++attempt) {
    // Route the batch: the k best alive experts by the batch-mean gate scores (skipping failures).
    std::vector<std::vector<float>> mean;
    for (const auto& d : per_dim) {
      const torch::Tensor m = d.detach().mean(0).contiguous();
      mean.emplace_back(m.data_ptr<float>(), m.data_ptr<float>() + m.numel());
    }
    auto search = finder_.find_best(mean, opt_.k_best + failed.size());
    search.start();
    drive_([&] { return search.done(); });
    if (!search.done()) throw std::runtime_error("expert search did not finish");
    std::vector<moe::FoundExpert> chosen;
    for (auto& f : search.result())
      if (!failed.count(f.uid) && chosen.size() < opt_.k_best) chosen.push_back(f);

    // Call them all at once; stop waiting once k_min answered and the grace period passed.
    for (const auto& e : experts_)  // the last forward's experts whose backward failed
      if (e->backward_failures()) rt_.observer.count("moe.backward_failures", static_cast<std::int64_t>(e->backward_failures()));
    // Earlier forwards' graphs may still be back-propagated: their experts stay alive a while.
    for (auto& e : experts_) retired_.push_back(std::move(e));
    while (retired_.size() > 64) retired_.pop_front();
    experts_.clear();
    std::vector<std::uint64_t> keeps;
    for (std::size_t j = 0; j < chosen.size(); ++j) {
      experts_.push_back(std::make_unique<RemoteExpert>(rpc_, chosen[j].server, chosen[j].uid, drive_, opt_.backward_timeout));
      experts_.back()->set_codec(opt_.codec);
      keeps.push_back(experts_.back()->next_keep());
    }
    // The quorum rule (core/moe/quorum.hpp); calls still in flight when it is met are abandoned
    // with `inflight`, at the end of this attempt.
    std::vector<std::optional<torch::Tensor>> outputs(chosen.size());
    TaskScope inflight;
    const torch::Tensor input = x.detach();
    std::function<Task<Result<TensorReply>>(std::size_t)> call = [&](std::size_t j) {
      return experts_[j]->start_forward(input, keeps[j], opt_.forward_timeout);
    };
    std::function<bool(std::size_t, const Result<TensorReply>&)> accept = [&](std::size_t j, const Result<TensorReply>& r) {
      if (!r.ok()) return false;
      try {
        torch::Tensor y = unpack(r->payload, r->shape.dims, r->codec);
        if (y.sizes() != x.sizes()) return false;
        outputs[j] = std::move(y);
        return true;
      } catch (const std::invalid_argument&) {
        return false;
      }
    };
    auto quorum = moe::call_quorum<TensorReply>(rt_, inflight, chosen.size(), std::move(call), std::move(accept),
                                                moe::QuorumRule{opt_.k_min, opt_.timeout_after_k_min, opt_.forward_timeout});
    quorum.start();
    drive_([&] { return quorum.done(); });
    if (!quorum.done()) throw std::runtime_error("the expert calls did not finish");
    std::vector<std::size_t> ok;
    std::vector<torch::Tensor> outs;
    for (std::size_t j = 0; j < chosen.size(); ++j) {
      if (!outputs[j]) {
        failed.insert(chosen[j].uid);
        rt_.observer.count("moe.expert_failures");
        continue;
      }
      ok.push_back(j);
      outs.push_back(*outputs[j]);
    }
    if (ok.size() < std::min(opt_.k_min, chosen.size()) || ok.empty()) {
      rt_.observer.count("moe.researches");
      continue;
    }
    // Mix by the softmax of each sample's gate scores over the experts that answered.
    std::vector<torch::Tensor> gate_scores;
    for (auto j : ok) {
      torch::Tensor s = torch::zeros({x.size(0)}, x.options());
      for (std::size_t d = 0; d < opt_.grid.size(); ++d) {
        const auto u = moe::ExpertUid::parse(chosen[j].uid, opt_.grid);
        s = s + per_dim[d].select(1, u->coords[d]);
      }
      gate_scores.push_back(s);
    }
    const torch::Tensor weights = torch::softmax(torch::stack(gate_scores, 1), 1);  // [batch, answered]
    torch::Tensor y = torch::zeros_like(x);
    last_responders_.clear();
    for (std::size_t n = 0; n < ok.size(); ++n) {
      const auto j = ok[n];
      torch::Tensor out = PrecomputedRemoteFunction::apply(x, outs[n], reinterpret_cast<std::int64_t>(experts_[j].get()),
                                                           static_cast<std::int64_t>(keeps[j]));
      y = y + weights.select(1, static_cast<std::int64_t>(n)).unsqueeze(1) * out;
      last_responders_.push_back(chosen[j].uid);
    }
    return y;
  }
  throw std::runtime_error("fewer than " + std::to_string(opt_.k_min) + " experts answered after " +
                           std::to_string(opt_.searches) + " searches");
}

// The experts one per-sample forward called: which rows each got and where its output sits in
// the concatenated outputs. Its backward asks all of them for input gradients at once.
struct RemoteMixtureOfExpertsImpl::CallSet {
  std::vector<std::unique_ptr<RemoteExpert>> experts;
  std::vector<torch::Tensor> rows;  // int64 sample indices per expert
  std::vector<std::uint64_t> keeps;
  std::vector<std::int64_t> offsets;  // into the concatenated outputs
  Runtime* rt = nullptr;
  RemoteExpert::Drive drive;
  Duration timeout{};
};

namespace {

// y_all = the experts' outputs, concatenated; backward: every expert's backward in parallel, its
// input gradients added into the rows it served (a failed expert contributes none).
struct ParallelExpertsFunction : torch::autograd::Function<ParallelExpertsFunction> {
  static torch::Tensor forward(torch::autograd::AutogradContext* ctx, torch::Tensor x, torch::Tensor y_all, std::int64_t calls) {
    ctx->save_for_backward({x});
    ctx->saved_data["calls"] = calls;
    return y_all;
  }
  static torch::autograd::tensor_list backward(torch::autograd::AutogradContext* ctx, torch::autograd::tensor_list grads) {
    auto* cs = reinterpret_cast<RemoteMixtureOfExpertsImpl::CallSet*>(ctx->saved_data["calls"].toInt());
    const torch::Tensor x = ctx->get_saved_variables()[0];
    const torch::Tensor g = grads[0];
    const std::size_t n = cs->experts.size();
    std::vector<std::optional<Result<torch::Tensor>>> out(n);
    std::vector<Task<void>> calls;
    for (std::size_t j = 0; j < n; ++j) {
      const std::int64_t rows = cs->rows[j].size(0);
      torch::Tensor xj = x.index_select(0, cs->rows[j]);
      torch::Tensor gj = g.narrow(0, cs->offsets[j], rows).contiguous();
      calls.push_back([](Task<Result<torch::Tensor>> t, std::optional<Result<torch::Tensor>>* o) -> Task<void> {
        *o = co_await std::move(t);
      }(cs->experts[j]->backward_async(xj, gj, cs->keeps[j], cs->timeout), &out[j]));
      calls.back().start();
    }
    const TimePoint start = cs->rt->now();
    cs->drive([&] {
      return std::all_of(out.begin(), out.end(), [](const auto& o) { return o.has_value(); }) ||
             cs->rt->now() - start >= cs->timeout;
    });
    torch::Tensor gx = torch::zeros_like(x);
    for (std::size_t j = 0; j < n; ++j) {
      if (out[j] && out[j]->ok() && (**out[j]).sizes() == torch::IntArrayRef{cs->rows[j].size(0), x.size(1)}) {
        gx.index_add_(0, cs->rows[j], **out[j]);
      } else {
        cs->rt->observer.count("moe.backward_failures");
      }
    }
    return {gx, torch::Tensor(), torch::Tensor()};
  }
};

}  // namespace

torch::Tensor RemoteMixtureOfExpertsImpl::forward_per_sample(const torch::Tensor& x, const std::vector<torch::Tensor>& per_dim) {
  const std::int64_t batch = x.size(0);
  const std::size_t dims = opt_.grid.size();
  std::vector<torch::Tensor> scores_cpu;
  for (const auto& d : per_dim) scores_cpu.push_back(d.detach().to(torch::kFloat).contiguous());
  std::set<std::string> failed;
  for (std::size_t attempt = 0; attempt < std::max<std::size_t>(1, opt_.searches); ++attempt) {
    // Each sample's k best alive experts (the finder's cache makes later samples cheap).
    std::vector<std::vector<moe::FoundExpert>> routes(static_cast<std::size_t>(batch));
    for (std::int64_t b = 0; b < batch; ++b) {
      std::vector<std::vector<float>> sc;
      for (const auto& d : scores_cpu) {
        const float* p = d.data_ptr<float>() + b * d.size(1);
        sc.emplace_back(p, p + d.size(1));
      }
      auto search = finder_.find_best(std::move(sc), opt_.k_best + failed.size());
      search.start();
      drive_([&] { return search.done(); });
      if (!search.done()) throw std::runtime_error("expert search did not finish");
      for (auto& f : search.result())
        if (!failed.count(f.uid) && routes[static_cast<std::size_t>(b)].size() < opt_.k_best)
          routes[static_cast<std::size_t>(b)].push_back(f);
    }
    // Group the rows by expert and call every expert once, all at the same time.
    std::map<std::string, std::pair<Endpoint, std::vector<std::int64_t>>> by_expert;
    for (std::int64_t b = 0; b < batch; ++b)
      for (const auto& f : routes[static_cast<std::size_t>(b)]) {
        auto& e = by_expert[f.uid];
        e.first = f.server;
        e.second.push_back(b);
      }
    auto cs = std::make_shared<CallSet>();
    cs->rt = &rt_;
    cs->drive = drive_;
    cs->timeout = opt_.backward_timeout;
    std::vector<std::string> uids;
    std::vector<std::optional<Result<torch::Tensor>>> replies(by_expert.size());
    std::vector<Task<void>> calls;
    for (auto& [uid, e] : by_expert) {
      uids.push_back(uid);
      cs->experts.push_back(std::make_unique<RemoteExpert>(rpc_, e.first, uid, drive_, opt_.backward_timeout));
      cs->experts.back()->set_codec(opt_.codec);
      cs->rows.push_back(torch::tensor(e.second, torch::kLong));
      cs->keeps.push_back(cs->experts.back()->next_keep());
      torch::Tensor xe = x.detach().index_select(0, cs->rows.back());
      calls.push_back([](Task<Result<torch::Tensor>> t, std::optional<Result<torch::Tensor>>* o) -> Task<void> {
        *o = co_await std::move(t);
      }(cs->experts.back()->forward_async(xe, cs->keeps.back(), opt_.forward_timeout), &replies[uids.size() - 1]));
      calls.back().start();
    }
    auto answered = [&](std::size_t j) {
      return replies[j] && replies[j]->ok() &&
             (**replies[j]).sizes() == torch::IntArrayRef{cs->rows[j].size(0), x.size(1)};
    };
    // Enough when every sample has min(k_min, its routes) answers; then a grace period for the rest.
    auto samples_served = [&] {
      std::vector<std::size_t> got(static_cast<std::size_t>(batch), 0);
      for (std::size_t j = 0; j < uids.size(); ++j)
        if (answered(j))
          for (auto b : by_expert[uids[j]].second) ++got[static_cast<std::size_t>(b)];
      for (std::int64_t b = 0; b < batch; ++b)
        if (got[static_cast<std::size_t>(b)] < std::min(opt_.k_min, routes[static_cast<std::size_t>(b)].size())) return false;
      return true;
    };
    const TimePoint start = rt_.now();
    std::optional<TimePoint> served_at;
    drive_([&] {
      const TimePoint now = rt_.now();
      if (!served_at && samples_served()) served_at = now;
      const bool all = std::all_of(replies.begin(), replies.end(), [](const auto& r) { return r.has_value(); });
      return all || now - start >= opt_.forward_timeout || (served_at && now - *served_at >= opt_.timeout_after_k_min);
    });
    const bool enough = samples_served();
    calls.clear();  // abandons the calls still in flight
    std::vector<std::size_t> ok;
    for (std::size_t j = 0; j < uids.size(); ++j) {
      if (answered(j)) {
        ok.push_back(j);
      } else {
        failed.insert(uids[j]);
        rt_.observer.count("moe.expert_failures");
      }
    }
    if (!enough || ok.empty()) {
      rt_.observer.count("moe.researches");
      continue;
    }
    // The answering experts' outputs as one tensor whose backward calls them all in parallel.
    auto kept = std::make_shared<CallSet>();
    kept->rt = &rt_;
    kept->drive = drive_;
    kept->timeout = opt_.backward_timeout;
    std::vector<torch::Tensor> outs, rows;
    std::vector<std::vector<torch::Tensor>> coords(dims);
    std::int64_t at = 0;
    last_responders_.clear();
    for (auto j : ok) {
      kept->experts.push_back(std::move(cs->experts[j]));
      kept->rows.push_back(cs->rows[j]);
      kept->keeps.push_back(cs->keeps[j]);
      kept->offsets.push_back(at);
      at += cs->rows[j].size(0);
      outs.push_back(**replies[j]);
      rows.push_back(cs->rows[j]);
      const auto u = moe::ExpertUid::parse(uids[j], opt_.grid);
      for (std::size_t d = 0; d < dims; ++d)
        coords[d].push_back(torch::full({cs->rows[j].size(0)}, static_cast<std::int64_t>(u->coords[d]), torch::kLong));
      last_responders_.push_back(uids[j]);
    }
    if (torch::GradMode::is_enabled()) {  // a backward may come: keep its experts a while
      recent_.push_back(kept);
      while (recent_.size() > 16) recent_.pop_front();
    }
    const torch::Tensor b_idx = torch::cat(rows);
    const torch::Tensor y_all = ParallelExpertsFunction::apply(x, torch::cat(outs), reinterpret_cast<std::int64_t>(kept.get()));
    torch::Tensor w;
    if (opt_.switch_mode) {
      // The gate's probability of the chosen expert: the product of the per-dimension softmaxes.
      w = torch::ones({b_idx.size(0)}, x.options());
      torch::Tensor balance = torch::zeros({}, x.options());
      for (std::size_t d = 0; d < dims; ++d) {
        const torch::Tensor prob = torch::softmax(per_dim[d], 1);  // [batch, g_d]
        w = w * prob.index({b_idx, torch::cat(coords[d])});
        const torch::Tensor share = torch::bincount(torch::cat(coords[d]), {}, static_cast<std::int64_t>(opt_.grid[d]))
                                        .to(x.dtype()) / static_cast<double>(b_idx.size(0));
        balance = balance + static_cast<double>(opt_.grid[d]) * (share * prob.mean(0)).sum();
      }
      balance_loss_ = balance / static_cast<double>(dims);
    } else {
      // Softmax of each sample's gate scores over its experts that answered.
      torch::Tensor s = torch::zeros({b_idx.size(0)}, x.options());
      for (std::size_t d = 0; d < dims; ++d) s = s + per_dim[d].index({b_idx, torch::cat(coords[d])});
      const std::int64_t n_ok = static_cast<std::int64_t>(ok.size());
      std::vector<torch::Tensor> e_idx;
      for (std::int64_t e = 0; e < n_ok; ++e)
        e_idx.push_back(torch::full({kept->rows[static_cast<std::size_t>(e)].size(0)}, e, torch::kLong));
      const torch::Tensor ei = torch::cat(e_idx);
      torch::Tensor m = torch::full({batch, n_ok}, -std::numeric_limits<float>::infinity(), x.options());
      m = m.index_put({b_idx, ei}, s);
      w = torch::softmax(m, 1).index({b_idx, ei});
    }
    last_routes_.assign(static_cast<std::size_t>(batch), {});
    for (std::int64_t b = 0; b < batch; ++b)
      for (const auto& f : routes[static_cast<std::size_t>(b)]) last_routes_[static_cast<std::size_t>(b)].push_back(f.uid);
    return torch::zeros_like(x).index_add(0, b_idx, w.unsqueeze(1) * y_all);
  }
  throw std::runtime_error("fewer than " + std::to_string(opt_.k_min) + " experts answered every sample after " +
                           std::to_string(opt_.searches) + " searches");
}

torch::Tensor RemoteExpert::forward(torch::Tensor x) {
  return RemoteExpertFunction::apply(x, reinterpret_cast<std::int64_t>(this));
}

}  // namespace apiary::real
