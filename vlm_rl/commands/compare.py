"""`vlm-rl compare`: one HTML page with the curves and a summary table of several runs."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlm_rl.reports.compare import write_report
from vlm_rl.tracking.history import RunNotFoundError

NAME = "compare"
HELP = "compare runs (MLflow run ids, metrics.jsonl files or run directories) in one HTML report"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="+", metavar="RUN", help="MLflow run id, metrics.jsonl, or run directory")
    parser.add_argument("--output", default="report.html", help="HTML file to write (default report.html)")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids (default: MLFLOW_TRACKING_URI)")


def store_problem(runs: list[str], tracking_uri: str | None) -> str | None:
    """Why run ids cannot be looked up, before MLflow silently creates an empty ./mlflow.db; else None."""
    ids = [r for r in runs if not Path(r).exists()]
    if not ids:
        return None
    uri = tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
    if not uri:
        found = sorted(str(p.resolve()) for p in Path(".").glob("outputs/**/mlflow.db"))[:3]
        hint = "".join(f"\n  --tracking-uri sqlite:///{p}" for p in found)
        return (f"{ids[0]}: not a file or directory, so an MLflow run id; say which store holds it with "
                f"--tracking-uri (or MLFLOW_TRACKING_URI), e.g. the sqlite:///.../mlflow.db the demo printed"
                + (f"; found here:{hint}" if hint else ""))
    if uri.startswith("sqlite:///") and not Path(uri.removeprefix("sqlite:///")).is_file():
        return f"{ids[0]}: not a file, directory, or run in {uri}: no MLflow store at {uri.removeprefix('sqlite:///')}"
    return None


def run(args: argparse.Namespace) -> int:
    problem = store_problem(args.runs, args.tracking_uri)
    if problem:
        print(f"vlm-rl compare: {problem}")
        return 2
    try:
        path = write_report(args.runs, args.output, args.tracking_uri)
    except (RunNotFoundError, ValueError) as exc:
        print(f"vlm-rl compare: {exc}")
        return 2
    print(f"wrote {path}")
    return 0
