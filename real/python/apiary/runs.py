"""Simulated and live experiments from scenario files, with results as pandas DataFrames."""
from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Mapping, Optional, Union

PathLike = Union[str, os.PathLike]


class RunError(RuntimeError):
    """`apiary run` or `apiary sweep` failed; the message is the command's own (file, line, key)."""

    def __init__(self, message: str, exit_code: int):
        super().__init__(message)
        self.exit_code = exit_code


def _command() -> str:
    """The `apiary` command: $APIARY_COMMAND, the one this package was built with, or PATH's."""
    env = os.environ.get("APIARY_COMMAND")
    if env:
        return env
    try:
        from ._where import APIARY_COMMAND
        if os.access(APIARY_COMMAND, os.X_OK):
            return APIARY_COMMAND
    except ImportError:
        pass
    found = shutil.which("apiary")
    if not found:
        raise RunError("the apiary command is not found (set APIARY_COMMAND)", 2)
    return found


def _sets(set: Optional[Mapping[str, object]]) -> list:
    args = []
    for k, v in (set or {}).items():
        if isinstance(v, bool):
            v = "true" if v else "false"
        args += ["--set", f"{k}={v}"]
    return args


def _call(args: list) -> None:
    p = subprocess.run([_command()] + args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    if p.returncode == 130:
        raise KeyboardInterrupt
    if p.returncode != 0:
        message = p.stderr.strip() or p.stdout.strip() or f"exit code {p.returncode}"
        raise RunError(message, p.returncode)


def run(scenario: Optional[PathLike] = None, *, seed: Optional[int] = None, set: Optional[Mapping[str, object]] = None,
        out: Optional[PathLike] = None, series=None):
    """Runs a scenario (the embedded quickstart when None) in simulation or live, as its backend
    says; returns one DataFrame row of its results (analysis.table: counters, success rates, cost,
    series statistics) with the run's object in df.attrs["run"] (its full series). `set` overrides
    keys ({"peers": 1000, "network.latency": "50ms"}); `out` keeps the HDF5 file there."""
    from analysis import load_run, table

    tmp = None
    if out is None:
        tmp = tempfile.mkdtemp(prefix="apiary-run-")
        out = Path(tmp) / "run.h5"
    args = ["run"] + ([os.fspath(scenario)] if scenario is not None else [])
    args += (["--seed", str(int(seed))] if seed is not None else []) + _sets(set)
    args += ["--out", os.fspath(out), "--force", "--quiet"]
    try:
        _call(args)
        r = load_run(out)
        df = table([r], series)
        df.attrs["run"] = r
        return df
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)


def sweep(scenario: PathLike, *, out: PathLike, set: Optional[Mapping[str, object]] = None, jobs: Optional[int] = None,
          executor: Optional[str] = None, series=None):
    """Runs every point of the scenario's [sweep] into `out` (resumable: points already done are
    kept) and returns one row per run, its parameters as columns (df.attrs["params"])."""
    from analysis import load_sweep

    args = ["sweep", os.fspath(scenario), "--out", os.fspath(out), "--quiet"] + _sets(set)
    if jobs is not None:
        args += ["--jobs", str(int(jobs))]
    if executor is not None:
        args += ["--executor", executor]
    _call(args)
    import pandas as pd

    df = load_sweep(out, series)
    for column in df.attrs.get("params", []):  # plain numbers as numbers ("30min" stays: analysis.to_number)
        try:
            df[column] = pd.to_numeric(df[column])
        except (ValueError, TypeError):
            pass
    return df
