#!/usr/bin/env python3
"""BTARD's qualitative result ("Secure Distributed Training at Scale", ICML 2022), in one command.

16 peers train softmax regression on Fashion-MNIST (btard.toml); from global step 1,000 on, 7 of
them are Byzantine. Rows (pass/fail):
  1. sign flip (gradient x -1000) and random direction (norm x 1000), plain mean: training
     diverges or stalls (accuracy at least 20 points under the attack-free run).
  2. the same attacks with BTARD: final accuracy within 2 points of the attack-free run, every
     attacker banned by every honest peer, no honest peer banned; the steps from the attack's
     start to the last ban.
  3. BTARD's overhead without attackers: all-reduce and transport bytes per sample and averaging
     time per step against the plain run.
  4. no false bans across N seeds of a shorter run of the same swarm (attack from step 30 of 80).
  5. PowerSGD (no attackers): accuracy within 1 point of uncompressed at >= 8x fewer all-reduce
     bytes per step.
  6. live (btard-live.toml): 16 LibTorch trainer processes, 7 Byzantine from step 20 of 80: every
     attacker banned by every honest trainer, no honest one banned, accuracy with BTARD against
     the same run without attackers.

    /usr/bin/python3 papers/btard/run.py [--jobs 2] [--seeds 100] [--steps 1500 --attack-from 1000]
    /usr/bin/python3 papers/btard/run.py --only-live    # row 6 again, into the existing RESULTS.md
"""
import argparse
import concurrent.futures
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCENARIO = os.path.join(HERE, "btard.toml")


