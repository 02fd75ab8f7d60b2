"""A 2-trial GRPO sweep on the tiny model, on the session's Ray cluster, recorded in MLflow.

Checks what a user relies on: both trials ran as nested MLflow runs of one parent, the parent holds
the trials table, plot, comparison report and recommended config, and that config loads.
"""

from __future__ import annotations

import csv
import json
from pathlib import Path

import pytest
import yaml
from mlflow.tracking import MlflowClient

from tuning.search_spaces import space_from_spec
from tuning.sweep_grpo import run_sweep
from vlm_rl.config import GRPOConfig, load_config

pytestmark = pytest.mark.slow

BASE = dict(
    model_path="tiny-qwen3-vl", lora_r=0, num_learners=1, num_rollout_workers=1, prompts_per_step=2,
    num_steps=3, sft_warmup_steps=10, max_new_tokens=24, max_image_size=64, zero_stage=2, log_images_every=2,
    synthetic_train_size=16, synthetic_val_size=4, synthetic_max_objects=1, disable_gradient_checkpointing=True,
    experiment_name="sweep-test", seed=0, eval_steps=2,
)
SPACE = {"num_generations": {"grid": [2, 4]}, "beta": {"choice": [0.0, 0.04]},
         "learning_rate": {"loguniform": [1e-3, 5e-3]}}


@pytest.fixture(scope="module")
def sweep(ray_cluster, tmp_path_factory):
    folder = tmp_path_factory.mktemp("sweep")
    recipe = folder / "recipe.yaml"  # what recommended.yaml refers to
    recipe.write_text(yaml.safe_dump(BASE))
    base = load_config(GRPOConfig, recipe, [f"output_dir={folder}"], env={})
    (folder / "recommended.yaml").write_text("output_dir: /an/earlier/sweep\n")  # must not survive this sweep
    # ASHA compares trials by val mAP@0.5 (issue 23): every report carries the latest evaluation
    return run_sweep(base, space_from_spec(SPACE), num_samples=1, sweep_dir=folder, seed=0, stop_on="val_map50",
                     recipe=recipe, overrides=[f"output_dir={folder}"])


def test_parent_run_has_two_nested_trials(sweep):
    client = MlflowClient(sweep["tracking_uri"])
    parent = client.get_run(sweep["parent_run_id"])
    assert parent.info.status == "FINISHED"
    assert parent.info.run_name.startswith("sweep-grpo-")
    children = client.search_runs([parent.info.experiment_id],
                                  f"tags.mlflow.parentRunId = '{sweep['parent_run_id']}'")
    assert len(children) == 2
    names = sorted(c.info.run_name for c in children)
    assert [n.split("-")[2] for n in names] == ["g2", "g4"], names
    for child in children:
        assert child.info.status in ("FINISHED", "KILLED")
        assert child.data.tags["vlm_rl.sweep.status"] in {r["status"] for r in sweep["rows"]}
        assert "sweep/objective" in child.data.metrics
        assert [m.step for m in client.get_metric_history(child.info.run_id, "reward/total")][0] == 1
        if float(child.data.params["beta"]) > 0:  # full fine-tuning (lora_r=0): a frozen reference (issue 15)
            kl = [m.value for m in sorted(client.get_metric_history(child.info.run_id, "kl"), key=lambda m: m.step)]
            assert kl[0] == 0.0 and (len(kl) == 1 or max(kl[1:]) > 0), kl


def test_parent_artifacts_and_table(sweep):
    client = MlflowClient(sweep["tracking_uri"])
    listed = {a.path for a in client.list_artifacts(sweep["parent_run_id"], "sweep")}
    assert {"sweep/trials.csv", "sweep/trials.json", "sweep/objective_per_trial.png", "sweep/comparison.html"} <= listed
    assert ("sweep/recommended.yaml" in listed) == (sweep["best"] is not None)
    tags = client.get_run(sweep["parent_run_id"]).data.tags
    assert tags["vlm_rl.sweep.verdict"] == sweep["verdict"]
    rows = json.loads((sweep_dir(sweep) / "trials.json").read_text())
    assert len(rows) == 2 and all(isinstance(r["objective"], float) for r in rows)
    assert all(isinstance(r["val_map50"], float) and 0.0 <= r["val_map50"] <= 1.0 for r in rows)
    assert all(isinstance(r["gain_noise"], float) for r in rows)  # 3 steps each: an estimate of the gain's noise
    params = MlflowClient(sweep["tracking_uri"]).get_run(sweep["parent_run_id"]).data.params
    assert "metric=val_map50" in params["scheduler"] and params["base.eval_on_start"] == "True"
    with (sweep_dir(sweep) / "trials.csv").open() as fh:
        assert [r["trial"] for r in csv.DictReader(fh)] == [r["trial"] for r in rows]
    assert any(r["status"] == "completed" for r in rows)  # the first trial is never stopped by ASHA


def test_recommended_config_only_for_a_winner_beyond_noise(sweep):
    """3 steps a trial cannot tell a trend from noise (tuning.objective.gain_noise): the sweep says so and
    recommends nothing; were there a winner, recommended.yaml is the recipe plus its knobs, no paths."""
    if sweep["best"] is None:
        assert sweep["verdict"].startswith("no clear winner") and sweep["recommended_path"] is None
        assert not (sweep_dir(sweep) / "recommended.yaml").exists()  # nor an earlier sweep's
        return
    text = Path(sweep["recommended_path"]).read_text()
    assert "output_dir" not in text and "tracking_uri" not in text
    config = load_config(GRPOConfig, sweep["recommended_path"], env={})
    best = sweep["best"]
    assert (config.num_generations, config.beta, config.learning_rate) == (
        best["num_generations"], best["beta"], pytest.approx(best["learning_rate"]))
    assert config.num_steps == BASE["num_steps"] and config.num_learners == 1


def sweep_dir(sweep):
    return Path(sweep["sweep_dir"])


def test_stop_on_val_map_needs_evaluations(capsys):
    from tuning.sweep_grpo import main

    assert main(["--stop-on", "val_map50", "--space", "tiny-cpu", "eval_steps=0"]) == 2  # before any Ray
    assert "needs eval_steps > 0" in capsys.readouterr().err
