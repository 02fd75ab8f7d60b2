"""`ray job submit` of the tiny GRPO recipe to a cluster started with `ray start --head`, as a user does it.

The cluster has the 2 CPUs of the documented 2-core machine (tests/ray_jobs/conftest.py): the recipe as
documented must run there, and a run that cannot fit must fail in seconds, not wait forever (issue 12).
"""

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


def submit(cluster: dict, *args: str, timeout: float = 900) -> subprocess.CompletedProcess:
    """`ray job submit --address ... --runtime-env ray_jobs/runtime_env.yaml -- python -m ...`, waited for."""
    ray_bin = str(Path(sys.executable).parent / "ray")
    cmd = [ray_bin, "job", "submit", "--address", cluster["dashboard_url"],
           "--runtime-env", "ray_jobs/runtime_env.yaml", "--", "python", "-m", *args]
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}
    for _ in range(12):  # a just-started head's job agent may not have registered yet: Ray says "try again"
        done = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
        if "No available agent to submit job" not in done.stderr + done.stdout:
            return done
        time.sleep(5)
    return done


def test_job_that_cannot_fit_fails_in_seconds_naming_both_numbers_and_a_fix(two_cpu_cluster, tmp_path):
    started = time.monotonic()
    done = submit(two_cpu_cluster, "ray_jobs.grpo", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml",
                  f"output_dir={tmp_path / 'out'}", "cpus_per_learner=1", timeout=300)
    elapsed = time.monotonic() - started
    text = done.stdout + done.stderr
    assert done.returncode != 0 and "failed" in text.lower(), text[-3000:]
    assert "needs 3 (2 learner x 1 + 1 rollout actor x 1)" in text and "the cluster has 2" in text, text[-3000:]
    assert "num_learners=1" in text and "cpus_per_learner=0.5" in text
    assert elapsed < 120, f"took {elapsed:.0f} s"  # job upload + data + model build, no waiting for resources
    assert not list((tmp_path / "out").glob("checkpoint-*"))


def test_sweep_that_cannot_fit_fails_in_seconds(two_cpu_cluster, tmp_path):
    """The sweep adds Tune's sliver per trial (2 x 0.5 + 1 + 0.01 CPUs): on 2 CPUs it must say so at once."""
    env = {**two_cpu_cluster["env"], "RAY_ADDRESS": two_cpu_cluster["address"]}
    started = time.monotonic()
    done = subprocess.run(
        [sys.executable, "-m", "tuning.sweep_grpo", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml",
         "--space", "tiny-cpu", "--num-samples", "2", "--max-concurrent", "1", "--sweep-dir", str(tmp_path / "sw")],
        cwd=REPO, env=env, capture_output=True, text=True, timeout=300,
    )
    elapsed = time.monotonic() - started
    assert done.returncode == 2, done.stdout[-2000:] + done.stderr[-3000:]
    assert "needs 2.01" in done.stderr and "the cluster has 2" in done.stderr, done.stderr[-3000:]
    assert "cpus_per_learner=0.49" in done.stderr
    assert elapsed < 60, f"took {elapsed:.0f} s"
    assert not (tmp_path / "sw" / "mlflow.db").exists()  # nothing recorded for a sweep that never ran


def test_submitted_tiny_job_writes_an_mlflow_run(two_cpu_cluster, tmp_path):
    """The documented recipe, on the documented 2 CPUs, with overrides that only shorten it."""
    out = tmp_path / "job-out"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    done = submit(two_cpu_cluster, "ray_jobs.grpo", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml",
                  f"output_dir={out}", f"tracking_uri={uri}", "num_steps=2", "max_new_tokens=16",
                  "max_image_size=64", "prompts_per_step=2", "synthetic_train_size=8", "synthetic_val_size=2",
                  "log_images_every=1")
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-4000:]
    assert "succeeded" in (done.stdout + done.stderr).lower()

    client = MlflowClient(uri)
    experiment = client.get_experiment_by_name("vlm-rl-smoke")
    runs = client.search_runs([experiment.experiment_id])
    assert len(runs) == 1
    run = runs[0]
    # the job's log ends with the run's links into MLflow's classic UI
    charts = f"/#/experiments/{experiment.experiment_id}/runs/{run.info.run_id}/model-metrics?workflowType="
    assert charts in done.stdout + done.stderr, done.stdout[-3000:]
    assert run.info.status == "FINISHED"
    assert run.data.params["lora_r"] == "8" and run.data.params["beta"] == "0.04"
    steps = [m.step for m in client.get_metric_history(run.info.run_id, "reward/total")]
    assert steps == [1, 2]
    # The reference is the starting policy (LoRA B=0: adapter off = adapter on): KL is exactly 0 before the
    # first update and > 0 once the policy has moved; a reference that is the current policy stays at 0.
    kl = {m.step: m.value for m in client.get_metric_history(run.info.run_id, "kl")}
    assert kl[1] == 0.0 and kl[2] > 0, kl
    assert (out / "summary.json").is_file() and list(out.glob("checkpoint-samples-*"))
    pictures = [a.path for a in client.list_artifacts(run.info.run_id, "rollouts")]
    assert "rollouts/step_00001.png" in pictures
