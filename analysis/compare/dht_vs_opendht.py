#!/usr/bin/env python3
"""Apiary's live DHT against OpenDHT 2.4 (Debian's python3-opendht), same machine, same keys.

Both swarms have N nodes on loopback; a client stores K keys (64-byte values) and then gets them
all, 16 operations at a time; we report success, median/p95 get latency and throughput.

    /usr/bin/python3 analysis/compare/dht_vs_opendht.py --apiary build/apiary --peers 64 256

Apiary's side is `apiary run scenarios/dht-live-64.toml` (N separate peer processes); OpenDHT's
side is N DhtRunner nodes in this process (each runs its own network thread).
"""
import argparse
import concurrent.futures as cf
import json
import statistics
import subprocess
import sys
import time


def run_apiary(apiary, scenario, peers, keys):
    out = subprocess.run([apiary, "run", scenario, "--json", "--set", f"peers={peers}",
                          "--set", f"workload.keys={keys}", "--out", f"/tmp/apiary-dht-live-{peers}.h5"],
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


def run_opendht(peers, keys, concurrency=16, settle=3.0):
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

    def store(i):
        return client.put(key(i), dht.Value(value(i)))

    def get(i):
        t = time.perf_counter()
        vals = client.get(key(i))
        dt = time.perf_counter() - t
        return any(v.data == value(i) for v in vals), dt

    with cf.ThreadPoolExecutor(concurrency) as pool:
        t = time.perf_counter()
        stored = list(pool.map(store, range(keys)))
        store_s = time.perf_counter() - t
        t = time.perf_counter()
        got = list(pool.map(get, range(keys)))
        get_s = time.perf_counter() - t
    lat = sorted(d for _, d in got)
    for r in nodes + [client]:
        r.join()
    for w in workers:
        w.stdin.close()
        w.wait()
    return {
        "store_ok": sum(map(bool, stored)) / keys,
        "get_ok": sum(ok for ok, _ in got) / keys,
        "get_p50_ms": statistics.median(lat) * 1e3,
        "get_p95_ms": lat[int(0.95 * (len(lat) - 1))] * 1e3,
        "get_per_s": keys / get_s,
        "store_per_s": keys / store_s,
    }


def main():
    if len(sys.argv) == 4 and sys.argv[1] == "--worker":
        opendht_worker(int(sys.argv[2]), int(sys.argv[3]))
        return
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--apiary", default="build/apiary")
    ap.add_argument("--scenario", default="scenarios/dht-live-64.toml")
    ap.add_argument("--peers", type=int, nargs="+", default=[64, 256])
    ap.add_argument("--keys", type=int, default=2000)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()
    rows = []
    for n in a.peers:
        for name, fn in (("apiary", lambda: run_apiary(a.apiary, a.scenario, n, a.keys)),
                         ("opendht", lambda: run_opendht(n, a.keys))):
            r = fn()
            r.update(system=name, peers=n, keys=a.keys)
            rows.append(r)
            print(json.dumps(r), file=sys.stderr)
    print("| peers | system | store ok | get ok | get p50 (ms) | get p95 (ms) | gets/s | stores/s |")
    print("|---|---|---|---|---|---|---|---|")
    for r in rows:
        print(f"| {r['peers']} | {r['system']} | {r['store_ok']:.1%} | {r['get_ok']:.1%} | "
              f"{r['get_p50_ms']:.2f} | {r['get_p95_ms']:.2f} | {r['get_per_s']:.0f} | {r['store_per_s']:.0f} |")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=1)


if __name__ == "__main__":
    main()
