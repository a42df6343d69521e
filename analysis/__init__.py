"""Apiary's results analysis: load runs and sweeps from HDF5, write figures and summaries.

    from analysis import load_run, load_sweep
    run = load_run("out/quickstart-seed1.h5")       # attrs, counters, series, cost
    df = load_sweep("out/sweep-dht")                # one row per run

    python3 -m analysis report RESULTS... [--out DIR]
"""
from analysis.load import Run, load_run, load_sweep, load_sweep_runs, quantile, table, to_number

__all__ = ["Run", "load_run", "load_sweep", "load_sweep_runs", "quantile", "table", "to_number"]
