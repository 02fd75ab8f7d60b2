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


def test_a_config_builds_on_its_recipe(tmp_path, monkeypatch):
    """``recipe: PATH``: the recipe's keys first, the file's own over them (the sweep's recommended.yaml)."""
    (tmp_path / "recipes").mkdir()
    (tmp_path / "recipes" / "base.yaml").write_text("num_steps: 7\nbeta: 0.0\nnum_learners: 1\nprompts_per_step: 2\n")
    mine = tmp_path / "out" / "mine.yaml"
    mine.parent.mkdir()
    mine.write_text("recipe: recipes/base.yaml\nbeta: 0.04\n")
    monkeypatch.chdir(tmp_path)  # relative to the current folder (the repo root) ...
    config = load_config(GRPOConfig, mine, env={})
    assert (config.num_steps, config.beta, config.num_learners) == (7, 0.04, 1)
    (tmp_path / "out" / "near.yaml").write_text("recipe: mine.yaml\nnum_steps: 9\n")  # ... else to the file
    assert load_config(GRPOConfig, tmp_path / "out" / "near.yaml", env={}).num_steps == 9
    # a bad value in the recipe names the recipe
    (tmp_path / "recipes" / "base.yaml").write_text("num_generations: 1\n")
    assert f"(from {tmp_path / 'recipes' / 'base.yaml'})" in _error(path=mine, env={})


def test_recipe_errors_name_the_file(tmp_path):
    a, b = tmp_path / "a.yaml", tmp_path / "b.yaml"
    a.write_text("recipe: b.yaml\n")
    b.write_text("recipe: a.yaml\n")
    assert "a circle of recipes" in _error(path=a, env={})
    a.write_text("recipe: missing.yaml\n")
    assert f"{a}: recipe: file not found: missing.yaml" in _error(path=a, env={})


def test_a_typo_in_the_recipe_is_named_with_the_recipe(tmp_path):
    from vlm_rl.commands._common import unknown_keys

    (tmp_path / "base.yaml").write_text("num_generation: 4\n")
    (tmp_path / "mine.yaml").write_text(f"recipe: {tmp_path / 'base.yaml'}\nbeta: 0.0\n")
    problems = unknown_keys(GRPOConfig, str(tmp_path / "mine.yaml"), [])
    assert problems == [f"num_generation ({tmp_path / 'base.yaml'}): not a GRPOConfig key; did you mean num_generations?"]
