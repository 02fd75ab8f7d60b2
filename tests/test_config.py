"""vlm_rl.config.load_config: an invalid value is reported with where it came from (issue 26 item 7)."""

from __future__ import annotations

import pytest

from vlm_rl.config import ConfigError, GRPOConfig, load_config

RECIPE = "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml"


def _error(**kw) -> str:
    with pytest.raises(ConfigError) as info:
        load_config(GRPOConfig, **kw)
    return str(info.value)


def test_a_bad_environment_variable_is_named_not_the_recipe():
    message = _error(path=RECIPE, env={"LEARNING_RATE": "abc"})
    assert "learning_rate:" in message and "environment variable LEARNING_RATE='abc'" in message
    assert RECIPE not in message


def test_the_file_and_the_override_are_named_for_their_own_values(tmp_path):
    recipe = tmp_path / "r.yaml"
    recipe.write_text("num_generations: 1\n")
    message = _error(path=recipe, env={"BETA": "-1"}, overrides=["max_new_tokens=0"])
    problems = dict(p.split(": ", 1) for p in message.split(": ", 1)[1].split("; "))
    assert problems["num_generations"].endswith(f"(from {recipe})")
    assert problems["beta"].endswith("(from environment variable BETA='-1')")
    assert problems["max_new_tokens"].endswith("(from override max_new_tokens=0)")


def test_a_cross_field_check_names_the_source_of_its_field(tmp_path):
    message = _error(env={"OUTPUT_DIR": str(tmp_path)}, overrides=["prompts_per_step=3", "num_learners=2"])
    assert "prompts_per_step" in message and "(from override prompts_per_step=3)" in message
    message = _error(env={"TRAIN_DATA": str(tmp_path / "missing.jsonl")})
    assert "train_data: file not found" in message and "(from environment variable TRAIN_DATA=" in message


def test_cli_names_the_environment_variable(monkeypatch, capsys):
    from vlm_rl.cli import main

    monkeypatch.setenv("LEARNING_RATE", "abc")
    assert main(["grpo", "--config", RECIPE]) == 2
    err = capsys.readouterr().err
    assert "environment variable LEARNING_RATE='abc'" in err and "(from ray_jobs" not in err
