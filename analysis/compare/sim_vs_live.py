#!/usr/bin/env python3
"""The same scenario in ns-3 and live, side by side: a DHT (the default) or Moshpit averaging
rounds (`--workload averaging`, see compare_averaging below).

Live: N `apiary peer` processes and a client that stores K keys and then gets them all
(scenarios/dht-live-64.toml), with a one-way latency of L between any two of them (see below for
how), so a round trip takes 2L plus the machine's own time.

Sim: the same peers, k and value size in ns-3 with an access latency of L/2 per peer (a message
from A to B takes latency(A) + latency(B) = L) and fast links; the client's stores and gets are
Poisson at the same total count.

Network namespaces (`--netns auto`, the default, when this user may create them): the command
builds its own small network and removes it when it ends, also on Ctrl-C or an error. Every
live peer and the client get a network namespace of their own with an address in
10.213.0.0/16; the live run uses them through the scenario key `live.netns` (a file of
"NAMESPACE ADDRESS" lines that this script writes). The delay is the network's, never the
transport's: where the kernel has `tc netem` (probed in a scratch namespace first), the
namespaces hang on one Linux bridge by veth pairs and each pair delays L/2 in each direction
(namespace side and bridge side), so a message between two namespaces takes L. On kernels
without netem (like the Firecracker VMs this was developed on) the namespaces are joined by
delay_switch.py instead: a TUN device in each namespace and one user-space process that holds
every packet L before handing it to its destination's namespace. `--netns off` runs the live
peers on loopback with the delay held in the transport (each received message waits L before
the protocol sees it). The table says which path ran.

    /usr/bin/python3 analysis/compare/sim_vs_live.py --peers 32 --latency-ms 50 --keys 400
    /usr/bin/python3 analysis/compare/sim_vs_live.py --workload averaging --peers 16 --latency-ms 50
"""
import argparse
import os
import re
import signal
import subprocess
import sys
import tempfile

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(os.path.dirname(HERE))
sys.path.insert(0, ROOT)
from analysis.load import load_run  # noqa: E402


def netem_available() -> str:
    ns = f"apiary-netem-probe-{os.getpid()}"
    try:
        if subprocess.run(["ip", "netns", "add", ns], capture_output=True).returncode != 0:
            return "no (cannot create a network namespace)"
        r = subprocess.run(["ip", "netns", "exec", ns, "tc", "qdisc", "add", "dev", "lo", "root", "netem", "delay", "1ms"],
                           capture_output=True, text=True)
        return "yes" if r.returncode == 0 else f"no ({r.stderr.strip() or 'tc failed'})"
    except FileNotFoundError as e:
        return f"no ({e.filename} not found)"
    finally:
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)


def sh(*args, stdin=None):
    r = subprocess.run(list(args), input=stdin, capture_output=True, text=True)
    if r.returncode != 0:
        raise RuntimeError(f"{' '.join(args)}: {r.stderr.strip() or 'exit ' + str(r.returncode)}")
    return r.stdout


NETNS_UNAVAILABLE = 3  # exit status when namespaces were asked for and cannot be built here


