// The typed options of child programs: what the parent serialises, the child parses back to the
// same struct, field for field (doubles exactly).
#include <gtest/gtest.h>

#include "harness/scenario.hpp"
#include "harness/spec.hpp"
#include "real/child_cli.hpp"
#include "real/live_training.hpp"

namespace apiary::real {
namespace {

template <class Options>
Options round_trip(const Options& sent, const std::string& sub) {
  const auto args = to_args("apiary-train", sub, sent);
  Options got;
  CLI::App app;
  auto* c = app.add_subcommand(sub);
  add_fields(c, got);
  std::vector<std::string> rev(args.rbegin(), args.rend() - 1);  // CLI11 parses a reversed list, program name dropped
  app.parse(rev);
  return got;
}

TEST(ChildOptions, TrainerOptionsSurviveTheCommandLine) {
  TrainerOptions o;
  o.join = "127.0.0.1:4000";
  o.index = 7;
  o.newcomer = true;
  o.role = "client";
  o.seed = 12345678901ULL;
  o.learning_rate = 0.1 + 0.2;  // not a short decimal
  o.samples_per_second = 1.0 / 3.0;
  o.out = "/tmp/x y.jsonl";
  const auto got = round_trip(o, "trainer");
  EXPECT_EQ(got.join, o.join);
  EXPECT_EQ(got.index, 7u);
  EXPECT_TRUE(got.newcomer);
  EXPECT_EQ(got.role, "client");
  EXPECT_EQ(got.seed, o.seed);
  EXPECT_EQ(got.learning_rate, o.learning_rate);
  EXPECT_EQ(got.samples_per_second, o.samples_per_second);
  EXPECT_EQ(got.out, o.out);
  EXPECT_EQ(got.dataset_dir, o.dataset_dir);
  EXPECT_FALSE(round_trip(TrainerOptions{}, "trainer").newcomer);
}

TEST(ChildOptions, DmoeOptionsSurviveTheCommandLine) {
  DmoeOptions o;
  o.uids = {"ffn.0.1", "ffn.3.2"};
  o.grid = {4, 8, 2};
  o.k_min = 3;
  o.timeout_after_k_min_ms = 12.5;
  o.routing = "switch";
  const auto got = round_trip(o, "dmoe-trainer");
  EXPECT_EQ(got.uids, o.uids);
  EXPECT_EQ(got.grid, o.grid);
  EXPECT_EQ(got.k_min, 3u);
  EXPECT_EQ(got.timeout_after_k_min_ms, 12.5);
  EXPECT_EQ(got.routing, "switch");
}

// A scenario's training keys reach the LibTorch trainer processes as they reach the ns-3 trainers;
// keys the scenario leaves out give a process the defaults it has when started by hand (but for
// target_group_size: the swarm's size there, 64 by hand; a group is sized down to the reporting
// trainers either way).
const char* kLiveTraining = R"(backend = "live"
peers = 6
[live]
processes = true
[workload]
kind = "training"
[training]
steps = 10
)";

TrainerOptions options_of(const std::string& extra) {
  auto s = Scenario::from_string(std::string(kLiveTraining) + extra, "live.toml");
  return trainer_options(parse_swarm_spec(s));
}

TEST(ChildOptions, TrainerProcessesTakeTheScenariosTrainingKeys) {
  const auto o = options_of(R"(target_group_size = 5
min_group_size = 3
matchmaking_budget = "1500ms"
matchmaking_poll = "20ms"
progress_period = "250ms"
max_wait = "7s"
min_part = 512
parts = "proportional"
sender_timeout = "4s"
reducer_timeout = "9s"
codec = "float16"
codec_min_elements = 4096
btard_phase_timeout = "8s"
btard_check_tolerance = 0.05
)");
  EXPECT_EQ(o.target_group_size, 5u);
  EXPECT_EQ(o.min_group_size, 3u);
  EXPECT_EQ(o.budget_ms, 1500);
  EXPECT_EQ(o.poll_ms, 20);
  EXPECT_EQ(o.progress_ms, 250);
  EXPECT_EQ(o.max_wait_ms, 7000);
  EXPECT_EQ(o.min_part, 512u);
  EXPECT_EQ(o.parts, "proportional");
  EXPECT_EQ(o.sender_timeout_ms, 4000);
  EXPECT_EQ(o.reducer_timeout_ms, 9000);
  EXPECT_EQ(o.codec, "float16");
  EXPECT_EQ(o.codec_min_elements, 4096u);
  EXPECT_EQ(o.btard_phase_timeout_ms, 8000);
  EXPECT_EQ(o.btard_check_tolerance, 0.05);
  EXPECT_EQ(o.steps, 10u);
  // ...and survive the command line to the child.
  const auto got = round_trip(o, "trainer");
  EXPECT_EQ(got.budget_ms, 1500);
  EXPECT_EQ(got.poll_ms, 20);
  EXPECT_EQ(got.min_group_size, 3u);
  EXPECT_EQ(got.codec, "float16");
  EXPECT_EQ(got.parts, "proportional");
  EXPECT_EQ(got.reducer_timeout_ms, 9000);

  const TrainerOptions by_hand, from_scenario = options_of("");
  EXPECT_EQ(from_scenario.min_group_size, by_hand.min_group_size);
  EXPECT_EQ(from_scenario.budget_ms, by_hand.budget_ms);
  EXPECT_EQ(from_scenario.poll_ms, by_hand.poll_ms);
  EXPECT_EQ(from_scenario.progress_ms, by_hand.progress_ms);
  EXPECT_EQ(from_scenario.max_wait_ms, by_hand.max_wait_ms);
  EXPECT_EQ(from_scenario.min_part, by_hand.min_part);
  EXPECT_EQ(from_scenario.parts, by_hand.parts);
  EXPECT_EQ(from_scenario.sender_timeout_ms, by_hand.sender_timeout_ms);
  EXPECT_EQ(from_scenario.reducer_timeout_ms, by_hand.reducer_timeout_ms);
  EXPECT_EQ(from_scenario.codec, by_hand.codec);
  EXPECT_EQ(from_scenario.btard_phase_timeout_ms, by_hand.btard_phase_timeout_ms);
  EXPECT_EQ(from_scenario.dht_k, by_hand.dht_k);
  // The DHT's replication reaches them too.
  auto s = Scenario::from_string(std::string(kLiveTraining) + "[dht]\nk = 5\n", "live.toml");
  EXPECT_EQ(trainer_options(parse_swarm_spec(s)).dht_k, 5u);
  EXPECT_EQ(round_trip(trainer_options(parse_swarm_spec(s)), "trainer").dht_k, 5u);
}

TEST(ChildOptions, TrainerProcessesRefuseWhatTheyCannotDo) {
  auto error = [](const std::string& extra) -> std::string {
    try {
      options_of(extra);
    } catch (const ScenarioError& e) {
      return e.what();
    }
    return "";
  };
  EXPECT_NE(error("delayed_updates = true\n").find("key 'training.delayed_updates'"), std::string::npos);
  EXPECT_NE(error("local_updates = true\naverage_state_every = 2\n").find("key 'training.local_updates'"), std::string::npos);
  EXPECT_NE(error("target_loss = 0.5\n").find("key 'training.target_loss'"), std::string::npos);
  EXPECT_EQ(error("delayed_updates = false\n"), "");
  EXPECT_NE(error("[dht]\nalpha = 5\n").find("key 'dht.alpha'"), std::string::npos);
  // In ns-3 (or live in one process) the same keys stand, with the simulator's defaults.
  auto s = Scenario::from_string("peers = 6\n[workload]\nkind = \"training\"\n[training]\nlocal_updates = true\n"
                                 "average_state_every = 2\n",
                                 "sim.toml");
  EXPECT_NO_THROW(parse_swarm_spec(s));
}

}  // namespace
}  // namespace apiary::real
