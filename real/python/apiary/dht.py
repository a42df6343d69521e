"""The DHT: a live Kademlia peer on real sockets, its event loop on a thread of its own."""
from __future__ import annotations

import atexit
import os
import time
import weakref
from typing import NamedTuple, Optional, Sequence, Union

from . import _apiary

_alive: "weakref.WeakSet[DHT]" = weakref.WeakSet()


def get_dht_time() -> float:
    """The swarm's clock: seconds since the Unix epoch (expiration times are on it)."""
    return time.time()


class ValueWithExpiration(NamedTuple):
    value: object            # bytes; or, for a dictionary key, {subkey: ValueWithExpiration}
    expiration_time: float   # seconds since the Unix epoch
    signed: bool = False     # signed by its owner (keys or subkeys with an [owner:...] tag)


class DHT:
    """A DHT peer that joins the swarm through `initial_peers` ("IP:PORT") and serves it from a
    thread of its own until shutdown() (or the end of a `with` block, or interpreter exit).

    Every peer proves its key on each connection (Ed25519); `identity_path` keeps the key across
    restarts (created when missing). A swarm with a `swarm_secret` admits only peers that know it;
    `id_work_bits` is the id work every key must carry. `client_mode` peers send requests but serve
    none (behind NAT). Raises ConnectionError when none of the initial peers answers, OSError when
    `listen` is taken, ValueError on malformed addresses.
    """

    def __init__(self, initial_peers: Sequence[str] = (), *, listen: str = "127.0.0.1:0",
                 identity_path: Optional[Union[str, os.PathLike]] = None, client_mode: bool = False,
                 swarm_secret: Optional[Union[str, bytes]] = None, id_work_bits: int = 0, k: int = 20,
                 rpc_timeout: float = 2.0, join_timeout: float = 10.0, verbose: bool = False):
        if isinstance(initial_peers, str):
            initial_peers = [initial_peers]
        o = _apiary.NodeOptions()
        o.listen = listen
        o.initial_peers = [str(p) for p in initial_peers]
        o.identity_path = os.fspath(identity_path) if identity_path is not None else ""
        if isinstance(swarm_secret, str):
            swarm_secret = swarm_secret.encode()
        o.swarm_secret = (swarm_secret or b"").decode("latin-1")
        o.id_work_bits = int(id_work_bits)
        o.client_mode = bool(client_mode)
        o.k = int(k)
        o.rpc_timeout = float(rpc_timeout)
        o.join_timeout = float(join_timeout)
        o.verbose = bool(verbose)
        self._node = _apiary.Node(o)
        _alive.add(self)

    @property
    def endpoint(self) -> str:
        """Where this peer listens ("IP:PORT"): what others pass as an initial peer."""
        return self._node.endpoint

    @property
    def peer_id(self) -> str:
        return self._node.peer_id

    @property
    def owner_tag(self) -> str:
        """"[owner:<key>]": put it in a key or subkey that only this peer may write (store with sign=True)."""
        return self._node.owner_tag

    @property
    def is_alive(self) -> bool:
        return not self._node.closed

    def store(self, key: str, value: Union[bytes, str], expiration_time: float, subkey: Optional[str] = None, *,
              sign: bool = False, timeout: float = 30.0) -> bool:
        """Stores `value` under `key` (and `subkey`: a dictionary entry) until `expiration_time`
        (get_dht_time() seconds). True when at least one of the k nearest peers accepted it."""
        return bool(self.store_report(key, value, expiration_time, subkey, sign=sign, timeout=timeout)["ok"])

    def store_report(self, key: str, value: Union[bytes, str], expiration_time: float, subkey: Optional[str] = None,
                     *, sign: bool = False, timeout: float = 30.0) -> dict:
        """store() with its details: replicas, stale, refused (why_refused), unreachable, latency."""
        return self._node.store(key, value, float(expiration_time), subkey, sign, float(timeout))

    def get(self, key: str, *, timeout: float = 30.0) -> Optional[ValueWithExpiration]:
        """The value under `key` with its expiration time, or None when the swarm holds none. A
        dictionary key gives {subkey: ValueWithExpiration} as its value."""
        records = self._node.get(key, float(timeout))
        if records is None:
            return None
        plain = [r for r in records if r[0] is None]
        entries = {r[0]: ValueWithExpiration(r[1], r[2], r[3]) for r in records if r[0] is not None}
        if entries:
            return ValueWithExpiration(entries, max(e.expiration_time for e in entries.values()))
        value, expiration, signed = plain[0][1], plain[0][2], plain[0][3]
        return ValueWithExpiration(value, expiration, signed)

    def counters(self) -> dict:
        """This peer's protocol counters (messages, bytes, refusals, ...)."""
        return dict(self._node.counters())

    def shutdown(self) -> None:
        """Closes what was built on this peer (averagers, optimizers, experts), its connections and
        its thread. Idempotent; calls afterwards raise RuntimeError."""
        self._node.shutdown()

    def __enter__(self) -> "DHT":
        return self

    def __exit__(self, *exc) -> None:
        self.shutdown()

    def __repr__(self) -> str:
        state = "alive" if self.is_alive else "shut down"
        return f"DHT({self.endpoint}, id {self.peer_id[:12]}..., {state})"


@atexit.register
def _shutdown_all() -> None:
    for d in list(_alive):
        try:
            d.shutdown()
        except Exception:  # noqa: BLE001 (the interpreter is exiting)
            pass
