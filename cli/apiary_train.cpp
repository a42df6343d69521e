// apiary-train: the LibTorch side of live training runs, as its own program so that `apiary`
// itself starts fast and never loads LibTorch. `apiary run` spawns it for live training
// scenarios; it can also be run by hand:
//
//   apiary-train trainer --join 127.0.0.1:PORT --index 0 --steps 200 --out t0.jsonl
//   apiary-train baseline --steps 200 --target-batch 256 --out baseline.jsonl
#include <CLI/CLI.hpp>
#include <cstdio>

#include "real/torch_trainer.hpp"

int main(int argc, char** argv) {
  using apiary::real::TrainerOptions;
  CLI::App app{"apiary-train: live LibTorch trainers for collaborative training runs"};
  app.require_subcommand(1);
  TrainerOptions o;
  auto add_common = [&o](CLI::App* c) {
    c->add_option("--seed", o.seed, "model initialisation and data order");
    c->add_option("--steps", o.steps, "global steps");
    c->add_option("--target-batch", o.target_batch, "samples per global step");
    c->add_option("--batch-size", o.batch_size, "a local batch");
    c->add_option("--hidden", o.hidden, "the MLP's hidden width");
    c->add_option("--lr", o.learning_rate, "SGD learning rate");
    c->add_option("--momentum", o.momentum, "SGD momentum");
    c->add_option("--train-samples", o.train_samples, "use the first N training images (0: all)");
    c->add_option("--eval-samples", o.eval_samples, "test images for the periodic evaluations");
    c->add_option("--eval-every", o.eval_every, "evaluate every N steps (0: only at the end)");
    c->add_option("--dataset-dir", o.dataset_dir, "Fashion-MNIST IDX files");
    c->add_option("--out", o.out, "JSON lines output");
  };
  auto* trainer = app.add_subcommand("trainer", "one collaborative trainer process");
  add_common(trainer);
  trainer->add_option("--join", o.join, "a DHT peer to enter the swarm through (IPV4:PORT)")->required();
  trainer->add_option("--index", o.index, "this trainer's index (data order, logs)");
  trainer->add_flag("--newcomer", o.newcomer, "download the swarm's state before contributing");
  trainer->add_option("--role", o.role, "full, client (never reduces or leads) or aux (trains nothing, helps average)")
      ->check(CLI::IsMember({"full", "client", "aux"}));
  trainer->add_option("--delay-ms", o.delay_ms, "emulated one-way latency on every received message");
  trainer->add_option("--budget-ms", o.budget_ms, "matchmaking budget");
  trainer->add_option("--samples-per-second", o.samples_per_second, "emulated device speed (0: unthrottled)");
  trainer->add_option("--ready-file", o.ready_file, "written once listening");
  trainer->add_option("--max-seconds", o.max_seconds, "give up after this long");
  auto* baseline = app.add_subcommand("baseline", "the same model trained in one process");
  add_common(baseline);
  apiary::real::DmoeOptions d;
  auto add_dmoe = [&d](CLI::App* c) {
    c->add_option("--seed", d.seed, "initialisation and data order");
    c->add_option("--grid", d.grid, "the expert grid, e.g. 4 4")->expected(1, 8);
    c->add_option("--dim", d.dim, "the mixture's width");
    c->add_option("--hidden", d.hidden, "an expert's hidden width");
    c->add_option("--lr", d.learning_rate, "SGD learning rate (the experts' too)");
    c->add_option("--dataset-dir", d.dataset_dir, "Fashion-MNIST IDX files");
    c->add_option("--out", d.out, "JSON lines output");
    c->add_option("--steps", d.steps, "training steps");
    c->add_option("--batch-size", d.batch_size, "samples per step");
    c->add_option("--train-samples", d.train_samples, "use the first N training images (0: all)");
  };
  auto* server = app.add_subcommand("expert-server", "host DMoE experts (runs until SIGTERM)");
  add_dmoe(server);
  server->add_option("--join", d.join, "a DHT peer to enter the swarm through")->required();
  server->add_option("--experts", d.uids, "expert uids to host, e.g. ffn.0.1")->required()->expected(1, 1 << 20);
  server->add_option("--fail-probability", d.fail_probability, "a request fails with this probability");
  server->add_option("--delay-ms", d.delay_ms, "emulated one-way latency on every received message");
  server->add_option("--ready-file", d.ready_file, "written once the experts are declared");
  auto* dtrainer = app.add_subcommand("dmoe-trainer", "train the DMoE classifier through remote experts");
  add_dmoe(dtrainer);
  dtrainer->add_option("--join", d.join, "a DHT peer to enter the swarm through")->required();
  dtrainer->add_option("--k", d.k, "experts per sample or batch");
  dtrainer->add_option("--k-min", d.k_min, "answers required");
  dtrainer->add_option("--codec", d.codec, "wire codec of expert calls")
      ->check(CLI::IsMember({"float32", "float16", "scaled-float16", "uniform8", "quantile8", "blockwise8"}));
  dtrainer->add_option("--routing", d.routing, "batch, sample or switch")->check(CLI::IsMember({"batch", "sample", "switch"}));
  dtrainer->add_option("--grace-ms", d.timeout_after_k_min_ms, "wait after the k_min-th answer");
  dtrainer->add_option("--forward-timeout-ms", d.forward_timeout_ms, "");
  dtrainer->add_option("--backward-timeout-ms", d.backward_timeout_ms, "");
  dtrainer->add_option("--delay-ms", d.delay_ms, "emulated one-way latency on every received message");
  dtrainer->add_option("--eval-every", d.eval_every, "evaluate every N steps");
  dtrainer->add_option("--eval-samples", d.eval_samples, "test images per evaluation");
  dtrainer->add_option("--max-seconds", d.max_seconds, "give up after this long");
  auto* dbase = app.add_subcommand("dmoe-baseline", "the same classifier with its experts local, one process");
  add_dmoe(dbase);
  dbase->add_option("--k", d.k, "experts per batch");
  CLI11_PARSE(app, argc, argv);
  try {
    if (server->parsed()) return apiary::real::run_expert_server(d);
    if (dtrainer->parsed()) return apiary::real::run_dmoe_trainer(d);
    if (dbase->parsed()) return apiary::real::run_dmoe_baseline(d);
    return trainer->parsed() ? apiary::real::run_trainer(o) : apiary::real::run_baseline(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "apiary-train: %s\n", e.what());
    return 1;
  }
}
