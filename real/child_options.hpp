#pragma once
// The options of the child programs that live process swarms start (`apiary-train trainer`,
// `baseline`, `expert-server`, `dmoe-trainer`, `dmoe-baseline`), one typed struct per program
// family, and one table of their fields for both ends: the parent serialises a struct into the
// child's arguments (to_args), the child declares its flags from the same table, so a field
// added here is passed and parsed without another line anywhere. No LibTorch here.
#include <cstdint>
#include <cstdio>
#include <string>
#include <type_traits>
#include <vector>

namespace apiary::real {

struct TrainerOptions {
  std::string join;  // the seed DHT peer, IPV4:PORT
  std::uint32_t index = 0;
  bool newcomer = false;        // download the swarm's state before contributing
  std::string role = "full";    // full, client (never reduces nor leads), aux (trains nothing, helps average)
  std::string mode = "collaborative";  // collaborative | diloco
  std::uint32_t inner_steps = 50;      // diloco: local steps per outer step
  double outer_lr = 0.7, outer_momentum = 0.9;
  std::uint64_t seed = 1;       // model initialisation (the same for every trainer) and data order
  std::uint32_t steps = 100;
  std::uint64_t target_batch = 256;
  std::uint32_t batch_size = 32;
  std::uint32_t hidden = 128;
  double learning_rate = 0.05;
  double momentum = 0.9;
  std::uint64_t train_samples = 0;  // 0: all 60,000
  std::uint64_t eval_samples = 2000;
  std::uint32_t eval_every = 20;    // epochs
  double delay_ms = 0;              // emulated one-way latency on every received message
  double samples_per_second = 0;    // the device's speed: a batch takes at least B / speed (0: as fast as it runs)
  // Matchmaking, all-reduce and stepping: the scenario's training.* keys (harness/workloads/
  // training.cpp gives a trainer process these defaults when the scenario sets none).
  std::uint32_t target_group_size = 64;  // sized down to the trainers that report progress
  std::uint32_t min_group_size = 1;
  double budget_ms = 3000;          // matchmaking budget
  double poll_ms = 50;              // matchmaking: re-read the group key this often
  double progress_ms = 100;         // publish this trainer's progress and read the swarm's this often
  double max_wait_ms = 2000;        // a step waits this long for the swarm's target batch
  std::uint64_t min_part = 1024;    // all-reduce: a reducer gets at least this many values
  std::string parts = "minmax";     // all-reduce: minmax | proportional
  double sender_timeout_ms = 3000, reducer_timeout_ms = 6000;
  std::string codec = "float32";    // all-reduce wire codec (core/compression/codecs.hpp)
  std::uint64_t codec_min_elements = 0;
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  std::string out;                  // JSON lines
  std::string ready_file;           // "<endpoint>\n" once listening
  double max_seconds = 600;         // give up after this long
  std::string aggregation = "mean";  // mean | centered_clip (core/averaging/aggregate.hpp)
  double clip_tau = 1.0;
  std::uint32_t clip_iterations = 20;
  std::uint32_t powersgd_rank = 0;  // gradients as PowerSGD rank-r pairs (0: whole)
  std::string attack = "none";  // this trainer's attack (core/optim/attack.hpp)
  std::uint64_t attack_from_step = 0;
  std::uint32_t attack_every = 1;
  double attack_scale = 1000;
  std::uint64_t attack_delay = 1000;
  bool btard = false;  // BTARD's verification of every step (core/optim/btard.hpp)
  std::uint32_t btard_validators = 2;
  std::uint32_t btard_ban_quorum = 2;
  bool btard_false_accusations = false;  // an attacker also accuses whoever it validates
  double btard_check_tolerance = 1e-2, btard_recompute_tolerance = 1e-3, btard_phase_timeout_ms = 5000;
  std::string device = "cpu";  // where the model and data live: cpu, cuda, cuda:N
  std::uint32_t dht_k = 8;     // the DHT's bucket size and replication (dht.k)
};

// `v(flag, field, help)` for every field.
template <class V>
void visit_fields(TrainerOptions& o, V&& v) {
  v("--join", o.join, "a DHT peer to enter the swarm through (IPV4:PORT)");
  v("--index", o.index, "this trainer's index (data order, logs)");
  v("--newcomer", o.newcomer, "download the swarm's state before contributing");
  v("--role", o.role, "full, client (never reduces or leads) or aux (trains nothing, helps average)");
  v("--mode", o.mode, "collaborative or diloco");
  v("--inner-steps", o.inner_steps, "diloco: local steps per outer step");
  v("--outer-lr", o.outer_lr, "diloco: the outer Nesterov step's learning rate");
  v("--outer-momentum", o.outer_momentum, "diloco: the outer momentum");
  v("--seed", o.seed, "model initialisation and data order");
  v("--steps", o.steps, "global steps (diloco: outer steps)");
  v("--target-batch", o.target_batch, "samples per global step");
  v("--batch-size", o.batch_size, "a local batch");
  v("--hidden", o.hidden, "the MLP's hidden width");
  v("--lr", o.learning_rate, "SGD learning rate");
  v("--momentum", o.momentum, "SGD momentum");
  v("--train-samples", o.train_samples, "use the first N training images (0: all)");
  v("--eval-samples", o.eval_samples, "test images for the periodic evaluations");
  v("--eval-every", o.eval_every, "evaluate every N steps (0: only at the end)");
  v("--delay-ms", o.delay_ms, "emulated one-way latency on every received message");
  v("--samples-per-second", o.samples_per_second, "emulated device speed (0: unthrottled)");
  v("--target-group-size", o.target_group_size, "matchmaking: the group size aimed at (sized down to the reporting trainers)");
  v("--min-group-size", o.min_group_size, "matchmaking: the smallest group a step may take");
  v("--budget-ms", o.budget_ms, "matchmaking budget");
  v("--poll-ms", o.poll_ms, "matchmaking: re-read the group key this often");
  v("--progress-ms", o.progress_ms, "publish progress and read the swarm's this often");
  v("--max-wait-ms", o.max_wait_ms, "a step waits this long for the swarm's target batch, then computes on");
  v("--min-part", o.min_part, "all-reduce: a reducer gets at least this many values, or none");
  v("--parts", o.parts, "all-reduce: minmax or proportional");
  v("--sender-timeout-ms", o.sender_timeout_ms, "all-reduce: a reducer leaves out senders silent this long");
  v("--reducer-timeout-ms", o.reducer_timeout_ms, "all-reduce: a sender keeps its values for a part whose reducer is silent this long");
  v("--codec", o.codec, "all-reduce wire codec: float32, float16, scaled-float16, uniform8, quantile8 or blockwise8");
  v("--codec-min-elements", o.codec_min_elements, "all-reduce: tensors smaller than this travel as float32");
  v("--dataset-dir", o.dataset_dir, "Fashion-MNIST IDX files");
  v("--out", o.out, "JSON lines output");
  v("--ready-file", o.ready_file, "written once listening");
  v("--max-seconds", o.max_seconds, "give up after this long");
  v("--aggregation", o.aggregation, "how reducers combine gradients: mean or centered_clip");
  v("--clip-tau", o.clip_tau, "CenteredClip's radius");
  v("--clip-iterations", o.clip_iterations, "CenteredClip's iteration cap");
  v("--powersgd-rank", o.powersgd_rank, "send gradients as PowerSGD rank-r pairs (0: whole)");
  v("--attack", o.attack, "none, sign_flip, random_direction, label_flip, delayed, wrong_aggregate or break_commitment");
  v("--attack-from-step", o.attack_from_step, "the first global step attacked");
  v("--attack-every", o.attack_every, "attack every k-th step from then on");
  v("--attack-scale", o.attack_scale, "sign flip and wrong aggregate: the factor; random direction: the norm ratio");
  v("--attack-delay", o.attack_delay, "delayed: gradients on parameters this many steps old");
  v("--btard", o.btard, "verify every step with BTARD (needs --aggregation centered_clip)");
  v("--btard-validators", o.btard_validators, "BTARD: members that recompute another's gradient, per step");
  v("--btard-ban-quorum", o.btard_ban_quorum, "BTARD: reporters that make a ban read from the DHT hold");
  v("--btard-false-accusations", o.btard_false_accusations, "BTARD: as an attacker, also accuse whoever it validates");
  v("--btard-check-tolerance", o.btard_check_tolerance, "BTARD: an aggregate's relative check tolerance");
  v("--btard-recompute-tolerance", o.btard_recompute_tolerance, "BTARD: a recomputed gradient's relative tolerance");
  v("--btard-phase-timeout-ms", o.btard_phase_timeout_ms, "BTARD: wait this long for commits, reveals and checks");
  v("--device", o.device, "where the model and data live: cpu, cuda or cuda:N");
  v("--dht-k", o.dht_k, "the DHT's bucket size and replication factor");
}

// Live DMoE: expert servers and a trainer as processes (real/torch/trainers.hpp).
struct DmoeOptions {
  std::string join;                     // the seed DHT peer
  std::uint32_t dht_k = 8;              // the DHT's bucket size and replication (dht.k)
  std::vector<std::string> uids;        // expert-server: the experts it hosts
  std::vector<std::uint32_t> grid{4, 4};
  std::int64_t dim = 64, hidden = 256;
  std::size_t k = 4, k_min = 2;
  std::string routing = "batch";  // batch | sample | switch
  double timeout_after_k_min_ms = 200, forward_timeout_ms = 5000, backward_timeout_ms = 5000;
  double fail_probability = 0;    // expert-server: per request
  std::int64_t max_batch = 4096, min_batch = 1;  // expert-server: batching, in rows
  double batch_wait_ms = 0;
  std::string codec = "float32";  // dmoe-trainer: the wire codec of expert calls
  double delay_ms = 0;            // emulated one-way latency on every received message
  std::uint64_t seed = 1;
  std::uint32_t steps = 300, batch_size = 64, eval_every = 50;
  std::uint64_t eval_samples = 2000, train_samples = 0;
  double learning_rate = 0.05;
  std::string dataset_dir = "/usr/share/datasets/fashion-mnist";
  std::string out, ready_file;
  double max_seconds = 900;
  std::string device = "cpu";  // the experts' (servers) or the model's (trainers) device: cpu, cuda, cuda:N
};

template <class V>
void visit_fields(DmoeOptions& o, V&& v) {
  v("--join", o.join, "a DHT peer to enter the swarm through");
  v("--dht-k", o.dht_k, "the DHT's bucket size and replication factor");
  v("--experts", o.uids, "expert-server: expert uids to host, e.g. ffn.0.1");
  v("--grid", o.grid, "the expert grid, e.g. 4 4");
  v("--dim", o.dim, "the mixture's width");
  v("--hidden", o.hidden, "an expert's hidden width");
  v("--k", o.k, "experts per sample or batch");
  v("--k-min", o.k_min, "answers required");
  v("--routing", o.routing, "batch, sample or switch");
  v("--grace-ms", o.timeout_after_k_min_ms, "wait after the k_min-th answer");
  v("--forward-timeout-ms", o.forward_timeout_ms, "a forward call's timeout");
  v("--backward-timeout-ms", o.backward_timeout_ms, "a backward call's timeout");
  v("--fail-probability", o.fail_probability, "expert-server: a request fails with this probability");
  v("--max-batch", o.max_batch, "expert-server: rows per batch at most");
  v("--min-batch", o.min_batch, "expert-server: rows a batch waits for (up to --batch-wait-ms)");
  v("--batch-wait-ms", o.batch_wait_ms, "expert-server: how long the oldest request waits for company");
  v("--codec", o.codec, "the wire codec of expert calls");
  v("--delay-ms", o.delay_ms, "emulated one-way latency on every received message");
  v("--seed", o.seed, "initialisation and data order");
  v("--steps", o.steps, "training steps");
  v("--batch-size", o.batch_size, "samples per step");
  v("--eval-every", o.eval_every, "evaluate every N steps");
  v("--eval-samples", o.eval_samples, "test images per evaluation");
  v("--train-samples", o.train_samples, "use the first N training images (0: all)");
  v("--lr", o.learning_rate, "SGD learning rate (the experts' too)");
  v("--dataset-dir", o.dataset_dir, "Fashion-MNIST IDX files");
  v("--out", o.out, "JSON lines output");
  v("--ready-file", o.ready_file, "written once ready");
  v("--max-seconds", o.max_seconds, "give up after this long");
  v("--device", o.device, "where the experts (servers) or the model (trainers) live: cpu, cuda or cuda:N");
}

namespace detail {
template <class T>
std::string arg_of(const T& v) {
  if constexpr (std::is_floating_point_v<T>) {
    char b[64];
    std::snprintf(b, sizeof b, "%.17g", v);  // exactly the same double on the other side
    return b;
  } else if constexpr (std::is_same_v<T, std::string>) {
    return v;
  } else {
    return std::to_string(v);
  }
}
}  // namespace detail

// `program subcommand --flag value ...` for every field (a bool as a bare flag when true, a
// vector as its values after one flag; empty strings and vectors left out).
template <class Options>
std::vector<std::string> to_args(const std::string& program, const std::string& subcommand, Options o) {
  std::vector<std::string> a{program, subcommand};
  visit_fields(o, [&a](const char* flag, const auto& field, const char*) {
    using T = std::decay_t<decltype(field)>;
    if constexpr (std::is_same_v<T, bool>) {
      if (field) a.push_back(flag);
    } else if constexpr (std::is_same_v<T, std::vector<std::string>> || std::is_same_v<T, std::vector<std::uint32_t>>) {
      if (field.empty()) return;
      a.push_back(flag);
      for (const auto& x : field) a.push_back(detail::arg_of(x));
    } else if constexpr (std::is_same_v<T, std::string>) {
      if (field.empty()) return;
      a.push_back(flag);
      a.push_back(field);
    } else {
      a.push_back(flag);
      a.push_back(detail::arg_of(field));
    }
  });
  return a;
}

}  // namespace apiary::real
