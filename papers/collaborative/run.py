#!/usr/bin/env python3
"""The collaborative-training targets, from the scenarios in scenarios/, in one command.

Rows (pass/fail):
  1. ns-3, 8 heterogeneous trainers, a global step computes ~10x its averaging time
     (scenarios/train-sim-utilisation.toml): with delayed parameter updates every trainer is busy
     at least 90% of the time. The same swarm without delayed updates is shown for contrast.
  2. ns-3, DiLoCo with H = 500 inner steps moves 500x fewer all-reduce bytes per sample than
     per-step parameter averaging (DiLoCo with H = 1: one all-reduce per local step), counted
     bytes (scenarios/train-sim-diloco.toml). Progress-driven per-step gradient averaging
     (collaborative mode, global batch 256) is shown for information.
  3. Live, 6 LibTorch trainer processes on loopback training an MLP on Fashion-MNIST, one killed
     and one joining mid-run (scenarios/train-live-fmnist.toml): final test accuracy within 1
     percentage point of the single-process run with the same global batch and steps.

    /usr/bin/python3 papers/collaborative/run.py [--skip-live]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
SCEN = os.path.join(ROOT, "scenarios")


def run(binary, scenario, sets):
    cmd = [binary, "run", os.path.join(SCEN, scenario), "--json", "--quiet", "--force", "--out", "/tmp/apiary-collab-paper.h5"]
    for s in sets:
        cmd += ["--set", s]
    t0 = time.time()
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    j = json.loads(out.stdout.strip().splitlines()[-1])
    os.remove(j["results"])
    j["wall"] = time.time() - t0
    return j


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiary", default=os.path.join(ROOT, "build", "apiary"))
    ap.add_argument("--skip-live", action="store_true", help="skip row 3 (about 3 minutes)")
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    rows = []

    delayed = run(args.apiary, "train-sim-utilisation.toml", ["training.delayed_updates=true"])["cost"]
    waiting = run(args.apiary, "train-sim-utilisation.toml", ["training.delayed_updates=false"])["cost"]
    rows.append(("1", "sim utilisation per trainer, delayed updates, step compute / averaging = "
                 f"{delayed['compute_to_averaging']:.1f}x", ">= 90% (min over trainers)",
                 f"min {100 * delayed['utilisation_min']:.1f}%, mean {100 * delayed['utilisation_mean']:.1f}%",
                 delayed["utilisation_min"] >= 0.9))
    rows.append(("1b", "the same swarm waiting for each step's averaging (no target)", "-",
                 f"min {100 * waiting['utilisation_min']:.1f}%, mean {100 * waiting['utilisation_mean']:.1f}%", None))

    h500 = run(args.apiary, "train-sim-diloco.toml", [])["cost"]
    h1 = run(args.apiary, "train-sim-diloco.toml", ["training.inner_steps=1", "training.steps=100"])["cost"]
    per_step = run(args.apiary, "train-sim-diloco.toml", ["training.mode=collaborative", "training.steps=100"])
    ratio = h1["allreduce_bytes_per_sample"] / h500["allreduce_bytes_per_sample"]
    rows.append(("2", "DiLoCo H=500 vs per-step parameter averaging (H=1): all-reduce bytes per sample",
                 "500x fewer (within 2%)",
                 f"{h500['allreduce_bytes_per_sample']:.3f} vs {h1['allreduce_bytes_per_sample']:.1f} B: {ratio:.1f}x",
                 abs(ratio - 500) <= 10))
    ps = per_step["cost"]
    gb = ps["samples"] / max(1, ps["steps"])
    rows.append(("2b", "DiLoCo H=500 vs progress-driven per-step gradient averaging (target 256 samples; no target)", "-",
                 f"{ps['allreduce_bytes_per_sample']:.1f} B per sample: "
                 f"{ps['allreduce_bytes_per_sample'] / h500['allreduce_bytes_per_sample']:.0f}x; its steps averaged "
                 f"{gb:.0f} samples", None))

    if not args.skip_live:
        live = run(args.apiary, "train-live-fmnist.toml", [])
        c, f = live["metrics"]["counters"], live["cost"]
        gap = f["accuracy_gap_pts"]
        rows.append(("3", f"live Fashion-MNIST, 6 trainers, {c.get('churn.leaves', 0)} killed and {c.get('churn.joins', 0)} "
                     f"joined mid-run, {f['steps']:.0f} steps of >= 1,024 samples (mean {f['global_batch_mean']:.0f})",
                     "within 1 pt of the single process",
                     f"{100 * f['final_accuracy']:.2f}% vs {100 * f['baseline_accuracy']:.2f}% ({gap:+.2f} pts)",
                     abs(gap) <= 1.0))

    lines = ["# Collaborative training: results", "",
             f"Produced by `/usr/bin/python3 papers/collaborative/run.py` on {time.strftime('%Y-%m-%d')} (see README.md).", "",
             "| row | experiment | target | measured | result |", "|---|---|---|---|---|"]
    for r in rows:
        verdict = "-" if r[4] is None else ("pass" if r[4] else "FAIL")
        lines.append(f"| {r[0]} | {r[1]} | {r[2]} | {r[3]} | {verdict} |")
    open(args.out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    return 0 if all(r[4] is not False for r in rows) else 1


if __name__ == "__main__":
    sys.exit(main())
