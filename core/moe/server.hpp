#pragma once
// An expert server, written once for every world: it serves the expert protocol
// (core/moe/protocol.hpp), checks each request against the expert's schema, queues requests per
// expert and batches them, and hands each batch to an ExpertBackend, which computes:
//
//   * LibTorch modules with their own optimizers (real/torch/expert_server.hpp), live;
//   * a device model that takes rows / speed seconds per batch and answers size-only tensors
//     (harness/workloads/dmoe.cpp), in ns-3 and in one live process;
//   * both (TimedBackend below): real math, at a modelled device's speed, in simulated time.
//
// Batching: requests to one expert queue up (forwards and backwards in separate lanes). A lane
// runs one batch at a time: the oldest request first, then the next ones of the same trailing
// shape up to max_batch rows. While fewer than min_batch rows wait, the oldest is held up to
// batch_wait for company. Requests that arrive while a batch runs form the next one.
//
// A request for an expert not hosted here, with inputs the expert does not take, or with output
// gradients of the wrong shape, gets an error reply at once; the server keeps serving.
#include <cstdint>
#include <deque>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "core/moe/protocol.hpp"
#include "core/runtime/rpc.hpp"

namespace apiary::moe {

// One request waiting at the server.
struct ExpertJob {
  Endpoint from;
  bool backward = false;
  std::uint64_t keep = 0;  // the forward whose activations the server may keep (0: none)
  TensorShape input;       // [rows, ...]
  TensorShape grad;        // backward: the output gradients' shape
  Payload payload;         // the inputs; a backward's holds the output gradients after them
  std::uint64_t input_bytes = 0;
  std::uint8_t codec = 0;  // of the payload; the reply uses the same
  TimePoint arrived{};
  std::optional<Result<TensorReply>> reply;

  std::int64_t rows() const { return input.dims.empty() ? 0 : input.dims[0]; }
  // The payload's parts: the inputs, and a backward's output gradients (views, no copy).
  Payload inputs() const;
  Payload output_grads() const;
};

// What computes an expert server's batches.
class ExpertBackend {
 public:
  virtual ~ExpertBackend() = default;
  // The schema of the expert `uid`, or nullopt when it is not hosted here.
  virtual std::optional<ExpertInfo> info(const std::string& uid) = 0;
  // Runs one batch of requests to one expert (all forwards or all backwards; a backward also
  // steps the expert) and sets every job's reply. It may take time (a device model sleeps on the
  // runtime's timers). An exception fails the jobs left without a reply, with its message.
  virtual Task<void> run(const std::string& uid, bool backward, std::vector<ExpertJob*> jobs) = 0;
};

// A device model in front of another backend: each batch occupies one device for
// rows / speed seconds (forward and backward speeds in rows per second), one batch at a time in
// the order they come; the inner backend computes the answers. With `inner` a LibTorch backend,
// a simulated run does the real math at the modelled speed.
class TimedBackend final : public ExpertBackend {
 public:
  TimedBackend(Runtime& rt, ExpertBackend& inner, double forward_speed, double backward_speed);
  std::optional<ExpertInfo> info(const std::string& uid) override { return inner_.info(uid); }
  Task<void> run(const std::string& uid, bool backward, std::vector<ExpertJob*> jobs) override;

 private:
  Runtime& rt_;
  ExpertBackend& inner_;
  double forward_speed_, backward_speed_;
  TimePoint busy_until_{};
};

struct ServerOptions {
  std::int64_t max_batch = 4096;  // rows
  std::int64_t min_batch = 1;
  Duration batch_wait = Duration::zero();
  double fail_probability = 0;  // failure injection: a request fails (an error reply) with this probability
};

class ExpertServer {
 public:
  // Serves the expert protocol on `rpc` until destroyed. Throws std::invalid_argument for batch
  // sizes below 1.
  ExpertServer(Runtime& rt, Rpc& rpc, ExpertBackend& backend, ServerOptions options = {});
  ~ExpertServer();
  ExpertServer(const ExpertServer&) = delete;
  ExpertServer& operator=(const ExpertServer&) = delete;

 private:
  using Lane = std::pair<std::string, bool>;  // expert uid, backward
  std::optional<Error> check(const std::string& uid, const ExpertJob& job);
  Task<Result<TensorReply>> enqueue(std::string uid, std::shared_ptr<ExpertJob> job);
  void schedule(const Lane& lane);
  Task<void> run_lane(Lane lane);
  std::vector<std::shared_ptr<ExpertJob>> take_batch(std::deque<std::shared_ptr<ExpertJob>>& queue) const;

  Runtime& rt_;
  ExpertBackend& backend_;
  ServerOptions opt_;
  std::map<Lane, std::deque<std::shared_ptr<ExpertJob>>> lanes_;
  std::set<Lane> running_;  // lanes with a batch scheduled or running
  Notifier changed_;        // arrivals (a lane holding out for min_batch) and finished batches
  TaskScope scope_;
};

}  // namespace apiary::moe
