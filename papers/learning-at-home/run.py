#!/usr/bin/env python3
"""Learning@home throughput against latency, in ns-3 (Ryabinin and Gusev, NeurIPS 2020).

The claim reproduced (their throughput-versus-latency experiment): with every network hop delayed
at random (exponential, mean `ping`), model-parallel training through blocks on 4 servers
collapses as the ping grows, since each batch waits for 2 x layers sequential round trips,
while DMoE with 64 concurrent trainers keeps the servers busy and degrades gracefully.

Per ping in 0, 50, 100, 150, 200 ms the script runs papers/learning-at-home/throughput.toml in
both modes (model-parallel with one trainer pushing batches through the chain; DMoE with 64
trainers), reads the throughput (samples whose forward and backward completed, per second)
and writes RESULTS.md and throughput.png. Rows: model-parallel at 200 ms keeps at most 25% of
its 0 ms throughput (it collapses); DMoE at 200 ms keeps at least 75% of its 0 ms throughput
(graceful); DMoE beats model-parallel at every ping above 0.

    /usr/bin/python3 papers/learning-at-home/run.py [--pings 0 50 100 150 200]
"""
import argparse
import json
import os
import subprocess
import sys
import time

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))


def run(binary, mode, ping, seed):
    sets = [f"dmoe.mode={mode}", f"network.hop_delay.mean={ping}ms", f"seed={seed}"]
    if mode == "model-parallel":
        sets.append("peers=5")  # the 4 servers and one trainer
    cmd = [binary, "run", os.path.join(HERE, "throughput.toml"), "--json", "--quiet", "--force", "--out", "/tmp/apiary-l@h.h5"]
    for s in sets:
        cmd += ["--set", s]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{out.stderr}")
    j = json.loads(out.stdout.strip().splitlines()[-1])
    os.remove(j["results"])
    return j["cost"]["throughput_samples_per_second"]


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiary", default=os.path.join(ROOT, "build", "apiary"))
    ap.add_argument("--pings", type=int, nargs="+", default=[0, 50, 100, 150, 200])
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", default=os.path.join(HERE, "RESULTS.md"))
    args = ap.parse_args()
    t0 = time.time()
    rows = [(p, run(args.apiary, "model-parallel", p, args.seed), run(args.apiary, "dmoe", p, args.seed)) for p in args.pings]
    mp0, dm0 = rows[0][1], rows[0][2]
    mp_last, dm_last = rows[-1][1], rows[-1][2]
    checks = [
        (f"model-parallel at {rows[-1][0]} ms keeps at most 25% of its {rows[0][0]} ms throughput",
         f"{100 * mp_last / mp0:.1f}%", mp_last <= 0.25 * mp0),
        (f"DMoE (64 trainers) at {rows[-1][0]} ms keeps at least 75% of its {rows[0][0]} ms throughput",
         f"{100 * dm_last / dm0:.1f}%", dm_last >= 0.75 * dm0),
        ("DMoE above model-parallel at every ping above 0", ", ".join(f"{d / m:.1f}x" for p, m, d in rows if p > 0),
         all(d > m for p, m, d in rows if p > 0)),
    ]
    lines = ["# Learning@home: throughput against latency — results", "",
             f"Produced by `/usr/bin/python3 papers/learning-at-home/run.py` on {time.strftime('%Y-%m-%d')} "
             f"in {time.time() - t0:.0f} s (ns-3; see README.md).", "",
             "| mean ping per hop | model-parallel (1 trainer), samples/s | DMoE (64 trainers), samples/s |", "|---:|---:|---:|"]
    lines += [f"| {p} ms | {m:.1f} | {d:.1f} |" for p, m, d in rows]
    lines += ["", "| check | measured | result |", "|---|---|---|"]
    lines += [f"| {c} | {v} | {'pass' if ok else 'FAIL'} |" for c, v, ok in checks]
    lines += ["", "![throughput against ping](throughput.png)"]
    open(args.out, "w").write("\n".join(lines) + "\n")
    print("\n".join(lines))
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
        fig, ax = plt.subplots(figsize=(5, 3.2))
        ax.plot([r[0] for r in rows], [r[1] for r in rows], "o-", label="model parallel (1 trainer)")
        ax.plot([r[0] for r in rows], [r[2] for r in rows], "s-", label="DMoE (64 trainers)")
        ax.set_xlabel("mean delay per hop (ms, exponential)")
        ax.set_ylabel("training samples / s")
        ax.set_ylim(bottom=0)
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(os.path.join(HERE, "throughput.png"), dpi=120)
    except ImportError:
        print("matplotlib is missing: no figure", file=sys.stderr)
    return 0 if all(ok for _, _, ok in checks) else 1


if __name__ == "__main__":
    sys.exit(main())
