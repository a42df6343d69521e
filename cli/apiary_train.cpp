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
  CLI11_PARSE(app, argc, argv);
  try {
    return trainer->parsed() ? apiary::real::run_trainer(o) : apiary::real::run_baseline(o);
  } catch (const std::exception& e) {
    std::fprintf(stderr, "apiary-train: %s\n", e.what());
    return 1;
  }
}
