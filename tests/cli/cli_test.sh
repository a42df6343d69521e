#!/usr/bin/env bash
# The apiary command as a user runs it. Args: path to apiary, source dir, then the sections to run
# (all if none): each is its own CTest test, so one failure does not hide the others.
set -euo pipefail
APIARY=$1
SRC=$2
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
cd "$work"
fail() { echo "FAIL: $*"; exit 1; }


# 1. No argument: the embedded quickstart runs and writes an HDF5 file.
quickstart() {
"$APIARY" run --quiet || fail "apiary run exited non-zero"
[ -s out/quickstart-seed1.h5 ] || fail "quickstart wrote no HDF5 file"
# The file carries the run's scenario text, name and seed (read back, not grepped: the file's own
# name contains "quickstart" too).
/usr/bin/python3 - <<'PY' || fail "the results file does not carry the scenario"
import h5py
f = h5py.File("out/quickstart-seed1.h5", "r")
text = f.attrs["scenario"]
text = text.decode() if isinstance(text, bytes) else text
name = f.attrs["name"]
name = name.decode() if isinstance(name, bytes) else name
assert 'name = "quickstart"' in text, text[:200]
assert name == "quickstart" and int(f.attrs["seed"]) == 1, (name, f.attrs["seed"])
PY
}

# 2. Same scenario and seed twice: the same JSON metrics (cost and wall time may differ).
determinism() {
small=(--set peers=100 --set duration=10s)
"$APIARY" run "$SRC/scenarios/ping-storm.toml" --seed 7 "${small[@]}" --json --out a.h5 | tail -n 1 > a.json
"$APIARY" run "$SRC/scenarios/ping-storm.toml" --seed 7 "${small[@]}" --json --out b.h5 | tail -n 1 > b.json
"$APIARY" run "$SRC/scenarios/ping-storm.toml" --seed 8 "${small[@]}" --json --out c.h5 | tail -n 1 > c.json
metrics() { python3 -c 'import json,sys; j=json.load(open(sys.argv[1])); print(json.dumps(j["metrics"], sort_keys=True))' "$1"; }
[ "$(metrics a.json)" = "$(metrics b.json)" ] || fail "same seed gave different metrics"
[ "$(metrics a.json)" != "$(metrics c.json)" ] || fail "different seeds gave identical metrics"
python3 -c 'import json,sys; j=json.load(open("a.json")); assert j["metrics"]["counters"]["ping.ok"] > 500, j' \
  || fail "too few successful pings"
}

# 3. A broken scenario names file, line and key, and exits non-zero.
errors() {
printf 'peers = 10\nduration = "5s"\n[workload]\nrate = "fast"\n' > broken.toml
set +e
msg=$("$APIARY" run broken.toml 2>&1); rc=$?
set -e
[ $rc -eq 2 ] || fail "broken scenario exit code $rc"
echo "$msg" | grep -q "broken.toml:4: key 'workload.rate'" || fail "error does not name file:line:key: $msg"
set +e
msg=$("$APIARY" run "$SRC/scenarios/quickstart.toml" --set peers=zero 2>&1); rc=$?
set -e
[ $rc -eq 2 ] && echo "$msg" | grep -q -- "--set peers=zero" || fail "bad --set not reported: $msg"
printf '# namespace address\napy-a 10.213.0.2\napy-b 10.213.0.300\n' > bad.map
set +e
msg=$("$APIARY" run "$SRC/scenarios/dht-live-64.toml" --set "live.netns=$PWD/bad.map" 2>&1); rc=$?
set -e
[ $rc -eq 2 ] && echo "$msg" | grep -q "bad.map:3: '10.213.0.300' is not an IPv4 address" \
  || fail "bad namespace map not reported with file and line: $msg"
# A directory is not a scenario.
set +e; msg=$("$APIARY" run "$SRC/scenarios" 2>&1); rc=$?; set -e
[ $rc -eq 2 ] && echo "$msg" | grep -q "is a directory, not a scenario file" || fail "directory as scenario: rc $rc: $msg"
# --out: an existing file is kept without --force; an unwritable one is refused before the run.
tiny=(--set peers=10 --set duration=2s --quiet)
"$APIARY" run "$SRC/scenarios/ping-storm.toml" "${tiny[@]}" --out kept.h5 || fail "first run"
before=$(stat -c %Y.%s kept.h5)
set +e; msg=$("$APIARY" run "$SRC/scenarios/ping-storm.toml" "${tiny[@]}" --seed 2 --out kept.h5 2>&1); rc=$?; set -e
[ $rc -eq 4 ] && echo "$msg" | grep -q "kept.h5 exists; pass --force" || fail "existing --out: rc $rc: $msg"
[ "$(stat -c %Y.%s kept.h5)" = "$before" ] || fail "existing --out was touched"
"$APIARY" run "$SRC/scenarios/ping-storm.toml" "${tiny[@]}" --seed 2 --out kept.h5 --force || fail "--force refused"
mkdir ro && chmod 500 ro
if [ ! -w ro ]; then  # (root writes anywhere: then a path under a regular file stands in)
  out=ro/x.h5
else
  out=kept.h5/x.h5
fi
set +e; msg=$("$APIARY" run "$SRC/scenarios/dht-1k.toml" --quiet --out "$out" 2>&1); rc=$?; set -e
[ $rc -eq 4 ] && echo "$msg" | grep -q "$out" || fail "unwritable --out: rc $rc: $msg"
}

