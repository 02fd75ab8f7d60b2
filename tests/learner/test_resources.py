"""The fit check: a run that asks for more CPUs/GPUs than the cluster has fails with both numbers and a fix."""

from __future__ import annotations

import pytest

from vlm_rl.config import GRPOConfig, SFTConfig, load_config
from vlm_rl.learner.resources import (
    Capacity,
    ClusterTooSmallError,
    fit_message,
    fitting_overrides,
    misfits,
    run_demand,
)

TWO_CPUS = Capacity(totals={"CPU": 2.0}, largest_node={"CPU": 2.0})


def grpo(**kw) -> GRPOConfig:
    return load_config(GRPOConfig, None, kw, env={})


def test_demand_counts_learners_rollout_actors_and_gpus() -> None:
    d = run_demand(grpo(num_learners=2, cpus_per_learner=1, num_rollout_workers=1))
    assert (d.total("CPU"), d.total("GPU")) == (3.0, 0.0)
    d = run_demand(grpo(num_learners=6, use_gpu=True, gpus_per_learner=1, num_rollout_workers=2, rollout_gpus=1,
                        prompts_per_step=6))
    assert (d.total("CPU"), d.total("GPU")) == (8.0, 8.0)
    assert run_demand(grpo(num_learners=1, rollout_mode="colocated")).total("CPU") == 1.0  # no rollout actors
    assert run_demand(load_config(SFTConfig, None, {"num_learners": 3}, env={})).total("CPU") == 3.0
    # a sweep: every concurrent trial is a whole run plus Tune's sliver
    assert run_demand(grpo(num_learners=2, cpus_per_learner=0.5), sweep_trials=2).total("CPU") == pytest.approx(4.02)


def test_three_cpus_on_two_names_both_numbers_and_the_overrides_that_fit() -> None:
    config = grpo(num_learners=2, cpus_per_learner=1, num_rollout_workers=1)
    message = fit_message(config, TWO_CPUS)
    assert message is not None
    assert "needs 3 (2 learner x 1 + 1 rollout actor x 1)" in message and "the cluster has 2" in message
    assert "cannot grow" in message
    assert "num_learners=1" in message and "cpus_per_learner=0.5" in message
    for fix in fitting_overrides(config, TWO_CPUS):  # every suggestion really fits
        key, value = fix.split("=")
        changed = config.model_copy(update={key: type(getattr(config, key))(float(value))})
        assert not misfits(run_demand(changed), TWO_CPUS), fix


def test_fitting_runs_pass_and_suggestions_keep_the_config_valid() -> None:
    assert fit_message(grpo(num_learners=2, cpus_per_learner=0.5), TWO_CPUS) is None
    # prompts_per_step=3 must stay a multiple of num_learners: 2 learners is no valid fix, 1 is
    fixes = fitting_overrides(grpo(num_learners=3, prompts_per_step=3, num_rollout_workers=1), TWO_CPUS)
    assert "num_learners=2" not in fixes and "num_learners=1" in fixes


def test_gpus_and_nodes() -> None:
    gpu_run = grpo(num_learners=2, use_gpu=True, prompts_per_step=2, num_rollout_workers=1, rollout_gpus=1)
    problems = misfits(run_demand(gpu_run), Capacity(totals={"CPU": 16.0}, largest_node={"CPU": 16.0}))
    assert problems and problems[0].startswith("GPU: the run needs 3")
    # enough GPUs in total, but no node has the 2 GPUs one learner asks for
    two_gpu_learner = grpo(num_learners=1, use_gpu=True, gpus_per_learner=2, rollout_mode="colocated")
    spread = Capacity(totals={"CPU": 16.0, "GPU": 4.0}, largest_node={"CPU": 8.0, "GPU": 1.0})
    assert "largest node has 1" in misfits(run_demand(two_gpu_learner), spread)[0]
    # an autoscaler's maximum counts, and the message says so
    grows = Capacity(totals={"CPU": 2.0, "GPU": 1.0}, autoscaling=True)
    assert "autoscaler" in misfits(run_demand(gpu_run), grows)[0]


def test_error_is_a_config_error() -> None:
    from vlm_rl.config import ConfigError

    assert issubclass(ClusterTooSmallError, ConfigError)  # entry points turn it into exit code 2
