#pragma once
// The client side of a DMoE layer, written once for every world: routing, the expert calls and
// their wait rule, searching again past failed experts, and the parallel backward. The LibTorch
// remote mixture (real/torch/mixture.hpp) and the DMoE workload's trainer (harness/workloads/
// dmoe.cpp) both run it; what differs is only what the tensors are (MixtureTensors): real
// LibTorch tensors, or size-only payloads of the modelled sizes.
//
// Routing (the gate scores every grid coordinate for every sample):
//   batch   the k best alive experts for the batch's mean scores; every sample goes to them all
//   sample  every sample goes to its own k best alive experts; each expert gets its rows
//   switch  per sample with k = 1 (the caller weighs each output by the gate's probability of
//           its expert and adds the load-balancing loss)
// Each expert chosen is called once, all at the same time. The layer stops waiting when every
// sample has min(k_min, its experts) answers and a grace period for the rest has passed, when
// all have answered, or at the forward timeout. With too few answers it searches again without
// the experts that failed, up to `searches` times. The backward asks every expert that answered
// for its rows' input gradients at once; one that fails then contributes none, like dropout.
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "core/moe/experts.hpp"
#include "core/moe/protocol.hpp"
#include "core/runtime/rpc.hpp"

namespace apiary::moe {

enum class Routing { kBatch, kSample, kSwitch };
const char* to_string(Routing r);
std::optional<Routing> parse_routing(std::string_view text);  // "batch" | "sample" | "switch"

struct MixtureConfig {
  std::string prefix = "ffn";
  std::vector<std::uint32_t> grid;
  Routing routing = Routing::kBatch;
  std::size_t k = 4;      // experts per sample (switch: 1)
  std::size_t k_min = 1;  // answers per sample that make a forward (switch: at most 1)
  Duration forward_timeout = std::chrono::seconds(10);
  Duration backward_timeout = std::chrono::seconds(10);
  Duration grace = std::chrono::seconds(1);  // after every sample has k_min answers
  std::size_t searches = 2;
  FinderConfig finder;
};

// The gate's scores: one row per sample, each row the scores of grid dimension 0's coordinates,
// then dimension 1's, ... (the layout of a [batch, sum(grid)] tensor).
struct GateScores {
  std::size_t batch = 0;
  std::vector<float> values;  // batch * sum(grid)
};

// The tensors a mixture moves, held by the caller. `rows` are sample indices into the batch;
// `slot` numbers an expert within one round of calls.
class MixtureTensors {
 public:
  struct Body {
    TensorShape shape;
    Payload payload;
    std::uint8_t codec = 0;
  };
  virtual ~MixtureTensors() = default;
  // Forward: the inputs of these samples.
  virtual Body inputs(const std::vector<std::int64_t>& rows) = 0;
  // Expert `slot`'s answer for `rows`: whether it is usable (decodes, has the right shape); a
  // usable one is kept by the callee.
  virtual bool take_output(std::size_t slot, const std::vector<std::int64_t>& rows, const TensorReply& reply) = 0;
  // Backward, for the plan's call `slot`: the output gradients of its rows, and its answer.
  virtual Body output_grads(std::size_t slot, const std::vector<std::int64_t>& rows) = 0;
  virtual bool take_input_grad(std::size_t slot, const std::vector<std::int64_t>& rows, const TensorReply& reply) = 0;
};

struct ExpertCall {
  FoundExpert expert;
  std::vector<std::int64_t> rows;  // the samples it got, ascending
  std::uint64_t keep = 0;          // the server may keep the activations under this id
  std::size_t slot = 0;            // its slot in the round that answered (take_output's)
};

// A forward that succeeded: the experts that answered, with their samples.
struct MixturePlan {
  std::vector<ExpertCall> calls;
  std::vector<std::vector<std::string>> routes;  // per sample: the experts it was sent to, best first
  std::size_t rounds = 0;                        // rounds of calls (1 + searches again)
};

class MixtureRouter {
 public:
  // Throws std::invalid_argument for an empty grid or k = 0.
  MixtureRouter(Runtime& rt, Rpc& rpc, dht::DhtNode& dht, MixtureConfig config);
  ~MixtureRouter();
  const MixtureConfig& config() const { return cfg_; }
  // Routes a batch, calls its experts and waits by the rule above. An error when fewer than
  // k_min experts answered some sample after every search, or for scores of the wrong size.
  Task<Result<MixturePlan>> forward(GateScores scores, MixtureTensors& tensors);
  // Calls fixed experts (no search) with the same wait rule: which answered, by slot.
  Task<std::vector<bool>> call(std::vector<ExpertCall> calls, std::size_t k_min, MixtureTensors& tensors);
  // Every planned expert's backward at once, waiting for all up to the backward timeout; which
  // answered, by the plan's call index (that index is the slot `tensors` sees).
  Task<std::vector<bool>> backward(MixturePlan plan, MixtureTensors& tensors);

 private:
  void check_bounded(TimePoint t0, Duration frozen0, Duration timeout);
  Task<std::vector<std::vector<FoundExpert>>> route(const GateScores& scores, const std::vector<std::string>& failed);
  Runtime& rt_;
  Rpc& rpc_;
  MixtureConfig cfg_;
  ExpertFinder finder_;
  std::size_t width_ = 0;  // sum(grid)
  std::uint64_t next_keep_ = 1;
  TaskScope late_;  // calls still running after the layer stopped waiting for them
};

}  // namespace apiary::moe
