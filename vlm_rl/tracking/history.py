"""Read a finished run back: from MLflow (by run id) or from the RunTracker's local files.

Kept in ``tracking`` because it is the only package that imports MLflow; ``reports`` consumes the
plain :class:`RunHistory` it returns.
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass, field
from pathlib import Path

from vlm_rl.tracking.ui_links import is_headline_copy

#: ``name -> [(step, value), ...]`` sorted by step.
Series = dict[str, list[tuple[int, float]]]


class RunNotFoundError(ValueError):
    """A RUN argument is neither a metrics file, a run directory, nor an MLflow run id."""


@dataclass
class RunHistory:
    """What a report needs of one run."""

    run_id: str
    name: str
    source: str
    metrics: Series = field(default_factory=dict)
    params: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)


def read_metrics_jsonl(path: str | os.PathLike) -> Series:
    """Parse the RunTracker's ``metrics.jsonl`` (``{step, name, value, timestamp}`` per line).

    A torn last line (a run killed while writing) is ignored; any other bad line raises with
    ``file:line``.
    """
    path = Path(path)
    series: Series = {}
    lines = path.read_text().splitlines()
    for number, line in enumerate(lines, start=1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            series.setdefault(str(row["name"]), []).append((int(row["step"]), float(row["value"])))
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as exc:
            if number == len(lines):
                break
            raise ValueError(f"{path}:{number}: bad metrics row ({exc}): {line[:120]}") from exc
    return {name: sorted(points) for name, points in series.items()}


def _read_json(path: Path) -> dict[str, str]:
    return {str(k): str(v) for k, v in json.loads(path.read_text()).items()} if path.exists() else {}


def load_local_run(path: str | os.PathLike) -> RunHistory:
    """A ``metrics.jsonl`` file or a run directory holding one (plus params.json / tags.json)."""
    path = Path(path)
    metrics_file = path / "metrics.jsonl" if path.is_dir() else path
    if not metrics_file.is_file():
        raise RunNotFoundError(f"{path}: no metrics.jsonl here")
    folder = metrics_file.parent
    tags = _read_json(folder / "tags.json")
    name = tags.get("mlflow.runName") or (folder.name if path.is_dir() or folder.name else str(path))
    return RunHistory(
        run_id=tags.get("mlflow.runId", str(folder)),
        name=name,
        source=str(metrics_file),
        metrics=read_metrics_jsonl(metrics_file),
        params=_read_json(folder / "params.json"),
        tags=tags,
    )


def load_mlflow_run(run_id: str, tracking_uri: str | None = None) -> RunHistory:
    """Metric histories, params and tags of one MLflow run via ``MlflowClient``."""
    from mlflow.exceptions import MlflowException
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri)
    try:
        run = client.get_run(run_id)
    except MlflowException as exc:
        raise RunNotFoundError(f"{run_id}: not a file, directory, or run in {tracking_uri or 'MLflow'}: {exc}") from exc
    metrics: Series = {}
    for key in run.data.metrics:
        if is_headline_copy(key):  # the charts page's copy of a metric read under its own name
            continue
        metrics[key] = sorted((int(m.step), float(m.value)) for m in client.get_metric_history(run_id, key))
    return RunHistory(
        run_id=run.info.run_id,
        name=run.info.run_name or run.info.run_id,
        source=f"{tracking_uri or 'mlflow'}#{run_id}",
        metrics=metrics,
        params=dict(run.data.params),
        tags=dict(run.data.tags),
    )


def load_run(ref: str, tracking_uri: str | None = None) -> RunHistory:
    """Resolve a RUN argument: an existing path is read locally, anything else is an MLflow run id."""
    if Path(ref).exists():
        return load_local_run(ref)
    return load_mlflow_run(ref, tracking_uri)
