"""GRPO end to end on CPU with the real parts: Ray actors, Ray Train + DeepSpeed (gloo), MLflow (SQLite).

One run answers the issue's questions: several steps complete with 2 learners and 2 rollout actors,
the trainable parameters change, the rollout actors hold exactly the learners' weights after a sync,
and the reward rises (a short SFT warm-up teaches the tiny random model the answer format, then GRPO
improves the mean reward; fixed seed).
"""

from __future__ import annotations

import pytest
import torch
from mlflow.tracking import MlflowClient

from vlm_rl.commands.demo import DEMO_SETTINGS
from vlm_rl.config import GRPOConfig
from vlm_rl.grpo.job import make_rollout_pool, prepare_run, run_grpo
from vlm_rl.learner.checkpoint import load_weights
from vlm_rl.models.loading import load_model

pytestmark = pytest.mark.slow

#: The demo's settings (a short SFT warm-up teaches the tiny random model the JSON shape only partly;
#: GRPO then makes it reliable). ~3.5 min on 2 cores.
SETTINGS = dict(DEMO_SETTINGS)


@pytest.fixture(scope="module")
def grpo_run(ray_cluster, tmp_path_factory):
    out = tmp_path_factory.mktemp("grpo-e2e")
    config = GRPOConfig(**SETTINGS, output_dir=str(out))
    prepared, labels = prepare_run(config)
    pool = make_rollout_pool(prepared, labels)
    summary = run_grpo(config, pool=pool)
    yield {"summary": summary, "pool": pool, "config": prepared}
    pool.shutdown()


def test_runs_all_steps_with_two_learners(grpo_run):
    summary = grpo_run["summary"]
    assert summary["steps"] == SETTINGS["num_steps"]
    assert len(summary["history"]) == SETTINGS["num_steps"]
    for row in summary["history"]:
        assert torch.isfinite(torch.tensor(row["loss"]))


def test_trainable_parameters_changed(grpo_run):
    trained = load_weights(grpo_run["summary"]["checkpoint"])
    base = dict(load_model(grpo_run["config"].model_path).named_parameters())
    changed = [n for n, w in trained.items() if not torch.equal(w, base[n].detach())]
    assert len(changed) >= len(trained) // 2, f"only {len(changed)} of {len(trained)} tensors changed"


def test_rollout_actors_hold_the_learners_weights(grpo_run):
    learner = load_weights(grpo_run["summary"]["checkpoint"])  # exported after the last step's sync
    for index in range(SETTINGS["num_rollout_workers"]):
        actor = grpo_run["pool"].get_weights(index)
        for name, weight in learner.items():
            assert torch.equal(actor[name], weight), name
    assert set(grpo_run["pool"].versions()) == {SETTINGS["num_steps"] + 1}


def test_reward_rises(grpo_run):
    summary = grpo_run["summary"]
    assert summary["reward_last"] > summary["reward_first"] + 0.05, summary


def test_mlflow_run_has_params_metrics_and_pictures(grpo_run):
    config = grpo_run["config"]
    client = MlflowClient(config.resolved_tracking_uri)
    run = client.get_run(grpo_run["summary"]["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.params["num_generations"] == "4"
    history = client.get_metric_history(run.info.run_id, "reward/total")
    assert [m.step for m in history] == list(range(1, SETTINGS["num_steps"] + 1))
    assert "eval/mAP_50" in run.data.metrics and "eval/format_valid_rate" in run.data.metrics
    for key in ("loss", "kl", "clip_ratio", "reward/format", "reward/detection", "samples_per_hour",
                "time/generation", "time/training", "time/weight_sync", "completion_length/mean"):
        assert key in run.data.metrics, key
    artifacts = [a.path for a in client.list_artifacts(run.info.run_id, "rollouts")]
    assert "rollouts/step_00001.png" in artifacts and "rollouts/step_00005.png" in artifacts
