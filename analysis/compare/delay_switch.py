#!/usr/bin/env python3
"""A user-space stand-in for `tc netem delay` on kernels that lack sch_netem.

Every namespace named on the command line gets a TUN device (`dly0`) carrying its IPv4 address
in a /16; all traffic to that /16 therefore leaves the namespace through the TUN device, where
this process reads it as raw IPv4 packets. Each packet is held for the one-way delay and then
written into the TUN device of the namespace that owns its destination address, which receives
it as if from a wire. Packets keep their order (the delay is the same for every packet, so one
FIFO suffices); packets to an address nobody owns, and anything that is not IPv4, are dropped
and counted. Bandwidth is not limited: this emulates latency only, as the netem setup does.

    delay_switch.py --delay-ms 50 --prefix 16 NS1=10.213.0.1 NS2=10.213.0.2 ...

It prints "ready" on stdout once every device is up, runs until SIGTERM or SIGINT, then closes
the devices (the kernel removes them) and prints its counters on stderr. Needs root
(CAP_NET_ADMIN in the namespaces). The forwarding logic (`Switch`) takes file descriptors and
explicit times, so it is tested with pipes and no clock (tests/python/test_delay_switch.py).
"""
import argparse
import collections
import ctypes
import fcntl
import os
import select
import signal
import socket
import struct
import subprocess
import sys
import time

TUNSETIFF = 0x400454CA
IFF_TUN = 0x0001
IFF_NO_PI = 0x1000
CLONE_NEWNET = 0x40000000
PR_SET_PDEATHSIG = 1
MAX_PACKET = 65536


class Switch:
    """Holds each IPv4 packet `delay_s` and then hands it to the device owning its destination."""

    def __init__(self, delay_s, routes):
        self.delay_s = delay_s
        self.routes = dict(routes)  # destination address (4 bytes) -> file descriptor to write to
        self.queue = collections.deque()  # (due time, fd, packet), due times never decrease
        self.counters = collections.Counter()

    def receive(self, packet, now):
        """Takes one packet read from any device at time `now`."""
        if len(packet) < 20 or packet[0] >> 4 != 4:
            self.counters["dropped_not_ipv4"] += 1
            return
        fd = self.routes.get(bytes(packet[16:20]))
        if fd is None:
            self.counters["dropped_no_route"] += 1
            return
        self.queue.append((now + self.delay_s, fd, packet))
        self.counters["received"] += 1

    def deliver_due(self, now, write=os.write):
        """Writes every packet due by `now`; returns the time of the next one, or None."""
        while self.queue and self.queue[0][0] <= now:
            _, fd, packet = self.queue.popleft()
            try:
                write(fd, packet)
                self.counters["delivered"] += 1
            except BlockingIOError:  # the receiving device's queue is full: a lost packet, as on a wire
                self.counters["dropped_full"] += 1
        return self.queue[0][0] if self.queue else None


def open_tun_in(netns, name):
    """Creates TUN device `name` in network namespace `netns` and returns its file descriptor."""
    libc = ctypes.CDLL(None, use_errno=True)
    home = os.open("/proc/self/ns/net", os.O_RDONLY)
    target = os.open(f"/run/netns/{netns}", os.O_RDONLY)
    try:
        if libc.setns(target, CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {netns}")
        try:
            fd = os.open("/dev/net/tun", os.O_RDWR | os.O_NONBLOCK)
            fcntl.ioctl(fd, TUNSETIFF, struct.pack("16sH", name.encode(), IFF_TUN | IFF_NO_PI))
            return fd
        finally:
            if libc.setns(home, CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back into the original namespace")
    finally:
        os.close(home)
        os.close(target)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--delay-ms", type=float, required=True, help="one-way delay added to every packet")
    ap.add_argument("--prefix", type=int, default=16, help="prefix length of the addresses")
    ap.add_argument("--device", default="dly0")
    ap.add_argument("members", nargs="+", metavar="NAMESPACE=ADDRESS")
    args = ap.parse_args()
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    signal.signal(signal.SIGINT, lambda *_: stop.append(1))
    # Ends with the process that started it, even one killed with SIGKILL.
    parent = os.getppid()
    ctypes.CDLL(None).prctl(PR_SET_PDEATHSIG, signal.SIGTERM)
    if os.getppid() != parent:
        return
    fds, routes = [], {}
    for member in args.members:
        ns, _, addr = member.partition("=")
        fd = open_tun_in(ns, args.device)
        fds.append(fd)
        routes[socket.inet_aton(addr)] = fd
        # A large MTU keeps the packet count (and this process's work) low for bulk transfers.
        batch = (f"addr add {addr}/{args.prefix} dev {args.device}\n"
                 f"link set {args.device} mtu 65000 up\nlink set lo up\n")
        r = subprocess.run(["ip", "-n", ns, "-batch", "-"], input=batch, capture_output=True, text=True)
        if r.returncode != 0:
            sys.exit(f"delay_switch: configuring {args.device} in {ns}: {r.stderr.strip()}")
    switch = Switch(args.delay_ms / 1000.0, routes)
    print("ready", flush=True)
    poller = select.poll()
    for fd in fds:
        poller.register(fd, select.POLLIN)
    while not stop:
        due = switch.deliver_due(time.monotonic())
        timeout_ms = -1 if due is None else max(0.0, (due - time.monotonic()) * 1000.0)
        try:
            ready = poller.poll(timeout_ms)
        except InterruptedError:
            continue
        for fd, _ in ready:
            while True:
                try:
                    packet = os.read(fd, MAX_PACKET)
                except BlockingIOError:
                    break
                switch.receive(packet, time.monotonic())
    for fd in fds:
        os.close(fd)
    print("delay_switch: " + ", ".join(f"{k} {v}" for k, v in sorted(switch.counters.items())), file=sys.stderr)


if __name__ == "__main__":
    main()
