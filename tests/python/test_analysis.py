"""Tests of the analysis package on synthetic results files laid out as
analysis/h5/results_file.cpp writes them (fixed-length UTF-8 string attributes, int64 counters,
float64 series chunked and compressed from 4096 samples, float64 cost scalars)."""
import json
import math

import h5py
import matplotlib.image
import numpy as np
import pytest

from analysis import load_run, load_sweep, quantile, to_number
from analysis.__main__ import main
from analysis.report import report

MS = 1e6  # ns


def write_h5(path, *, name="test", seed=1, peers=10, run_seconds=60.0, counters=None, series=None,
             cost=None, backend="sim"):
    """A results file as the C++ writer makes it."""
    with h5py.File(path, "w") as f:
        def attr_string(key, value):
            data = (value or " ").encode()  # the writer stores "" as " "
            tid = h5py.h5t.C_S1.copy()
            tid.set_size(len(data))
            tid.set_cset(h5py.h5t.CSET_UTF8)
            tid.set_strpad(h5py.h5t.STR_NULLTERM)
            a = h5py.h5a.create(f.id, key.encode(), tid, h5py.h5s.create(h5py.h5s.SCALAR))
            a.write(np.array(data, dtype=f"S{len(data)}"), mtype=tid)

        for key, value in (("scenario", f'name = "{name}"\npeers = {peers}\n'),
                           ("scenario_source", f"scenarios/{name}.toml"), ("name", name),
                           ("backend", backend), ("version", "0.1.0"), ("trace_hash", "00112233aabbccdd"),
                           ("created_by", "apiary 0.1.0")):
            attr_string(key, value)
        for key, value in (("seed", seed), ("peers", peers), ("trace_events", 1234)):
            f.attrs.create(key, value, dtype="<i8")
        for key, value in (("wall_seconds", 0.5), ("run_seconds", run_seconds)):
            f.attrs.create(key, value, dtype="<f8")
        g = f.create_group("counters")
        for k, v in (counters or {}).items():
            g.create_dataset(k, data=np.int64(v), dtype="<i8")
        g = f.create_group("series")
        for k, v in (series or {}).items():
            v = np.asarray(v, dtype="<f8")
            if v.size >= 4096:
                g.create_dataset(k, data=v, chunks=(4096,), compression="gzip", compression_opts=4)
            elif v.size:
                g.create_dataset(k, data=v)
            else:
                g.create_dataset(k, shape=(0,), dtype="<f8")
        g = f.create_group("cost")
        for k, v in (cost or {}).items():
            g.create_dataset(k, data=np.float64(v), dtype="<f8")
    return path


def png_ok(path):
    img = matplotlib.image.imread(path)
    return img.shape[0] > 200 and img.shape[1] > 200 and float(img[..., :3].std()) > 0.01


# ---- loading -----------------------------------------------------------------------------

def test_quantile_is_nearest_rank():
    assert quantile([4, 1, 3, 2], 0.5) == 2  # numpy's default (linear) would give 2.5
    assert quantile(range(1, 11), 0.95) == 10
    assert quantile(range(1, 101), 0.99) == 99
    assert quantile([7.0], 0.5) == 7.0
    assert math.isnan(quantile([], 0.5))


def test_to_number_parses_scenario_units():
    assert to_number("30min") == 1800.0
    assert to_number("50ms") == pytest.approx(0.05)
    assert to_number("10Mbps") == 1e7
    assert to_number("64MiB") == 64 * 2**20
    assert to_number("2/s") == 2.0
    assert to_number(1000) == 1000.0
    assert to_number({"dist": "lognormal", "median": "30ms", "sigma": 0.5}) == pytest.approx(0.03)
    assert to_number("fast") is None
    assert to_number("3 parsecs") is None
    assert to_number(True) is None


