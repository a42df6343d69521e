"""Collaborative training: a wrapper around any torch optimizer that steps together with the swarm."""
from __future__ import annotations

import time
from dataclasses import dataclass
from typing import List, Optional

import torch

from . import _apiary
from .averaging import averaging_options
from .dht import DHT


@dataclass
class StepInfo:
    epoch: int                 # the swarm's global step after this one
    group_size: int = 0        # peers the gradients were averaged with (this one included)
    swarm_samples: int = 0     # the global batch, as progress reported it
    samples: int = 0           # this peer's share of it
    caught_up: bool = False    # this peer was behind: it downloaded the swarm's state instead of stepping
    state_averaged: bool = False
    resynced: bool = False
    bytes_sent: int = 0
    waited: float = 0.0        # seconds waiting for the swarm to reach the target batch
    averaging: float = 0.0     # seconds of matchmaking and all-reduce


def _params(opt: torch.optim.Optimizer) -> List[torch.Tensor]:
    return [p for g in opt.param_groups for p in g["params"]]


def _state_tensors(opt: torch.optim.Optimizer) -> List[torch.Tensor]:
    """The optimizer's floating-point state tensors, per parameter in order, by sorted name."""
    out = []
    for p in _params(opt):
        st = opt.state.get(p, {})
        for k in sorted(st):
            v = st[k]
            if isinstance(v, torch.Tensor) and v.is_floating_point():
                out.append(v)
    return out


def _init_state(opt: torch.optim.Optimizer) -> None:
    """Creates the optimizer's state before the first step (so that its shape is known and a newcomer
    can download it): one step with zero gradients and learning rate 0, its step counters reset. The
    next real step is then exactly what it would have been."""
    params = _params(opt)
    if all(len(opt.state.get(p, {})) > 0 for p in params):
        return
    saved = [p.detach().clone() for p in params]
    grads = [p.grad for p in params]
    lrs = [g.get("lr") for g in opt.param_groups]
    try:
        for p in params:
            p.grad = torch.zeros_like(p)
        for g in opt.param_groups:
            if "lr" in g:
                g["lr"] = 0.0
        opt.step()
    finally:
        for g, lr in zip(opt.param_groups, lrs):
            if lr is not None:
                g["lr"] = lr
        with torch.no_grad():
            for p, s, g in zip(params, saved, grads):
                p.copy_(s)
                p.grad = g
    for p in params:
        st = opt.state.get(p, {})
        if "step" in st:
            if isinstance(st["step"], torch.Tensor):
                st["step"].zero_()
            else:
                st["step"] = 0


class CollaborativeOptimizer:
    """Wraps `opt` (any torch.optim.Optimizer) so that many peers train one model together.

    Call step(batch_size) after each local loss.backward(): it adds this peer's gradients to the
    swarm's, and when the swarm as a whole has processed `target_batch_size` samples, the peers
    average their gradients (weighted by samples, so the result is the mean gradient of the global
    batch) and each runs `opt.step()` on it: with exact averaging the same as one process doing the
    same optimizer on the concatenated batches. step(wait=True) waits for that global step.

    Newcomers download the parameters, the optimizer state and the epoch from a peer
    (load_state_from_peers(), done at construction unless `load_state=False`). With
    `local_updates` the optimizer steps on every local batch and parameters and optimizer state are
    averaged every `average_state_every` epochs instead (Local SGD). One CollaborativeOptimizer (or
    Averager) per DHT.
    """

    def __init__(self, opt: torch.optim.Optimizer, dht: DHT, *, prefix: str, target_batch_size: int,
                 batch_size_per_step: Optional[int] = None, target_group_size: int = 16, min_group_size: int = 2,
                 matchmaking_time: float = 5.0, allreduce_timeout: float = 30.0, compression: str = "float32",
                 mode: str = "full", bandwidth: float = 1.0, local_updates: bool = False,
                 average_state_every: int = 0, max_wait: float = 60.0, state_timeout: float = 30.0,
                 progress_interval: float = 1.0, load_state: bool = True):
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"CollaborativeOptimizer wraps a torch.optim.Optimizer, not a {type(opt).__name__}")
        if int(target_batch_size) <= 0:
            raise ValueError("target_batch_size must be positive")
        _init_state(opt)
        self.opt = opt
        self.batch_size_per_step = batch_size_per_step
        self.local_updates = local_updates
        self.progress_interval = float(progress_interval)
        self._params = _params(opt)
        o = _apiary.CollaborativeOptions()
        o.prefix = prefix
        o.target_batch_size = int(target_batch_size)
        o.averaging = averaging_options(prefix, target_group_size, min_group_size, matchmaking_time,
                                        allreduce_timeout, compression, mode, bandwidth)
        o.local_updates = bool(local_updates)
        o.average_state_every = int(average_state_every)
        o.max_wait = float(max_wait)
        o.state_timeout = float(state_timeout)
        self._core = _apiary.Collaborative(dht._node, self._params, _state_tensors(opt), o)
        self.dht = dht
        self._last_report = -float("inf")
        if load_state:
            self.load_state_from_peers()

    @property
    def local_epoch(self) -> int:
        """The global step this peer is on."""
        return self._core.epoch

    @property
    def param_groups(self):
        return self.opt.param_groups

    def zero_grad(self, set_to_none: bool = False) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def load_state_from_peers(self, timeout: Optional[float] = None) -> Optional[int]:
        """Downloads parameters, optimizer state and epoch from the freshest peer; returns the epoch
        this peer is now on, or None when no peer offered a state (this one keeps its own)."""
        epoch, self.last_join_error = self._core.join(float(timeout or 0.0))
        if epoch is None:
            return None
        self._load_from_core()
        return epoch

    def step(self, batch_size: Optional[int] = None, *, wait: bool = False,
             timeout: Optional[float] = None) -> Optional[StepInfo]:
        """Adds this peer's gradients (of `batch_size` samples; they are zeroed then); takes the
        global step if it is due (or, with wait=True, waits for it). Returns the step's StepInfo,
        or None if none was taken."""
        n = batch_size if batch_size is not None else self.batch_size_per_step
        if n is None:
            raise ValueError("step() needs batch_size (or batch_size_per_step at construction)")
        if self.local_updates:
            self.opt.step()
        self._core.accumulate(int(n))
        self.opt.zero_grad()  # the gradients are the swarm's now (a loop without zero_grad counts them once)
        if not wait:
            now = time.monotonic()
            if now - self._last_report >= self.progress_interval:
                self._core.report_progress(float(timeout or 0.0))
                self._last_report = now
            if not self._core.step_due(False):
                return None
        r = self._core.step(float(timeout or 0.0))
        self._last_report = -float("inf")
        grad = r.pop("mean_gradient", None)
        info = StepInfo(**r)
        if info.caught_up or info.resynced:
            self._load_from_core()
            return info
        if grad is not None:
            if info.state_averaged:  # the group's parameters and optimizer state, then this step
                self._load_from_core()
            with torch.no_grad():
                for p, g in zip(self._params, grad):
                    if p.grad is None:
                        p.grad = torch.zeros_like(p)
                    p.grad.copy_(g)
            self.opt.step()
            self.opt.zero_grad()
        elif info.state_averaged:
            self._load_from_core()
        self._core.publish(_state_tensors(self.opt))
        return info

    def _load_params(self) -> None:
        with torch.no_grad():
            for p, v in zip(self._params, self._core.parameters()):
                p.copy_(v)

    def _load_from_core(self) -> None:
        self._load_params()
        state = self._core.take_downloaded_state()
        if state is not None:
            with torch.no_grad():
                for mine, theirs in zip(_state_tensors(self.opt), state):
                    mine.copy_(theirs.reshape(mine.shape))
        self._core.publish(_state_tensors(self.opt))


