"""MLflow logging for one training run that never stops training.

Every metric goes to ``<local_dir>/metrics.jsonl`` first (the record of truth); MLflow is a mirror.
When MLflow is unreachable or a call raises, the tracker warns once, queues what it could not send,
retries at most every ``retry_seconds``, and on recovery back-fills the queued metrics with their
original steps and timestamps. It talks to MLflow through ``MlflowClient`` with explicit run ids,
never the fluent global run, so several runs (Ray Tune trials) can live in one process.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
import warnings
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any, TypeVar

from rich.console import Console

from vlm_rl.tracking.ui_links import EXPERIMENT_KIND, EXPERIMENT_KIND_TAG, HEADLINE_METRICS, HEADLINE_SECTION

#: MLflow's limit on a parameter value (mlflow.utils.validation.MAX_PARAM_VAL_LENGTH).
MAX_PARAM_LENGTH = 6000
#: Metrics per ``log_batch`` request (MLflow accepts at most 1000).
BATCH_SIZE = 1000
#: For http tracking URIs: fail fast instead of retrying with exponential backoff for minutes.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_TIMEOUT": "5",
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "0",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "0",
    # MLflow's own "View run/experiment at" lines link the GenAI pages; ours (tracking/ui_links.py) the classic ones
    "MLFLOW_SUPPRESS_PRINTING_URL_TO_STDOUT": "true",
}

#: A training experiment, not a GenAI one: MLflow's UI then opens its runs table (see tracking/ui_links.py).
CLASSIC_EXPERIMENT_TAGS = {EXPERIMENT_KIND_TAG: EXPERIMENT_KIND}

_console = Console(stderr=True)
T = TypeVar("T")


class TrackingUnavailableWarning(RuntimeWarning):
    """MLflow could not be reached; training goes on and metrics.jsonl keeps everything."""


def flatten_params(params: Mapping[str, Any], prefix: str = "") -> dict[str, str]:
    """Flatten nested dicts to ``a.b`` keys and stringify values, truncated to MLflow's limit.

    >>> flatten_params({"lora": {"r": 16}, "name": "x" * 7000})["lora.r"]
    '16'
    """
    flat: dict[str, str] = {}
    for key, value in params.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            flat.update(flatten_params(value, prefix=f"{name}."))
            continue
        text = json.dumps(value) if isinstance(value, (list, tuple)) else str(value)
        if len(text) > MAX_PARAM_LENGTH:
            text = text[: MAX_PARAM_LENGTH - 3] + "..."
        flat[name] = text
    return flat


def default_tracking_uri(local_dir: str | os.PathLike) -> str:
    return f"sqlite:///{Path(local_dir).resolve() / 'mlflow.db'}"


class RunTracker:
    """One MLflow run, resilient to tracking-server outages (see module docstring)."""

    def __init__(
        self,
        tracking_uri: str | None,
        experiment_name: str,
        run_name: str | None = None,
        artifact_location: str | None = None,
        local_dir: str | os.PathLike = "outputs/run",
        parent_run_id: str | None = None,
        tags: Mapping[str, str] | None = None,
        run_id: str | None = None,
        retry_seconds: float = 30.0,
        headline_metrics: Mapping[str, str] = HEADLINE_METRICS,
    ) -> None:
        self.local_dir = Path(local_dir).resolve()
        self.local_dir.mkdir(parents=True, exist_ok=True)
        self.metrics_path = self.local_dir / "metrics.jsonl"
        self.tracking_uri = tracking_uri or default_tracking_uri(self.local_dir)
        remote = self.tracking_uri.startswith(("http://", "https://"))
        if remote:
            for key, value in HTTP_ENV_DEFAULTS.items():
                os.environ.setdefault(key, value)
        self.experiment_name = experiment_name
        self.run_name = run_name
        # A tracking server keeps a new experiment's artifacts where it is told to (--artifacts-destination,
        # proxied): a path on this worker's disk would be unreadable from the server's UI on another machine.
        self.artifact_location = artifact_location or (None if remote else (self.local_dir / "mlartifacts").as_uri())
        self.parent_run_id = parent_run_id
        self.retry_seconds = retry_seconds
        self.headline_metrics = dict(headline_metrics)
        self._tags = {str(k): str(v) for k, v in (tags or {}).items()}
        self._run_id = run_id
        self._experiment_id: str | None = None
        self._pending_metrics: list[Any] = []  # mlflow.entities.Metric not yet in MLflow
        self._pending_params: dict[str, str] = {}
        self._pending_tags: dict[str, str] = {}
        self._pending_artifacts: list[tuple[str, str | None]] = []
        self._down_since: float | None = None
        self._last_attempt = 0.0
        self._warned = False
        self._finished = False

        from mlflow.tracking import MlflowClient

        self._client = MlflowClient(tracking_uri=self.tracking_uri)
        if run_name:
            self._merge_json("tags.json", {"mlflow.runName": run_name})
        self._call(self._start_run)

    # ------------------------------------------------------------------ identity
    @property
    def run_id(self) -> str | None:
        """The MLflow run id; None while MLflow has not been reachable since the start."""
        return self._run_id

    @property
    def experiment_id(self) -> str | None:
        return self._experiment_id

    @property
    def run_url(self) -> str | None:
        """Browser link for an http tracking server, else None."""
        if not (self.tracking_uri.startswith(("http://", "https://")) and self._run_id):
            return None
        return f"{self.tracking_uri.rstrip('/')}/#/experiments/{self._experiment_id}/runs/{self._run_id}"

    @property
    def healthy(self) -> bool:
        """True when the last MLflow call succeeded and nothing is waiting to be sent."""
        return self._down_since is None and not self._has_pending()

    # ------------------------------------------------------------------ logging API
    def log_params(self, params: Mapping[str, Any]) -> None:
        flat = flatten_params(params)
        self._merge_json("params.json", flat)
        self._pending_params.update(flat)
        self._flush()

    def set_tags(self, tags: Mapping[str, Any]) -> None:
        clean = {str(k): str(v) for k, v in tags.items()}
        self._merge_json("tags.json", clean)
        self._pending_tags.update(clean)
        self._flush()

    def log_metrics(self, metrics: Mapping[str, float], step: int) -> None:
        """Append to metrics.jsonl, then mirror to MLflow (queued while it is down), where the headline
        metrics also go under ``Key metrics/`` so that the run's charts page leads with them."""
        from mlflow.entities import Metric

        now = int(time.time() * 1000)
        rows = [(str(k), float(v)) for k, v in metrics.items() if v is not None]
        with self.metrics_path.open("a") as f:
            for name, value in rows:
                f.write(json.dumps({"step": int(step), "name": name, "value": value, "timestamp": now}) + "\n")
        self._pending_metrics.extend(Metric(name, value, now, int(step)) for name, value in rows)
        # copies that put the headline curves first on MLflow's charts page (see ui_links.HEADLINE_METRICS);
        # MLflow only: metrics.jsonl keeps each metric once, under its own name
        self._pending_metrics.extend(
            Metric(f"{HEADLINE_SECTION}/{self.headline_metrics[name]}", value, now, int(step))
            for name, value in rows if name in self.headline_metrics
        )
        self._flush()

    def log_artifact(self, path: str | os.PathLike, artifact_path: str | None = None) -> None:
        self._pending_artifacts.append((str(Path(path).resolve()), artifact_path))
        self._flush()

    def log_image(self, image: Any, artifact_file: str) -> None:
        """Save a PIL image under ``<local_dir>/artifacts/`` and upload it as ``artifact_file``."""
        local = self._local_artifact(artifact_file)
        image.save(local)
        self.log_artifact(local, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def log_figure(self, figure: Any, artifact_file: str) -> None:
        local = self._local_artifact(artifact_file)
        figure.savefig(local, dpi=100, bbox_inches="tight")
        self.log_artifact(local, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def log_dict(self, dictionary: Mapping[str, Any], artifact_file: str) -> None:
        local = self._local_artifact(artifact_file)
        local.write_text(json.dumps(dictionary, indent=2, default=str))
        self.log_artifact(local, str(Path(artifact_file).parent) if Path(artifact_file).parent.name else None)

    def flush(self) -> bool:
        """Try to send everything queued now (ignoring the retry interval); True when all went."""
        self._last_attempt = 0.0
        self._flush()
        return self.healthy

    def finish(self, status: str = "FINISHED", wait_seconds: float = 0.0) -> None:
        """Send what is queued and close the run; never raises.

        ``wait_seconds``: while MLflow is unreachable, keep retrying this long before giving up, so a
        server back within that time still receives the whole run (metrics.jsonl has it either way).
        """
        if self._finished:
            return
        deadline = time.monotonic() + wait_seconds
        while not self.flush() and time.monotonic() < deadline:
            time.sleep(min(5.0, max(0.0, deadline - time.monotonic())))
        if self._call(lambda: self._client.set_terminated(self._require_run(), status=status)) is not None:
            self._finished = True

    def __enter__(self) -> RunTracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.finish("FAILED" if exc_type else "FINISHED")

    # ------------------------------------------------------------------ internals
    def _start_run(self) -> bool:
        from mlflow.exceptions import MlflowException

        if self._run_id is not None:
            run = self._client.get_run(self._run_id)
            self._experiment_id = run.info.experiment_id
            if run.info.status != "RUNNING":
                self._client.update_run(self._run_id, status="RUNNING")
            return True
        experiment = self._client.get_experiment_by_name(self.experiment_name)
        if experiment is None:
            try:
                self._experiment_id = self._client.create_experiment(
                    self.experiment_name, artifact_location=self.artifact_location, tags=CLASSIC_EXPERIMENT_TAGS
                )
            except MlflowException:  # another trial created it first
                experiment = self._client.get_experiment_by_name(self.experiment_name)
                if experiment is None:
                    raise
        if experiment is not None:
            self._experiment_id = experiment.experiment_id
        tags = dict(self._tags)
        if self.parent_run_id:
            tags["mlflow.parentRunId"] = self.parent_run_id
        run = self._client.create_run(self._experiment_id, run_name=self.run_name, tags=tags)
        self._run_id = run.info.run_id
        self._merge_json("tags.json", {"mlflow.runId": run.info.run_id, "mlflow.runName": run.info.run_name or ""})
        return True

    def _require_run(self) -> str:
        if self._run_id is None:
            self._start_run()
        assert self._run_id is not None
        return self._run_id

    def _has_pending(self) -> bool:
        return bool(self._pending_metrics or self._pending_params or self._pending_tags or self._pending_artifacts)

    def _flush(self) -> None:
        if self._down_since is not None and time.monotonic() - self._last_attempt < self.retry_seconds:
            return
        was_down = self._down_since is not None
        backlog = len(self._pending_metrics)
        if self._call(self._send_pending) is None:
            return
        if was_down:
            _console.print(
                f"[green]MLflow reachable again[/green] ({self.tracking_uri}); back-filled {backlog} metrics"
            )

    def _send_pending(self) -> bool:
        run_id = self._require_run()
        if self._pending_params:
            from mlflow.entities import Param

            params = [Param(k, v) for k, v in self._pending_params.items()]
            for i in range(0, len(params), 100):
                self._client.log_batch(run_id, params=params[i : i + 100], synchronous=True)
            self._pending_params.clear()
        if self._pending_tags:
            from mlflow.entities import RunTag

            self._client.log_batch(
                run_id, tags=[RunTag(k, v) for k, v in self._pending_tags.items()], synchronous=True
            )
            self._pending_tags.clear()
        while self._pending_metrics:
            chunk = self._pending_metrics[:BATCH_SIZE]
            self._client.log_batch(run_id, metrics=chunk, synchronous=True)
            del self._pending_metrics[: len(chunk)]
        while self._pending_artifacts:
            path, artifact_path = self._pending_artifacts[0]
            if Path(path).exists():
                self._client.log_artifact(run_id, path, artifact_path)
            self._pending_artifacts.pop(0)
        return True

    def _call(self, fn: Callable[[], T]) -> T | None:
        """Run one MLflow call; on failure record the outage, warn once, and return None."""
        self._last_attempt = time.monotonic()
        try:
            result = fn()
        except Exception as exc:  # any MLflow/network failure must not stop training
            if self._down_since is None:
                self._down_since = time.monotonic()
            if not self._warned:
                self._warned = True
                message = (
                    f"MLflow unavailable at {self.tracking_uri} ({type(exc).__name__}: {str(exc)[:200]}); "
                    f"training continues, metrics go to {self.metrics_path}, retrying every "
                    f"{self.retry_seconds:.0f}s"
                )
                _console.print(f"[yellow]warning:[/yellow] {message}")
                warnings.warn(message, TrackingUnavailableWarning, stacklevel=3)
            return None
        self._down_since = None
        self._warned = False
        return result

    def _local_artifact(self, artifact_file: str) -> Path:
        path = self.local_dir / "artifacts" / artifact_file
        path.parent.mkdir(parents=True, exist_ok=True)
        return path

    def _merge_json(self, name: str, values: Mapping[str, str]) -> None:
        """Keep params/tags next to metrics.jsonl so a run can be compared without MLflow."""
        path = self.local_dir / name
        current = json.loads(path.read_text()) if path.exists() else {}
        current.update(values)
        fd, tmp = tempfile.mkstemp(dir=self.local_dir, suffix=".tmp")
        with os.fdopen(fd, "w") as f:
            json.dump(current, f, indent=1, sort_keys=True)
        os.replace(tmp, path)
