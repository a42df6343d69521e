#!/usr/bin/env python3
"""Reproduce the Moshpit SGD averaging table (Ryabinin et al., 2021) in ns-3.

Every configuration runs `apiary run papers/moshpit/averaging.toml` with --set overrides and a
different seed per restart; a run stops once the variance across peers is below 1e-9 (or after
50 rounds). "Rounds" is the number of rounds completed when the variance first fell below 1e-9
(50 if it never did, as the paper caps it). Writes RESULTS.md beside this file.

    /usr/bin/python3 papers/moshpit/run.py [--jobs 2] [--restarts 10] [--peers 512 768 900 1024]

With --setup authors, Moshpit runs as the authors' own simulation does
(yandex-research/moshpit-sgd, averaging_experiments/averager.py): every peer its own random cell
(drawn without replacement) and coordinates that never change, a group being the alive peers on
one grid line; the rows are compared with the table their notebook prints
(averaging_experiments/plot_results.ipynb) and written to RESULTS-authors.md.
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

# The paper's N=512 row (Table 1 of the Moshpit SGD paper) and the
# tolerance we hold ourselves to. None: the paper gives no number for that cell.
PAPER = {
    ("allreduce", 512): [1.0, 1.6, 10.9, 41.7],
    ("moshpit", 512): [8.2, 8.5, 8.6, 8.8],     # "about 8.2 to 8.8"
    ("random", 512): [6.1, 6.3, 6.4, 6.6],      # "6.1 to 6.6"
    ("gossip", 512): [">50"] * 4,               # does not reach 1e-9 in 50 rounds
    ("moshpit", 1024): [2.0, None, None, None],  # full 32x32 grid: exact in 2 rounds
}


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


def tolerance(method, paper, n, p, restarts):
    """The band around the paper's number that a row must land in, as (half-width, text)."""
    if paper == ">50":
        return None, "not reached in 50"
    if method == "allreduce":
        # Both the paper's figure and ours are means of `restarts` draws of the same capped
        # geometric variable, so they may differ by chance: allow two standard deviations of the
        # difference of two such means (zero when p = 0: the round count is then always 1).
        _, sd = capped_geometric(n, p)
        half = 2.0 * sd * (2.0 / restarts) ** 0.5
        return half + 0.05, f"±{half + 0.05:.1f} (2σ of two {restarts}-restart means)"
    if method == "moshpit" and PAPER is AUTHORS:
        return 0.5, "±0.5 round"
    return 0.15 * paper + 0.05, "±15%"


def passes(method, paper, ours, n, p, restarts):
    if paper is None:
        return None
    if paper == ">50":
        return ours >= CAP
    half, _ = tolerance(method, paper, n, p, restarts)
    return abs(ours - paper) <= half


# The table the authors' notebook prints (averaging_experiments/plot_results.ipynb, 10 restarts,
# target 1e-9): N = 512, 768 and 900 at p = 0, 0.001, 0.005, 0.01.
AUTHORS = {
    ("allreduce", 512): [1.0, 1.6, 10.9, 41.7], ("allreduce", 768): [1.0, 1.8, 28.7, 50.0],
    ("allreduce", 900): [1.0, 1.8, 50.0, 50.0],
    ("moshpit", 512): [8.2, 8.5, 8.8, 8.8], ("moshpit", 768): [6.0, 6.0, 6.6, 6.9], ("moshpit", 900): [5.0, 5.1, 5.9, 6.5],
    ("random", 512): [6.1, 6.3, 6.3, 6.6], ("random", 768): [6.2, 6.5, 6.6, 7.0], ("random", 900): [6.4, 6.3, 6.7, 7.0],
}
SETUP = {"paper": {}, "authors": {"placement": "distinct", "grid_rule": "fixed"}}


