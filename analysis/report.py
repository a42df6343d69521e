"""`python3 -m analysis report RESULTS... [--out DIR]`: PNG figures and summary.md for runs and sweeps.

Runs of a sweep that share their parameters (different seeds) form one *point*: their samples
are pooled for CDFs and quantiles, their rates averaged (min-max shown as error bars). A figure
whose data is absent is not drawn; summary.md says why.
"""
from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass, field
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402

from analysis.load import Run, load_run, load_sweep_runs, series_stats, to_number  # noqa: E402

MAX_LINES = 12  # lines per plot before the rest are left out (and the summary says so)
LATENCY = re.compile(r"latency|rtt|round\.seconds", re.IGNORECASE)  # series drawn as CDFs
TRAFFIC_SERIES = re.compile(r"bytes_per_peer")
THROUGHPUT = re.compile(r"throughput|_per_second$|per_s$")


@dataclass
class Point:
    """Runs that differ only by seed."""
    label: str
    params: dict
    runs: list = field(default_factory=list)

    def pooled(self, series: str) -> np.ndarray:
        parts = [r.series[series] for r in self.runs if series in r.series]
        return np.concatenate(parts) if parts else np.empty(0)

    def values(self, fn) -> list:
        return [v for v in (fn(r) for r in self.runs) if v is not None and not math.isnan(v)]


def collect(inputs) -> tuple[list[Run], list[str], dict]:
    """Runs from .h5 files and sweep directories; notes on skipped entries; run -> source name."""
    runs, notes, source = [], [], {}
    for item in map(Path, inputs):
        if item.is_dir():
            found, skipped = load_sweep_runs(item)
            notes += [f"{item.name}/{s}" for s in skipped]
            if not found:
                notes.append(f"{item}: no finished runs")
        elif item.exists():
            found = [load_run(item, label=item.stem)]
        else:
            raise FileNotFoundError(f"{item}: no such file or directory")
        for r in found:
            source[id(r)] = item.name if item.is_dir() else ""
        runs += found
    return runs, notes, source


def _key(v) -> str:
    return json.dumps(v, sort_keys=True) if isinstance(v, (dict, list)) else str(v)


def _show(v) -> str:
    if isinstance(v, dict):
        return ",".join(f"{k}={v[k]}" for k in sorted(v))
    return str(v)


def varying_params(runs) -> list[str]:
    """Parameters that take more than one value across the runs, in order of appearance."""
    keys = []
    for r in runs:
        keys += [k for k in r.params if k not in keys]
    return [k for k in keys if k != "seed" and len({_key(r.params.get(k)) for r in runs if r.params}) > 1]


def points(runs, source) -> list[Point]:
    varying = varying_params(runs)
    sources = {source[id(r)] for r in runs}
    out: dict[tuple, Point] = {}
    for r in runs:
        src = source[id(r)]
        if r.params and src:
            key = (src, _key({k: r.params.get(k) for k in varying}))
            shown = ", ".join(f"{k}={_show(r.params[k])}" for k in varying if k in r.params)
            label = shown or src
            if len(sources) > 1 and shown:
                label = f"{src}: {shown}"
        else:
            key, label = (str(r.path),), r.name
        if key not in out:
            out[key] = Point(label, dict(r.params))
        out[key].runs.append(r)
    return list(out.values())


def _fname(s: str) -> str:
    return re.sub(r"[^A-Za-z0-9._-]+", "_", s)


def _scale(series: str) -> tuple[float, str]:
    """Divisor and unit for a series' values ("_ns" series are shown in ms)."""
    if series.endswith("_ns"):
        return 1e6, "ms"
    if series.endswith("_us"):
        return 1e3, "ms"
    if series.endswith("_ms"):
        return 1.0, "ms"
    if series.endswith("seconds") or series.endswith("_s"):
        return 1.0, "s"
    if "bytes" in series:
        return 1e3, "KB"
    return 1.0, ""


def _fmt(x) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    if isinstance(x, (int, np.integer)):
        return f"{x:,}"
    return f"{x:.2f}" if abs(x) >= 0.01 or x == 0 else f"{x:.3g}"


def _save(fig, out: Path, name: str, written: list):
    fig.tight_layout()
    fig.savefig(out / name, dpi=110)
    plt.close(fig)
    written.append(name)


def _limit(items, what, notes):
    if len(items) > MAX_LINES:
        notes.append(f"{what}: the first {MAX_LINES} of {len(items)} shown")
    return items[:MAX_LINES]


