"""Command line: `python3 -m analysis report|table RESULTS...` (RESULTS: .h5 files, sweep directories)."""
import argparse
import sys
from pathlib import Path


def default_out(results) -> Path:
    """DIR/report for a single sweep directory, else out/report."""
    if len(results) == 1 and Path(results[0]).is_dir():
        return Path(results[0]) / "report"
    return Path("out/report")


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(prog="python3 -m analysis", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    rep = sub.add_parser("report", help="write PNG figures and summary.md")
    rep.add_argument("results", nargs="+", help=".h5 files and/or sweep directories")
    rep.add_argument("--out", type=Path, help="output directory (default: SWEEP/report or out/report)")
    tab = sub.add_parser("table", help="print one row per run (or write CSV)")
    tab.add_argument("results", nargs="+", help=".h5 files and/or sweep directories")
    tab.add_argument("--csv", type=Path, help="write the table to this CSV file instead")
    args = parser.parse_args(argv)

    from analysis.report import collect, report  # imports matplotlib: only when needed
    try:
        if args.command == "report":
            out = args.out or default_out(args.results)
            r = report(args.results, out)
            print(f"wrote {out / 'summary.md'} and {len(r['figures'])} figures: {', '.join(r['figures'])}")
            for s in r["skipped"]:
                print(f"  not drawn: {s}")
        else:
            from analysis.load import table
            runs, notes, _ = collect(args.results)
            df = table(runs)
            if args.csv:
                df.to_csv(args.csv, index=False)
            else:
                import pandas as pd
                with pd.option_context("display.max_columns", None, "display.width", 200):
                    print(df.T.to_string(header=False) if len(df) == 1 else df.to_string(index=False))
            for n in notes:
                print(f"note: {n}", file=sys.stderr)
    except (OSError, ValueError) as e:
        print(f"analysis: {e}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
