"""`vlm-rl eval`: detection metrics of a model (or LoRA adapter) on a JSONL, to a file, a table and MLflow."""

from __future__ import annotations

import argparse
import json
import os
from pathlib import Path
from typing import Any

NAME = "eval"
HELP = "evaluate a model or LoRA adapter on a detection JSONL (mAP, P/R/F1, format validity)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--model_path", "--model-path", required=True, help="model dir, TINY_MODELS name or LoRA adapter dir")
    parser.add_argument("--val_data", "--val-data", required=True, help="JSONL of {image, objects}")
    parser.add_argument("--max_image_size", "--max-image-size", type=int, default=448)
    parser.add_argument("--max_new_tokens", "--max-new-tokens", type=int, default=128)
    parser.add_argument("--batch_size", "--batch-size", type=int, default=8)
    parser.add_argument("--limit", type=int, default=None, help="evaluate the first N rows only")
    parser.add_argument("--output", default="outputs/eval/metrics.json", help="metrics JSON path")
    parser.add_argument("--predictions", default=None, help="per-image JSONL (default: <output dir>/predictions.jsonl)")
    parser.add_argument("--tracking_uri", "--tracking-uri", default=None,
                        help="MLflow URI (default: MLFLOW_TRACKING_URI when set, so the results land beside the "
                             "training runs, else sqlite:///<output dir>/mlflow.db)")
    parser.add_argument("--experiment", default=None, help="MLflow experiment name (default: the experiment of the "
                        "run whose checkpoint is evaluated, read from its folder's params.json; else vlm-rl)")
    parser.add_argument("--run_name", "--run-name", default=None, help="MLflow run name (default eval-<model>)")
    parser.add_argument("--no_mlflow", "--no-mlflow", action="store_true", help="write files only")
    parser.add_argument("--no_progress", "--no-progress", action="store_true", help="no progress bar")


def run(args: argparse.Namespace) -> int:
    from vlm_rl.data.schema import DatasetError
    from vlm_rl.eval.runner import run_evaluation

    output = Path(args.output)
    predictions = Path(args.predictions) if args.predictions else output.parent / "predictions.jsonl"
    try:
        result = run_evaluation(
            args.model_path, args.val_data, max_image_size=args.max_image_size, max_new_tokens=args.max_new_tokens,
            batch_size=args.batch_size, limit=args.limit, progress=not args.no_progress,
        )
    except (DatasetError, FileNotFoundError, ValueError) as exc:
        print(f"vlm-rl eval: {exc}")
        return 2
    output.parent.mkdir(parents=True, exist_ok=True)
    output.write_text(json.dumps(result.metrics, indent=2) + "\n")
    result.write_records(predictions)
    print_table(result.metrics)
    print(f"metrics:     {output}\npredictions: {predictions}")
    if not args.no_mlflow:
        run_id = log_to_mlflow(args, result.metrics, [output, predictions])
        print(f"MLflow run:  {run_id} ({tracking_uri(args, output)})")
    return 0


def tracking_uri(args: argparse.Namespace, output: Path) -> str:
    """Where the eval run is logged: ``--tracking_uri``, else MLFLOW_TRACKING_URI (the server the training runs log
    to, e.g. the local cluster's), else a SQLite store beside the metrics file."""
    return (args.tracking_uri or os.environ.get("MLFLOW_TRACKING_URI")
            or f"sqlite:///{output.parent.resolve() / 'mlflow.db'}")


def training_run(model_path: str) -> dict[str, str]:
    """The experiment and MLflow run id of the training run a checkpoint belongs to (its run folder's params.json
    and tags.json, one level up), so the eval run lands next to it; {} for anything else."""
    path = Path(str(model_path))
    found: dict[str, str] = {}
    if not path.is_dir():
        return found
    folder = path.resolve().parent
    try:
        params = json.loads((folder / "params.json").read_text())
        tags = json.loads((folder / "tags.json").read_text())
    except (OSError, ValueError):
        return found
    if isinstance(params, dict) and params.get("experiment_name"):
        found["experiment"] = str(params["experiment_name"])
    if isinstance(tags, dict) and tags.get("mlflow.runId"):
        found["run_id"] = str(tags["mlflow.runId"])
    return found


def log_to_mlflow(args: argparse.Namespace, metrics: dict[str, Any], artifacts: list[Path]) -> str | None:
    """One MLflow run with MLflow-safe metric names (``eval/mAP_50``, ...), the params and the files."""
    from vlm_rl.eval.metrics import mlflow_metrics
    from vlm_rl.tracking.mlflow_logger import RunTracker

    output = Path(args.output)
    uri = tracking_uri(args, output)
    artifact_location = None
    if uri.startswith("sqlite:///"):  # artifacts beside the store, like the training runs
        artifact_location = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    run_name = args.run_name or f"eval-{Path(str(args.model_path).rstrip('/')).name}"
    source = training_run(args.model_path)
    tags = {"vlm_rl.algorithm": "eval"}
    if source.get("run_id"):
        tags["vlm_rl.evaluated_run_id"] = source["run_id"]
    tracker = RunTracker(
        uri, args.experiment or source.get("experiment") or "vlm-rl", run_name=run_name,
        artifact_location=artifact_location, local_dir=output.parent / "tracking", tags=tags,
    )
    try:
        tracker.log_params({
            "model_path": str(args.model_path), "val_data": str(args.val_data), "max_image_size": args.max_image_size,
            "max_new_tokens": args.max_new_tokens, "limit": args.limit, "model_family": metrics.get("model_family"),
        })
        tracker.log_metrics(mlflow_metrics(metrics), step=0)
        for path in artifacts:
            tracker.log_artifact(path, "eval")
    finally:
        tracker.finish()
    return tracker.run_id


def print_table(metrics: dict[str, Any]) -> None:
    """Overall and per-class metrics as a rich table."""
    from rich.console import Console
    from rich.table import Table

    table = Table(title=f"detection metrics ({metrics['n_images']} images, {metrics['n_gt']} objects)")
    for column in ("class", "AP50", "AP", "precision", "recall", "F1", "n_gt"):
        table.add_column(column, justify="left" if column == "class" else "right")
    for label, c in metrics["per_class"].items():
        table.add_row(label, *(f"{c[k]:.3f}" for k in ("ap50", "ap", "precision", "recall", "f1")), str(c["n_gt"]))
    table.add_row(
        "[bold]all[/bold]", f"{metrics['mAP@0.5']:.3f}", f"{metrics['mAP@[.5:.95]']:.3f}",
        *(f"{metrics[k]:.3f}" for k in ("precision", "recall", "f1")), str(metrics["n_gt"]),
    )
    console = Console()
    console.print(table)
    console.print(f"format valid: {metrics['format_valid_rate']:.1%} of answers parsed")