class NetnsLab:
    """One network namespace per live peer plus one for the client, joined by a network that
    delays every packet; all of it is gone on exit."""

    SUBNET = "10.213"

    def __init__(self, peers, one_way_ms, netem):
        self.tag = f"apy{os.getpid()}"
        self.bridge = f"{self.tag}br"
        self.client = (f"{self.tag}-c", f"{self.SUBNET}.0.1")
        self.peers = [(f"{self.tag}-{i}", f"{self.SUBNET}.{(i + 2) >> 8}.{(i + 2) & 255}") for i in range(peers)]
        self.one_way_ms = one_way_ms
        self.netem = netem
        self.made = []  # namespaces created, for teardown
        self.switch = None  # the delay_switch.py process where there is no netem
        self.switch_report = ""  # its packet counters, once it has stopped

    @staticmethod
    def remove_leftovers():
        """Namespaces of earlier runs whose process is gone (a run killed with SIGKILL)."""
        for line in subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout.splitlines():
            m = re.match(r"^(apy(\d+))-(c|\d+)\b", line)
            if m and not os.path.exists(f"/proc/{m.group(2)}"):
                subprocess.run(["ip", "netns", "del", m.group(1) + "-" + m.group(3)], capture_output=True)
                subprocess.run(["ip", "link", "del", m.group(1) + "br"], capture_output=True)

    def up(self):
        """Builds the network; on any failure removes what it made and raises."""
        try:
            members = [self.client] + self.peers
            for ns, _ in members:
                sh("ip", "netns", "add", ns)
                self.made.append(ns)
            if self.netem:
                self._bridge_with_netem(members)
            else:
                self._delay_switch(members)
        except BaseException:
            self.down()
            raise

    def _bridge_with_netem(self, members):
        sh("ip", "link", "add", self.bridge, "type", "bridge")
        sh("ip", "link", "set", self.bridge, "up")
        half = f"{self.one_way_ms / 2:g}ms"
        for i, (ns, addr) in enumerate(members):
            veth = f"{self.tag}v{i}"
            sh("ip", "-batch", "-", stdin=f"link add {veth} type veth peer name eth0 netns {ns}\n"
                                          f"link set {veth} master {self.bridge} up\n")
            sh("ip", "-n", ns, "-batch", "-", stdin=f"addr add {addr}/16 dev eth0\nlink set eth0 up\nlink set lo up\n")
            sh("tc", "-n", ns, "qdisc", "add", "dev", "eth0", "root", "netem", "delay", half, "limit", "100000")
            sh("tc", "qdisc", "add", "dev", veth, "root", "netem", "delay", half, "limit", "100000")

    def _delay_switch(self, members):
        cmd = [sys.executable, os.path.join(HERE, "delay_switch.py"), "--delay-ms", f"{self.one_way_ms:g}",
               "--prefix", "16"] + [f"{ns}={addr}" for ns, addr in members]
        self.switch = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        if self.switch.stdout.readline().strip() != "ready":  # it exits on any setup error
            err = self.switch.stderr.read().strip()
            self.switch.wait()
            self.switch = None
            raise RuntimeError(f"delay_switch.py: {err or 'did not start'}")

    def down(self):
        if self.switch is not None:
            self.switch.terminate()
            try:
                self.switch.wait(timeout=10)
            except subprocess.TimeoutExpired:
                self.switch.kill()
                self.switch.wait()
            self.switch_report = self.switch.stderr.read().strip()
            self.switch = None
        for ns in self.made:
            subprocess.run(["ip", "netns", "del", ns], capture_output=True)  # takes its devices along
        if self.netem:
            subprocess.run(["ip", "link", "del", self.bridge], capture_output=True)
        self.made = []

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.down()

    def write_map(self, path):
        with open(path, "w") as f:
            f.write("# live peer i runs in namespace NAMESPACE, bound to ADDRESS (written by sim_vs_live.py)\n")
            for ns, addr in self.peers:
                f.write(f"{ns} {addr}\n")

    def describe(self):
        how = (f"veth pairs on one bridge, tc netem {self.one_way_ms / 2:g} ms on each side of every pair"
               if self.netem else
               f"TUN devices joined by delay_switch.py, which holds every packet {self.one_way_ms:g} ms "
               f"(no tc netem on this kernel)")
        return f"live peers in {len(self.peers) + 1} network namespaces ({self.SUBNET}.0.0/16; {how})"


def run(binary, sets, out, netns=None, scenario="dht-live-64.toml"):
    cmd = [binary, "run", os.path.join(ROOT, "scenarios", scenario), "--quiet", "--force", "--out", out]
    for s in sets:
        cmd += ["--set", s]
    if netns:  # the runner (the client) in its namespace; it starts each peer in the peer's own
        cmd = ["ip", "netns", "exec", netns] + cmd
    r = subprocess.run(cmd, capture_output=True, text=True, timeout=900)
    if r.returncode != 0:
        sys.exit(f"{' '.join(cmd)} failed:\n{r.stderr}")
    return load_run(out)


def emit(text, out):
    """Prints the table, and writes it to `out` too when given."""
    print(text)
    if out:
        with open(out, "w") as f:
            f.write(text + "\n")


def quantile_rows(rows, name, a, b, scale=1.0, unit="", qs=(0.1, 0.5, 0.9, 0.99), fmt="{:.1f}"):
    """Appends one row per quantile of two samples (ns-3's, live's) with their relative gap."""
    if a is None or b is None or not len(a) or not len(b):
        return
    for q in qs:
        x, y = np.quantile(a, q) * scale, np.quantile(b, q) * scale
        rows.append((f"{name} p{int(q * 100)}", f"{fmt.format(x)}{unit}", f"{fmt.format(y)}{unit}",
                     f"{(y - x) / x * 100:+.0f}%" if x else "—"))


