"""Decentralized averaging of torch tensors: matchmaking through the DHT, then butterfly all-reduce."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence

import torch

from . import _apiary
from .dht import DHT


@dataclass
class GroupInfo:
    key: str               # the round's matchmaking key
    group_id: int
    group_size: int        # peers averaged with, this one included
    bytes_sent: int
    bytes_received: int
    pieces_averaged: int   # pieces of this peer's tensors that got the group's mean
    pieces_kept: int       # pieces that kept this peer's values (their reducer failed)
    failed_reducers: int
    seconds: float


def averaging_options(prefix, target_group_size, min_group_size, matchmaking_time, allreduce_timeout, compression,
                      mode, bandwidth) -> "_apiary.AveragingOptions":
    o = _apiary.AveragingOptions()
    o.prefix = prefix
    o.target_group_size = int(target_group_size)
    o.min_group_size = int(min_group_size)
    o.matchmaking_time = float(matchmaking_time)
    o.allreduce_timeout = float(allreduce_timeout)
    o.compression = compression
    o.mode = mode
    o.bandwidth = float(bandwidth)
    return o


class Averager:
    """Averages `tensors` in place with whoever else steps under the same key.

    step() finds a group under `prefix` + key in the DHT (up to `target_group_size` peers, at least
    `min_group_size`, within `matchmaking_time` seconds), then runs a butterfly all-reduce: each
    member reduces a part. `compression` is the wire codec (float32, float16, scaled_float16,
    uniform8, quantile8, blockwise8); `mode` "client" sends its tensors but reduces nothing (behind
    NAT), "aux" reduces for others and contributes nothing. Tensors may be of any floating dtype
    and device; they are copied to the host only at the wire. One Averager (or
    CollaborativeOptimizer) per DHT.
    """

    def __init__(self, tensors: Sequence[torch.Tensor], dht: DHT, *, prefix: str = "avg", target_group_size: int = 16,
                 min_group_size: int = 2, matchmaking_time: float = 5.0, allreduce_timeout: float = 30.0,
                 compression: str = "float32", mode: str = "full", bandwidth: float = 1.0):
        tensors = list(tensors)
        for i, t in enumerate(tensors):
            if not isinstance(t, torch.Tensor):
                raise TypeError(f"Averager: item {i} is a {type(t).__name__}, not a torch.Tensor")
        opts = averaging_options(prefix, target_group_size, min_group_size, matchmaking_time, allreduce_timeout,
                                 compression, mode, bandwidth)
        self._core = _apiary.Averager(dht._node, tensors, opts)
        self.dht = dht  # (kept: the peer lives while this does, and interpreter exit shuts it down)
        self.tensors = tensors

    def step(self, weight: float = 1.0, *, key: Optional[str] = None, timeout: Optional[float] = None) -> GroupInfo:
        """One averaging round, weighted by `weight`. Peers meet under the same key: by default the
        number of rounds this averager has stepped ("round0", "round1", ...). Raises TimeoutError
        when no group formed (the tensors are then unchanged)."""
        return GroupInfo(**self._core.step(float(weight), key, float(timeout or 0.0)))