@dataclass
class OuterStepInfo:
    round: int        # the outer step just taken
    group_size: int   # peers whose pseudo-gradients were averaged (this one included)
    bytes_sent: int
    samples: int      # this peer's samples since the last outer step (its weight)


class DiLoCoOptimizer:
    """DiLoCo (Douillard et al., 2023): `opt` is the inner optimizer, stepped on every local batch;
    every `inner_steps` batches the peers average their pseudo-gradients (start minus current
    parameters, weighted by samples) and take an outer SGD step with Nesterov momentum from the
    start parameters (outer_lr 0.7, momentum 0.9 as in the paper). Communication once per
    `inner_steps` batches instead of once per batch. One DiLoCoOptimizer (or Averager) per DHT.
    """

    def __init__(self, opt: torch.optim.Optimizer, dht: DHT, *, prefix: str, inner_steps: int = 500,
                 outer_lr: float = 0.7, outer_momentum: float = 0.9, nesterov: bool = True, target_group_size: int = 16,
                 min_group_size: int = 2, matchmaking_time: float = 5.0, allreduce_timeout: float = 30.0,
                 compression: str = "float32", mode: str = "full", bandwidth: float = 1.0):
        if not isinstance(opt, torch.optim.Optimizer):
            raise TypeError(f"DiLoCoOptimizer wraps a torch.optim.Optimizer, not a {type(opt).__name__}")
        self.opt = opt
        o = _apiary.DilocoOptions()
        o.prefix = prefix
        o.inner_steps = int(inner_steps)
        o.outer_lr = float(outer_lr)
        o.outer_momentum = float(outer_momentum)
        o.nesterov = bool(nesterov)
        o.averaging = averaging_options(prefix, target_group_size, min_group_size, matchmaking_time, allreduce_timeout,
                                        compression, mode, bandwidth)
        self._core = _apiary.Diloco(dht._node, _params(opt), o)
        self.dht = dht

    @property
    def round(self) -> int:
        """Outer steps taken."""
        return self._core.round

    @property
    def param_groups(self):
        return self.opt.param_groups

    def zero_grad(self, set_to_none: bool = False) -> None:
        self.opt.zero_grad(set_to_none=set_to_none)

    def step(self, batch_size: int, *, timeout: Optional[float] = None) -> Optional[OuterStepInfo]:
        """The inner step on this batch's gradients; then, every inner_steps batches, the outer step
        (it waits for the group). Returns the outer step's OuterStepInfo, or None."""
        self.opt.step()
        if not self._core.inner_step_done(int(batch_size)):
            return None
        return OuterStepInfo(**self._core.outer_step(float(timeout or 0.0)))
