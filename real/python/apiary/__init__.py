"""Apiary from Python: a live peer of a decentralized training swarm, driven from PyTorch.

    import apiary, torch
    dht = apiary.DHT(initial_peers=["127.0.0.1:31337"])          # a peer, on its own thread
    opt = apiary.CollaborativeOptimizer(torch.optim.SGD(model.parameters(), lr=0.1), dht,
                                        prefix="mnist", target_batch_size=4096)
    loss.backward(); opt.step(batch_size=32)                      # a global step when the swarm is due
    df = apiary.run("scenarios/dht-churn.toml", seed=2)           # a simulated experiment, as a DataFrame

The protocols are Apiary's C++ core (the same code the ns-3 simulations run); this package binds it
with pybind11 to Debian's torch, sharing its libtorch, so tensors pass without copies.
"""
import torch  # noqa: F401  (first: the extension links the libtorch this loads)

from . import _apiary
__version__ = _apiary.__version__
from .dht import DHT, ValueWithExpiration, get_dht_time
from .averaging import Averager, GroupInfo
from .optim import CollaborativeOptimizer, DiLoCoOptimizer, OuterStepInfo, StepInfo
from .moe import ExpertServer, RemoteMixtureOfExperts
from .runs import RunError, run, sweep

__all__ = ["DHT", "ValueWithExpiration", "get_dht_time", "Averager", "GroupInfo", "CollaborativeOptimizer", "StepInfo",
           "DiLoCoOptimizer", "OuterStepInfo",
           "ExpertServer", "RemoteMixtureOfExperts", "run", "sweep", "RunError"]
