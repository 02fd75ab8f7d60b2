"""`vlm-rl compare`: one HTML page with the curves and a summary table of several runs."""

from __future__ import annotations

import argparse

from vlm_rl.reports.compare import write_report
from vlm_rl.tracking.history import RunNotFoundError

NAME = "compare"
HELP = "compare runs (MLflow run ids, metrics.jsonl files or run directories) in one HTML report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="MLflow run id, metrics.jsonl, or run directory")
    parser.add_argument("--output", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids (default: MLFLOW_TRACKING_URI)")


def run(args: argparse.Namespace) -> int:
    try:
        path = write_report(args.runs, args.output, args.tracking_uri)
    except (RunNotFoundError, ValueError) as exc:
        print(f"vlm-rl compare: {exc}")
        return 2
    print(f"wrote {path}")
    return 0
