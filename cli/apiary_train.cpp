// apiary-train: the LibTorch side of live process swarms, as its own program so that `apiary`
// itself starts fast and never loads LibTorch. `apiary run` spawns it (live.processes = true) with
// arguments serialised from the typed options of real/child_options.hpp; it can also be run by
// hand:
//
//   apiary-train trainer --join 127.0.0.1:PORT --index 0 --steps 200 --out t0.jsonl
//   apiary-train baseline --steps 200 --target-batch 256 --out baseline.jsonl
#include <CLI/CLI.hpp>
#include <cstdio>

#include "core/compression/codecs.hpp"
#include "real/child_cli.hpp"
#include "real/torch/trainers.hpp"

int main(int argc, char** argv) {
  using apiary::real::DmoeOptions;
  using apiary::real::TrainerOptions;
  CLI::App app{"apiary-train: live LibTorch trainers and expert servers for live process swarms"};
  app.require_subcommand(1);
  TrainerOptions o;
  DmoeOptions d;
  auto* trainer = app.add_subcommand("trainer", "one collaborative trainer process");
  auto* baseline = app.add_subcommand("baseline", "the same model trained in one process");
  auto* server = app.add_subcommand("expert-server", "host DMoE experts (runs until SIGTERM)");
  auto* dtrainer = app.add_subcommand("dmoe-trainer", "train the DMoE classifier through remote experts");
  auto* dbase = app.add_subcommand("dmoe-baseline", "the same classifier with its experts local, one process");
  for (auto* c : {trainer, baseline}) {
    apiary::real::add_fields(c, o);
    c->get_option("--role")->check(CLI::IsMember({"full", "client", "aux"}));
    c->get_option("--parts")->check(CLI::IsMember({"minmax", "proportional"}));
    c->get_option("--codec")->check(CLI::IsMember(apiary::compression::codec_names()));
  }
  for (auto* c : {server, dtrainer, dbase}) {
    apiary::real::add_fields(c, d);
    c->get_option("--grid")->expected(1, 8);
    c->get_option("--experts")->expected(1, 1 << 20);
    c->get_option("--routing")->check(CLI::IsMember({"batch", "sample", "switch"}));
    c->get_option("--codec")->check(CLI::IsMember(apiary::compression::codec_names()));
  }
  for (auto* c : {trainer, server, dtrainer}) c->get_option("--join")->required();
  server->get_option("--experts")->required();
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