# 4. Live: a short loopback ping-storm with real payloads, all echoed intact.
live_ping() {
"$APIARY" run "$SRC/scenarios/ping-live.toml" --set duration=1s --set peers=6 --json --out live.h5 | tail -n 1 > live.json
python3 - <<'PY' || fail "live run"
import json
j = json.load(open("live.json"))
c = j["metrics"]["counters"]
assert c["ping.ok"] > 50, c
assert c.get("ping.corrupt", 0) == 0, c
PY
}

# 5. A live DHT of separate processes: peers join, a client stores and others get.
live_dht_tools() {
pids=()
cleanup_peers() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'cleanup_peers; rm -rf "$work"' EXIT
wait_for() { for _ in $(seq 200); do [ -s "$1" ] && return 0; sleep 0.05; done; fail "peer did not start: $1"; }
"$APIARY" peer --listen 127.0.0.1:0 --identity id0 --ready-file ready0 > peer0.log 2>&1 & pids+=($!)
wait_for ready0
seed=$(cut -d' ' -f2 ready0)
for i in 1 2 3 4 5 6 7; do
  "$APIARY" peer --listen 127.0.0.1:0 --join "$seed" --identity id$i --ready-file ready$i > peer$i.log 2>&1 & pids+=($!)
done
for i in 1 2 3 4 5 6 7; do wait_for ready$i; done
via=$(cut -d' ' -f2 ready3)
"$APIARY" dht store --via "$via" greeting "hello swarm" --ttl 120 --json > store.json || fail "dht store: $(cat store.json)"
python3 -c 'import json; j=json.load(open("store.json")); assert j["ok"] and j["replicas"] >= 5, j' || fail "too few replicas"
# An older record (an earlier expiration) is refused as stale by every holder: never "stored".
set +e; "$APIARY" dht store --via "$via" greeting "older" --ttl 30 --json > stale.json; rc=$?; set -e
[ $rc -eq 1 ] || fail "a stale store should exit 1, got $rc: $(cat stale.json)"
python3 -c 'import json; j=json.load(open("stale.json")); assert not j["ok"] and j["replicas"] == 0 and j["stale"] >= 5, j' \
  || fail "stale store counted: $(cat stale.json)"
via=$(cut -d' ' -f2 ready6)
got=$("$APIARY" dht get --via "$via" greeting) || fail "dht get failed"
[ "$got" = "hello swarm" ] || fail "dht get returned '$got'"
set +e; "$APIARY" dht get --via "$via" no-such-key > /dev/null 2>&1; rc=$?; set -e
[ $rc -eq 3 ] || fail "a missing key should exit 3 (found nothing), got $rc"
set +e; "$APIARY" dht get --via 127.0.0.1:1 greeting > /dev/null 2>&1; rc=$?; set -e
[ $rc -eq 1 ] || fail "an unreachable swarm should exit 1, got $rc"
# A peer told to join a swarm that does not answer says so and exits 5, not a swarm of one.
set +e; msg=$(timeout 60 "$APIARY" peer --listen 127.0.0.1:0 --join 127.0.0.1:1 2>&1); rc=$?; set -e
[ $rc -eq 5 ] && echo "$msg" | grep -q "could not join: no answer from 127.0.0.1:1" || fail "join to a dead seed: rc $rc: $msg"
# A malformed schema rule is an error before the peer starts, naming the rule.
set +e; msg=$(timeout 60 "$APIARY" peer --listen 127.0.0.1:0 --schema 'scores=owned' 2>&1); rc=$?; set -e
[ $rc -eq 1 ] && echo "$msg" | grep -q "schema rule 'scores=owned': pattern 'scores' must be" || fail "bad schema rule: rc $rc: $msg"
# A restarted peer keeps its id (identity file).
id_before=$(cut -d' ' -f1 ready2)
kill "${pids[2]}"; rm -f ready2
"$APIARY" peer --listen 127.0.0.1:0 --join "$seed" --identity id2 --ready-file ready2 > peer2b.log 2>&1 & pids+=($!)
wait_for ready2
[ "$(cut -d' ' -f1 ready2)" = "$id_before" ] || fail "identity did not survive a restart"
cleanup_peers
}

