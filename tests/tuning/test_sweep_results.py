"""What a sweep concludes from its trials table (issue 26 item 5): a winner only beyond the noise, and a
recommended.yaml that holds the recipe and the chosen knobs, no stale paths. Pure functions, no Ray."""

from __future__ import annotations

import pytest
import yaml

from tuning.sweep_grpo import recommended_yaml, sweep_verdict
from vlm_rl.config import GRPOConfig, load_config

KNOBS = ["num_generations", "beta", "learning_rate"]


def row(trial, objective, gain, noise, status="completed", **knobs):
    values = {"num_generations": 4, "beta": 0.04, "learning_rate": 1e-3, **knobs}
    return {"trial": trial, "status": status, **values, "objective": objective, "reward_gain": gain,
            "gain_noise": noise, "run_id": f"run-{trial}", "output_dir": f"/old/sweep/trials/{trial}"}


def test_a_zero_gain_best_trial_is_not_a_winner():
    """The issue's sweep: the 'best' trial had reward gain 0 and objective -2.6e-09."""
    rows = [row("a", -2.6e-09, 0.0, 0.0), row("b", -0.3, -0.1, 0.05, learning_rate=3e-3)]
    verdict = sweep_verdict(rows, KNOBS)
    assert verdict.winner is None and verdict.leader["trial"] == "a"
    assert verdict.text.startswith("no clear winner") and "not beyond the noise" in verdict.text


def test_a_lead_within_the_noise_is_not_a_winner():
    rows = [row("a", 0.20, 0.25, 0.05), row("b", 0.15, 0.2, 0.05, beta=0.0)]
    verdict = sweep_verdict(rows, KNOBS)  # lead 0.05 < 2 * hypot(0.05, 0.05) = 0.14
    assert verdict.winner is None and "within the noise margin 0.14" in verdict.text


def test_a_clear_lead_names_the_winner():
    rows = [row("a", 0.30, 0.32, 0.02), row("b", 0.05, 0.06, 0.02, beta=0.0)]
    verdict = sweep_verdict(rows, KNOBS)
    assert verdict.winner["trial"] == "a" and verdict.text.startswith("winner: a")


def test_no_noise_estimate_names_no_winner():
    """A 1-step trial has no noise estimate (None): no winner, however large the gain looks."""
    rows = [row("a", 0.5, 0.5, None), row("b", -0.5, -0.5, None, beta=0.0)]
    assert sweep_verdict(rows, KNOBS).winner is None


def test_seeds_are_repeats_and_their_spread_is_the_noise():
    """Trials that differ only in seed are one configuration: compared by their mean, their spread the noise."""
    knobs = [*KNOBS, "seed"]
    spread = [row("a0", 0.40, 0.4, 0.01, seed=0), row("a1", 0.0, 0.0, 0.01, seed=1),
              row("b0", 0.15, 0.15, 0.01, beta=0.0, seed=0), row("b1", 0.15, 0.15, 0.01, beta=0.0, seed=1)]
    verdict = sweep_verdict(spread, knobs)  # a: mean 0.2 +- 0.2 across seeds; b: 0.15
    assert verdict.winner is None and "a0 (+1 repeat)" in verdict.text
    steady = [row("a0", 0.40, 0.4, 0.01, seed=0), row("a1", 0.42, 0.42, 0.01, seed=1),
              row("b0", 0.05, 0.05, 0.01, beta=0.0, seed=0), row("b1", 0.06, 0.06, 0.01, beta=0.0, seed=1)]
    verdict = sweep_verdict(steady, knobs)
    assert verdict.winner["trial"] == "a1"
    text = recommended_yaml(verdict.winner, knobs, recipe=None)
    assert "seed" not in yaml.safe_load(text)  # the seed was a repeat, not a choice


def test_stopped_trials_do_not_compete_with_completed_ones():
    rows = [row("done", 0.3, 0.31, 0.01), row("asha", 0.9, 0.9, 0.01, status="stopped: ASHA", beta=0.0)]
    verdict = sweep_verdict(rows, KNOBS)
    assert verdict.winner["trial"] == "done" and "only configuration" in verdict.text
    assert sweep_verdict([], KNOBS).text == "no trial produced a score"


def test_recommended_yaml_holds_the_recipe_and_the_knobs_only(tmp_path, monkeypatch):
    recipe = tmp_path / "recipes" / "tiny.yaml"
    recipe.parent.mkdir()
    recipe.write_text("model_path: tiny-qwen3-vl\nnum_steps: 7\noutput_dir: outputs/tiny\nnum_learners: 1\n"
                      "prompts_per_step: 2\n")
    monkeypatch.chdir(tmp_path)
    winner = row("a", 0.3, 0.3, 0.01, learning_rate=0.001544, num_generations=2)
    text = recommended_yaml(winner, KNOBS, recipe=str(recipe),
                            overrides=["num_steps=2", "output_dir=/old/sweep", "tracking_uri=http://x:5000",
                                       "cpus_per_learner=0.49", "learning_rate=1e-4"],
                            header=["Recommended by GRPO sweep abc", "winner: a"])
    body = yaml.safe_load(text)
    assert body == {"recipe": "recipes/tiny.yaml", "num_generations": 2, "beta": 0.04, "learning_rate": 0.001544}
    assert "/old/sweep" not in text and "tracking_uri" not in text and "http://x" not in text
    assert "# The sweep's trials also ran with: num_steps=2 cpus_per_learner=0.49" in text
    path = tmp_path / "out" / "recommended.yaml"
    path.parent.mkdir()
    path.write_text(text)
    config = load_config(GRPOConfig, path, env={})
    assert (config.num_generations, config.learning_rate, config.num_steps) == (2, pytest.approx(0.001544), 7)
    assert config.output_dir == "outputs/tiny" and config.tracking_uri is None  # the recipe's, not the sweep's