def run(binary, sets, seed=1, scenario=SCENARIO):
    fd, out = tempfile.mkstemp(suffix=".h5")
    os.close(fd)
    cmd = [binary, "run", scenario, "--json", "--quiet", "--force", "--out", out, "--seed", str(seed)]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    p = subprocess.run(cmd, capture_output=True, text=True)
    if os.path.exists(out):
        os.remove(out)
    if p.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{p.stderr}")
    j = json.loads(p.stdout.strip().splitlines()[-1])
    j["wall"] = time.time() - t0
    j["sets"] = sets
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiary", default=os.path.join(ROOT, "build", "apiary"))
    ap.add_argument("--jobs", type=int, default=2)
    ap.add_argument("--steps", type=int, default=1500)
    ap.add_argument("--attack-from", type=int, default=1000)
    ap.add_argument("--seeds", type=int, default=100, help="seeds of the short run checked for false bans (0: skip)")
    ap.add_argument("--powersgd-rank", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    ap.add_argument("--skip-live", action="store_true", help="skip row 6 (about 5 minutes)")
    ap.add_argument("--only-live", action="store_true", help="run row 6 alone and put it into the existing --out")
    args = ap.parse_args()
    if args.only_live:
        return live_row(args)
    # A snapshot of the binary: a rebuild during the run must not change what runs.
    snap_dir = tempfile.mkdtemp(prefix="apiary-btard-")
    binary = os.path.join(snap_dir, "apiary")
    shutil.copy2(args.apiary, binary)

    base = [f"training.steps={args.steps}", f"training.attack_from_step={args.attack_from}"]
    mean = ["training.btard=false", "training.aggregation=mean"]
    runs = {
        "clean_mean": base + mean + ["training.attack=none"],
        "clean_btard": base + ["training.attack=none"],
        "flip_mean": base + mean + ["training.attack=sign_flip"],
        "flip_btard": base + ["training.attack=sign_flip"],
        "random_mean": base + mean + ["training.attack=random_direction"],
        "random_btard": base + ["training.attack=random_direction"],
        "powersgd": base + mean + ["training.attack=none", f"training.powersgd_rank={args.powersgd_rank}"],
    }
    short = ["training.steps=80", "training.attack_from_step=30", "duration=30min"]
    started = time.time()
    with concurrent.futures.ThreadPoolExecutor(max_workers=args.jobs) as pool:
        futures = {k: pool.submit(run, binary, v) for k, v in runs.items()}
        seed_futures = [pool.submit(run, binary, short + ["training.attack=sign_flip"], s) for s in range(1, args.seeds + 1)]
        res = {k: f.result() for k, f in futures.items()}
        seeds = [f.result() for f in seed_futures]
    shutil.rmtree(snap_dir, ignore_errors=True)
    elapsed = time.time() - started

    def fig(k):
        return res[k]["cost"]

    clean = fig("clean_mean")["final_accuracy"]
    rows = []
    for attack, name in (("flip", "sign flip (x -1000)"), ("random", "random direction (norm x 1000)")):
        m, b = fig(f"{attack}_mean"), fig(f"{attack}_btard")
        rows.append((f"1 {attack}", f"{name}, plain mean", "diverges or stalls (>= 20 points under attack-free)",
                     f"{100 * m['final_accuracy']:.1f}%", m["final_accuracy"] <= clean - 0.20))
        last = b["btard_last_ban_epoch"] - args.attack_from if b["btard_last_ban_epoch"] >= 0 else float("nan")
        ok = (b["final_accuracy"] >= clean - 0.02 and b["btard_attackers_banned"] == b["btard_attackers"]
              and b["btard_false_bans"] == 0)
        rows.append((f"2 {attack}", f"{name}, BTARD", "within 2 points of attack-free; all 7 banned; 0 false bans",
                     f"{100 * b['final_accuracy']:.1f}%; {b['btard_attackers_banned']:.0f} of {b['btard_attackers']:.0f} "
                     f"banned by every honest peer, the last {last:.0f} steps after the attack began; "
                     f"{b['btard_false_bans']:.0f} false bans", ok))
    cm, cb = fig("clean_mean"), fig("clean_btard")
    rows.append(("3", "BTARD's overhead, no attackers (plain mean -> BTARD)", "reported",
                 f"all-reduce {cm['allreduce_bytes_per_sample']:.0f} -> {cb['allreduce_bytes_per_sample']:.0f} B/sample; "
                 f"all traffic {cm['transport_bytes_per_sample']:.0f} -> {cb['transport_bytes_per_sample']:.0f} B/sample; "
                 f"averaging {cm['averaging_seconds_mean']:.2f} -> {cb['averaging_seconds_mean']:.2f} s per step; "
                 f"accuracy {100 * cm['final_accuracy']:.1f}% -> {100 * cb['final_accuracy']:.1f}%", None))
    false_bans = sum(s["cost"]["btard_false_bans"] for s in seeds)
    caught = sum(1 for s in seeds if s["cost"]["btard_attackers_banned"] == s["cost"]["btard_attackers"])
    seen = sum(1 for s in seeds if s["cost"].get("btard_attackers_banned_by_any", -1) == s["cost"]["btard_attackers"])
    violations = sum(v for s in seeds for k, v in s["metrics"]["counters"].items() if k.startswith("invariant."))
    if seeds:
        rows.append(("4", f"sign flip from step 30 of 80, {len(seeds)} seeds: honest peers banned", "0",
                     f"{false_bans:.0f} (every attacker banned by every honest peer in {caught} of {len(seeds)} seeds, "
                     f"by at least one in {seen}; "
                     f"{violations} invariant violations)", false_bans == 0))
    p = fig("powersgd")
    ratio = cm["allreduce_bytes_per_sample"] / p["allreduce_bytes_per_sample"]
    rows.append(("5", f"PowerSGD rank {args.powersgd_rank}, no attackers", "within 1 point at >= 8x fewer bytes",
                 f"{100 * p['final_accuracy']:.1f}% vs {100 * clean:.1f}% at {ratio:.1f}x fewer all-reduce bytes",
                 p["final_accuracy"] >= clean - 0.01 and ratio >= 8))

    if not args.skip_live:
        rows.append(measure_live(args.apiary))
    with open(args.out, "w") as f:
        f.write("# Secure Distributed Training at Scale (BTARD): results\n\n")
        f.write(f"Written by `papers/btard/run.py` on {time.strftime('%Y-%m-%d')} in {elapsed / 60:.0f} min "
                f"(--jobs {args.jobs}, this machine: 2 cores). ns-3, 16 peers, 7 Byzantine from step "
                f"{args.attack_from} of {args.steps}; attack-free accuracy {100 * clean:.1f}%.\n\n")
        f.write("| row | what | target | measured | pass |\n|---|---|---|---|---|\n")
        for r in rows:
            mark = "-" if r[4] is None else ("pass" if r[4] else "FAIL")
            f.write(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {mark} |\n")
        f.write("\nPer run (wall seconds): " + ", ".join(f"{k} {v['wall']:.0f}" for k, v in res.items()) + "\n")
    print(open(args.out).read())
    return 0 if all(r[4] is not False for r in rows) else 1


def measure_live(binary):
    live = os.path.join(HERE, "btard-live.toml")
    clean = run(binary, ["training.attack=none"], scenario=live)["cost"]
    b = run(binary, [], scenario=live)["cost"]
    ok = (b["btard_attackers_banned"] == b["btard_attackers"] and b["btard_false_bans"] == 0
          and b["final_accuracy"] >= clean["final_accuracy"] - 0.02)
    return ("6 live", "live, 16 trainer processes, 7 sign-flip attackers from step 20 of 80, BTARD",
            "all 7 banned; 0 false bans; within 2 points of the attack-free live run",
            f"{100 * b['final_accuracy']:.1f}% (attack-free {100 * clean['final_accuracy']:.1f}%); "
            f"{b['btard_attackers_banned']:.0f} of {b['btard_attackers']:.0f} banned by every honest trainer, the last at step "
            f"{b['btard_last_ban_epoch']:.0f}; {b['btard_false_bans']:.0f} false bans", ok)


def live_row(args):
    r = measure_live(args.apiary)
    mark = "pass" if r[4] else "FAIL"
    line = f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {mark} |\n"
    lines = open(args.out).readlines()
    lines = [x for x in lines if not x.startswith("| 6 live |")]
    last = max(i for i, x in enumerate(lines) if x.startswith("| "))
    lines.insert(last + 1, line)
    with open(args.out, "w") as f:
        f.writelines(lines)
    print("".join(lines))
    return 0 if r[4] else 1


if __name__ == "__main__":
    sys.exit(main())
