"""The forwarding logic of analysis/compare/delay_switch.py (the user-space stand-in for netem),
driven with pipes and explicit times: no devices, no clock, no sleeping."""
import os
import socket
import struct

import pytest

from analysis.compare.delay_switch import Switch


def ipv4(src, dst, payload=b""):
    """A minimal IPv4 header (no options) followed by `payload`."""
    return struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(payload), 0, 0, 64, 17, 0,
                       socket.inet_aton(src), socket.inet_aton(dst)) + payload


@pytest.fixture
def pipes():
    made = [os.pipe() for _ in range(2)]
    for r, _ in made:
        os.set_blocking(r, False)
    yield made
    for r, w in made:
        os.close(r)
        os.close(w)


def read_all(fd):
    try:
        return os.read(fd, 1 << 16)
    except BlockingIOError:
        return b""


def test_holds_each_packet_for_the_delay_then_hands_it_to_its_destination(pipes):
    (ra, wa), (rb, wb) = pipes
    switch = Switch(0.050, {socket.inet_aton("10.0.0.1"): wa, socket.inet_aton("10.0.0.2"): wb})
    to_b = ipv4("10.0.0.1", "10.0.0.2", b"hello")
    switch.receive(to_b, now=1.000)
    assert switch.deliver_due(1.049) == pytest.approx(1.050)  # not yet; says when
    assert read_all(rb) == b""
    assert switch.deliver_due(1.050) is None
    assert read_all(rb) == to_b
    assert read_all(ra) == b""  # nothing went to the sender's device
    assert switch.counters["delivered"] == 1


def test_keeps_order_and_delivers_only_what_is_due(pipes):
    (ra, wa), (rb, wb) = pipes
    switch = Switch(0.010, {socket.inet_aton("10.0.0.1"): wa, socket.inet_aton("10.0.0.2"): wb})
    packets = [ipv4("10.0.0.1", "10.0.0.2", bytes([i])) for i in range(3)]
    switch.receive(packets[0], now=0.000)  # due at 0.010
    switch.receive(packets[1], now=0.004)  # due at 0.014
    switch.receive(ipv4("10.0.0.2", "10.0.0.1", b"back"), now=0.005)  # due at 0.015
    switch.receive(packets[2], now=0.008)  # due at 0.018
    assert switch.deliver_due(0.0145) == pytest.approx(0.015)
    assert read_all(rb) == packets[0] + packets[1]
    assert switch.deliver_due(0.020) is None
    assert read_all(rb) == packets[2]
    assert read_all(ra) == ipv4("10.0.0.2", "10.0.0.1", b"back")


def test_drops_and_counts_what_it_cannot_route(pipes):
    (_, wa), (rb, wb) = pipes
    switch = Switch(0.0, {socket.inet_aton("10.0.0.2"): wb})
    switch.receive(ipv4("10.0.0.2", "10.9.9.9"), now=0.0)  # nobody owns 10.9.9.9
    switch.receive(b"\x60" + bytes(39), now=0.0)  # an IPv6 header
    switch.receive(b"\x45\x00", now=0.0)  # cut short
    assert switch.deliver_due(1.0) is None
    assert read_all(rb) == b""
    assert switch.counters == {"dropped_no_route": 1, "dropped_not_ipv4": 2}


def test_a_full_receiving_device_loses_the_packet_instead_of_blocking(pipes):
    (_, _), (rb, wb) = pipes
    os.set_blocking(wb, False)
    switch = Switch(0.0, {socket.inet_aton("10.0.0.2"): wb})
    packet = ipv4("10.0.0.1", "10.0.0.2", bytes(4096))
    for _ in range(64):  # 256 KiB into a pipe that holds 64 KiB
        switch.receive(packet, now=0.0)
    assert switch.deliver_due(0.0) is None
    assert switch.counters["delivered"] + switch.counters["dropped_full"] == 64
    assert switch.counters["dropped_full"] > 0
