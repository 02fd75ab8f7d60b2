"""The sweep objective on hand-built histories: what it must prefer and what it must penalise."""

from __future__ import annotations

import math

import pytest

from tuning.objective import (
    BROKEN_OBJECTIVE,
    ObjectiveWeights,
    gain_noise,
    kl_out_of_band,
    loss_oscillation,
    reward_collapse,
    reward_gain,
    score_history,
)


def history(rewards, losses=None, kls=None):
    n = len(rewards)
    losses = losses if losses is not None else [0.1 - 0.01 * i for i in range(n)]
    kls = kls if kls is not None else [0.0] + [0.02] * (n - 1)
    return [{"step": i + 1, "reward/total": r, "loss": loss, "kl": k}
            for i, (r, loss, k) in enumerate(zip(rewards, losses, kls))]


def test_stable_rising_beats_oscillating():
    stable = score_history(history([0.1, 0.15, 0.2, 0.25, 0.3, 0.35]), beta=0.04)
    zigzag = score_history(history([0.1, 0.4, 0.05, 0.45, 0.1, 0.4],
                                   losses=[0.5, -0.5, 0.6, -0.6, 0.5, -0.5]), beta=0.04)
    assert stable.reward_gain == pytest.approx(0.15)  # last 3 minus first 3
    assert stable.loss_oscillation == pytest.approx(0.0, abs=1e-12)
    assert zigzag.loss_oscillation > 0.5
    assert stable.objective > zigzag.objective
    assert not stable.unstable


def test_collapse_is_penalised_and_marks_unstable():
    steady = score_history(history([0.1, 0.2, 0.3, 0.3, 0.3, 0.3]), beta=0.0)
    collapsed = score_history(history([0.1, 0.5, 0.8, 0.8, 0.2, 0.1]), beta=0.0)
    assert collapsed.reward_collapse == pytest.approx((0.8 + 0.8 + 0.5) / 3 - (0.8 + 0.2 + 0.1) / 3)
    assert collapsed.objective < steady.objective
    assert collapsed.unstable and "reward fell" in collapsed.reason
    assert not steady.unstable


def test_kl_out_of_band_penalised_only_with_beta():
    rewards = [0.1, 0.2, 0.3, 0.4]
    in_band = score_history(history(rewards, kls=[0.0, 0.02, 0.03, 0.04]), beta=0.04)
    too_far = score_history(history(rewards, kls=[0.0, 0.2, 0.3, 0.4]), beta=0.04)
    assert in_band.kl_out_of_band == 0.0
    assert too_far.kl_out_of_band == 1.0
    assert in_band.objective - too_far.objective == pytest.approx(ObjectiveWeights().kl)
    no_reference = score_history(history(rewards, kls=[0.0, 0.2, 0.3, 0.4]), beta=0.0)
    assert no_reference.kl_out_of_band == 0.0
    assert score_history(history(rewards, kls=[0.0, 2.0, 2.0, 2.0]), beta=0.04).unstable


def test_health_alarms_cost_more_than_warnings():
    rows = history([0.1, 0.2, 0.3])
    clean = score_history(rows, beta=0.0).objective
    warned = score_history(rows, beta=0.0, health=["kl_high"]).objective
    alarmed = score_history(rows, beta=0.0, health=["no_signal"]).objective
    assert clean > warned > alarmed
    assert score_history(rows, beta=0.0, health=["no_signal", "kl_low"]).alarms == 1


def test_non_finite_history_is_broken():
    score = score_history(history([0.1, math.nan, 0.3]), beta=0.0)
    assert score.objective == BROKEN_OBJECTIVE and score.unstable


def test_partial_histories_score_without_error():
    assert score_history([], beta=0.04).objective == 0.0
    one = score_history(history([0.3]), beta=0.04)
    assert one.reward_gain == 0.0 and one.kl_out_of_band == 0.0


@pytest.mark.parametrize(
    ("fn", "args", "expected"),
    [
        (reward_gain, ([0.0, 1.0], 3), 1.0),
        (reward_gain, ([0.5], 3), 0.0),
        (reward_collapse, ([0.1, 0.2, 0.3], 1), 0.0),
        (reward_collapse, ([0.4, 0.1], 1), 0.3),
        (loss_oscillation, ([1.0, 2.0, 3.0, 4.0],), 0.0),
        (kl_out_of_band, ([0.0, 0.005, 0.02, 0.09], (0.01, 0.05)), 2 / 3),
    ],
)
def test_components(fn, args, expected):
    assert fn(*args) == pytest.approx(expected)


def test_gain_noise_separates_a_trend_from_noise():
    """The reward gain's standard error (issue 26 item 5): a steady climb is far beyond it, a zig-zag is not, and
    two or three steps are never beyond twice it (too few points to tell a trend from noise)."""
    climb = [0.1 * i for i in range(10)]
    assert reward_gain(climb, 3) > 2 * gain_noise(climb, 3)
    zigzag = [0.1, 0.5, 0.1, 0.5, 0.1, 0.5, 0.2, 0.5]
    assert reward_gain(zigzag, 3) < 2 * gain_noise(zigzag, 3)
    for rewards in ([0.0, 0.3], [0.0, 0.1, 0.3], [0.0, 0.3, 0.31], [0.2, 0.2, 0.9]):
        assert abs(reward_gain(rewards, 3)) <= 2 * gain_noise(rewards, 3) + 1e-12, rewards
    assert gain_noise([0.4], 3) is None
    score = score_history(history(climb), beta=0.0)
    assert score.gain_noise == pytest.approx(gain_noise(climb, 3)) and "gain_noise" in score.as_metrics()
