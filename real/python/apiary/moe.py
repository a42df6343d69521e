"""Decentralized Mixture-of-Experts (Learning@home): experts served by peers, found through the DHT,
called through autograd; an expert that fails or is slow is skipped."""
from __future__ import annotations

from typing import Dict, Iterable, List, Optional, Sequence, Union

import torch

from . import _apiary
from .dht import DHT


class ExpertServer:
    """Serves experts to the swarm from this peer and declares them in the DHT (renewed every
    `update_period` seconds, signed by this peer's key).

        server = apiary.ExpertServer(dht)
        server.add("expert.0.3", my_module, input_dim=64)           # any torch module, trained by SGD
        server.add_builtin(["expert.1.0", "expert.1.1"], "ffn", dim=64, hidden_dim=256)
        server.start()

    A backward request recomputes the forward, returns the input gradients and steps the expert's
    optimizer (asynchronous training, as in Learning@home). A request of the wrong shape gets an
    error reply; the server keeps serving. One ExpertServer per DHT.
    """

    def __init__(self, dht: DHT, *, update_period: float = 20.0, max_batch: int = 4096, min_batch: int = 1,
                 batch_wait: float = 0.0):
        o = _apiary.ServerOptions()
        o.update_period = float(update_period)
        o.max_batch = int(max_batch)
        o.min_batch = int(min_batch)
        o.batch_wait = float(batch_wait)
        self._core = _apiary.ExpertServer(dht._node, o)
        self.dht = dht
        self._modules: Dict[str, torch.nn.Module] = {}

    def add(self, uid: str, module: torch.nn.Module, *, input_dim: int, output_dim: Optional[int] = None,
            sequence: bool = False, optimizer: str = "sgd", lr: float = 0.01) -> None:
        """Serves `module` as expert `uid` ("prefix.i.j"). Its parameters are trained by `optimizer`
        ("sgd" or "adam") at `lr`, in place: the module is the expert."""
        if not isinstance(module, torch.nn.Module):
            raise TypeError(f"expert {uid}: a torch.nn.Module is needed, not {type(module).__name__}")
        params = [p for p in module.parameters() if p.requires_grad]
        device = str(params[0].device) if params else "cpu"
        self._core.add_module(uid, module, params, int(input_dim), int(output_dim or input_dim), bool(sequence),
                              optimizer, float(lr), device)
        self._modules[uid] = module

    def add_builtin(self, uids: Union[str, Iterable[str]], kind: str = "ffn", *, dim: int, hidden_dim: int,
                    heads: int = 4, lr: float = 0.01, device: Union[str, torch.device] = "cpu") -> None:
        """Built-in experts: "ffn" (LN(x + W2 relu(W1 x))) or "transformer" blocks, on `device`."""
        for uid in [uids] if isinstance(uids, str) else uids:
            self._core.add_builtin(uid, kind, int(dim), int(hidden_dim), int(heads), float(lr), str(device))

    def start(self) -> int:
        """Declares the experts (and keeps declaring them); returns how many records were stored."""
        return self._core.start()

    @property
    def uids(self) -> List[str]:
        return self._core.uids()

    def updates(self, uid: str) -> int:
        """Optimizer steps the expert took (one per backward batch)."""
        return self._core.updates(uid)

    def save(self, directory: str) -> None:
        self._core.save(str(directory))

    def load(self, directory: str) -> None:
        self._core.load(str(directory))


class RemoteMixtureOfExperts(torch.nn.Module):
    """A mixture-of-experts layer whose experts live on other peers: [batch, in_features] ->
    [batch, in_features]. The gate (a Linear layer of this module) scores each coordinate of the
    expert grid `grid_size`; the `k_best` best experts that are alive are called in parallel (the
    layer goes on once `k_min` have answered and `timeout_after_k_min` passed), and their outputs
    are mixed by the softmax of the gate's scores. Backward goes to the same experts, which train
    on it. routing="sample" routes each sample on its own; "switch" sends each sample to its one
    best expert and exposes balance_loss(). The gate lives on `device` (or wherever .to() moves it);
    the inputs on the gate's device; values leave it only at the wire."""

    def __init__(self, *, in_features: int, grid_size: Sequence[int], dht: DHT, uid_prefix: str = "expert",
                 k_best: int = 4, k_min: int = 1, forward_timeout: float = 10.0, backward_timeout: float = 10.0,
                 timeout_after_k_min: float = 1.0, routing: str = "batch", compression: str = "float32",
                 device: Union[str, torch.device, None] = None):
        super().__init__()
        o = _apiary.MixtureOptions()
        o.uid_prefix = uid_prefix
        o.grid = [int(g) for g in grid_size]
        o.dim = int(in_features)
        o.k_best = int(k_best)
        o.k_min = int(k_min)
        o.forward_timeout = float(forward_timeout)
        o.backward_timeout = float(backward_timeout)
        o.timeout_after_k_min = float(timeout_after_k_min)
        o.routing = routing
        o.compression = compression
        self._core = _apiary.Mixture(dht._node, o)
        self.dht = dht
        self.gate = torch.nn.Linear(int(in_features), sum(o.grid), device=device)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not isinstance(x, torch.Tensor) or not x.is_floating_point():
            raise TypeError("RemoteMixtureOfExperts takes a floating-point tensor")
        if x.dim() != 2 or x.shape[1] != self.gate.in_features:
            raise ValueError(f"RemoteMixtureOfExperts takes [batch, {self.gate.in_features}] inputs, not {list(x.shape)}")
        return self._core.forward(x, self.gate(x))

    def last_responders(self) -> List[str]:
        """The experts that answered the last forward."""
        return self._core.last_responders()

    def balance_loss(self) -> torch.Tensor:
        """Switch routing: the last forward's load-balancing loss (add it to the training loss)."""
        return self._core.balance_loss()
