#!/usr/bin/env python3
"""Apiary's live DHT against OpenDHT 2.4 (Debian's python3-opendht), same machine, same keys,
like with like.

Both swarms have N nodes on loopback; a client stores K keys (64-byte values) and then gets them
all, C operations at a time (1 and 16); we report success, median/p95 get latency and
throughput. A get is measured two ways, the same on both sides:

  first     until the first copy of the value arrives (Apiary: a get that returns at the first
            valid copy; OpenDHT: the asynchronous get, stopped by its callback at the first value)
  complete  until the search has finished (Apiary: a get that waits for the key's k nearest
            peers; OpenDHT: the blocking get, which returns when its search is done)

Replication is equal: OpenDHT stores on the 8 nodes nearest a key; Apiary runs with dht.k = 8.

    /usr/bin/python3 analysis/compare/dht_vs_opendht.py --apiary build/apiary --peers 64 256

Apiary's side is `apiary run scenarios/dht-live-64.toml` (N separate peer processes, or with
--per-process 48 as many peers to a process as OpenDHT's side, on one thread each); OpenDHT's
side is N DhtRunner nodes in Python processes of 48 (each runs its own network thread).
"""
import argparse
import concurrent.futures as cf
import json
import statistics
import subprocess
import sys
import threading
import time


K = 8  # replicas per key on both sides (OpenDHT's fixed search width)


def run_apiary(apiary, scenario, peers, keys, mode="first", concurrency=16, store_along=None, per_process=1):
    holders = 1 if mode == "first" else K
    extra = [] if store_along is None else ["--set", f"dht.store_along={store_along}"]
    extra += ["--set", f"live.peers_per_process={per_process}"]
    out = subprocess.run([apiary, "run", scenario, "--json", *extra, "--set", f"peers={peers}", "--set", f"dht.k={K}",
                          "--set", f"workload.keys={keys}", "--set", f"workload.concurrency={concurrency}",
                          "--set", f"workload.get_holders={holders}", "--force", "--out", f"/tmp/apiary-dht-live-{peers}.h5"],
                         check=True, capture_output=True, text=True).stdout
    j = json.loads(out.strip().splitlines()[-1])
    c, s, cost = j["metrics"]["counters"], j["metrics"]["series"], j["cost"]
    return {
        "store_ok": c.get("dht.store.ok", 0) / keys,
        "get_ok": c.get("dht.get.ok", 0) / keys,
        "get_p50_ms": s["dht.get.latency_ns"]["p50"] / 1e6,
        "get_p95_ms": s["dht.get.latency_ns"]["p95"] / 1e6,
        "get_per_s": cost["get_ops_per_second"],
        "store_per_s": cost["store_ops_per_second"],
        "store_p50_ms": s["dht.store.latency_ns"]["p50"] / 1e6 if "dht.store.latency_ns" in s else float("nan"),
    }


PER_PROCESS = 48  # OpenDHT polls with select(): keep each process well under FD_SETSIZE


def opendht_worker(count, port):
    """Hosts `count` OpenDHT nodes that join through 127.0.0.1:port until stdin closes."""
    import opendht as dht
    nodes = []
    for _ in range(count):
        r = dht.DhtRunner()
        r.run(port=0)
        r.bootstrap("127.0.0.1", str(port))
        nodes.append(r)
    print("ready", flush=True)
    sys.stdin.read()
    for r in nodes:
        r.join()


