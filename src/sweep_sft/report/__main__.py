"""`python -m sweep_sft.report SWEEP`: write a sweep's report as one self-contained HTML file."""

from __future__ import annotations

import argparse
import sys

from sweep_sft.report.data import ReportInputError
from sweep_sft.report.html import write_report


def main(argv: list[str] | None = None) -> int:
    """The command: write the report, print its path; exit status 2 on input that is no sweep."""
    parser = argparse.ArgumentParser(
        prog="python -m sweep_sft.report", description="Write a sweep's report as one self-contained HTML file."
    )
    parser.add_argument("sweep", help="a sweep folder (hydra.sweep.dir) or the MLflow run id of a sweep's parent run")
    parser.add_argument(
        "--tracking-uri", help="where the parent run is (default: $MLFLOW_TRACKING_URI, else sqlite:///./mlflow.db)"
    )
    parser.add_argument("--out", help="the HTML file to write (default: report.html in the sweep folder)")
    args = parser.parse_args(argv)
    try:
        path = write_report(args.sweep, args.out, args.tracking_uri)
    except ReportInputError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    print(path)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