# 6. The live DHT scenario: separate peer processes, every store and get succeeds.
live_dht_scenario() {
"$APIARY" run "$SRC/scenarios/dht-live-64.toml" --set peers=10 --set workload.keys=60 \
  --set dht.join_window=1s --json --out dhtlive.h5 | tail -n 1 > dhtlive.json
python3 - <<'PY' || fail "live DHT scenario"
import json
c = json.load(open("dhtlive.json"))["metrics"]["counters"]
assert c.get("dht.store.ok") == 60 and c.get("dht.get.ok") == 60, c
PY
# The same 10 peers packed 4 to a process (the seed alone, then 4, 4 and 1): four processes, and
# every store reaches its 8 nearest (k = 20 here: all 10 peers), wherever they run.
"$APIARY" run "$SRC/scenarios/dht-live-64.toml" --set peers=10 --set workload.keys=60 --set dht.join_window=1s \
  --set live.peers_per_process=4 --json --out dhtpacked.h5 | tail -n 1 > dhtpacked.json
python3 - <<'PY' || fail "live DHT peers packed into processes"
import json
j = json.load(open("dhtpacked.json"))
c, s = j["metrics"]["counters"], j["metrics"]["series"]
assert j["cost"]["processes"] == 4, j["cost"]
assert c.get("dht.store.ok") == 60 and c.get("dht.get.ok") == 60, c
assert s["dht.store.replicas"]["p50"] == 10, s["dht.store.replicas"]
PY
set +e
msg=$("$APIARY" run "$SRC/scenarios/dht-live-64.toml" --set live.peers_per_process=4 --set churn.model=exponential 2>&1); rc=$?
set -e
[ $rc -eq 2 ] && echo "$msg" | grep -q "key 'live.peers_per_process'" || fail "churn with packed peer processes: $msg"
# Half the peer processes stalled (SIGSTOP) through the stores and gets: a frozen peer acknowledges
# nothing, so every store lands on the 5 that run (10 without the stall), and every get succeeds.
"$APIARY" run "$SRC/scenarios/dht-live-64.toml" --set peers=10 --set workload.keys=60 --set dht.join_window=1s \
  --set 'faults.stall={at="1s",duration="60s",fraction=0.5}' --json --out dhtstall.h5 | tail -n 1 > dhtstall.json
python3 - <<'PY' || fail "live DHT processes stalled"
import json
m = json.load(open("dhtstall.json"))["metrics"]
c, s = m["counters"], m["series"]
assert c.get("faults.stall.peers") == 5, c
assert c.get("dht.store.ok") == 60 and c.get("dht.get.ok") == 60, c
assert s["dht.store.replicas"]["p99"] <= 5 and s["dht.store.replicas"]["mean"] >= 4, s["dht.store.replicas"]
PY
}