def test_load_run(tmp_path):
    rtt = np.arange(5000, dtype=float) * MS  # chunked and compressed, as the writer does from 4096
    p = write_h5(tmp_path / "r.h5", name="ping", seed=7, peers=4, run_seconds=120.0,
                 counters={"ping.sent": 200, "ping.ok": 150, "dht.get.issued": 10, "dht.get.ok": 9,
                           "transport.bytes_sent": 48000, "transport.messages_sent": 800},
                 series={"ping.rtt_ns": rtt, "empty": []}, cost={"us_per_message": 12.5})
    r = load_run(p)
    assert r.attrs["name"] == "ping" and isinstance(r.attrs["name"], str)
    assert r.attrs["seed"] == 7 and isinstance(r.attrs["seed"], int)
    assert r.attrs["backend"] == "sim"
    assert r.attrs["scenario"].startswith('name = "ping"')
    assert r.attrs["run_seconds"] == 120.0
    assert r.counters["ping.ok"] == 150
    assert r.series["ping.rtt_ns"].dtype == np.float64
    np.testing.assert_array_equal(r.series["ping.rtt_ns"], rtt)
    assert r.series["empty"].size == 0
    assert r.cost == {"us_per_message": 12.5}
    assert r.success_rates() == {"ping": 0.75, "dht.get": 0.9}
    # no cost figure: transport counters / peers / minutes
    assert r.bytes_per_peer_minute() == 48000 / 4 / 2
    assert r.messages_per_peer_minute() == 800 / 4 / 2


def test_empty_string_attribute_and_cost_figure_preferred(tmp_path):
    p = write_h5(tmp_path / "r.h5", backend="", counters={"transport.bytes_sent": 1},
                 cost={"bytes_per_peer_minute": 321.0})
    r = load_run(p)
    assert r.attrs["backend"] == " "
    assert r.bytes_per_peer_minute() == 321.0


def make_sweep(d, index=True):
    """2 churn values x 2 seeds (+ dht.k varying), one unfinished and one missing entry."""
    d.mkdir()
    entries = []
    for session, ok in (("10min", (80, 90)), ("2h", (99, 97))):
        for seed, n_ok in zip((1, 2), ok):
            name = f"s{session}-seed{seed}"
            base = 0 if seed == 1 else 3  # seed 1: 1,2,3 ms; seed 2: 4,5,6 ms
            write_h5(d / f"{name}.h5", name="dht", seed=seed, peers=10,
                     counters={"dht.get.issued": 100, "dht.get.ok": n_ok},
                     series={"dht.get.latency_ns": (np.arange(1, 4) + base) * MS})
            entries.append({"run": name, "file": f"{name}.h5", "seed": seed,
                            "params": {"dht.k": 20 if session == "10min" else 8,
                                       "churn.mean_session": session}, "status": "done"})
    entries.append({"run": "later", "file": "later.h5", "seed": 3, "params": {}, "status": "running"})
    entries.append({"run": "lost", "file": "lost.h5", "seed": 1, "params": {}, "status": "done"})
    if index:
        (d / "index.json").write_text(json.dumps(entries))
    return d


def test_load_sweep_with_index(tmp_path):
    df = load_sweep(make_sweep(tmp_path / "sw"))
    assert len(df) == 4
    assert df.attrs["params"] == ["dht.k", "churn.mean_session"]
    assert sorted(df.attrs["skipped"]) == ["later: status running", "lost: lost.h5 missing"]
    row = df.set_index("run").loc["s10min-seed2"]
    assert row["churn.mean_session"] == "10min" and row["dht.k"] == 20 and row["seed"] == 2
    assert row["dht.get.ok"] == 90
    assert row["dht.get.success"] == pytest.approx(0.9)
    assert row["dht.get.latency_ns.p50"] == 5 * MS
    assert row["dht.get.latency_ns.p95"] == 6 * MS
    assert row["dht.get.latency_ns.mean"] == pytest.approx(5 * MS)
    assert row["dht.get.latency_ns.count"] == 3


def test_load_sweep_without_index(tmp_path):
    df = load_sweep(make_sweep(tmp_path / "sw", index=False))
    assert sorted(df["run"]) == ["s10min-seed1", "s10min-seed2", "s2h-seed1", "s2h-seed2"]
    assert df.attrs["params"] == []
    assert "churn.mean_session" not in df.columns
    assert set(df["seed"]) == {1, 2}  # from the files' attributes


def test_load_sweep_selected_series(tmp_path):
    df = load_sweep(make_sweep(tmp_path / "sw"), series=["nope"])
    assert not any(c.startswith("dht.get.latency_ns.") for c in df.columns)


# ---- report ------------------------------------------------------------------------------