def run_one(binary, method, n, p, seed, setup="paper"):
    sets = [f"peers={n}", f"averaging.grouping={method}", f"averaging.fail_probability={p}",
            f"seed={seed}"]
    if method == "moshpit":
        sets += [f"averaging.{k}={v}" for k, v in SETUP[setup].items()]
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
    ap.add_argument("--setup", choices=["paper", "authors"], default="paper",
                    help="authors: Moshpit as the authors' simulation runs it, against their notebook's table")
    ap.add_argument("--out", default=None)
    ap.add_argument("--cache", default=os.path.join(ROOT, "out", "moshpit-cache.json"),
                    help="finished runs are kept here, so an interrupted reproduction resumes")
    args = ap.parse_args()
    if args.out is None:
        args.out = os.path.join(HERE, "RESULTS-authors.md" if args.setup == "authors" else "RESULTS.md")
    global PAPER
    if args.setup == "authors":
        PAPER = AUTHORS
        args.cache = args.cache.replace(".json", "-authors.json")
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
        futs = {pool.submit(run_one, args.apiary, *j, args.setup): j for j in jobs}
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
    dirty = subprocess.run(["git", "-C", ROOT, "status", "--porcelain", "--untracked-files=no"],
                           capture_output=True, text=True).stdout.strip()
    R = args.restarts
    title = "# Moshpit SGD averaging table, reproduced in ns-3" + (
        " with the authors' simulation setup" if args.setup == "authors" else "")
    setup_line = ("Moshpit: every peer its own random cell, coordinates fixed (a group is the alive peers on one "
                  "grid line), as in the authors' simulation; paper column: their notebook's printed table."
                  if args.setup == "authors" else
                  "Moshpit: cells drawn coordinate by coordinate (peers may share one), each peer's coordinate "
                  "in the left-out dimension becomes its rank in the group after a round (the paper's algorithm).")
    lines = [title, "", setup_line, "",
             f"Source tree at commit {commit or '?'}{' (with uncommitted changes)' if dirty else ''}; binary {args.apiary}.", "",
             "Generated by `/usr/bin/python3 papers/moshpit/run.py "
             f"--setup {args.setup} --restarts {R} --peers {' '.join(map(str, args.peers))} --methods {' '.join(args.methods)}` "
             f"({len(jobs)} runs in {(time.time() - t0) / 60:.1f} min, {len(all_jobs) - len(jobs)} from the cache). "
             "Rounds until the variance across peers is below 1e-9, "
             f"mean over {R} restarts (seeds 1..{R}); 50 means not reached in 50 rounds. "
             "For the all-reduce baseline, *expected* is the exact mean of its round count "
             f"min(G, {CAP}), G geometric with success probability (1 - p)^N.", "",
             "| method | N | p | ours (mean) | ours (min-max) | expected | paper | tolerance | result |",
             "|---|---:|---:|---:|---:|---:|---:|---|---|"]
    verdicts = []
    for n in args.peers:
        for m in args.methods:
            for i, p in enumerate(PS):
                r = results[(m, n, p)]
                mean = statistics.mean(r)
                paper = PAPER.get((m, n), [None] * 4)[i]
                ok = passes(m, paper, mean, n, p, R)
                verdict = "—" if ok is None else ("pass" if ok else "FAIL")
                if ok is not None:
                    verdicts.append(ok)
                expected = f"{capped_geometric(n, p)[0]:.1f}" if m == "allreduce" else ""
                tol = "" if paper is None else tolerance(m, paper, n, p, R)[1]
                lines.append(f"| {m} | {n} | {p} | {mean:.1f} | {min(r)}-{max(r)} | {expected} | "
                             f"{'—' if paper is None else paper} | {tol} | {verdict} |")
    lines += ["", f"**{sum(verdicts)} of {len(verdicts)} rows with a paper value pass.**", "", "Notes:", ""]
    for n in args.peers:
        r = results.get(("moshpit", n, 0.0))
        if r is None or n != 32 * 32:
            continue
        lines.append(f"* Moshpit, N = {n}, p = 0 (the full 32x32 grid): {sum(1 for x in r if x == 2)} of {len(r)} "
                     "restarts reached the target in 2 rounds (exact after 2 rounds needs every group to be a whole "
                     "row of the grid, so one group formed short by DHT matchmaking costs a round).")
    if "allreduce" in args.methods:
        lines.append(f"* The all-reduce baseline's round count is geometric, so {R} restarts are noisy: the "
                     f"tolerance is two standard deviations of the difference between two {R}-restart means of "
                     "that distribution (the paper's and ours), computed from p and N, not fitted.")
    for n in args.peers:
        if n >= 1024 or ("moshpit", n, 0.0) not in results or ("random", n, 0.0) not in results:
            continue
        mo = [statistics.mean(results[("moshpit", n, p)]) for p in PS]
        ra = [statistics.mean(results[("random", n, p)]) for p in PS]
        lines.append(f"* N = {n}: the grid is not full and peers start at random cells; Moshpit took "
                     f"{min(mo):.1f} to {max(mo):.1f} rounds, random groups of 32 {min(ra):.1f} to {max(ra):.1f}.")
    lines.append("")
    with open(args.out, "w") as f:
        f.write("\n".join(lines))
    print("\n".join(lines))
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