# 6b. A live DHT of processes under churn: peers 4 and 6 are killed (SIGKILL) while the swarm
#     settles and started again, by default under their old identities (key files), with
#     churn.keep_identity = false under new ones; every store and get afterwards succeeds.
live_dht_churn() {
printf '300ms 4 down\n400ms 6 down\n700ms 4 up\n800ms 6 up\n' > dhtchurn.trace
for keep in true false; do
  "$APIARY" run "$SRC/scenarios/dht-live-64.toml" --set peers=8 --set workload.keys=40 --set dht.join_window=2s \
    --set churn.model=trace --set churn.trace="$PWD/dhtchurn.trace" --set churn.keep_identity=$keep \
    --json --out "dhtchurn-$keep.h5" | tail -n 1 > "dhtchurn-$keep.json"
done
python3 - <<'PY' || fail "live DHT processes under churn"
import json
for keep in ("true", "false"):
    c = json.load(open(f"dhtchurn-{keep}.json"))["metrics"]["counters"]
    assert c.get("churn.leaves") == 2 and c.get("churn.joins") == 2, c
    assert c.get("churn.same_identity" if keep == "true" else "churn.new_identity") == 2, (keep, c)
    assert c.get("dht.store.ok") == 40 and c.get("dht.get.ok") == 40, c
PY
}

# 7. Averaging live: in-process peers on loopback, Moshpit on a 2x2 grid is exact after 2 rounds.
live_averaging() {
"$APIARY" run "$SRC/scenarios/avg-live-16.toml" --set peers=4 --set averaging.grid_side=2 \
  --set averaging.elements=20000 --set averaging.start=1s --set averaging.period=1500ms \
  --set averaging.rounds=2 --json --out avglive.h5 | tail -n 1 > avglive.json
python3 - <<'PY' || fail "live averaging scenario"
import json
m = json.load(open("avglive.json"))["metrics"]
v = m["variance_by_round"]
assert len(v) == 3 and v[0] > 0.1 and v[2] < 1e-12, v
assert m["counters"]["avg.rounds_ok"] == 8, m["counters"]
PY
}

# 7b. Averaging live under churn: peer 3 leaves before the first round and comes back (same port,
live_averaging_churn() {
#     its values kept) before the second; it rejoins the DHT and averages in the later rounds, so
#     two full-grid rounds after its return every peer holds the exact mean of all four.
# (The peers join within 200 ms — dht.join_window — so peer 3 is up when it leaves at 500 ms.)
printf '# TIME PEER up|down\n500ms 3 down\n2s 3 up\n' > avgchurn.trace
"$APIARY" run "$SRC/scenarios/avg-live-16.toml" --set peers=4 --set averaging.grid_side=2 \
  --set averaging.elements=20000 --set averaging.start=1s --set averaging.period=2500ms \
  --set averaging.rounds=4 --set dht.join_window=200ms --set churn.model=trace --set churn.trace="$PWD/avgchurn.trace" \
  --json --out avgchurn.h5 | tail -n 1 > avgchurn.json
python3 - <<'PY' || fail "live averaging under churn"
import json
m = json.load(open("avgchurn.json"))["metrics"]
c, v = m["counters"], m["variance_by_round"]
assert c.get("churn.leaves") == 1 and c.get("churn.joins") == 1, c
assert len(v) == 5 and v[0] > 0.1 and v[-1] < 1e-12, v
assert c["avg.rounds_ok"] >= 12, c  # 4 peers in rounds 1-3: the returning peer takes part
PY
}

