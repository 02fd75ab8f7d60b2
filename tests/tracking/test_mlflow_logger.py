"""RunTracker against a real SQLite store and a real `mlflow server` that goes down and comes back."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient
from PIL import Image

from vlm_rl.tracking.history import load_local_run, load_mlflow_run, read_metrics_jsonl
from vlm_rl.tracking.mlflow_logger import (
    MAX_PARAM_LENGTH,
    RunTracker,
    TrackingUnavailableWarning,
    flatten_params,
)
from vlm_rl.tracking.ui_links import APP_NAME, CLASSIC, app_registered, browse_lines, sweep_links


def test_flatten_params_nests_and_truncates():
    flat = flatten_params({"lora": {"r": 16, "targets": ["q", "v"]}, "long": "x" * 9000})
    assert flat["lora.r"] == "16"
    assert flat["lora.targets"] == '["q", "v"]'
    assert len(flat["long"]) == MAX_PARAM_LENGTH and flat["long"].endswith("...")


def test_sqlite_run_round_trip(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri, "exp", run_name="trial-a", local_dir=tmp_path / "run", tags={"team": "det"})
    tracker.log_params({"model": {"path": "tiny"}, "beta": 0.04})
    for step in range(3):
        tracker.log_metrics({"reward/total": 0.1 * step, "loss": 1.0 - 0.1 * step}, step=step)
    tracker.log_image(Image.new("RGB", (32, 16), "red"), "rollouts/step_2.png")
    tracker.log_dict({"a": 1}, "summary.json")
    tracker.set_tags({"health.status": "ok"})
    child = RunTracker(uri, "exp", run_name="child", local_dir=tmp_path / "child", parent_run_id=tracker.run_id)
    child.finish()
    tracker.finish()

    client = MlflowClient(uri)
    run = client.get_run(tracker.run_id)
    assert run.info.status == "FINISHED" and run.info.run_name == "trial-a"
    assert run.data.params == {"model.path": "tiny", "beta": "0.04"}
    assert run.data.tags["team"] == "det" and run.data.tags["health.status"] == "ok"
    history = client.get_metric_history(tracker.run_id, "reward/total")
    assert [(m.step, round(m.value, 6)) for m in history] == [(0, 0.0), (1, 0.1), (2, 0.2)]
    artifacts = {a.path for a in client.list_artifacts(tracker.run_id)}
    assert artifacts == {"rollouts", "summary.json"}
    assert [a.path for a in client.list_artifacts(tracker.run_id, "rollouts")] == ["rollouts/step_2.png"]
    # artifacts go to <local_dir>/mlartifacts of the experiment, not a Ray session folder
    experiment = client.get_experiment(run.info.experiment_id)
    assert experiment.artifact_location == (tmp_path / "run" / "mlartifacts").resolve().as_uri()
    assert client.get_run(child.run_id).data.tags["mlflow.parentRunId"] == tracker.run_id

    local = load_local_run(tmp_path / "run")
    assert local.name == "trial-a" and local.run_id == tracker.run_id
    assert local.params["beta"] == "0.04"
    assert local.metrics["loss"] == [(0, 1.0), (1, 0.9), (2, 0.8)]

    # the charts page leads with the headline curves: copies under "Key metrics/" in MLflow only
    copy = client.get_metric_history(tracker.run_id, "Key metrics/reward")
    assert [(m.step, m.value, m.timestamp) for m in copy] == [(m.step, m.value, m.timestamp) for m in history]
    assert set(run.data.metrics) == {"reward/total", "loss", "Key metrics/reward", "Key metrics/loss"}
    assert set(local.metrics) == {"reward/total", "loss"}  # metrics.jsonl: each metric once, its own name
    assert set(load_mlflow_run(tracker.run_id, uri).metrics) == {"reward/total", "loss"}  # readers skip copies
    _check_printed_links(uri, run.info.experiment_id, tracker.run_id)  # what a run / a sweep prints


def _check_printed_links(uri: str, experiment_id: str, run_id: str) -> None:
    """What a run (``browse_lines``) and a sweep (``links=sweep_links``) print for a run of a SQLite store
    (classic-UI links, and the `mlflow ui` command with the vlm-rl app when it is installed)."""
    run_lines = browse_lines(uri, run_id)
    sweep_lines = browse_lines(uri, run_id, links=sweep_links)
    for lines in (run_lines, sweep_lines):
        assert lines[0].startswith("Browse it:  mlflow ui") and lines[0].endswith(f"--backend-store-uri {uri}")
        assert (f"--app-name {APP_NAME}" in lines[0]) == app_registered()
        assert all(line.endswith(CLASSIC) for line in lines[1:]), lines  # every link opens the classic pages
    base = f"http://127.0.0.1:5000/#/experiments/{experiment_id}"
    assert f"  runs (trials):     {base}{CLASSIC}" in sweep_lines
    assert f"  sweep results:     {base}/runs/{run_id}/artifacts/sweep{CLASSIC}" in sweep_lines
    assert f"  rollout pictures:  {base}/runs/{run_id}/artifacts/rollouts{CLASSIC}" in run_lines
    assert browse_lines(uri, None) == []



def _free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start_server(store: Path, port: int, cwd: Path) -> subprocess.Popen:
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--backend-store-uri", f"sqlite:///{store}", "--host", "127.0.0.1",
         "--port", str(port), "--workers", "1"],
        cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )
    deadline = time.monotonic() + 180  # slow on a loaded 2-core CI box
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
                if response.status == 200:
                    return proc
        except OSError:
            time.sleep(0.3)
    _stop_server(proc)
    raise RuntimeError("mlflow server did not come up in 180 s")


def _stop_server(proc: subprocess.Popen) -> None:
    """Kill the server's process group at once: an outage, not a shutdown."""
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait(timeout=30)


