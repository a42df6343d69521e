#!/usr/bin/env bash
# Live collaborative training end to end: `apiary run` starts a seed peer and LibTorch trainer
# processes on loopback — full trainers, a client and an auxiliary peer; one trainer is killed
# mid-run and another joins and downloads the state; the survivors finish every step together
# and the single-process baseline runs afterwards. Then DiLoCo in trainer processes: full trainers,
# a client and an auxiliary peer that follows the rounds through the DHT.
set -euo pipefail
APIARY=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "train_live_test: FAIL: $*" >&2; exit 1; }

cat > trace.txt <<'T'
3s 3 up
5s 1 down
T
cat > live.toml <<'T'
name = "train-live-test"
backend = "live"
peers = 6
duration = "4min"
[live]
processes = true
[workload]
kind = "training"
[churn]
model = "trace"
trace = "trace.txt"
[training]
steps = 40
target_batch = 128
batch_size = 32
eval_every = 10
eval_samples = 500
train_samples = 20000
client_fraction = 0.17
aux_fraction = 0.17
samples_per_second = { dist = "uniform", min = "200/s", max = "300/s" }
T
"$APIARY" run live.toml --json --quiet --out live.h5 > live.json || fail "apiary run exited non-zero"
[ -s live.h5 ] || fail "no results file"
python3 - <<'PY' || { python3 -m json.tool < *.json | head -80 >&2; fail "results"; }
import json
j = json.load(open("live.json"))
c, f, s = j["metrics"]["counters"], j["cost"], j["metrics"]["series"]
assert f["steps"] == 40, f
assert f["trainers_finished"] >= 4, f          # trainers 0, 2, the newcomer 3 and the client 4
assert c.get("train.assists_ok", 0) >= 5, c     # the auxiliary peer 5 reduced parts
assert c.get("churn.leaves") == 1 and c.get("churn.joins") == 1, c
assert c.get("optim.state_downloads", 0) >= 1, c  # the newcomer fetched the state
assert s["train.step.group"]["p50"] >= 3, s["train.step.group"]
assert f["final_accuracy"] > 0.6, f
assert "baseline_accuracy" in f and f["baseline_accuracy"] > 0.6, f
print("live training: %d steps, accuracy %.3f (baseline %.3f), global batch %.0f, groups p50 %.0f" % (
    f["steps"], f["final_accuracy"], f["baseline_accuracy"], f["global_batch_mean"], s["train.step.group"]["p50"]))
PY
cat > diloco.toml <<'T'
name = "diloco-live-test"
backend = "live"
peers = 5
duration = "4min"
[live]
processes = true
[workload]
kind = "training"
[training]
mode = "diloco"
steps = 4
inner_steps = 20
batch_size = 32
eval_every = 2
eval_samples = 500
train_samples = 20000
client_fraction = 0.2
aux_fraction = 0.2
codec = "float16"     # the scenario's codec reaches the trainer processes: half the bytes of float32
T
"$APIARY" run diloco.toml --json --quiet > diloco.json || fail "apiary run (diloco) exited non-zero"
python3 - <<'PY' || { python3 -m json.tool < diloco.json | head -80 >&2; fail "diloco results"; }
import json
j = json.load(open("diloco.json"))
c, f, s = j["metrics"]["counters"], j["cost"], j["metrics"]["series"]
assert f["steps"] == 4, f
assert f["trainers_finished"] == 4, f           # three full trainers and the client
assert c.get("train.steps_ok") == 16, c         # every trainer took every outer step
assert c.get("train.assists_ok", 0) >= 3, c     # the auxiliary peer reduced parts of the rounds
assert s["train.step.group"]["p50"] >= 4, s["train.step.group"]
# 20 inner steps of 32 samples per all-reduce of the 784-128-10 MLP's ~100k parameters
assert f["allreduce_bytes_per_sample"] < 700, f    # float32 sends about 1,030 bytes per sample here
assert f["final_accuracy"] > 0.6 and f["baseline_accuracy"] > 0.6, f
print("live DiLoCo: %d outer steps, accuracy %.3f (baseline %.3f), %.0f all-reduce bytes per sample" % (
    f["steps"], f["final_accuracy"], f["baseline_accuracy"], f["allreduce_bytes_per_sample"]))
PY
# A Byzantine trainer live: 1 of 6 sends its gradients times -1000 from step 5. The plain mean
# falls apart; CenteredClip at every reducer keeps training on course. (With 2 of 6, a slow
# machine leaves some steps' groups half Byzantine, beyond what any robust rule can take.)
cat > attack.toml <<'T'
name = "train-live-attack"
backend = "live"
peers = 6
duration = "4min"
seed = 3
[live]
processes = true
[workload]
kind = "training"
[training]
steps = 40
target_batch = 256
batch_size = 32
eval_every = 0
eval_samples = 2000
train_samples = 20000
baseline = false
samples_per_second = { dist = "uniform", min = "300/s", max = "400/s" }
attack = "sign_flip"
attackers = 1
attack_from_step = 5
clip_tau = 0.1
T
for agg in mean centered_clip; do
  "$APIARY" run attack.toml --json --quiet --set training.aggregation=$agg > attack-$agg.json ||
    fail "apiary run (attack, $agg) exited non-zero"
done
python3 - <<'PY' || fail "attack results"
import json
m, k = (json.load(open("attack-%s.json" % a)) for a in ("mean", "centered_clip"))
for j in (m, k):
    assert j["cost"]["steps"] == 40, j["cost"]
    assert j["metrics"]["counters"].get("train.attacks.sign_flip", 0) > 0, j["metrics"]["counters"]
am, ak = m["cost"]["final_accuracy"], k["cost"]["final_accuracy"]
# Live groups depend on timing, so how far the mean falls varies (0.10-0.31 seen); it always falls.
assert am < 0.5, am
assert ak > 0.65 and ak > am + 0.25, (am, ak)
print("live attack (1 of 6 sign flip): accuracy %.3f with the mean, %.3f with CenteredClip" % (am, ak))
PY
# Progress poisoning live: 1 of 6 trainers writes, from step 5 on, progress records that claim the
# swarm is at step 1,000,000 (a squatting plain value, an unsigned entry, an everlasting one and a
# Sybil's signed report). Every node refuses the first three and every trainer outvotes the fourth:
# all 40 steps are taken and nobody catches up to the lie (a trainer slowed by a loaded machine may
# still catch up to a step the swarm really took, now and then). Undefended, one such record froze
# a live swarm for good.
"$APIARY" run attack.toml --json --quiet --set training.attack=progress_poison --set training.aggregation=mean > poison.json ||
  fail "apiary run (progress poison) exited non-zero"
python3 - <<'PY' || fail "progress poison results"
import json
j = json.load(open("poison.json"))
c, f = j["metrics"]["counters"], j["cost"]
assert f["steps"] == 40, f
assert c.get("train.attacks.progress_poison", 0) > 0, c
assert c.get("train.catch_ups_past_last_step", 0) == 0, c
# How often a trainer slowed by the machine's load catches up is timing (0 to 4 seen with the suite
# running beside it); a swarm that kept catching up instead of stepping together would pass a tenth.
assert c.get("train.catch_ups", 0) <= c.get("train.steps_ok", 0) // 10, c
assert f["final_accuracy"] > 0.65, f
print("live progress poison (1 of 6): 40 steps in %.1f s, accuracy %.3f" % (f["train_seconds"], f["final_accuracy"]))
PY

echo "train_live_test: all checks passed"
