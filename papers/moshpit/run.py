#!/usr/bin/env python3
"""Reproduce the Moshpit SGD averaging table (Ryabinin et al., 2021) in ns-3.

Every configuration runs `apiary run papers/moshpit/averaging.toml` with --set overrides and a
different seed per restart; a run stops once the variance across peers is below 1e-9 (or after
50 rounds). "Rounds" is the number of rounds completed when the variance first fell below 1e-9
(50 if it never did, as the paper caps it). Writes RESULTS.md beside this file.

    /usr/bin/python3 papers/moshpit/run.py [--jobs 2] [--restarts 10] [--peers 512 768 900 1024]
"""
import argparse
import concurrent.futures as cf
import json
import os
import statistics
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCENARIO = os.path.join(HERE, "averaging.toml")
CAP = 50
PS = [0.0, 0.001, 0.005, 0.01]
METHODS = ["allreduce", "moshpit", "random", "gossip"]

# The paper's N=512 row (Table 1 of the Moshpit SGD paper, as quoted in issue 4) and the
# tolerance we hold ourselves to. None: the paper gives no number for that cell.
PAPER = {
    ("allreduce", 512): [1.0, 1.6, 10.9, 41.7],
    ("moshpit", 512): [8.2, 8.5, 8.6, 8.8],     # "about 8.2 to 8.8"
    ("random", 512): [6.1, 6.3, 6.4, 6.6],      # "6.1 to 6.6"
    ("gossip", 512): [">50"] * 4,               # does not reach 1e-9 in 50 rounds
    ("moshpit", 1024): [2.0, None, None, None],  # full 32x32 grid: exact in 2 rounds
}


def tolerance(method, paper):
    if paper == ">50":
        return "not reached in 50"
    if method == "allreduce":
        return "±35% (geometric, 10 restarts)"
    return "±15%"


def passes(method, paper, ours):
    if paper is None:
        return None
    if paper == ">50":
        return ours >= CAP
    if method == "allreduce":
        return abs(ours - paper) <= 0.35 * paper + 0.05
    return abs(ours - paper) <= 0.15 * paper + 0.05


def run_one(binary, method, n, p, seed):
    sets = [f"peers={n}", f"averaging.grouping={method}", f"averaging.fail_probability={p}",
            f"seed={seed}"]
    if method == "random":
        sets.append("averaging.group_size=32")
    cmd = [binary, "run", SCENARIO, "--json", "--quiet", "--out", f"/tmp/apiary-moshpit-{method}-{n}-{p}-{seed}.h5"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=3600)
    if out.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stderr}")
    summary = json.loads(out.stdout.strip().splitlines()[-1])
    var = summary["metrics"].get("variance_by_round", [])
    rounds = next((t for t, v in enumerate(var) if v < 1e-9), CAP)
    os.remove(summary["results"])
    return rounds, time.time() - t0


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiary", default=os.path.join(ROOT, "build", "apiary"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--restarts", type=int, default=10)
    ap.add_argument("--peers", type=int, nargs="+", default=[512, 768, 900, 1024])
    ap.add_argument("--methods", nargs="+", default=METHODS)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "out", "moshpit-cache.json"),
                    help="finished runs are kept here, so an interrupted reproduction resumes")
    args = ap.parse_args()
    if not os.path.exists(args.apiary):
        sys.exit(f"{args.apiary} not found: build first (cmake/bootstrap.sh)")

    all_jobs = [(m, n, p, seed) for n in args.peers for m in args.methods for p in PS
                for seed in range(1, args.restarts + 1)]
    cache = {}
    if os.path.exists(args.cache):
        with open(args.cache) as f:
            cache = json.load(f)
    key = lambda m, n, p, seed: f"{m},{n},{p},{seed}"
    results = {}
    for j in all_jobs:
        if key(*j) in cache:
            results.setdefault(j[:3], []).append(cache[key(*j)])
    jobs = [j for j in all_jobs if key(*j) not in cache]
    print(f"{len(all_jobs) - len(jobs)} runs cached in {args.cache}, {len(jobs)} to run", flush=True)
    os.makedirs(os.path.dirname(args.cache), exist_ok=True)
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_one, args.apiary, *j): j for j in jobs}
        for k, f in enumerate(cf.as_completed(futs), 1):
            m, n, p, seed = futs[f]
            rounds, secs = f.result()
            results.setdefault((m, n, p), []).append(rounds)
            cache[key(m, n, p, seed)] = rounds
            with open(args.cache + ".tmp", "w") as cf_out:
                json.dump(cache, cf_out)
            os.replace(args.cache + ".tmp", args.cache)
            left = (time.time() - t0) / k * (len(jobs) - k)
            print(f"[{k}/{len(jobs)}] {m} N={n} p={p} seed={seed}: {rounds} rounds ({secs:.1f} s; ~{left/60:.0f} min left)",
                  flush=True)

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    lines = ["# Moshpit SGD averaging table, reproduced in ns-3", "",
             f"Source tree at commit {commit or '?'}; binary {args.apiary}.", "",
             "Generated by `/usr/bin/python3 papers/moshpit/run.py "
             f"--restarts {args.restarts} --peers {' '.join(map(str, args.peers))}` "
             f"in {(time.time() - t0) / 60:.1f} min. Rounds until the variance across peers is below 1e-9, "
             f"mean over {args.restarts} restarts (seeds 1..{args.restarts}); 50 means not reached in 50 rounds.", "",
             "| method | N | p | ours (mean) | ours (min-max) | paper | tolerance | result |",
             "|---|---:|---:|---:|---:|---:|---|---|"]
    verdicts = []
    for n in args.peers:
        for m in args.methods:
            for i, p in enumerate(PS):
                r = results[(m, n, p)]
                mean = statistics.mean(r)
                paper = PAPER.get((m, n), [None] * 4)[i]
                ok = passes(m, paper, mean)
                verdict = "—" if ok is None else ("pass" if ok else "FAIL")
                if ok is not None:
                    verdicts.append(ok)
                lines.append(f"| {m} | {n} | {p} | {mean:.1f} | {min(r)}-{max(r)} | "
                             f"{'—' if paper is None else paper} | {'' if paper is None else tolerance(m, paper)} | {verdict} |")
    lines += ["", f"**{sum(verdicts)} of {len(verdicts)} rows with a paper value pass.**", ""]
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