# ---- figures -----------------------------------------------------------------------------

def fig_latency_cdfs(pts, out, written, skipped, notes):
    names = sorted({s for p in pts for r in p.runs for s in r.series if LATENCY.search(s)})
    if not names:
        skipped.append("latency CDFs: no `*latency*`, `*rtt*` or `*round.seconds` series in the runs")
    for name in names:
        div, unit = _scale(name)
        fig, ax = plt.subplots(figsize=(6.4, 4.2))
        lo, hi = math.inf, 0.0
        for p in _limit([p for p in pts if p.pooled(name).size], f"CDF of {name}", notes):
            v = np.sort(p.pooled(name)) / div
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=f"{p.label} (n={v.size:,})")
            pos = v[v > 0]
            if pos.size:
                lo, hi = min(lo, pos[0]), max(hi, pos[-1])
        if hi > 0 and hi / lo > 100:
            ax.set_xscale("log")
        for q in (0.5, 0.95):
            ax.axhline(q, color="grey", lw=0.6, ls=":")
        ax.set(xlabel=f"{name} ({unit})" if unit else name, ylabel="fraction of samples ≤ x",
               title=f"CDF of {name}", ylim=(0, 1.01))
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
        _save(fig, out, f"cdf-{_fname(name)}.png", written)


def _axis(values):
    """Numeric x positions and tick labels for parameter values (units parsed where present)."""
    nums = [to_number(v) for v in values]
    if all(n is not None for n in nums):
        order = sorted(range(len(values)), key=lambda i: nums[i])
        return [nums[i] for i in order], [_show(values[i]) for i in order], order
    order = sorted(range(len(values)), key=lambda i: _key(values[i]))
    return list(range(len(values))), [_show(values[i]) for i in order], order


def _by_param(pts, x_param):
    """{line label: {x key: [points]}} and the distinct x values, for plots against a parameter."""
    others = [k for k in varying_params([r for p in pts for r in p.runs]) if k != x_param]
    lines, xs = {}, {}
    for p in pts:
        if x_param not in p.params:
            continue
        line = ", ".join(f"{k}={_show(p.params.get(k))}" for k in others) or "all"
        xs.setdefault(_key(p.params[x_param]), p.params[x_param])
        lines.setdefault(line, {}).setdefault(_key(p.params[x_param]), []).append(p)
    return lines, xs


def fig_success(pts, out, written, skipped, notes):
    runs = [r for p in pts for r in p.runs]
    metrics = sorted({m for r in runs for m in r.success_rates()})
    varying = varying_params(runs)
    if not metrics:
        skipped.append("success rate: no `X.ok` counter with a matching `X.issued`/`X.sent` counter")
        return
    if not varying:
        skipped.append("success rate vs parameter: no swept parameter varies across the runs "
                       "(the rates are in the summary table)")
        return
    x_param = next((k for k in varying if "churn" in k), varying[0])
    lines, xs = _by_param(pts, x_param)
    keys = list(xs)
    xpos, ticks, order = _axis([xs[k] for k in keys])
    fig, axes = plt.subplots(1, len(metrics), figsize=(4.6 * len(metrics), 4), squeeze=False)
    for ax, m in zip(axes[0], metrics):
        for line, by_x in _limit(list(lines.items()), "success-rate lines", notes):
            x, y, lo, hi = [], [], [], []
            for pos, i in zip(xpos, order):
                vals = [v for p in by_x.get(keys[i], []) for v in p.values(lambda r: r.success_rates().get(m))]
                if vals:
                    x.append(pos)
                    y.append(100 * np.mean(vals))
                    lo.append(100 * (np.mean(vals) - min(vals)))
                    hi.append(100 * (max(vals) - np.mean(vals)))
            ax.errorbar(x, y, yerr=[lo, hi], marker="o", capsize=3, label=line)
        if min(xpos) > 0 and max(xpos) / min(xpos) >= 50:
            ax.set_xscale("log")
            ax.minorticks_off()
        ax.set_xticks(xpos, ticks, rotation=30 if len(ticks) > 4 else 0, fontsize=8)
        ax.set(xlabel=x_param, ylabel=f"{m} success (%)", title=f"{m} success vs {x_param}")
        ax.grid(alpha=0.3)
        if len(lines) > 1:
            ax.legend(fontsize=7)
    _save(fig, out, f"success-vs-{_fname(x_param)}.png", written)


