"""`vlm-rl estimate` end to end through the CLI."""

from __future__ import annotations

import json
import sys

import pytest

from vlm_rl.cli import main


def test_estimate_prints_table_and_writes_json(tmp_path, capsys):
    out = tmp_path / "est.json"
    rc = main(["estimate", "model_path=Qwen/Qwen3-VL-2B-Instruct", "num_learners=1", "--samples", "800",
               "--hardware", "h100", "--output", str(out)])
    assert rc == 0
    printed = capsys.readouterr().out
    assert "GRPO estimate: 800 prompts" in printed and "generation" in printed and "peak memory" in printed
    data = json.loads(out.read_text())
    assert data["steps"] == 200 and data["samples"] == 800 and data["calibration"] is None
    assert data["total_seconds"] == pytest.approx(200 * data["seconds_per_step"])
    assert set(data["phases"]) == {"generation", "training", "sync"}


def test_cpu_recipe_is_estimated_on_this_machine(tmp_path, capsys):
    """`--hardware` defaults to what the config runs on: the CPU recipe on this machine's cores and RAM, its memory
    reported as RAM, not per GPU (issue 26 item 6)."""
    import os

    out = tmp_path / "est.json"
    assert main(["estimate", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml", "--output", str(out)]) == 0
    printed = " ".join(capsys.readouterr().out.split())
    cores = len(os.sched_getaffinity(0))
    assert "peak memory RAM (all processes)" in printed and "per GPU" not in printed
    data = json.loads(out.read_text())
    assert f"({cores} core" in data["hardware"] and data["memory_scope"] == "RAM (all processes)"
    assert main(["estimate", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml", "--hardware", "cpu",
                 "--cores", "7", "--memory-gb", "12", "--output", str(out)]) == 0
    assert "(7 cores" in json.loads(out.read_text())["hardware"]


def test_calibration_leaves_out_the_warm_up_step():
    from vlm_rl.commands.estimate import steady_phases

    history = [{"time/step": 9.0, "time/generation": 5.0, "time/training": 3.0, "time/weight_sync": 0.5},
               {"time/step": 4.0, "time/generation": 2.0, "time/training": 1.5, "time/weight_sync": 0.2},
               {"time/step": 4.4, "time/generation": 2.2, "time/training": 1.7, "time/weight_sync": 0.2}]
    phases, measured = steady_phases(history)
    assert phases == pytest.approx({"generation": 2.1, "training": 1.6, "weight_sync": 0.2, "other": 0.3})
    assert measured == {"steps_measured": 2, "step_seconds": pytest.approx(4.2), "first_step_seconds": 9.0}
    assert steady_phases(history[:1])[1]["steps_measured"] == 1  # one step: it is all there is


def test_unknown_hardware_and_model_fail_cleanly(capsys):
    assert main(["estimate", "--hardware", "tpu"]) == 2
    assert "hardware: unknown 'tpu'" in capsys.readouterr().out
    assert main(["estimate", "model_path=some/private-model"]) == 2
    assert "model_path: cannot size" in capsys.readouterr().out


def test_calibrate_falls_back_when_grpo_job_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vlm_rl.grpo.job", None)  # import raises ImportError
    out = tmp_path / "est.json"
    assert main(["estimate", "num_learners=1", "--calibrate", "--output", str(out)]) == 0
    assert "using the documented analytic model" in capsys.readouterr().out
    assert json.loads(out.read_text())["calibration"]["error"].startswith("vlm_rl.grpo.job unavailable")


@pytest.mark.slow
def test_calibrate_runs_real_grpo_steps_and_matches_them(ray_cluster, tmp_path):
    """A real 2-step GRPO run on this machine (tiny model, one learner) calibrates the model exactly."""
    out = tmp_path / "est.json"
    rc = main(["estimate", "model_path=tiny-qwen3-vl", "num_learners=1", "rollout_mode=colocated", "lora_r=0",
               "prompts_per_step=2", "num_generations=2", "max_new_tokens=8", "max_image_size=64",
               "synthetic_train_size=4", "synthetic_val_size=2", f"output_dir={tmp_path}", "--samples", "40",
               "--calibrate", "--calibration-steps", "2", "--hardware", "cpu", "--output", str(out)])
    assert rc == 0
    data = json.loads(out.read_text())
    measured = data["calibration"]["phase_times"]
    assert measured["generation"] > 0 and measured["training"] > 0 and "step" not in measured
    assert data["phases"]["generation"] == pytest.approx(measured["generation"], rel=1e-6)
    assert data["phases"]["training"] == pytest.approx(measured["training"], rel=1e-6)
    assert data["total_seconds"] == pytest.approx(20 * data["seconds_per_step"])
    assert (tmp_path / "estimate-calibration" / "summary.json").is_file()
