#!/usr/bin/env bash
# Simulation against live for averaging: sim_vs_live.py --workload averaging runs the same Moshpit
# scenario (a full 2x2 grid, DHT matchmaking, butterfly all-reduce) in ns-3 and live with a 20 ms
# one-way delay and prints round times, failures and the variance after each round side by side.
# Both must average exactly after 2 rounds with every peer-round succeeding, and the live round
# must show the delay (matchmaking and the all-reduce take several round trips).
set -euo pipefail
APIARY=$1
SRC=$2
fail() { echo "sim_vs_live_averaging_test: FAIL: $*" >&2; exit 1; }
out=$(/usr/bin/python3 "$SRC/analysis/compare/sim_vs_live.py" --apiary "$APIARY" --workload averaging \
      --peers 4 --elements 4096 --rounds 2 --latency-ms 20 2>&1) || fail "sim_vs_live.py failed: $out"
echo "$out"
python3 - "$out" <<'PY' || fail "the side-by-side table is not as expected"
import re, sys
rows = {m[0]: (m[1], m[2]) for m in re.findall(r"^\| ([^|]+?) \| ([^|]*?) \| ([^|]*?) \|", sys.argv[1], re.M)}
sim, live = rows["peer-rounds: rounds ok"]
assert sim == live == "8", rows["peer-rounds: rounds ok"]
for k in ("peer-rounds: matchmaking failures", "peer-rounds: allreduce failures"):
    assert rows[k] == ("0", "0"), (k, rows[k])
sim, live = rows["variance across peers after 2 rounds"]
assert float(sim) < 1e-9 and float(live) < 1e-9, (sim, live)
assert float(rows["variance across peers after 0 rounds"][1]) > 0.01
live_round = float(rows["round time p50"][1].split()[0])
sim_round = float(rows["round time p50"][0].split()[0])
assert sim_round >= 80 and live_round >= 80, (sim_round, live_round)  # at least 2 round trips of 40 ms
PY
echo "sim_vs_live_averaging_test: ok"
