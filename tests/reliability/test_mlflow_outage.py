"""A real `mlflow server` killed in the middle of a real GRPO run, then started again: training never stops,
metrics.jsonl keeps every step, a warning is shown, and MLflow is back-filled once it answers."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

from tests.reliability.conftest import Background, grpo_config, logged_steps, record
from vlm_rl.grpo.job import run_grpo

pytestmark = pytest.mark.slow
STEPS = 8  # long enough for the restarted server to answer before the run ends


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def start_server(store: Path, port: int) -> subprocess.Popen:
    return subprocess.Popen(
        [str(Path(sys.executable).parent / "mlflow"), "server", "--backend-store-uri", f"sqlite:///{store}",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        cwd=store.parent, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
    )


def answers(port: int) -> bool:
    try:
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1) as response:
            return response.status == 200
    except OSError:
        return False


def wait_until(predicate, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.3)


def kill(server: subprocess.Popen) -> None:
    """An outage, not a shutdown: SIGKILL the server's own process group."""
    os.killpg(server.pid, signal.SIGKILL)
    server.wait(timeout=30)


def test_training_survives_an_mlflow_outage(ray_cluster, tmp_path, capfd):
    store, port = tmp_path / "server.db", free_port()
    server = start_server(store, port)
    try:
        wait_until(lambda: answers(port), 180, "mlflow server")
        out = tmp_path / "run"
        run = Background(run_grpo, grpo_config(out, num_steps=STEPS, tracking_uri=f"http://127.0.0.1:{port}"))
        run.wait_for(lambda: 1 in logged_steps(out), 300, "step 1")
        kill(server)
        # Start it again at once: it needs several seconds before it answers (the outage), during which the
        # step-1 checkpoint and step 2 try to log; the sooner it is back, the surer the back-fill before the end.
        server = start_server(store, port)
        log = ""

        def warned() -> bool:  # the learner's warning, forwarded by Ray to this process's output
            nonlocal log
            captured = capfd.readouterr()
            log += captured.out + captured.err
            return f"MLflow unavailable at http://127.0.0.1:{port}" in log

        run.wait_for(warned, 300, "the tracker's outage warning")
        outage_steps = logged_steps(out)
        summary = run.join(600)
        wait_until(lambda: answers(port), 180, "restarted mlflow server")
    finally:
        kill(server)

    assert summary["steps"] == STEPS and len(outage_steps) < STEPS
    assert logged_steps(out) == list(range(1, STEPS + 1))  # metrics.jsonl: every step, once
    captured = capfd.readouterr()
    log += captured.out + captured.err
    assert "training continues" in log
    assert "MLflow reachable again" in log, [line for line in log.splitlines() if "MLflow" in line or "mlflow" in line]
    server = start_server(store, port)  # read back what reached the store
    try:
        wait_until(lambda: answers(port), 180, "mlflow server for reading")
        client = MlflowClient(f"http://127.0.0.1:{port}")
        run_info = client.get_run(summary["run_id"])
        assert run_info.info.status == "FINISHED"
        steps = sorted(m.step for m in client.get_metric_history(summary["run_id"], "loss"))
        assert steps == list(range(1, STEPS + 1))  # back-filled: none lost during the outage
        record("mlflow_outage", steps=STEPS, steps_logged_before_warning=outage_steps,
               mlflow_loss_steps=steps, metrics_jsonl_rows=len((out / "metrics.jsonl").read_text().splitlines()),
               backfill_line=next((line for line in log.splitlines() if "MLflow reachable again" in line), None))
    finally:
        kill(server)
