"""Reading Apiary results: one run's HDF5 file, or a sweep directory, into Python objects.

The file layout is written by analysis/h5/results_file.cpp:
  /            attributes: scenario, scenario_source, name, seed, peers, backend, version,
               wall_seconds, run_seconds, trace_hash, trace_events, created_by
  /counters/X  int64 scalar      /series/X  float64 array      /cost/X  float64 scalar
A sweep directory holds index.json (a list of {"run", "file", "seed", "params", "status"}) and
one .h5 per run; without index.json every *.h5 in it is a run without parameters.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import h5py
import numpy as np
import pandas as pd

STATS = ("p50", "p95", "mean")

# Denominators tried, in order, for a success rate "<prefix>.ok / <prefix>.<denominator>".
SUCCESS_DENOMINATORS = ("issued", "sent", "started", "attempted", "calls")


def quantile(values, q: float) -> float:
    """Nearest-rank quantile, the definition `apiary run` prints (Metrics::quantile); nan if empty."""
    v = np.sort(np.asarray(values, dtype=float))
    if v.size == 0:
        return math.nan
    rank = int(min(max(math.ceil(q * v.size) - 1, 0), v.size - 1))
    return float(v[rank])


def series_stats(values) -> dict:
    v = np.asarray(values, dtype=float)
    return {"count": int(v.size), "mean": float(v.mean()) if v.size else math.nan,
            "p50": quantile(v, 0.50), "p95": quantile(v, 0.95), "p99": quantile(v, 0.99)}


def _value(x):
    """An HDF5 attribute or scalar as a plain Python value (fixed-length strings are bytes)."""
    if isinstance(x, np.ndarray) and x.shape == ():
        x = x[()]
    if isinstance(x, (bytes, np.bytes_)):
        return bytes(x).decode("utf-8", errors="replace")
    if isinstance(x, np.generic):
        return x.item()
    return x


@dataclass
class Run:
    """One run: root attributes, counters, series (numpy arrays), cost figures, sweep params."""
    path: Path
    attrs: dict = field(default_factory=dict)
    counters: dict = field(default_factory=dict)
    series: dict = field(default_factory=dict)
    cost: dict = field(default_factory=dict)
    params: dict = field(default_factory=dict)
    label: str = ""

    @property
    def name(self) -> str:
        return self.label or str(self.attrs.get("name") or self.path.stem)

    @property
    def seed(self):
        return self.attrs.get("seed")

    def success_rates(self) -> dict:
        """{"dht.get": 0.99, ...} for every counter pair <prefix>.ok and <prefix>.<denominator>."""
        out = {}
        for name, ok in self.counters.items():
            if not name.endswith(".ok"):
                continue
            prefix = name[:-3]
            for d in SUCCESS_DENOMINATORS:
                total = self.counters.get(f"{prefix}.{d}")
                if total:
                    out[prefix] = ok / total
                    break
        return out

    def bytes_per_peer_minute(self) -> float:
        """Bytes sent per peer per minute: the cost figure, else transport.bytes_sent / peers / minutes."""
        if "bytes_per_peer_minute" in self.cost:
            return float(self.cost["bytes_per_peer_minute"])
        sent, peers = self.counters.get("transport.bytes_sent"), self.attrs.get("peers")
        minutes = (self.attrs.get("run_seconds") or 0) / 60
        if sent is None or not peers or minutes <= 0:
            return math.nan
        return sent / peers / minutes

    def messages_per_peer_minute(self) -> float:
        if "messages_per_peer_minute" in self.cost:
            return float(self.cost["messages_per_peer_minute"])
        sent, peers = self.counters.get("transport.messages_sent"), self.attrs.get("peers")
        minutes = (self.attrs.get("run_seconds") or 0) / 60
        if sent is None or not peers or minutes <= 0:
            return math.nan
        return sent / peers / minutes


def load_run(path, params: dict | None = None, label: str = "") -> Run:
    """Loads one results file."""
    path = Path(path)
    run = Run(path=path, params=dict(params or {}), label=label)
    with h5py.File(path, "r") as f:
        run.attrs = {k: _value(v) for k, v in f.attrs.items()}
        for group, target in (("counters", run.counters), ("cost", run.cost)):
            if group in f:
                for k, d in f[group].items():
                    target[k] = _value(d[()])
        if "series" in f:
            for k, d in f["series"].items():
                run.series[k] = np.asarray(d[()], dtype=float).reshape(-1)
    return run


def read_index(directory) -> list[dict]:
    """The sweep's index.json entries, or one entry per *.h5 when there is no index."""
    directory = Path(directory)
    index = directory / "index.json"
    if not index.exists():
        return [{"run": p.stem, "file": p.name, "params": {}, "status": "done"}
                for p in sorted(directory.glob("*.h5"))]
    entries = json.loads(index.read_text())
    if isinstance(entries, dict):
        entries = entries.get("runs", [])
    return list(entries)