def run_opendht(peers, keys, mode="first", concurrency=16, settle=3.0):
    import opendht as dht
    nodes = []
    for _ in range(min(peers, PER_PROCESS)):
        r = dht.DhtRunner()
        r.run(port=0)
        nodes.append(r)
    port = str(nodes[0].getBound().getPort())
    for r in nodes[1:]:
        r.bootstrap("127.0.0.1", port)
    workers = []
    left = peers - len(nodes)
    while left > 0:
        n = min(left, PER_PROCESS)
        w = subprocess.Popen([sys.executable, __file__, "--worker", str(n), port],
                             stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
        assert w.stdout.readline().strip() == "ready"
        workers.append(w)
        left -= n
    client = dht.DhtRunner()
    client.run(port=0)
    client.bootstrap("127.0.0.1", port)
    time.sleep(settle)  # the same join window Apiary's scenario gives its swarm

    def key(i):
        return dht.InfoHash.get(f"live-1-{i}")

    def value(i):
        return bytes((i * 131 + j) % 256 for j in range(64))

    def store(i):  # the blocking put: returns once the value is stored (as Apiary's store)
        t = time.perf_counter()
        ok = client.put(key(i), dht.Value(value(i)))
        return ok, time.perf_counter() - t

    def get(i):
        t = time.perf_counter()
        if mode == "complete":
            vals = client.get(key(i))
            return any(v.data == value(i) for v in vals), time.perf_counter() - t
        # First value: the asynchronous get, stopped at the first copy (or when the search ends).
        found = threading.Event()
        got = {"ok": False, "t": None}

        def on_value(v):
            if v.data == value(i) and got["t"] is None:
                got["ok"], got["t"] = True, time.perf_counter() - t
                found.set()
                return False  # stop the search
            return True

        def on_done(ok, nodes):
            if got["t"] is None:
                got["t"] = time.perf_counter() - t
            found.set()

        client.get(key(i), on_value, on_done)
        found.wait(30)
        return got["ok"], got["t"] if got["t"] is not None else 30.0

    with cf.ThreadPoolExecutor(concurrency) as pool:
        t = time.perf_counter()
        stored = list(pool.map(store, range(keys)))
        store_s = time.perf_counter() - t
        t = time.perf_counter()
        got = list(pool.map(get, range(keys)))
        get_s = time.perf_counter() - t
    lat = sorted(d for _, d in got)
    store_lat = sorted(d for _, d in stored)
    for r in nodes + [client]:
        r.join()
    for w in workers:
        w.stdin.close()
        w.wait()
    return {
        "store_ok": sum(bool(ok) for ok, _ in stored) / keys,
        "get_ok": sum(ok for ok, _ in got) / keys,
        "get_p50_ms": statistics.median(lat) * 1e3,
        "get_p95_ms": lat[int(0.95 * (len(lat) - 1))] * 1e3,
        "get_per_s": keys / get_s,
        "store_per_s": keys / store_s,
        "store_p50_ms": statistics.median(store_lat) * 1e3,
    }


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        opendht_worker(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiary", default="build/apiary")
    ap.add_argument("--scenario", default="scenarios/dht-live-64.toml")
    ap.add_argument("--peers", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--keys", type=int, default=500)
    ap.add_argument("--modes", nargs="+", default=["first", "complete"])
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 16])
    ap.add_argument("--json", help="also write the rows here")
    ap.add_argument("--store-along", type=int, nargs="+", default=None,
                    help="Apiary's dht.store_along values to run (each its own row; default: the scenario's)")
    ap.add_argument("--per-process", type=int, nargs="+", default=[1],
                    help="Apiary's peers per `apiary peer` process (live.peers_per_process), each its own row; "
                         f"{PER_PROCESS} packs them as OpenDHT's side is packed")
    a = ap.parse_args()
    rows = []
    for n in a.peers:
        for mode in a.modes:
            for c in a.concurrency:
                sides = [("apiary" + (f" along={v}" if v is not None else "") + (f" {pp}/process" if pp != 1 else ""),
                          lambda v=v, pp=pp: run_apiary(a.apiary, a.scenario, n, a.keys, mode, c, v, pp))
                         for v in (a.store_along or [None]) for pp in a.per_process]
                sides.append(("opendht", lambda: run_opendht(n, a.keys, mode, c)))
                for name, fn in sides:
                    r = fn()
                    r.update(system=name, peers=n, keys=a.keys, mode=mode, concurrency=c)
                    rows.append(r)
                    print(json.dumps(r), file=sys.stderr)
    print("| peers | get measured until | in flight | system | store ok | get ok | get p50 (ms) | get p95 (ms) | gets/s "
          "| store p50 (ms) | stores/s |")
    print("|---|---|---|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['peers']} | {'first value' if r['mode'] == 'first' else 'search complete'} | {r['concurrency']} | "
              f"{r['system']} | {r['store_ok']:.1%} | {r['get_ok']:.1%} | {r['get_p50_ms']:.2f} | {r['get_p95_ms']:.2f} | "
              f"{r['get_per_s']:.0f} | {r['store_p50_ms']:.2f} | {r['store_per_s']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
