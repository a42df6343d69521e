#!/usr/bin/env python3
"""Apiary's live butterfly all-reduce against torch.distributed's gloo backend, on loopback.

For each (peers, elements) point both systems average a float32 tensor of `elements` values
among `peers` separate processes on this machine (127.0.0.1), `--warmup` untimed rounds then
`--rounds` timed ones; the same run also measures this machine's loopback TCP bandwidth, so
the table can say how close each all-reduce gets to it.

    /usr/bin/python3 analysis/compare/allreduce_vs_gloo.py \\
        --peers 2 4 8 --elements 16777216 67108864 --rounds 5 --warmup 1 --out out/allreduce.json

Run it with Debian's /usr/bin/python3 (python3-torch: torch 1.13 with gloo).

gloo side: N processes (this script with --gloo-worker), `init_process_group("gloo")` over
tcp://127.0.0.1, GLOO_SOCKET_IFNAME=lo. A round is `all_reduce(SUM)` then `div_(N)` (the mean);
every rank fills its tensor with rank+1 before each round (untimed), waits on a barrier, then
times all_reduce + div. A round's time is the max over ranks (gathered with a MAX all-reduce).
Each process runs with torch.set_num_threads(1) (and OMP/MKL threads 1): the machine may have
only a couple of cores shared by all N peers; gloo's own network thread is not affected.
Correctness is checked once (first round): every value must equal (N+1)/2.

Apiary side: `apiary allreduce-bench --peers N --elements M --rounds R --warmup W --json`,
which prints one JSON object: {"peers", "elements", "rounds", "round_seconds", "median_seconds",
"bytes_sent_per_peer", "max_abs_error"}. If the binary or the subcommand is missing, the
script says so and still prints the gloo results.

Loopback: one receiver process and one sender process push `--loopback-bytes` (1 GiB) over one
127.0.0.1 TCP connection (sendall / recv_into with 4 MiB buffers), best of `--loopback-repeats`.

Bandwidths per point (decimal GB/s): algorithm bandwidth = elements*4 / median time; bus
bandwidth = 2*(N-1)/N * elements*4 / median time (the bytes each peer must send and receive in
a bandwidth-optimal all-reduce, as NCCL's tests define it); fraction = bus bandwidth / loopback.
"""
import argparse
import json
import os
import platform
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time

HERE = os.path.dirname(os.path.abspath(__file__))
REPO = os.path.dirname(os.path.dirname(HERE))

CHILDREN = set()  # live Popen objects, each the leader of its own process group


# ---------------------------------------------------------------------------------------------
# child processes


def spawn(args, **kw):
    # Its own process group (killed as one), in this script's session: with the kernel's autogroup
    # scheduling (sched_autogroup_enabled), every session is one scheduling group, so a child in a
    # new session would get a group's share of the CPU to itself. In one session every process
    # (gloo workers, Apiary's peers, the busy load) gets a process's share, as on a peer's machine.
    p = subprocess.Popen(args, process_group=0, **kw)
    CHILDREN.add(p)
    return p


def kill(p):
    if p.poll() is None:
        try:
            os.killpg(p.pid, signal.SIGKILL)
        except (ProcessLookupError, PermissionError):
            pass
    try:
        p.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    CHILDREN.discard(p)


def kill_all():
    for p in list(CHILDREN):
        kill(p)


def on_signal(signum, _frame):
    kill_all()
    print(f"\ninterrupted (signal {signum}); child processes killed", file=sys.stderr)
    sys.exit(128 + signum)


def free_port():
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tail(path, n=1500):
    try:
        with open(path, errors="replace") as f:
            return f.read()[-n:]
    except OSError:
        return ""


def last_json(text):
    for line in reversed(text.strip().splitlines()):
        line = line.strip()
        if line.startswith("{"):
            try:
                return json.loads(line)
            except json.JSONDecodeError:
                continue
    return None


def mem_available():
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


# ---------------------------------------------------------------------------------------------
# loopback TCP bandwidth


CHUNK = 4 << 20


def loopback_receiver(port, total):
    srv = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", port))
    srv.listen(1)
    print("ready", flush=True)
    conn, _ = srv.accept()
    buf = bytearray(CHUNK)
    view = memoryview(buf)
    got = 0
    while got < total:
        n = conn.recv_into(view, min(CHUNK, total - got))
        if n == 0:
            raise SystemExit("loopback receiver: connection closed early")
        got += n
    conn.sendall(b"k")
    conn.close()


