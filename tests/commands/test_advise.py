"""`vlm-rl advise` through the CLI."""

from __future__ import annotations

import re

from vlm_rl.cli import main


def test_advise_prints_ranked_speedups(capsys):
    rc = main(["advise", "model_path=Qwen/Qwen3-VL-8B-Instruct", "num_generations=8", "eval_steps=5",
               "num_learners=1", "--hardware", "h100"])
    assert rc == 0
    out = capsys.readouterr().out
    speedups = [float(x) for x in re.findall(r"│\s+(\d+\.\d\d)x\s+│", out)]
    assert len(speedups) >= 4 and speedups == sorted(speedups, reverse=True)
    assert "NUM_GENERATIONS 8 → 4" in out


def test_advise_bad_hardware(capsys):
    assert main(["advise", "--hardware", "tpu"]) == 2


def test_advise_says_what_it_assumed(capsys):
    assert main(["advise", "--hardware", "h100"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    assert "assuming: model tiny-qwen3-vl" in out and "images up to 448 px" in out and "H100" in out
    assert "--hardware" in out


def test_a_cpu_recipe_gets_cpu_advice(capsys):
    """The CPU recipe (use_gpu: false) is judged on this machine's CPU, with no GPU advice (issue 26 item 6)."""
    import os

    assert main(["advise", "--config", "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml"]) == 0
    out = " ".join(capsys.readouterr().out.split())
    cores = len(os.sched_getaffinity(0))
    assert f"({cores} core" in out and "GB RAM (all processes)" in out and "per GPU" not in out
    assert "learner GPUs" not in out and "compile" not in out and "colocated" not in out