# 8. The live all-reduce benchmark: 3 processes, the exact mean everywhere.
allreduce_bench() {
"$APIARY" allreduce-bench --peers 3 --elements 300000 --rounds 2 --warmup 0 --json > ar.json
python3 - <<'PY' || fail "allreduce-bench"
import json
r = json.load(open("ar.json"))
assert r["peers"] == 3 and len(r["round_seconds"]) == 2 and r["max_abs_error"] == 0, r
assert r["bytes_sent_per_peer"] >= 2 * 300000 * 4 * 2 // 3, r
PY
"$APIARY" allreduce-bench --peers 2 --elements 10 --codec bogus 2> arbad.err && fail "bad codec accepted"
grep -q "unknown codec 'bogus'" arbad.err || fail "bad codec error: $(cat arbad.err)"
# Process hygiene. Start a long benchmark, wait until its 3 peers are up, then:
start_bench() {
  "$APIARY" allreduce-bench --peers 3 --elements 1000000 --rounds 1000 --warmup 0 > bench.out 2> bench.err & bench=$!
  for _ in $(seq 600); do
    kids=$(cat /proc/$bench/task/$bench/children 2>/dev/null || true)
    [ "$(echo $kids | wc -w)" = 3 ] && ls /tmp/apiary-allreduce-*/ready2 > /dev/null 2>&1 && return 0
    sleep 0.05
  done
  fail "the benchmark's peers did not start"
}
gone() { for k in $kids; do [ ! -e /proc/$k ] || grep -q "State:.*Z" /proc/$k/status || return 1; done; }
rm -rf /tmp/apiary-allreduce-*
# (a) SIGTERM to the parent: exit 143, every peer process gone, the temporary directory removed.
start_bench
kill -TERM $bench; rc=0; wait $bench || rc=$?
[ $rc = 143 ] || fail "SIGTERM'd benchmark exited $rc: $(cat bench.err)"
gone || fail "peer processes outlived their parent: $kids"
! ls -d /tmp/apiary-allreduce-* 2> /dev/null || fail "temporary directory left behind"
# (b) kill -9 of one peer: the parent says which, the others stop at once instead of waiting.
start_bench
set -- $kids; kill -9 $2
t0=$(date +%s); rc=0; timeout 60 tail --pid=$bench -f /dev/null || fail "the benchmark hung after a peer died"
wait $bench || rc=$?
[ $rc = 1 ] && grep -q "was killed by signal 9" bench.err || fail "dead peer: rc $rc: $(cat bench.err)"
[ $(( $(date +%s) - t0 )) -le 30 ] || fail "the survivors took more than 30 s to stop"
gone || fail "peer processes left after a peer died: $kids"
! ls -d /tmp/apiary-allreduce-* 2> /dev/null || fail "temporary directory left behind after a failure"
# (c) kill -9 of the parent: it can clean nothing up, but no peer outlives it (each dies with it).
start_bench
kill -9 $bench; wait $bench 2> /dev/null || true
for _ in $(seq 40); do gone && break; sleep 0.05; done  # at once, not when they give up on their own
gone || fail "peer processes outlived their SIGKILLed parent: $kids"
rm -rf /tmp/apiary-allreduce-*
}

# 9. A sweep of 12 points x 3 seeds with 2 jobs, interrupted and resumed without rerunning
sweep() {
#    finished runs; then the analysis report on its directory.
SWEEP=("$APIARY" sweep "$SRC/scenarios/sweep-dht-churn.toml" --jobs 2 --out sweep --set peers=24
       --set duration=100s --set workload.start=40s --set dht.join_window=10s)
"${SWEEP[@]}" --quiet 2> sweep1.err & sweep_pid=$!
done_runs() { python3 -c 'import json; print(sum(r["status"] == "done" for r in json.load(open("sweep/index.json"))["runs"]))' 2>/dev/null || echo 0; }
for _ in $(seq 600); do [ "$(done_runs)" -ge 6 ] && break; sleep 0.05; done
kill -INT "$sweep_pid"
rc=0; wait "$sweep_pid" || rc=$?
[ "$rc" = 130 ] || fail "interrupted sweep exited $rc: $(cat sweep1.err)"
first=$(done_runs)
[ "$first" -ge 6 ] && [ "$first" -lt 36 ] || fail "interrupted sweep had $first of 36 runs done"
python3 - > before.txt <<'PY'
import json, os
for r in json.load(open("sweep/index.json"))["runs"]:
    if r["status"] == "done":
        print(r["run"], os.stat("sweep/" + r["file"]).st_mtime_ns)
PY
"${SWEEP[@]}" 2> sweep2.err || fail "resumed sweep: $(cat sweep2.err)"
grep -q "$first already done" sweep2.err || fail "resume did not keep finished runs: $(head -1 sweep2.err)"
[ "$(done_runs)" = 36 ] || fail "resumed sweep finished $(done_runs) of 36"
while read -r run mtime; do
  [ "$(python3 -c "import os; print(os.stat('sweep/$run.h5').st_mtime_ns)")" = "$mtime" ] || fail "$run was run again"
done < before.txt
PYTHONPATH="$SRC" /usr/bin/python3 -m analysis report sweep --out sweep-report > report.out 2>&1 || fail "analysis report: $(cat report.out)"
[ -s sweep-report/summary.md ] && ls sweep-report/success-vs-churn.mean_session.png > /dev/null || fail "report figures missing"
# A bad sweep value names the point's --set.
printf 'peers = 10\n[sweep]\ngrid = { "peers" = [10, "many"] }\n' > badsweep.toml
"$APIARY" sweep badsweep.toml --out badsweep 2> badsweep.err && fail "bad sweep accepted"
grep -q "peers=many" badsweep.err || fail "bad sweep error: $(cat badsweep.err)"
}