def measure_loopback(total, repeats, timeout):
    """Best-of-`repeats` one-stream loopback TCP bandwidth, bytes/s (sender: this process)."""
    payload = memoryview(bytearray(os.urandom(1 << 20)) * (CHUNK >> 20))
    results = []
    for _ in range(repeats):
        port = free_port()
        rx = spawn([sys.executable, __file__, "--loopback-receiver", str(port), str(total)],
                   stdout=subprocess.PIPE, text=True)
        try:
            if rx.stdout.readline().strip() != "ready":
                raise RuntimeError("loopback receiver did not start")
            s = socket.create_connection(("127.0.0.1", port), timeout=timeout)
            t0 = time.perf_counter()
            left = total
            while left > 0:
                n = min(CHUNK, left)
                s.sendall(payload[:n])
                left -= n
            if s.recv(1) != b"k":
                raise RuntimeError("loopback receiver did not acknowledge")
            dt = time.perf_counter() - t0
            s.close()
            rx.wait(timeout=timeout)
            results.append(total / dt)
        finally:
            kill(rx)
    return {"bytes": total, "repeats": repeats, "bytes_per_second": results,
            "best_bytes_per_second": max(results), "median_bytes_per_second": statistics.median(results)}


# ---------------------------------------------------------------------------------------------
# gloo


def gloo_worker(rank, world, port, elements, rounds, warmup, timeout):
    import datetime

    import torch
    import torch.distributed as dist

    torch.set_num_threads(1)
    try:
        torch.set_num_interop_threads(1)
    except RuntimeError:
        pass
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank,
                            world_size=world, timeout=datetime.timedelta(seconds=timeout))
    x = torch.empty(elements, dtype=torch.float32)
    expected = (world + 1) / 2.0
    times, max_err = [], None
    for r in range(warmup + rounds):
        x.fill_(rank + 1)
        dist.barrier()
        t0 = time.perf_counter()
        dist.all_reduce(x, op=dist.ReduceOp.SUM)
        x.div_(world)
        dt = time.perf_counter() - t0
        if r == 0:  # correctness, once, outside the timed region
            max_err = float((x - expected).abs().max())
        if r >= warmup:
            times.append(dt)
    # per-round max over ranks, the max error over ranks, and the peak RSS (sum and max)
    import resource
    rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    t = torch.tensor(times + [max_err, float(rss)], dtype=torch.float64)
    tmax = t.clone()
    dist.all_reduce(tmax, op=dist.ReduceOp.MAX)
    tsum = t.clone()
    dist.all_reduce(tsum, op=dist.ReduceOp.SUM)
    if rank == 0:
        print(json.dumps({
            "peers": world, "elements": elements, "rounds": rounds, "warmup": warmup,
            "round_seconds": tmax[:rounds].tolist(),
            "round_seconds_rank0": times,
            "median_seconds": statistics.median(tmax[:rounds].tolist()),
            "max_abs_error": float(tmax[rounds]),
            "expected": expected,
            "peak_rss_bytes_max": int(tmax[rounds + 1]),
            "peak_rss_bytes_sum": int(tsum[rounds + 1]),
            "torch": torch.__version__,
            "threads_per_process": torch.get_num_threads(),
        }), flush=True)
    dist.destroy_process_group()


