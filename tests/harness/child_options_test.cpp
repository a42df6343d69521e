// The typed options of child programs: what the parent serialises, the child parses back to the
// same struct, field for field (doubles exactly).
#include <gtest/gtest.h>

#include "real/child_cli.hpp"

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

}  // namespace
}  // namespace apiary::real