def compare_averaging(args):
    """Moshpit averaging rounds (DHT matchmaking + butterfly all-reduce) in ns-3 and live.

    Live: scenarios/avg-live-16.toml, every peer in one process on loopback with real TCP; the
    one-way latency is held in the transport (live.emulated_latency: each received message waits
    L before the protocol sees it), as these peers share one process and cannot sit in separate
    namespaces. Sim: the same scenario in ns-3 with L/2 of access latency per peer and 10 Gbit/s
    links. Both start rounds at the same times and report round time (from the round's start to
    the end of its all-reduce: matchmaking, then the all-reduce), the all-reduce alone, group
    sizes, failures, and the variance across peers after each round."""
    L = args.latency_ms
    side = int(round(args.peers ** 0.5))
    if side * side != args.peers:
        sys.exit(f"sim_vs_live: --peers {args.peers} is not a square; the averaging comparison uses a full grid")
    common = [f"peers={args.peers}", f"averaging.grid_side={side}", "averaging.grid_dims=2",
              f"averaging.elements={args.elements}", f"averaging.rounds={args.rounds}", "averaging.start=3s",
              "averaging.period=4s", f"duration={3 + 4 * args.rounds + 2}s"]
    with tempfile.TemporaryDirectory() as tmp:
        live = run(args.apiary, common + [f"live.emulated_latency={L:g}ms"], os.path.join(tmp, "live.h5"),
                   scenario="avg-live-16.toml")
        sim = run(args.apiary, common + ["backend=sim", f"network.latency={L / 2:g}ms", "network.bandwidth=10Gbps",
                                         "dht.join_window=2s"], os.path.join(tmp, "sim.h5"), scenario="avg-live-16.toml")
    rows = []
    quantile_rows(rows, "round time", sim.series.get("avg.round.seconds"), live.series.get("avg.round.seconds"),
                  1e3, " ms", qs=(0.1, 0.5, 0.9))
    quantile_rows(rows, "all-reduce time", sim.series.get("avg.allreduce.seconds"),
                  live.series.get("avg.allreduce.seconds"), 1e3, " ms", qs=(0.1, 0.5, 0.9))
    for name, label in (("avg.group_size", "group size mean"), ("avg.round.bytes_sent", "bytes sent per peer-round mean")):
        a, b = sim.series.get(name), live.series.get(name)
        if a is not None and b is not None and len(a) and len(b):
            x, y = float(np.mean(a)), float(np.mean(b))
            rows.append((label, f"{x:,.1f}", f"{y:,.1f}", f"{(y - x) / x * 100:+.0f}%" if x else "—"))
    for c in ("avg.rounds_ok", "avg.matchmaking_failures", "avg.allreduce_failures"):
        a, b = int(sim.counters.get(c, 0)), int(live.counters.get(c, 0))
        rows.append((c.replace("avg.", "peer-rounds: ").replace("_", " "), str(a), str(b), f"{b - a:+d}"))
    va, vb = list(sim.series.get("avg.round.variance", [])), list(live.series.get("avg.round.variance", []))
    for t in range(max(len(va), len(vb))):
        f = lambda v: f"{v[t]:.3g}" if t < len(v) else "—"
        rows.append((f"variance across peers after {t} rounds", f(va), f(vb), ""))
    lines = [f"Moshpit averaging, {args.peers} peers on a {side}x{side} grid, {args.elements:,} float32 values each, "
             f"{args.rounds} rounds, one-way latency {L:g} ms; live: one process on loopback, the delay held in the "
             "transport; ns-3: the same scenario and seed.", "",
             "| figure | ns-3 | live | live vs ns-3 |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    return "\n".join(lines)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--workload", choices=["dht", "averaging"], default="dht",
                    help="dht: lookups, stores and gets (the default); averaging: Moshpit rounds")
    ap.add_argument("--elements", type=int, default=65536, help="averaging: float32 values per peer")
    ap.add_argument("--rounds", type=int, default=4, help="averaging: rounds")
    ap.add_argument("--apiary", default=os.path.join(ROOT, "build", "apiary"))
    ap.add_argument("--peers", type=int, default=32)
    ap.add_argument("--latency-ms", type=float, default=50.0)
    ap.add_argument("--keys", type=int, default=400)
    ap.add_argument("--k", type=int, default=20)
    ap.add_argument("--netns", choices=["auto", "on", "off"], default="auto",
                    help="live peers in network namespaces: auto (if this user may create them), on, off (loopback)")
    ap.add_argument("--out", help="write the markdown table here too")
    args = ap.parse_args()
    if args.workload == "averaging":
        if args.peers == 32:  # the DHT default; averaging needs a square
            args.peers = 16
        emit(compare_averaging(args), args.out)
        return
    L = args.latency_ms
    common = [f"peers={args.peers}", f"dht.k={args.k}", f"workload.keys={args.keys}"]
    netem = netem_available()
    use_netns = args.netns == "on" or (args.netns == "auto" and not netem.startswith("no (cannot create"))
    with tempfile.TemporaryDirectory() as tmp:
        live_sets = common + ["dht.join_window=3s", "live.processes=true"]
        if use_netns:
            NetnsLab.remove_leftovers()
            lab = NetnsLab(args.peers, L, netem == "yes")
            try:
                lab.up()
            except RuntimeError as e:  # this machine cannot build the network (removed again)
                print(f"sim_vs_live: cannot set up the network namespaces: {e}", file=sys.stderr)
                sys.exit(NETNS_UNAVAILABLE)
            with lab:
                lab.write_map(os.path.join(tmp, "netns.map"))
                live_sets += [f"live.netns={os.path.join(tmp, 'netns.map')}", f"live.host={lab.client[1]}"]
                network = lab.describe()
                live = run(args.apiary, live_sets, os.path.join(tmp, "live.h5"), netns=lab.client[0])
            if lab.switch_report:
                print(lab.switch_report, file=sys.stderr)
        else:
            network = f"live peers on loopback; delay held in the transport (tc netem: {netem})"
            live = run(args.apiary, live_sets + [f"live.emulated_latency={L}ms"], os.path.join(tmp, "live.h5"))
        # Sim: joins settle, then stores and gets at rates that give the same counts in 60 s.
        rate = args.keys / 60.0
        sim = run(args.apiary, common + ["backend=sim", f"network.latency={L / 2}ms", "network.bandwidth=1Gbps",
                                         "dht.join_window=20s", "workload.start=40s", f"workload.store_rate={rate}/s",
                                         f"workload.get_rate={rate}/s", "duration=110s"], os.path.join(tmp, "sim.h5"))
    rows = []
    # The live client holds no records, so each of its gets goes to the network; in ns-3 gets are
    # issued by peers, which answer some from their own store (0 hops, 0 ms). Compare the gets
    # that left the asking peer.
    remote = np.asarray(sim.series["dht.get.hops"]) >= 1
    sim.series["dht.get.latency_ns"] = np.asarray(sim.series["dht.get.latency_ns"])[remote]
    sim.series["dht.get.hops"] = np.asarray(sim.series["dht.get.hops"])[remote]

    for name in ("dht.get.latency_ns", "dht.store.latency_ns"):
        quantile_rows(rows, name, sim.series.get(name), live.series.get(name), 1e-6, " ms")
    for name in ("dht.get.hops",):
        a, b = sim.series.get(name), live.series.get(name)
        if a is not None and b is not None and len(a) and len(b):
            rows.append((f"{name} mean", f"{np.mean(a):.2f}", f"{np.mean(b):.2f}", f"{np.mean(b) - np.mean(a):+.2f}"))
    def rate(r, op):
        ok, failed = r.counters.get(f"dht.{op}.ok", 0), r.counters.get(f"dht.{op}.failed", 0)
        return ok / max(1, ok + failed)
    for op in ("store", "get"):
        a, b = rate(sim, op), rate(live, op)
        rows.append((f"dht.{op} success", f"{100 * a:.2f}%", f"{100 * b:.2f}%", f"{100 * (b - a):+.2f} pts"))
    gets = lambda r: int(r.counters.get("dht.get.ok", 0) + r.counters.get("dht.get.failed", 0))
    lines = [f"DHT, {args.peers} peers, k = {args.k}, one-way latency {L:g} ms; {gets(sim)} gets in ns-3 "
             f"({int(remote.sum())} answered by other peers, compared here), {gets(live)} live; "
             f"{network}.", "",
             "| figure | ns-3 | live | live vs ns-3 |", "|---|---:|---:|---:|"]
    lines += [f"| {a} | {b} | {c} | {d} |" for a, b, c, d in rows]
    emit("\n".join(lines), args.out)


if __name__ == "__main__":
    # SIGTERM unwinds like Ctrl-C, so the namespaces are removed either way.
    signal.signal(signal.SIGTERM, lambda *_: (_ for _ in ()).throw(KeyboardInterrupt()))
    main()
