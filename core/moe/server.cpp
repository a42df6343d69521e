#include "core/moe/server.hpp"

#include <algorithm>
#include <stdexcept>

namespace apiary::moe {

namespace {

// Bytes [from, from + n) of a payload: a view of the same buffer, or size-only.
Payload part_of(const Payload& p, std::uint64_t from, std::uint64_t n) {
  if (!p.has_data()) return Payload::size_only(n);
  return Payload::view(p.owner(), p.data().subspan(static_cast<std::size_t>(from), static_cast<std::size_t>(n)));
}

}  // namespace

Payload ExpertJob::inputs() const {
  if (!backward) return payload;
  return part_of(payload, 0, std::min(input_bytes, payload.size()));
}

Payload ExpertJob::output_grads() const {
  const std::uint64_t at = std::min(input_bytes, payload.size());
  return part_of(payload, at, payload.size() - at);
}

TimedBackend::TimedBackend(Runtime& rt, ExpertBackend& inner, double forward_speed, double backward_speed)
    : rt_(rt), inner_(inner), forward_speed_(forward_speed), backward_speed_(backward_speed) {
  if (!(forward_speed > 0) || !(backward_speed > 0)) throw std::invalid_argument("device speeds must be positive");
}

Task<void> TimedBackend::run(const std::string& uid, bool backward, std::vector<ExpertJob*> jobs) {
  std::int64_t rows = 0;
  for (const auto* j : jobs) rows += j->rows();
  const double seconds = static_cast<double>(rows) / (backward ? backward_speed_ : forward_speed_);
  const TimePoint begin = std::max(rt_.now(), busy_until_);
  busy_until_ = begin + Duration(static_cast<std::int64_t>(seconds * 1e9));
  co_await sleep_on(rt_.timers, busy_until_ - rt_.now());
  co_await inner_.run(uid, backward, std::move(jobs));
}

ExpertServer::ExpertServer(Runtime& rt, Rpc& rpc, ExpertBackend& backend, ServerOptions options)
    : rt_(rt), backend_(backend), opt_(options) {
  if (opt_.max_batch < 1 || opt_.min_batch < 1) throw std::invalid_argument("batch sizes must be at least 1");
  rpc.serve<ForwardRequest, TensorReply>([this](const Endpoint& from, ForwardRequest q) -> Task<Result<TensorReply>> {
    auto job = std::make_shared<ExpertJob>();
    job->from = from;
    job->keep = q.keep;
    job->input = std::move(q.shape);
    job->payload = std::move(q.payload);
    job->codec = q.codec;
    Result<TensorReply> r = co_await enqueue(std::move(q.uid), std::move(job));
    co_return r;
  });
  rpc.serve<BackwardRequest, TensorReply>([this](const Endpoint& from, BackwardRequest q) -> Task<Result<TensorReply>> {
    auto job = std::make_shared<ExpertJob>();
    job->from = from;
    job->backward = true;
    job->keep = q.keep;
    job->input = std::move(q.input);
    job->grad = std::move(q.grad);
    job->payload = std::move(q.payload);
    job->input_bytes = q.input_bytes;
    job->codec = q.codec;
    Result<TensorReply> r = co_await enqueue(std::move(q.uid), std::move(job));
    co_return r;
  });
  rpc.serve<InfoRequest, ExpertInfo>([this](const Endpoint&, InfoRequest q) -> Task<Result<ExpertInfo>> {
    std::optional<ExpertInfo> info = backend_.info(q.uid);
    if (!info) co_return Error{ErrorCode::kInvalidArgument, "no expert " + q.uid + " here"};
    co_return *info;
  });
}

ExpertServer::~ExpertServer() { scope_.destroy_all(); }

std::optional<Error> ExpertServer::check(const std::string& uid, const ExpertJob& job) {
  const std::optional<ExpertInfo> info = backend_.info(uid);
  if (!info) return Error{ErrorCode::kInvalidArgument, "no expert " + uid + " here"};
  if (!fits(*info, job.input.dims)) return Error{ErrorCode::kInvalidArgument, misfit(uid, *info, job.input.dims)};
  if (job.backward) {
    std::vector<std::int64_t> want = job.input.dims;
    want.back() = info->output_dim;
    if (job.grad.dims != want)
      return Error{ErrorCode::kInvalidArgument, "expert " + uid + ": output gradients must have the output's shape"};
    if (job.input_bytes > job.payload.size()) return Error{ErrorCode::kBadMessage, "expert " + uid + ": backward payload too short"};
  }
  if (job.rows() < 1) return Error{ErrorCode::kInvalidArgument, "expert " + uid + ": an empty batch"};
  // One request never holds the device longer than a full batch would.
  if (job.rows() > opt_.max_batch)
    return Error{ErrorCode::kTooLarge, "expert " + uid + ": " + std::to_string(job.rows()) + " rows, over the server's " +
                                           std::to_string(opt_.max_batch) + " per batch"};
  // float32 travels raw: the payload must hold exactly the shape's values (other codecs are
  // self-describing and checked by the backend that decodes them).
  if (job.codec == 0) {
    const std::uint64_t in = 4 * static_cast<std::uint64_t>(job.input.elements());
    const std::uint64_t grad = job.backward ? 4 * static_cast<std::uint64_t>(job.grad.elements()) : 0;
    if ((job.backward ? job.input_bytes : job.payload.size()) != in || job.payload.size() != in + grad)
      return Error{ErrorCode::kBadMessage, "expert " + uid + ": the payload does not hold the tensors its shapes say"};
  }
  return std::nullopt;
}

Task<Result<TensorReply>> ExpertServer::enqueue(std::string uid, std::shared_ptr<ExpertJob> job) {
  if (auto e = check(uid, *job)) co_return *e;
  if (opt_.fail_probability > 0 && rt_.rng.uniform01() < opt_.fail_probability) {
    rt_.observer.count("moe.injected_failures");
    co_return Error{ErrorCode::kRejected, "expert " + uid + ": injected failure"};
  }
  job->arrived = rt_.now();
  const Lane lane{uid, job->backward};
  lanes_[lane].push_back(job);
  changed_.notify_all();  // a lane holding out for min_batch may have enough now
  schedule(lane);
  // The job lives in this frame too: if the server goes away first, the scope's destruction
  // abandons this wait with the rest.
  while (!job->reply) co_await changed_.wait();
  co_return std::move(*job->reply);
}

void ExpertServer::schedule(const Lane& lane) {
  if (running_.count(lane) || lanes_[lane].empty()) return;
  running_.insert(lane);
  scope_.spawn(run_lane(lane));
}

std::vector<std::shared_ptr<ExpertJob>> ExpertServer::take_batch(std::deque<std::shared_ptr<ExpertJob>>& queue) const {
  std::vector<std::shared_ptr<ExpertJob>> jobs;
  std::int64_t rows = 0;
  const std::vector<std::int64_t> trailing(queue.front()->input.dims.begin() + 1, queue.front()->input.dims.end());
  for (auto it = queue.begin(); it != queue.end();) {
    const std::int64_t n = (*it)->rows();
    if (!jobs.empty() && rows + n > opt_.max_batch) break;
    if (!std::equal(trailing.begin(), trailing.end(), (*it)->input.dims.begin() + 1, (*it)->input.dims.end())) {
      ++it;
      continue;
    }
    rows += n;
    jobs.push_back(*it);
    it = queue.erase(it);
  }
  return jobs;
}

Task<void> ExpertServer::run_lane(Lane lane) {
  co_await sleep_on(rt_.timers, Duration::zero());  // requests arriving at the same instant join the batch
  auto& queue = lanes_[lane];
  if (!queue.empty()) {
    // Below min_batch rows, wait for more, up to batch_wait after the oldest request.
    const std::int64_t min_batch = opt_.min_batch;
    std::function<bool()> enough = [&queue, min_batch] {
      std::int64_t rows = 0;
      for (const auto& j : queue) rows += j->rows();
      return rows >= min_batch;
    };
    co_await wait_until(rt_, changed_, queue.front()->arrived + opt_.batch_wait, std::move(enough));
  }
  if (!queue.empty()) {
    std::vector<std::shared_ptr<ExpertJob>> batch = take_batch(queue);
    std::vector<ExpertJob*> jobs;
    std::int64_t rows = 0;
    for (auto& j : batch) {
      jobs.push_back(j.get());
      rows += j->rows();
    }
    std::string failure;
    try {
      co_await backend_.run(lane.first, lane.second, std::move(jobs));
    } catch (const std::exception& e) {
      failure = e.what();
    }
    for (auto& j : batch)
      if (!j->reply)
        j->reply = Error{ErrorCode::kInvalidArgument, "expert " + lane.first + ": " + (failure.empty() ? "no result" : failure)};
    rt_.observer.count("moe.batches");
    rt_.observer.count(lane.second ? "moe.backwards" : "moe.forwards", static_cast<std::int64_t>(batch.size()));
    rt_.observer.sample("moe.batch_requests", static_cast<double>(batch.size()));
    rt_.observer.sample("moe.batch_rows", static_cast<double>(rows));
    changed_.notify_all();
  }
  running_.erase(lane);
  schedule(lane);  // what came meanwhile
}

}  // namespace apiary::moe
