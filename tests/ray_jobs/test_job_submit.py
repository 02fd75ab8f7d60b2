"""`ray job submit` of the tiny GRPO recipe to a cluster started with `ray start --head`, as a user does it."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from mlflow.tracking import MlflowClient

REPO = Path(__file__).resolve().parents[2]
pytestmark = pytest.mark.slow


def test_submitted_tiny_job_writes_an_mlflow_run(ray_cluster, tmp_path):
    out = tmp_path / "job-out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [
        ray_bin, "job", "submit", "--address", ray_cluster["dashboard_url"],
        "--runtime-env", "ray_jobs/runtime_env.yaml", "--",
        "python", "-m", "ray_jobs.grpo", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml",
        f"output_dir={out}", f"tracking_uri={uri}", "num_steps=2", "max_new_tokens=16", "max_image_size=64",
        "prompts_per_step=2", "synthetic_train_size=8", "synthetic_val_size=2", "log_images_every=1",
    ]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(12):  # a just-started head's job agent may not have registered yet: Ray says "try again"
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=900)
        if "No available agent to submit job" not in done.stderr + done.stdout:
            break
        time.sleep(5)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vlm-rl-smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    assert run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == "8" and run.data.params["beta"] == "0.04"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "reward/total")]
    assert steps == [1, 2]
    assert "kl" in run.data.metrics and run.data.metrics["kl"] >= 0
    assert (out / "summary.json").is_file() and list(out.glob("checkpoint-samples-*"))
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "rollouts")]
    assert "rollouts/step_00001.png" in pictures
