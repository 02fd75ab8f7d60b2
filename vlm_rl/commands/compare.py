"""`vlm-rl compare`: one HTML page with the curves and a summary table of several runs.

Takes the habits of ``compare_training_logs.py --logs A B --output comparison/ --html`` too: ``--logs`` names
the runs like the positional arguments, ``--html`` is accepted (the report is always HTML), an ``--output``
that is a folder writes ``<folder>/comparison.html``, and a run given twice is listed once.
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path

from vlm_rl.reports.compare import write_report
from vlm_rl.tracking.history import RunNotFoundError

NAME = "compare"
HELP = "compare runs (MLflow run ids, metrics.jsonl files or run directories) in one HTML report"
#: The file written into an --output folder (what compare_training_logs.py users find there).
FOLDER_REPORT = "comparison.html"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("runs", nargs="*", metavar="RUN", help="MLflow run id, metrics.jsonl, or run directory")
    parser.add_argument("--logs", nargs="+", action="extend", default=[], metavar="RUN",
                        help="the runs, as compare_training_logs.py takes them (same as the positional RUNs)")
    parser.add_argument("--output", default="report.html",
                        help="HTML file to write (default report.html); a folder (an existing one, a path ending "
                             f"in '/', or a name without .html) gets {FOLDER_REPORT} inside it")
    parser.add_argument("--html", action="store_true", help="accepted for compare_training_logs.py habits: the "
                        "report is always one self-contained HTML page")
    parser.add_argument("--tracking-uri", help="MLflow tracking URI for run ids (default: MLFLOW_TRACKING_URI)")


def output_path(output: str) -> Path:
    """The report file for ``--output``: the path itself when it names an .html/.htm file, else
    ``<output>/comparison.html`` (an existing folder, a trailing slash, or a name without an HTML suffix).

    >>> str(output_path("report.html")), str(output_path("comparison/")), str(output_path("out/cmp"))
    ('report.html', 'comparison/comparison.html', 'out/cmp/comparison.html')
    """
    path = Path(output)
    if output.endswith(("/", os.sep)) or path.is_dir() or path.suffix.lower() not in (".html", ".htm"):
        return path / FOLDER_REPORT
    return path


def _identity(ref: str) -> str:
    """What makes two RUN arguments the same run: a local run's metrics.jsonl (a folder, the folder with a
    trailing slash and its metrics.jsonl are one run), else the run id."""
    path = Path(ref)
    if path.exists():
        return str((path / "metrics.jsonl" if path.is_dir() else path).resolve())
    return ref.strip()


def unique_runs(refs: list[str]) -> tuple[list[str], list[str]]:
    """``refs`` without repeats, first spelling kept, in order; and the repeats left out."""
    seen: set[str] = set()
    kept, repeats = [], []
    for ref in refs:
        key = _identity(ref)
        if key in seen:
            repeats.append(ref)
        else:
            seen.add(key)
            kept.append(ref)
    return kept, repeats


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
    runs, repeats = unique_runs([*args.runs, *args.logs])
    if not runs:
        print("vlm-rl compare: no runs given: name them as arguments or after --logs")
        return 2
    if repeats:
        print(f"vlm-rl compare: listed once: {', '.join(repeats)} (given more than once)")
    problem = store_problem(runs, args.tracking_uri)
    if problem:
        print(f"vlm-rl compare: {problem}")
        return 2
    try:
        path = write_report(runs, output_path(args.output), args.tracking_uri)
    except (RunNotFoundError, ValueError) as exc:
        print(f"vlm-rl compare: {exc}")
        return 2
    print(f"wrote {path}")
    return 0