def run_gloo(peers, elements, rounds, warmup, timeout):
    port = free_port()
    env = dict(os.environ, GLOO_SOCKET_IFNAME="lo", OMP_NUM_THREADS="1", MKL_NUM_THREADS="1",
               MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    tmp = tempfile.mkdtemp(prefix="apiary-gloo-")
    procs, outs, errs = [], [], []
    t_start = time.monotonic()
    try:
        for rank in range(peers):
            out, err = os.path.join(tmp, f"{rank}.out"), os.path.join(tmp, f"{rank}.err")
            with open(out, "w") as fo, open(err, "w") as fe:
                procs.append(spawn([sys.executable, __file__, "--gloo-worker", str(rank), str(peers),
                                    str(port), str(elements), str(rounds), str(warmup), str(timeout)],
                                   stdout=fo, stderr=fe, env=env, stdin=subprocess.DEVNULL))
            outs.append(out)
            errs.append(err)
        deadline = t_start + timeout
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                r, c = bad[0]
                return {"error": f"gloo rank {r} exited with code {c}: {tail(errs[r]).strip()}"}
            if all(c == 0 for c in codes):
                break
            if time.monotonic() > deadline:
                return {"error": f"gloo timed out after {timeout} s"}
            time.sleep(0.05)
        res = last_json(tail(outs[0], 1 << 16))
        if res is None:
            return {"error": f"gloo rank 0 printed no result: {tail(errs[0]).strip()}"}
        res["wall_seconds"] = time.monotonic() - t_start
        return res
    finally:
        for p in procs:
            kill(p)
        for f in outs + errs:
            try:
                os.unlink(f)
            except OSError:
                pass
        try:
            os.rmdir(tmp)
        except OSError:
            pass


# ---------------------------------------------------------------------------------------------
# apiary


def run_apiary(apiary, peers, elements, rounds, warmup, timeout, codec="float32", window=None, max_in_flight=None):
    cmd = [apiary, "allreduce-bench", "--peers", str(peers), "--elements", str(elements),
           "--rounds", str(rounds), "--warmup", str(warmup), "--codec", codec, "--json"]
    if window is not None:
        cmd += ["--window", str(window)]
    if max_in_flight is not None:
        cmd += ["--max-in-flight", str(max_in_flight)]
    t_start = time.monotonic()
    with tempfile.TemporaryFile("w+") as fo, tempfile.TemporaryFile("w+") as fe:
        p = spawn(cmd, stdout=fo, stderr=fe, stdin=subprocess.DEVNULL, cwd=REPO)
        try:
            rc = p.wait(timeout=timeout)
        except subprocess.TimeoutExpired:
            return {"error": f"timed out after {timeout} s: {' '.join(cmd)}", "cmd": cmd}
        finally:
            kill(p)
        fo.seek(0)
        fe.seek(0)
        out, err = fo.read(), fe.read()
    res = last_json(out)
    if rc != 0 or res is None:
        msg = (err.strip() or out.strip())[-1500:]
        return {"error": f"`{' '.join(cmd)}` exited with code {rc}"
                         f"{' and printed no JSON' if res is None else ''}: {msg}", "cmd": cmd,
                "fatal": time.monotonic() - t_start < 10}
    res["wall_seconds"] = time.monotonic() - t_start
    res["cmd"] = cmd
    for key, want in (("peers", peers), ("elements", elements), ("rounds", rounds)):
        if key in res and res[key] != want:
            return {"error": f"apiary reported {key}={res[key]}, asked for {want}", "cmd": cmd, "raw": res}
    return res


def find_apiary(given):
    if given:
        path = given if os.path.isabs(given) else os.path.join(REPO, given)
        if not os.path.exists(path) and os.path.exists(given):
            path = os.path.abspath(given)
        return path
    for cand in ("build/cli/apiary", "build/apiary"):
        path = os.path.join(REPO, cand)
        if os.path.exists(path):
            return path
    return os.path.join(REPO, "build/cli/apiary")


# ---------------------------------------------------------------------------------------------
# report


def bandwidths(peers, elements, median, loopback):
    if not median:
        return None
    nbytes = elements * 4
    bus = 2 * (peers - 1) / peers * nbytes / median
    return {"algbw_GBps": nbytes / median / 1e9, "busbw_GBps": bus / 1e9,
            "fraction_of_loopback": bus / loopback if loopback else None}


def fmt(v, spec):
    return "—" if v is None else format(v, spec)


def main():
    if len(sys.argv) > 1 and sys.argv[1] == "--gloo-worker":
        gloo_worker(*map(int, sys.argv[2:9]))
        return
    if len(sys.argv) > 1 and sys.argv[1] == "--loopback-receiver":
        loopback_receiver(int(sys.argv[2]), int(sys.argv[3]))
        return

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--peers", type=int, nargs="+", default=[2, 4, 8])
    ap.add_argument("--elements", type=int, nargs="+", default=[16 << 20, 64 << 20])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--apiary", help="the apiary binary (default: build/cli/apiary, else build/apiary, "
                                     "relative to the repository root)")
    ap.add_argument("--timeout", type=float, default=600, help="seconds per system per point (default 600)")
    ap.add_argument("--loopback-bytes", type=int, default=1 << 30)
    ap.add_argument("--loopback-repeats", type=int, default=3)
    ap.add_argument("--skip-gloo", action="store_true")
    ap.add_argument("--skip-apiary", action="store_true")
    ap.add_argument("--codecs", nargs="+", default=["float32"],
                    help="Apiary's wire codecs to measure, each against gloo's float32 (e.g. float32 float16 uniform8)")
    ap.add_argument("--busy", type=int, default=0,
                    help="busy processes (one spinning loop each) running beside both systems throughout: "
                         "the CPU a peer shares with its own training")
    ap.add_argument("--window", type=int, help="Apiary's pieces in flight per reducer (default: allreduce-bench's)")
    ap.add_argument("--max-in-flight", type=int,
                    help="Apiary's bytes in flight per sender, over all reducers; 0: no cap (default: allreduce-bench's)")
    ap.add_argument("--out", help="write all raw numbers to this JSON file")
    a = ap.parse_args()
    if a.rounds < 1 or a.warmup < 0 or min(a.peers) < 1 or min(a.elements) < 1:
        ap.error("--rounds >= 1, --warmup >= 0, peers and elements >= 1")
    timeout = int(a.timeout)

    signal.signal(signal.SIGINT, on_signal)
    signal.signal(signal.SIGTERM, on_signal)

    def log(msg):
        print(msg, file=sys.stderr, flush=True)

    report = {"host": {"cpus": os.cpu_count(), "machine": platform.machine(), "kernel": platform.release(),
                       "python": platform.python_version(), "mem_available_bytes": mem_available()},
              "args": vars(a), "threads_per_gloo_process": 1, "points": []}

    gloo_ok = not a.skip_gloo
    if gloo_ok:
        try:
            import torch
            import torch.distributed as dist
            if not dist.is_available() or not dist.is_gloo_available():
                raise ImportError("torch.distributed with gloo is not available in this torch build")
            report["host"]["torch"] = torch.__version__
        except ImportError as e:
            log(f"gloo: cannot use torch ({e}); run with Debian's /usr/bin/python3 after "
                f"`apt-get install python3-torch`. Skipping the gloo side.")
            gloo_ok = False

    apiary = None if a.skip_apiary else find_apiary(a.apiary)
    apiary_note = None
    if apiary is not None and not os.access(apiary, os.X_OK):
        apiary_note = f"apiary binary not found (or not executable) at {apiary}; build it or pass --apiary PATH"
        log(f"apiary: {apiary_note}. Skipping the apiary side.")
        apiary = None
    report["apiary_binary"] = apiary

    log(f"loopback: pushing {a.loopback_bytes / 2**30:.2f} GiB over 127.0.0.1 TCP, best of {a.loopback_repeats} ...")
    try:
        lb = measure_loopback(a.loopback_bytes, a.loopback_repeats, timeout)
        loopback = lb["best_bytes_per_second"]
        log(f"loopback: best {loopback / 1e9:.2f} GB/s, median {lb['median_bytes_per_second'] / 1e9:.2f} GB/s")
    except Exception as e:  # noqa: BLE001 - report and go on without the fraction
        lb, loopback = {"error": str(e)}, None
        log(f"loopback: measurement failed: {e}")
    report["loopback"] = lb

    busy = [spawn([sys.executable, "-c", "while True: pass"], stdin=subprocess.DEVNULL) for _ in range(a.busy)]
    if busy:
        log(f"load: {len(busy)} busy processes beside every measurement")
    report["busy_processes"] = len(busy)

    for n in a.peers:
        for m in a.elements:
            point = {"peers": n, "elements": m, "bytes": m * 4}
            avail = mem_available()
            if gloo_ok:
                # rough need: the tensor plus gloo's working copies, plus ~300 MB of torch per process
                need = n * (3 * m * 4 + 300e6)
                if avail is not None and need > avail:
                    log(f"gloo n={n} m={m}: warning: may need ~{need / 2**30:.1f} GiB, "
                        f"{avail / 2**30:.1f} GiB available")
                log(f"gloo n={n} m={m}: running ...")
                g = run_gloo(n, m, a.rounds, a.warmup, timeout)
                if "error" in g:
                    log(f"gloo n={n} m={m}: FAILED: {g['error']}")
                else:
                    g.update(bandwidths(n, m, g["median_seconds"], loopback))
                    ok = g["max_abs_error"] <= 1e-6 * g["expected"]
                    g["correct"] = ok
                    log(f"gloo n={n} m={m}: median {g['median_seconds']:.3f} s, bus {g['busbw_GBps']:.2f} GB/s, "
                        f"max abs error {g['max_abs_error']:.3g}{'' if ok else ' (WRONG RESULT)'}, "
                        f"peak RSS {g['peak_rss_bytes_sum'] / 2**30:.2f} GiB total")
                point["gloo"] = g
            for codec in (a.codecs if apiary is not None else []):
                name = "apiary" if codec == "float32" else f"apiary_{codec}"
                if apiary is None:
                    break
                log(f"{name} n={n} m={m}: running ...")
                r = run_apiary(apiary, n, m, a.rounds, a.warmup, timeout, codec, a.window, a.max_in_flight)
                r["codec"] = codec
                if "error" in r:
                    log(f"apiary n={n} m={m}: FAILED: {r['error']}")
                    if r.pop("fatal", False) and not any("apiary" in p and "error" not in p["apiary"]
                                                         for p in report["points"]):
                        apiary_note = ("`apiary allreduce-bench` failed on the first point (is the subcommand "
                                       "built?); skipping the apiary side: " + r["error"])
                        log(f"apiary: {apiary_note}")
                        apiary = None
                else:
                    med = r.get("median_seconds")
                    if med is None and r.get("round_seconds"):
                        med = r["median_seconds"] = statistics.median(r["round_seconds"])
                    r.update(bandwidths(n, m, med, loopback) or {})
                    log(f"{name} n={n} m={m}: median {med:.3f} s, bus {r.get('busbw_GBps', 0):.2f} GB/s, "
                        f"max abs error {r.get('max_abs_error')}")
                point[name] = r
            report["points"].append(point)
    for p in busy:
        kill(p)
    report["apiary_note"] = apiary_note

    # the table
    print()
    lbs = f"{loopback / 1e9:.2f} GB/s" if loopback else "not measured"
    print(f"All-reduce (mean) of float32 on loopback, {os.cpu_count()} CPUs; loopback TCP {lbs} "
          f"(one stream, best of {a.loopback_repeats}); gloo: torch {report['host'].get('torch', '—')}, "
          f"1 thread per process (torch.set_num_threads(1)); median of {a.rounds} rounds after {a.warmup} warmup; "
          f"bus bandwidth = 2(N-1)/N x bytes / time.")
    if apiary_note:
        print(f"Apiary: {apiary_note}")
    print(f"Load: {report['busy_processes']} busy processes beside both systems.")
    print()
    print("| peers | elements | gloo median s | apiary median s | apiary/gloo ratio | apiary bus GB/s "
          "| fraction of loopback | gloo bus GB/s | gloo fraction of loopback |")
    print("|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for p in report["points"]:
        g, r = p.get("gloo", {}), p.get("apiary", {})
        gm, rm = g.get("median_seconds"), r.get("median_seconds")
        gcell = fmt(gm, ".3f") if "error" not in g else "failed"
        rcell = fmt(rm, ".3f") if "error" not in r else "failed"
        ratio = rm / gm if gm and rm else None
        print(f"| {p['peers']} | {p['elements']:,} | {gcell} | {rcell} | {fmt(ratio, '.2f')} "
              f"| {fmt(r.get('busbw_GBps'), '.2f')} | {fmt(r.get('fraction_of_loopback'), '.0%')} "
              f"| {fmt(g.get('busbw_GBps'), '.2f')} | {fmt(g.get('fraction_of_loopback'), '.0%')} |")
    others = [c for c in a.codecs if c != "float32"]
    if others:
        print()
        print("Compressed codecs against gloo's float32 (speed-up = gloo time / Apiary time):")
        print()
        print("| peers | elements | codec | apiary median s | max abs error | speed-up over gloo fp32 |")
        print("|---:|---:|---|---:|---:|---:|")
        for p in report["points"]:
            gm = p.get("gloo", {}).get("median_seconds")
            for c in others:
                r = p.get(f"apiary_{c}", {})
                rm = r.get("median_seconds")
                cell = fmt(rm, ".3f") if "error" not in r else "failed"
                print(f"| {p['peers']} | {p['elements']:,} | {c} | {cell} | {fmt(r.get('max_abs_error'), '.3g')} "
                      f"| {fmt(gm / rm if gm and rm else None, '.2f')} |")

    if a.out:
        d = os.path.dirname(os.path.abspath(a.out))
        os.makedirs(d, exist_ok=True)
        with open(a.out, "w") as f:
            json.dump(report, f, indent=1)
        log(f"raw numbers: {a.out}")


if __name__ == "__main__":
    try:
        main()
    finally:
        kill_all()