def fig_variance(pts, out, written, skipped, notes):
    runs = [r for p in pts for r in p.runs if r.series.get("avg.round.variance", np.empty(0)).size]
    if not runs:
        skipped.append("variance vs round: no `avg.round.variance` series")
        return
    fig, ax = plt.subplots(figsize=(6.4, 4.2))
    label = {id(r): p.label for p in pts for r in p.runs}
    for r in _limit(runs, "variance lines", notes):
        v = r.series["avg.round.variance"]
        seed = f" seed {r.seed}" if len(runs) > 1 and r.seed is not None else ""
        ax.plot(np.arange(1, v.size + 1), v, marker="." if v.size < 50 else None, label=f"{label[id(r)]}{seed}")
    ax.set_yscale("log")
    ax.set(xlabel="round (sample order)", ylabel="variance across peers", title="avg.round.variance vs round")
    ax.grid(alpha=0.3, which="both")
    ax.legend(fontsize=7)
    _save(fig, out, "variance-vs-round.png", written)


def fig_traffic(pts, out, written, skipped, notes):
    shown = [p for p in pts if p.values(Run.bytes_per_peer_minute)]
    series = sorted({s for p in pts for r in p.runs for s in r.series if TRAFFIC_SERIES.search(s)})
    if not shown and not series:
        skipped.append("per-peer traffic: no bytes-per-peer figures (cost, transport counters or series)")
        return
    panels = (1 if shown else 0) + len(series)
    width = 5.5 * len(series) + (max(5.5, 0.6 * len(shown) + 3) if shown else 0)
    fig, axes = plt.subplots(1, panels, figsize=(width, 4.2), squeeze=False)
    axes = list(axes[0])
    if shown:
        ax = axes.pop(0)
        shown = _limit(shown, "traffic bars", notes)
        kb = [np.mean(p.values(Run.bytes_per_peer_minute)) / 1e3 for p in shown]
        ax.bar_label(ax.bar(range(len(shown)), kb, color="tab:blue"), fmt="%.1f", fontsize=7)
        ax.set_xticks(range(len(shown)), [p.label for p in shown], rotation=30 if len(shown) > 3 else 0,
                      ha="right" if len(shown) > 3 else "center", fontsize=7)
        ax.set(ylabel="KB sent per peer per minute", title="per-peer traffic")
        ax.grid(alpha=0.3, axis="y")
    for ax, name in zip(axes, series):
        div, unit = _scale(name)
        for p in _limit([p for p in pts if p.pooled(name).size], f"CDF of {name}", notes):
            v = np.sort(p.pooled(name)) / div
            ax.step(v, np.arange(1, v.size + 1) / v.size, where="post", label=p.label)
        ax.set(xlabel=f"{name} ({unit})", ylabel="fraction of samples ≤ x", title=f"CDF of {name}")
        ax.grid(alpha=0.3)
        ax.legend(fontsize=7)
    _save(fig, out, "traffic-per-peer.png", written)


def _throughput_names(runs):
    names = set()
    for r in runs:
        names |= {k for k in r.cost if THROUGHPUT.search(k)}
        names |= {k for k in r.counters if THROUGHPUT.search(k)}
        names |= {k for k in r.series if THROUGHPUT.search(k)}
    return sorted(names)


def _throughput(r: Run, name):
    if name in r.cost:
        return float(r.cost[name])
    if name in r.counters:
        return float(r.counters[name])
    if name in r.series and r.series[name].size:
        return float(r.series[name].mean())
    return None


def fig_throughput_latency(pts, out, written, skipped, notes):
    runs = [r for p in pts for r in p.runs]
    names = _throughput_names(runs)
    if not names:
        skipped.append("throughput vs latency: no throughput figure (`*throughput*`, `*_per_second`)")
        return
    lat_param = next((k for k in varying_params(runs) if "latency" in k), None)
    lat_series = sorted({s for r in runs for s in r.series if LATENCY.search(s)})
    if lat_param:
        xlabel = f"{lat_param} (ms)"

        def latency(p):
            v = to_number(p.params.get(lat_param))
            return None if v is None else v * 1e3
    elif lat_series:
        div, unit = _scale(lat_series[0])
        xlabel = f"{lat_series[0]} p50 ({unit})"

        def latency(p):
            v = p.pooled(lat_series[0])
            return series_stats(v)["p50"] / div if v.size else None
    else:
        skipped.append("throughput vs latency: no latency parameter or series")
        return
    data = {n: [] for n in names}
    for p in pts:
        x = latency(p)
        for n in names:
            ys = p.values(lambda r: _throughput(r, n))
            if x is not None and ys:
                data[n].append((x, float(np.mean(ys)), p.label))
    data = {n: sorted(v) for n, v in data.items() if len(v) >= 2}
    if not data:
        skipped.append("throughput vs latency: fewer than two points with both figures")
        return
    fig, axes = plt.subplots(1, len(data), figsize=(5 * len(data), 4), squeeze=False)
    for ax, (n, v) in zip(axes[0], data.items()):
        ax.plot([a for a, _, _ in v], [b for _, b, _ in v], marker="o")
        ax.set(xlabel=xlabel, ylabel=n, title=f"{n} vs latency")
        ax.grid(alpha=0.3)
    _save(fig, out, "throughput-vs-latency.png", written)


