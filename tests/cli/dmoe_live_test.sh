#!/usr/bin/env bash
# Live DMoE end to end: `apiary run` starts a seed peer, expert-server processes and a trainer
# process whose classifier's middle layer is the remote mixture; a fifth of the expert requests
# fail, expert server 1 is killed (SIGKILL) mid-run and started again, and the trainer still
# learns; the local baseline runs afterwards.
set -euo pipefail
APIARY=$1
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "dmoe_live_test: FAIL: $*" >&2; exit 1; }
printf '1s 1 down\n2500ms 1 up\n' > servers.trace
cat > dmoe.toml <<'T'
name = "dmoe-live-test"
backend = "live"
peers = 3
duration = "4min"
[workload]
kind = "dmoe"
[churn]
model = "trace"
trace = "servers.trace"
[live]
processes = true
emulated_latency = "5ms"
[dmoe]
servers = 2
grid_side = 3
k = 3
k_min = 1
fail_probability = 0.2
codec = "float16"
steps = 80
eval_every = 40
eval_samples = 500
train_samples = 20000
T
"$APIARY" run dmoe.toml --json --quiet --out dmoe.h5 > dmoe.json || fail "apiary run exited non-zero"
[ -s dmoe.h5 ] || fail "no results file"
python3 - <<'PY' || { python3 -m json.tool < *.json | head -80 >&2; fail "results"; }
import json
j = json.load(open("dmoe.json"))
c, f = j["metrics"]["counters"], j["cost"]
assert f["steps"] == 80, f
assert c.get("churn.leaves") == 1 and c.get("churn.joins") == 1, c
assert c.get("moe.expert_failures", 0) > 10, c   # about a fifth of 3 x 80 forwards
assert f["final_accuracy"] > 0.6, f
assert f["baseline_accuracy"] > 0.6, f
print("live dmoe: accuracy %.3f (baseline %.3f), %d expert failures, %d re-searches" % (
    f["final_accuracy"], f["baseline_accuracy"], c.get("moe.expert_failures", 0), c.get("moe.researches", 0)))
PY
echo "dmoe_live_test: all checks passed"
