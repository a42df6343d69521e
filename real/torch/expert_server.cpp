#include "real/torch/expert_server.hpp"

#include <filesystem>
#include <stdexcept>

#include "real/torch/tensor.hpp"

namespace apiary::real {


using Shape = moe::TensorShape;
using moe::BackwardRequest;
using moe::ForwardRequest;
using moe::InfoRequest;
using moe::TensorReply;

namespace {

ExpertInfo info_of_hosted(const HostedExpert& e) { return ExpertInfo{e.input_dim, e.output_dim, e.sequence, e.kind}; }

Error bad_input(const std::string& uid, const HostedExpert& e, const std::vector<std::int64_t>& dims) {
  return Error{ErrorCode::kInvalidArgument, moe::misfit(uid, info_of_hosted(e), dims)};
}

}  // namespace

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
  scope_.spawn([](ExpertServer* self, Lane lane) -> Task<void> {
    co_await sleep_on(self->rt_.timers, Duration::zero());  // requests arriving meanwhile join the batch
    // Below min_batch rows, wait for more, up to batch_wait after the oldest request.
    auto& waiting = self->lanes_[lane];
    if (!waiting.empty()) {
      const std::int64_t min_batch = self->opt_.min_batch;
      std::function<bool()> enough = [&waiting, min_batch] {
        std::int64_t rows = 0;
        for (const auto& j : waiting) rows += j->x.size(0);
        return rows >= min_batch;
      };
      co_await wait_until(self->rt_, self->arrivals_, waiting.front()->arrived + self->opt_.batch_wait, std::move(enough));
    }
    self->scheduled_.erase(lane);
    self->run_batch(lane);
    self->schedule(lane);
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


}  // namespace apiary::real