# 9b. The same sweep on a Dask cluster (a scheduler and two workers on loopback, started here,
#     sharing this directory): 4 points, interrupted and resumed through the same index; then a
#     Slurm job array, two of whose tasks run here as a node would run them.
sweep_dask() {
cat > dask.toml <<'TOML'
name = "dask-sweep"
peers = 20
duration = "40min"
[workload]
kind = "dht"
start = "40s"
[dht]
join_window = "10s"
[sweep]
grid = { "dht.k" = [5, 10], "peers" = [20, 24] }
TOML
dpids=()
stop_dask() { for p in "${dpids[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; }
trap 'stop_dask; rm -rf "$work"' EXIT
dask-scheduler --host 127.0.0.1 --port 0 --no-dashboard --scheduler-file sched.json > sched.log 2>&1 & dpids+=($!)
for w in 1 2; do
  dask-worker --scheduler-file sched.json --nworkers 1 --nthreads 1 --no-dashboard --local-directory "dw$w" > "worker$w.log" 2>&1 &
  dpids+=($!)
done
for _ in $(seq 600); do [ -s sched.json ] && break; sleep 0.1; done  # the scheduler, another process, writes it
addr=$(timeout 120 /usr/bin/python3 - <<'PY'
from distributed import Client
c = Client(scheduler_file="sched.json", timeout=60)
c.wait_for_workers(2, timeout=60)
print(c.scheduler.address.replace("tcp://", "dask://"))
c.close()
PY
) || fail "no Dask cluster: $(tail -5 sched.log worker1.log)"
DSWEEP=("$APIARY" sweep dask.toml --out dsweep --jobs 2 --executor "$addr")
"${DSWEEP[@]}" --quiet 2> dsweep1.err & sweep_pid=$!
ddone() { python3 -c 'import json; print(sum(r["status"] == "done" for r in json.load(open("dsweep/index.json"))["runs"]))' 2>/dev/null || echo 0; }
for _ in $(seq 1200); do [ "$(ddone)" -ge 1 ] && break; kill -0 "$sweep_pid" 2>/dev/null || break; sleep 0.05; done
kill -INT "$sweep_pid" 2>/dev/null || true
rc=0; wait "$sweep_pid" || rc=$?
[ "$rc" = 130 ] || fail "interrupted Dask sweep exited $rc: $(cat dsweep1.err)"
first=$(ddone)
[ "$first" -ge 1 ] && [ "$first" -lt 4 ] || fail "interrupted Dask sweep had $first of 4 runs done"
"${DSWEEP[@]}" 2> dsweep2.err || fail "resumed Dask sweep: $(cat dsweep2.err)"
grep -q "$first already done" dsweep2.err || fail "the resumed Dask sweep did not keep finished runs: $(head -1 dsweep2.err)"
[ "$(ddone)" = 4 ] || fail "resumed Dask sweep finished $(ddone) of 4"
for i in 0 1 2 3; do [ -s "dsweep/run-000$i.h5" ] || fail "dsweep/run-000$i.h5 missing"; done
grep -q "expected local or dask://HOST:PORT" <("$APIARY" sweep dask.toml --executor dask://nowhere 2>&1) || fail "bad --executor accepted"
# A Slurm array: task I runs point I alone, into the same index.
"$APIARY" sweep dask.toml --out slurm --emit slurm > job.sh || fail "--emit slurm"
grep -q '^#SBATCH --array=0-3$' job.sh && grep -q -- '--only "$SLURM_ARRAY_TASK_ID"' job.sh || fail "job array: $(cat job.sh)"
for t in 0 3; do SLURM_ARRAY_TASK_ID=$t bash job.sh 2> "task$t.err" || fail "array task $t: $(cat "task$t.err")"; done
python3 -c '
import json, os
r = json.load(open("slurm/index.json"))["runs"]
assert [x["status"] for x in r] == ["done", "pending", "pending", "done"], r
assert os.path.exists("slurm/run-0000.h5") and os.path.exists("slurm/run-0003.h5")' || fail "array tasks: $(cat slurm/index.json)"
stop_dask
}

# 10. A fault campaign: seeds with their own drawn faults are clean; faults made heavy on purpose
#     break the DHT's invariant, and the summary's command replays the violation exactly.
campaign() {
cp "$SRC/scenarios/campaign-dht.toml" dhtc.toml
"$APIARY" campaign dhtc.toml --seeds 6 --jobs 2 --out clean --quiet 2> clean.err || fail "campaign: $(cat clean.err)"
grep -q "| 6 | 0 | 0 | 0 |" clean/summary.md || fail "campaign not clean: $(cat clean/summary.md)"
python3 -c 'import json; r=json.load(open("clean/index.json"))["runs"]; assert sum(bool(x["params"]) for x in r) >= 4, r' \
  || fail "the seeds drew no faults"
set +e; "$APIARY" campaign dhtc.toml --seeds 2 --out broken --quiet --faults network --set dht.k=2 \
  --set 'faults.inject={drop_reply=0.6}' 2> broken.err; rc=$?; set -e
[ $rc = 1 ] || fail "a campaign with violations exited $rc"
grep -q "invariant.dht.live_key_not_found" broken/summary.md || fail "violation not reported: $(cat broken/summary.md)"
want=$(grep -m1 -o "live_key_not_found = [0-9]*" broken/summary.md | grep -o "[0-9]*$")
replay=$(grep -m1 "^  apiary run" broken/summary.md | sed "s|^  apiary|\"$APIARY\"|")
got=$(eval "$replay --json --quiet --out replay.h5" | tail -n 1 |
      python3 -c 'import json,sys; print(json.load(sys.stdin)["metrics"]["counters"]["invariant.dht.live_key_not_found"])')
[ "$got" = "$want" ] || fail "the replay found $got violations, the campaign $want"
}

# 11. A small campaign per workload besides the DHT's: 4 seeds each, with their drawn faults, clean.
campaigns() {
for w in averaging train diloco dmoe; do
  "$APIARY" campaign "$SRC/scenarios/campaign-$w.toml" --seeds 4 --jobs 2 --out "c-$w" --quiet 2> "c-$w.err" ||
    fail "campaign-$w: $(cat "c-$w.err") $(cat "c-$w/summary.md" 2>/dev/null)"
  grep -q "| 4 | 0 | 0 | 0 |" "c-$w/summary.md" || fail "campaign-$w not clean: $(cat "c-$w/summary.md")"
done
}

all=(quickstart determinism errors live_ping live_dht_tools live_dht_scenario live_dht_churn live_averaging live_averaging_churn allreduce_bench sweep
     sweep_dask campaign campaigns)
[ $# -gt 2 ] && sections=("${@:3}") || sections=("${all[@]}")
for s in "${sections[@]}"; do
  declare -F "$s" > /dev/null || fail "no section '$s' (there are: ${all[*]})"
  mkdir -p "$work/$s" && cd "$work/$s"
  "$s"
  echo "cli $s: passed"
done