def load_sweep_runs(directory) -> tuple[list[Run], list[str]]:
    """The finished runs of a sweep directory, and a note for each entry that was skipped."""
    directory = Path(directory)
    runs, skipped = [], []
    for e in read_index(directory):
        name = str(e.get("run") or Path(e.get("file", "?")).stem)
        status = e.get("status", "done")
        path = directory / e.get("file", f"{name}.h5")
        if status != "done":
            skipped.append(f"{name}: status {status}")
        elif not path.exists():
            skipped.append(f"{name}: {path.name} missing")
        else:
            try:
                run = load_run(path, e.get("params") or {}, label=name)
            except OSError as err:
                skipped.append(f"{name}: unreadable ({err})")
                continue
            if e.get("seed") is not None:
                run.attrs.setdefault("seed", e["seed"])
            runs.append(run)
    return runs, skipped


def table(runs, series=None) -> pd.DataFrame:
    """One row per run: run, file, params, seed, attributes, counters, success rates, traffic,
    cost figures ("cost.X") and "<series>.p50/.p95/.mean/.count" of `series` (default: all)."""
    rows, param_keys = [], []
    for r in runs:
        row = {"run": r.name, "file": str(r.path)}
        for k in r.params:
            if k not in param_keys:
                param_keys.append(k)
        row.update({k: _cell(v) for k, v in r.params.items()})
        row["seed"] = r.seed
        for k in ("name", "backend", "peers", "run_seconds", "wall_seconds", "trace_hash"):
            if k in r.attrs and k not in row:
                row[k] = r.attrs[k]
        for k, v in r.counters.items():
            row.setdefault(k, v)
        row.update({f"{k}.success": v for k, v in r.success_rates().items()})
        row["bytes_per_peer_minute"] = r.bytes_per_peer_minute()
        row["messages_per_peer_minute"] = r.messages_per_peer_minute()
        row.update({f"cost.{k}": v for k, v in r.cost.items()})
        for name in (r.series if series is None else series):
            if name in r.series:
                s = series_stats(r.series[name])
                row[f"{name}.count"] = s["count"]
                row.update({f"{name}.{k}": s[k] for k in STATS})
        rows.append(row)
    df = pd.DataFrame(rows)
    df.attrs["params"] = param_keys
    return df


def load_sweep(directory, series=None) -> pd.DataFrame:
    """A sweep directory as a DataFrame (see `table`); df.attrs["params"] names the parameter
    columns and df.attrs["skipped"] the index entries that were not loaded."""
    runs, skipped = load_sweep_runs(directory)
    df = table(runs, series)
    df.attrs["skipped"] = skipped
    return df


def _cell(v):
    """Parameter values that are tables (distributions) become compact JSON strings."""
    if isinstance(v, (dict, list)):
        return json.dumps(v, sort_keys=True, separators=(",", ":"))
    return v


_UNITS = {  # to seconds, bytes, bits per second, events per second
    "ns": 1e-9, "us": 1e-6, "ms": 1e-3, "s": 1.0, "min": 60.0, "h": 3600.0, "d": 86400.0,
    "B": 1, "KB": 1e3, "MB": 1e6, "GB": 1e9, "KiB": 2**10, "MiB": 2**20, "GiB": 2**30,
    "bps": 1, "Kbps": 1e3, "Mbps": 1e6, "Gbps": 1e9, "/s": 1.0, "/min": 1 / 60, "/h": 1 / 3600,
}
_QUANTITY = re.compile(r"^\s*([-+]?\d+(?:\.\d*)?(?:[eE][-+]?\d+)?)\s*([A-Za-z/]*)\s*$")


def to_number(v):
    """A parameter value as a float ("30min" -> 1800.0, "10Mbps" -> 1e7, 3 -> 3.0), else None.
    A distribution table counts as its value, median or mean."""
    if isinstance(v, bool) or v is None:
        return None
    if isinstance(v, dict):
        for key in ("value", "median", "mean"):
            if key in v:
                return to_number(v[key])
        return None
    if isinstance(v, (int, float, np.integer, np.floating)):
        return float(v)
    m = _QUANTITY.match(str(v))
    if not m:
        return None
    number, unit = m.groups()
    if unit and unit not in _UNITS:
        return None
    return float(number) * _UNITS.get(unit, 1.0)
