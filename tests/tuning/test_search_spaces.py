"""Search spaces: importable without side effects, hold the knobs, and sample valid GRPOConfigs."""

from __future__ import annotations

import subprocess
import sys

import pytest

from tuning.search_spaces import (
    CORE_KNOBS,
    SPECS,
    describe_space,
    load_space,
    named_space,
    sample_space,
    space_from_spec,
)
from vlm_rl.config import ConfigError, GRPOConfig


def test_import_starts_no_ray():
    code = "import ray, tuning.search_spaces, tuning.objective; assert not ray.is_initialized(); print('ok')"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr[-2000:]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_named_spaces_hold_the_core_knobs_and_sample_valid_configs(name):
    space = named_space(name)
    assert set(CORE_KNOBS) <= set(space)
    for seed in range(20):
        point = sample_space(space, seed=seed)
        config = GRPOConfig(**point, num_learners=1, prompts_per_step=2)
        assert config.num_generations in SPECS[name]["num_generations"]["choice"]
        low, high = SPECS[name]["learning_rate"]["loguniform"]
        assert low <= config.learning_rate <= high


def test_other_knobs_by_spec_and_yaml(tmp_path):
    spec = tmp_path / "space.yaml"
    spec.write_text("temperature: {uniform: [0.7, 1.1]}\nepsilon: {grid: [0.1, 0.2]}\nNUM_STEPS: 3\n")
    space = load_space(spec)
    assert describe_space(space) == {"temperature": "uniform [0.7, 1.1]", "epsilon": "grid [0.1, 0.2]",
                                     "num_steps": "3"}
    point = sample_space(space, seed=1)
    assert 0.7 <= point["temperature"] <= 1.1 and point["epsilon"] == 0.1 and point["num_steps"] == 3
    GRPOConfig(**point)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"nmu_generations": {"choice": [2]}}, "'nmu_generations' is not a GRPOConfig field"),
        ({"beta": {"gaussian": [0, 1]}}, "beta: unknown sampler 'gaussian'"),
        ({"beta": {"choice": []}}, "beta: choice needs a non-empty list"),
        ({"beta": {"choice": [0.0], "uniform": [0, 1]}}, "beta: give exactly one of"),
        ({}, "non-empty mapping"),
    ],
)
def test_bad_specs_name_the_knob(spec, message):
    with pytest.raises(ConfigError, match=message):
        space_from_spec(spec)


def test_unknown_space_name():
    with pytest.raises(ConfigError, match="neither a named space"):
        load_space("no-such-space")