def test_report_single_run(tmp_path):
    p = write_h5(tmp_path / "one.h5", peers=10, run_seconds=120.0,
                 counters={"ping.sent": 8, "ping.ok": 6, "transport.bytes_sent": 120000,
                           "transport.messages_sent": 600},
                 series={"ping.rtt_ns": [50 * MS, 10 * MS, 40 * MS, 20 * MS, 30 * MS],
                         "dht.get.hops": [1, 2, 3]})
    out = tmp_path / "rep"
    r = report([p], out)
    assert r["figures"] == ["cdf-ping.rtt_ns.png", "traffic-per-peer.png"]
    for f in r["figures"]:
        assert png_ok(out / f)
    md = (out / "summary.md").read_text()
    # mean 30, p50 = 3rd of 5 = 30, p95 = p99 = 5th = 50 (ms)
    assert "| one | `ping.rtt_ns` | ms | 5 | 30.00 | 30.00 | 50.00 | 50.00 |" in md
    assert "| one | `dht.get.hops` | – | 3 | 2.00 | 2.00 | 3.00 | 3.00 |" in md
    assert "| one | 1 | 75.00% |" in md
    # 120000 B / 10 peers / 2 min = 6 KB; 600 / 10 / 2 = 30 messages
    assert "| one | 6.00 | 30.00 |" in md
    assert "![cdf-ping.rtt_ns.png](cdf-ping.rtt_ns.png)" in md
    assert "- variance vs round: no `avg.round.variance` series" in md
    assert "success rate vs parameter: no swept parameter" in md
    assert "throughput vs latency" in md.split("## Not drawn")[1]


def test_report_sweep_pools_seeds_and_plots_against_churn(tmp_path):
    sweep = make_sweep(tmp_path / "sw")
    out = tmp_path / "rep"
    r = report([sweep], out)
    assert "success-vs-churn.mean_session.png" in r["figures"]  # churn preferred over dht.k
    assert "cdf-dht.get.latency_ns.png" in r["figures"]
    assert png_ok(out / "success-vs-churn.mean_session.png")
    md = (out / "summary.md").read_text()
    label = "dht.k=20, churn.mean_session=10min"
    # seeds pooled: 1..6 ms, p50 = 3rd of 6 = 3 ms (not the mean of per-seed medians, 3.5)
    assert f"| {label} | `dht.get.latency_ns` | ms | 6 | 3.50 | 3.00 | 6.00 | 6.00 |" in md
    assert f"| {label} | 2 | 85.00% |" in md
    assert "| dht.k=8, churn.mean_session=2h | 2 | 98.00% |" in md
    assert "later: status running" in md and "lost: lost.h5 missing" in md


def test_report_variance_and_throughput(tmp_path):
    d = tmp_path / "sw"
    d.mkdir()
    entries = []
    for i, lat in enumerate(("10ms", "50ms", "100ms")):
        write_h5(d / f"r{i}.h5", counters={"avg.rounds": 4},
                 series={"avg.round.variance": [1.0, 0.1, 0.01, 0.001],
                         "avg.round.bytes_per_peer": [1000.0, 2000.0]},
                 cost={"samples_per_second": 100.0 / (i + 1)})
        entries.append({"run": f"r{i}", "file": f"r{i}.h5", "seed": 1,
                        "params": {"network.latency": lat}, "status": "done"})
    (d / "index.json").write_text(json.dumps(entries))
    r = report([d], tmp_path / "rep")
    assert {"variance-vs-round.png", "throughput-vs-latency.png", "traffic-per-peer.png"} <= set(r["figures"])
    assert not [s for s in r["skipped"] if s.startswith(("variance", "throughput"))]
    assert all(png_ok(tmp_path / "rep" / f) for f in r["figures"])


def test_report_skips_what_is_absent(tmp_path):
    p = write_h5(tmp_path / "bare.h5")
    r = report([p], tmp_path / "rep")
    assert r["figures"] == []
    assert len(r["skipped"]) == 5
    assert "None." in (tmp_path / "rep" / "summary.md").read_text()


def test_cli(tmp_path, capsys):
    p = write_h5(tmp_path / "one.h5", series={"ping.rtt_ns": [1 * MS]})
    assert main(["report", str(p), "--out", str(tmp_path / "rep")]) == 0
    assert (tmp_path / "rep" / "summary.md").exists()
    assert "cdf-ping.rtt_ns.png" in capsys.readouterr().out
    assert main(["table", str(p), "--csv", str(tmp_path / "t.csv")]) == 0
    assert "ping.rtt_ns.p50" in (tmp_path / "t.csv").read_text()
    assert main(["report", str(tmp_path / "missing.h5"), "--out", str(tmp_path / "x")]) == 2
