"""`vlm-rl estimate` end to end through the CLI."""

from __future__ import annotations

import json
import sys
import types

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


def test_unknown_hardware_and_model_fail_cleanly(capsys):
    assert main(["estimate", "--hardware", "tpu"]) == 2
    assert "hardware: unknown 'tpu'" in capsys.readouterr().out
    assert main(["estimate", "model_path=some/private-model"]) == 2
    assert "model_path: cannot size" in capsys.readouterr().out


def test_calibrate_falls_back_when_grpo_job_is_missing(tmp_path, monkeypatch, capsys):
    monkeypatch.setitem(sys.modules, "vlm_rl.learner.grpo_job", None)  # import raises ImportError
    out = tmp_path / "est.json"
    assert main(["estimate", "num_learners=1", "--calibrate", "--output", str(out)]) == 0
    assert "using the documented analytic model" in capsys.readouterr().out
    assert json.loads(out.read_text())["calibration"]["error"].startswith("vlm_rl.learner.grpo_job unavailable")


def test_calibrate_uses_measured_phase_times(tmp_path, monkeypatch):
    calls = []

    def run_grpo(config):
        calls.append(config)
        return {"phase_times": {"rollout": 4.0, "train": 2.0, "weight_sync": 0.5, "rewards": 0.25},
                "samples_per_hour": 2000.0}

    monkeypatch.setitem(sys.modules, "vlm_rl.learner.grpo_job", types.SimpleNamespace(run_grpo=run_grpo))
    out = tmp_path / "est.json"
    rc = main(["estimate", "num_learners=1", f"output_dir={tmp_path}", "--samples", "40", "--calibrate",
               "--calibration-steps", "3", "--hardware", "cpu", "--output", str(out)])
    assert rc == 0
    assert calls[0].num_steps == 3 and calls[0].output_dir.startswith(str(tmp_path))
    data = json.loads(out.read_text())
    assert data["phases"] == pytest.approx({"generation": 4.0, "training": 2.0, "sync": 0.5, "rewards": 0.25})
    assert data["total_seconds"] == pytest.approx(10 * 6.75)
    assert data["calibration"]["samples_per_hour"] == 2000.0