def test_outage_keeps_training_and_backfills(tmp_path):
    store, port = tmp_path / "server.db", _free_port()
    uri = f"http://127.0.0.1:{port}"
    server = _start_server(store, port, tmp_path)
    try:
        tracker = RunTracker(uri, "outage", run_name="r", local_dir=tmp_path / "run", retry_seconds=0.5)
        assert tracker.run_url == f"{uri}/#/experiments/{tracker.experiment_id}/runs/{tracker.run_id}"
        for step in range(3):
            tracker.log_metrics({"loss": float(step)}, step=step)
        assert tracker.healthy
    finally:
        _stop_server(server)

    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        for step in range(3, 8):
            started = time.monotonic()
            tracker.log_metrics({"loss": float(step)}, step=step)
            tracker.log_params({f"p{step}": step})
            assert time.monotonic() - started < 5.0  # no minutes of HTTP retries
    assert sum(issubclass(w.category, TrackingUnavailableWarning) for w in caught) == 1
    assert not tracker.healthy
    assert read_metrics_jsonl(tmp_path / "run" / "metrics.jsonl")["loss"] == [(s, float(s)) for s in range(8)]

    server = _start_server(store, port, tmp_path)
    try:
        time.sleep(0.6)  # past retry_seconds
        tracker.log_metrics({"loss": 8.0}, step=8)
        deadline = time.monotonic() + 30  # the first request after a restart may still be refused
        while not tracker.healthy and time.monotonic() < deadline:
            time.sleep(0.5)
            tracker.flush()
        assert tracker.healthy
        tracker.finish()
        client = MlflowClient(uri)
        history = client.get_metric_history(tracker.run_id, "loss")
        assert sorted((m.step, m.value) for m in history) == [(s, float(s)) for s in range(9)]
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        original_ts = {r["step"]: r["timestamp"] for r in rows}
        assert {m.step: m.timestamp for m in history} == original_ts  # back-filled with original timestamps
        assert client.get_run(tracker.run_id).data.params["p5"] == "5"
        assert client.get_run(tracker.run_id).info.status == "FINISHED"
    finally:
        _stop_server(server)


def test_unreachable_from_the_start_does_not_raise(tmp_path):
    port = _free_port()
    with pytest.warns(TrackingUnavailableWarning):
        tracker = RunTracker(f"http://127.0.0.1:{port}", "x", local_dir=tmp_path, retry_seconds=60)
    assert tracker.run_id is None and tracker.run_url is None
    tracker.log_metrics({"kl": 0.02}, step=1)
    tracker.finish()
    assert read_metrics_jsonl(tmp_path / "metrics.jsonl") == {"kl": [(1, 0.02)]}
