#!/usr/bin/env bash
# Live BTARD end to end: six LibTorch trainer processes (apiary-train) on loopback, two of them
# attackers; the honest ones find and ban them by recomputing their gradients.
set -euo pipefail
APIARY=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "btard_live_test: FAIL: $*" >&2; exit 1; }

# BTARD live: 2 of 6 trainers send their gradients times -1000 from step 5 and accuse whoever they
# validate. Validators recompute members' gradients on their seeded batches: every honest trainer
# bans both attackers, none bans an honest one, and training stays on course.
cat > btard.toml <<'T'
name = "train-live-btard"
backend = "live"
peers = 6
duration = "5min"
seed = 3
[live]
processes = true
[workload]
kind = "training"
[training]
steps = 30
target_batch = 192
batch_size = 32
eval_every = 0
eval_samples = 2000
train_samples = 20000
baseline = false
samples_per_second = { dist = "uniform", min = "300/s", max = "400/s" }
attack = "sign_flip"
attackers = 2
attack_from_step = 5
clip_tau = 0.1
aggregation = "centered_clip"
delayed_updates = false
btard = true
btard_ban_quorum = 3
btard_false_accusations = true
T
"$APIARY" run btard.toml --json --quiet > btard.json || fail "apiary run (btard) exited non-zero"
python3 - <<'PY' || fail "btard results"
import json
j = json.load(open("btard.json"))
c = j["cost"]
assert c["steps"] == 30, c
assert j["metrics"]["counters"].get("train.attacks.sign_flip", 0) > 0, j["metrics"]["counters"]
assert j["metrics"]["counters"].get("btard.validations", 0) > 0, j["metrics"]["counters"]
assert c["btard_attackers"] == 2 and c["btard_attackers_banned"] == 2, c
assert c["btard_false_bans"] == 0, c
assert c["final_accuracy"] > 0.65, c
print("live BTARD (2 of 6 sign flip): both banned by every honest trainer from step %d, accuracy %.3f"
      % (c["btard_last_ban_epoch"], c["final_accuracy"]))
PY
echo "btard_live_test: all checks passed"
