#!/usr/bin/env python3
"""Reproduce the Moshpit SGD averaging table (Ryabinin et al., 2021) in ns-3.

Every configuration runs `apiary run papers/moshpit/averaging.toml` with --set overrides and a
different seed per restart; a run stops once the variance across peers is below 1e-9 (or after
50 rounds). "Rounds" is the number of rounds completed when the variance first fell below 1e-9
(50 if it never did, as the paper caps it). Writes RESULTS.md beside this file.

    /usr/bin/python3 papers/moshpit/run.py [--jobs 2] [--restarts 10] [--peers 512 768 900 1024]
                                           [--noise-restarts 100 --noise-peers 512]

Moshpit runs under both grid rules, every peer starting in its own random cell (drawn without
replacement) on a partly filled grid:
  moshpit-fixed  coordinates never change; a group is the alive peers on one grid line, rows and
                 columns alternating: the authors' own simulation (yandex-research/moshpit-sgd,
                 averaging_experiments/averager.py), which produced the paper's table
  moshpit-rank   after a round a peer's coordinate in the left-out dimension becomes its rank in
                 the group: the paper's Algorithm 1 and hivemind's; a peer that sat a round out
                 parks outside the grid in that dimension until it is ranked there again
Reference values: the table the authors' notebook prints (averaging_experiments/plot_results.ipynb,
10 restarts) for N = 512, 768, 900; the paper's claim that a full grid is exact after d = 2 rounds
(N = 1024, p = 0); gossip not reaching the target in 50 rounds (the paper's N = 512 row).
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
METHODS = ["allreduce", "moshpit-fixed", "moshpit-rank", "random", "gossip"]
SETS = {
    "allreduce": ["averaging.grouping=allreduce"],
    "moshpit-fixed": ["averaging.grouping=moshpit", "averaging.grid_rule=fixed"],
    "moshpit-rank": ["averaging.grouping=moshpit", "averaging.grid_rule=rank"],
    "random": ["averaging.grouping=random", "averaging.group_size=32"],
    "gossip": ["averaging.grouping=gossip"],
}

# The authors' notebook table (10 restarts, target 1e-9) at p = 0, 0.001, 0.005, 0.01, plus the
# paper's statements. None: no reference for that cell.
REFERENCE = {
    ("allreduce", 512): [1.0, 1.6, 10.9, 41.7], ("allreduce", 768): [1.0, 1.8, 28.7, 50.0],
    ("allreduce", 900): [1.0, 1.8, 50.0, 50.0],
    ("moshpit-fixed", 512): [8.2, 8.5, 8.8, 8.8], ("moshpit-fixed", 768): [6.0, 6.0, 6.6, 6.9],
    ("moshpit-fixed", 900): [5.0, 5.1, 5.9, 6.5],
    ("random", 512): [6.1, 6.3, 6.3, 6.6], ("random", 768): [6.2, 6.5, 6.6, 7.0], ("random", 900): [6.4, 6.3, 6.7, 7.0],
    ("gossip", 512): [">50"] * 4,                     # the paper: not reached in 50 rounds
    ("moshpit-fixed", 1024): [2.0, None, None, None],  # a full 32x32 grid is exact after 2 rounds
    ("moshpit-rank", 1024): [2.0, None, None, None],
}
RULE = {"moshpit-fixed": "fixed coordinates (the authors' simulation)",
        "moshpit-rank": "rank rule (the paper's Algorithm 1, hivemind)"}


def capped_geometric(n, p):
    """Mean and standard deviation of the all-reduce baseline's round count, min(G, CAP), where G
    is geometric with success probability q = (1 - p)^n (a round counts only if no peer fails)."""
    q = (1.0 - p) ** n
    probs = [q * (1.0 - q) ** (k - 1) for k in range(1, CAP)]
    probs.append((1.0 - q) ** (CAP - 1))  # k = CAP: success at round CAP or never
    ks = range(1, CAP + 1)
    mean = sum(k * w for k, w in zip(ks, probs))
    var = sum((k - mean) ** 2 * w for k, w in zip(ks, probs))
    return mean, var ** 0.5


def tolerance(method, n, p, restarts):
    """The band around the reference a row must land in, as (half-width, text)."""
    if method == "allreduce":
        # Both the reference and ours are means of `restarts` draws of the same capped geometric
        # variable, so they may differ by chance: allow two standard deviations of the difference
        # of two such means (zero when p = 0: the round count is then always 1).
        _, sd = capped_geometric(n, p)
        half = 2.0 * sd * (2.0 / restarts) ** 0.5
        return half + 0.05, f"±{half + 0.05:.1f} (2σ of two {restarts}-restart means)"
    return 0.5, "±0.5 round"


def verdict(method, ref, ours, n, p, restarts):
    if ref is None:
        return None
    if ref == ">50":
        return ours >= CAP
    return abs(ours - ref) <= tolerance(method, n, p, restarts)[0]


def run_one(binary, method, n, p, seed):
    sets = [f"peers={n}", f"averaging.fail_probability={p}", f"seed={seed}"] + SETS[method]
    cmd = [binary, "run", SCENARIO, "--json", "--quiet", "--force", "--out", f"/tmp/apiary-moshpit-{method}-{n}-{p}-{seed}.h5"]
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
    ap.add_argument("--methods", nargs="+", default=METHODS, choices=METHODS)
    ap.add_argument("--noise-restarts", type=int, default=100,
                    help="restarts of Moshpit at p = 0 (both rules) that show the noise of a mean; 0: none")
    ap.add_argument("--noise-peers", type=int, nargs="*", default=[512])
    ap.add_argument("--noise-methods", nargs="*", default=["moshpit-fixed", "moshpit-rank"],
                    choices=["moshpit-fixed", "moshpit-rank"])
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--cache", default=os.path.join(ROOT, "out", "moshpit-cache.json"),
                    help="finished runs are kept here, so an interrupted reproduction resumes")
    args = ap.parse_args()
    if not os.path.exists(args.apiary):
        sys.exit(f"{args.apiary} not found: build first (cmake/bootstrap.sh)")

    R = args.restarts
    moshpits = [m for m in args.methods if m.startswith("moshpit")]
    table_jobs = [(m, n, p, seed) for n in args.peers for m in args.methods for p in PS for seed in range(1, R + 1)]
    noise_methods = [m for m in args.noise_methods if m in moshpits]
    noise_jobs = [(m, n, 0.0, seed) for n in args.noise_peers for m in noise_methods
                  for seed in range(1, args.noise_restarts + 1)]
    all_jobs = list(dict.fromkeys(table_jobs + noise_jobs))
    cache = {}
    if os.path.exists(args.cache):
        with open(args.cache) as f:
            cache = json.load(f)
    key = lambda m, n, p, seed: f"{m},{n},{p},{seed}"
    jobs = [j for j in all_jobs if key(*j) not in cache]
    print(f"{len(all_jobs) - len(jobs)} runs cached in {args.cache}, {len(jobs)} to run", flush=True)
    os.makedirs(os.path.dirname(args.cache), exist_ok=True)
    t0 = time.time()
    with cf.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futs = {pool.submit(run_one, args.apiary, *j): j for j in jobs}
        for k, f in enumerate(cf.as_completed(futs), 1):
            m, n, p, seed = futs[f]
            rounds, secs = f.result()
            cache[key(m, n, p, seed)] = rounds
            with open(args.cache + ".tmp", "w") as cf_out:
                json.dump(cache, cf_out)
            os.replace(args.cache + ".tmp", args.cache)
            left = (time.time() - t0) / k * (len(jobs) - k)
            print(f"[{k}/{len(jobs)}] {m} N={n} p={p} seed={seed}: {rounds} rounds ({secs:.1f} s; ~{left/60:.0f} min left)",
                  flush=True)
    rounds_of = lambda m, n, p, restarts: [cache[key(m, n, p, s)] for s in range(1, restarts + 1)]

    commit = subprocess.run(["git", "-C", ROOT, "rev-parse", "--short", "HEAD"], capture_output=True, text=True).stdout.strip()
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    lines = ["# Moshpit SGD averaging table, reproduced in ns-3", "",
             "Moshpit runs under both grid rules, with every peer in its own random cell on a partly filled grid "
             "(drawn without replacement): **moshpit-fixed** keeps coordinates (a group is the alive peers on one "
             "grid line), as the authors' simulation that produced the paper's table does; **moshpit-rank** moves a "
             "peer to its rank in the group after each round, as the paper's Algorithm 1 and hivemind do (a peer "
             "that sat a round out parks outside the grid in that dimension until it is ranked there again). "
             "Reference: the table the authors' notebook prints (N = 512, 768, 900), the paper's claim that a full "
             "grid is exact after 2 rounds (N = 1024, p = 0), and gossip not reaching the target in 50 rounds.", "",
             f"Source tree at commit {commit or '?'}{' (with uncommitted changes)' if dirty else ''}; binary {args.apiary}.", "",
             "Generated by `/usr/bin/python3 papers/moshpit/run.py "
             f"--restarts {R} --peers {' '.join(map(str, args.peers))} --methods {' '.join(args.methods)} "
             f"--noise-restarts {args.noise_restarts} --noise-peers {' '.join(map(str, args.noise_peers))} "
             f"--noise-methods {' '.join(noise_methods)}` "
             f"({len(jobs)} runs in {(time.time() - t0) / 60:.1f} min, {len(all_jobs) - len(jobs)} from the cache). "
             "Rounds until the variance across peers is below 1e-9, "
             f"mean over {R} restarts (seeds 1..{R}); 50 means not reached in 50 rounds. "
             "For the all-reduce baseline, *expected* is the exact mean of its round count "
             f"min(G, {CAP}), G geometric with success probability (1 - p)^N.", "",
             "| method | N | p | ours (mean) | ours (min-max) | expected | reference | tolerance | result |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    verdicts = []
    for n in args.peers:
        for m in args.methods:
            for i, p in enumerate(PS):
                r = rounds_of(m, n, p, R)
                mean = statistics.mean(r)
                ref = REFERENCE.get((m, n), [None] * 4)[i]
                ok = verdict(m, ref, mean, n, p, R)
                if ok is not None:
                    verdicts.append(ok)
                expected = f"{capped_geometric(n, p)[0]:.1f}" if m == "allreduce" else ""
                tol = "" if ref is None else ("not reached in 50" if ref == ">50" else tolerance(m, n, p, R)[1])
                lines.append(f"| {m} | {n} | {p} | {mean:.1f} | {min(r)}-{max(r)} | {expected} | "
                             f"{'—' if ref is None else ref} | {tol} | {'—' if ok is None else ('pass' if ok else 'FAIL')} |")
    lines += ["", f"**{sum(verdicts)} of {len(verdicts)} rows with a reference pass.**", ""]
    if noise_jobs:
        NR = args.noise_restarts
        lines += [f"## Noise: {NR} restarts at p = 0", "",
                  f"The table's means are over {R} restarts; here the same configurations over {NR} (seeds 1..{NR}), "
                  f"with the spread a {R}-restart mean has (its standard error, sd/√{R}).", "",
                  f"| method | N | mean of {NR} | sd | standard error of a {R}-restart mean | rounds: restarts |",
                  "|---|---:|---:|---:|---:|---|"]
        for n in args.noise_peers:
            for m in noise_methods:
                r = rounds_of(m, n, 0.0, NR)
                sd = statistics.stdev(r) if len(r) > 1 else 0.0
                hist = ", ".join(f"{v}: {r.count(v)}" for v in sorted(set(r)))
                lines.append(f"| {m} | {n} | {statistics.mean(r):.2f} | {sd:.2f} | {sd / R ** 0.5:.2f} | {hist} |")
        lines.append("")
    lines += ["Notes:", ""]
    for m in moshpits:
        if 1024 in args.peers:
            r = rounds_of(m, 1024, 0.0, R)
            lines.append(f"* {m}, N = 1024, p = 0 (the full 32x32 grid, filled row by row): {sum(1 for x in r if x == 2)} of "
                         f"{len(r)} restarts reached the target in 2 rounds (exact after 2 rounds needs every group to be "
                         "a whole line of the grid, so one group formed short by DHT matchmaking costs a round).")
    if "allreduce" in args.methods:
        lines.append(f"* The all-reduce baseline's round count is geometric, so {R} restarts are noisy: the "
                     f"tolerance is two standard deviations of the difference between two {R}-restart means of "
                     "that distribution (the reference's and ours), computed from p and N, not fitted.")
    if {"moshpit-fixed", "moshpit-rank"} <= set(moshpits):
        for n in args.peers:
            if n >= 1024:
                continue
            fx = [statistics.mean(rounds_of("moshpit-fixed", n, p, R)) for p in PS]
            rk = [statistics.mean(rounds_of("moshpit-rank", n, p, R)) for p in PS]
            lines.append(f"* N = {n} (grid partly filled): fixed coordinates took {min(fx):.1f} to {max(fx):.1f} rounds, "
                         f"the rank rule {min(rk):.1f} to {max(rk):.1f}.")
    lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