# ---- summary -----------------------------------------------------------------------------

def _md_table(header, rows) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return lines + [""]


def summary(pts, inputs, written, skipped, notes) -> str:
    runs = [r for p in pts for r in p.runs]
    md = ["# Apiary report", "", "Inputs: " + ", ".join(f"`{i}`" for i in inputs), ""]
    md += ["## Runs", ""]
    md += _md_table(["run", "scenario", "backend", "peers", "seed", "run time (s)", "wall (s)", "trace hash"],
                    [[r.name, r.attrs.get("name", "–"), r.attrs.get("backend", "–"), _fmt(r.attrs.get("peers")),
                      r.seed if r.seed is not None else "–", _fmt(r.attrs.get("run_seconds")),
                      _fmt(r.attrs.get("wall_seconds")), f"`{r.attrs.get('trace_hash', '–')}`"] for r in runs])
    names = sorted({s for r in runs for s in r.series})
    if names:
        md += ["## Series", "", "Quantiles are nearest-rank over the samples of all seeds of a point.", ""]
        rows = []
        for name in names:
            div, unit = _scale(name)
            for p in pts:
                v = p.pooled(name)
                if v.size:
                    s = series_stats(v)
                    rows.append([p.label, f"`{name}`", unit or "–", f"{s['count']:,}"]
                                + [_fmt(s[k] / div) for k in ("mean", "p50", "p95", "p99")])
        md += _md_table(["point", "series", "unit", "samples", "mean", "p50", "p95", "p99"], rows)
    metrics = sorted({m for r in runs for m in r.success_rates()})
    if metrics:
        md += ["## Success rates", "", "`X.ok` over `X.issued` (or `.sent`), mean over seeds.", ""]
        md += _md_table(["point", "runs"] + metrics,
                        [[p.label, len(p.runs)] + [_pct(p.values(lambda r, m=m: r.success_rates().get(m)))
                                                   for m in metrics] for p in pts])
    md += ["## Per-peer traffic", "", "Sent by each peer per minute of run time, mean over seeds.", ""]
    md += _md_table(["point", "KB per peer per minute", "messages per peer per minute"],
                    [[p.label, _fmt(_mean(p.values(Run.bytes_per_peer_minute)) / 1e3),
                      _fmt(_mean(p.values(Run.messages_per_peer_minute)))] for p in pts])
    md += ["## Figures", ""]
    for w in written:
        md += [f"![{w}]({w})", ""]
    if not written:
        md += ["None.", ""]
    if skipped:
        md += ["## Not drawn", ""] + [f"- {s}" for s in skipped] + [""]
    if notes:
        md += ["## Notes", ""] + [f"- {n}" for n in notes] + [""]
    return "\n".join(md)


def _mean(v):
    return float(np.mean(v)) if v else math.nan


def _pct(v):
    return f"{100 * np.mean(v):.2f}%" if v else "–"


def report(inputs, out) -> dict:
    """Writes the figures and summary.md into `out`; returns {"figures", "skipped", "notes"}."""
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    runs, notes, source = collect(inputs)
    if not runs:
        raise ValueError("no runs to report on: " + "; ".join(notes or map(str, inputs)))
    pts = points(runs, source)
    written, skipped = [], []
    for fig in (fig_latency_cdfs, fig_success, fig_variance, fig_traffic, fig_throughput_latency):
        fig(pts, out, written, skipped, notes)
    (out / "summary.md").write_text(summary(pts, [str(i) for i in inputs], written, skipped, notes))
    return {"figures": written, "skipped": skipped, "notes": notes}
