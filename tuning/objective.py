"""The sweep objective: reward gain, minus penalties for the ways GRPO runs go bad.

A run that climbs a little and stays sane beats one that spikes and falls apart, because the knobs
chosen here are then used for a run hundreds of times longer. Pure functions over the per-step
history rows that ``run_grpo`` returns (keys ``loss``, ``kl``, ``reward/total``, ...), so the score
of a finished trial and of a trial still running (what ASHA sees) are computed the same way.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass

#: Health-monitor codes that are alarms (vlm_rl.tracking.health); every other code is a warning.
ALARM_CODES = frozenset({"kl_alarm", "reward_collapse", "no_signal"})
#: Objective of a trial whose loss or reward went non-finite (finite, so Tune can still rank it).
BROKEN_OBJECTIVE = -10.0


@dataclass(frozen=True)
class ObjectiveWeights:
    """How much each kind of instability costs, in units of mean reward."""

    kl_band: tuple[float, float] = (0.01, 0.05)
    # × fraction of steps (after the first) with KL outside kl_band; only when beta > 0 (then the KL is
    # measured to a real reference, LoRA or full fine-tuning alike: issue 15)
    kl: float = 0.1
    oscillation: float = 0.5  # × std of successive loss differences
    collapse: float = 1.0  # × drop of the (smoothed) reward from its best so far
    alarm: float = 0.1  # × health alarms
    warning: float = 0.02  # × health warnings
    window: int = 3  # steps averaged at each end of the run for the gain
    unstable_collapse: float = 0.3  # a reward drop this large marks the trial unstable (stop it)
    unstable_kl: float = 1.0  # a KL this large marks the trial unstable


@dataclass(frozen=True)
class TrialScore:
    objective: float
    reward_gain: float
    gain_noise: float | None  # standard error of reward_gain (see gain_noise); None: no estimate yet
    kl_out_of_band: float
    loss_oscillation: float
    reward_collapse: float
    alarms: int
    warnings: int
    unstable: bool
    reason: str

    def as_metrics(self) -> dict[str, float | int | bool | str]:
        return asdict(self)


def _series(history: Sequence[Mapping[str, float]], key: str) -> list[float]:
    return [float(row[key]) for row in history if row.get(key) is not None]


def _mean(values: Sequence[float]) -> float:
    return sum(values) / len(values) if values else 0.0


def reward_gain(rewards: Sequence[float], window: int) -> float:
    """Mean of the last k rewards minus mean of the first k, k = min(window, n // 2) (at least 1).

    >>> reward_gain([0.1, 0.2, 0.3, 0.4], window=3)
    0.2
    """
    if len(rewards) < 2:
        return 0.0
    k = max(1, min(window, len(rewards) // 2))
    return round(_mean(rewards[-k:]) - _mean(rewards[:k]), 12)


def gain_noise(rewards: Sequence[float], window: int) -> float | None:
    """Standard error of :func:`reward_gain` from the run's own step-to-step reward noise.

    The noise of one step's mean reward is estimated from successive differences, sigma^2 = mean((r[t+1] - r[t])^2)
    / 2 (von Neumann's estimator: a steady climb barely moves it, so a real trend is not mistaken for noise); the
    gain is a difference of two k-step means, so its standard error is sigma * sqrt(2 / k). With fewer than two
    rewards there is no estimate (None, not inf: Tune's loggers reject non-finite values). With two or three steps
    a gain never exceeds twice this: so few points cannot tell a trend from noise.

    >>> round(gain_noise([0.1, 0.3, 0.1, 0.3], window=3), 4)  # k = 2, sigma = 0.1414
    0.1414
    >>> gain_noise([0.2, 0.2, 0.2, 0.2], window=3), gain_noise([0.5], window=3)
    (0.0, None)
    """
    if len(rewards) < 2:
        return None
    k = max(1, min(window, len(rewards) // 2))
    diffs = [b - a for a, b in zip(rewards, rewards[1:])]
    sigma = math.sqrt(sum(d * d for d in diffs) / len(diffs) / 2)
    return round(sigma * math.sqrt(2 / k), 12)


def reward_collapse(rewards: Sequence[float], window: int) -> float:
    """How far the k-step moving average ends below its best; 0 for a run that ends at its best.

    >>> reward_collapse([0.1, 0.5, 0.5, 0.1], window=1)
    0.4
    """
    if not rewards:
        return 0.0
    k = max(1, min(window, len(rewards) // 2))
    smooth = [_mean(rewards[max(0, i - k + 1): i + 1]) for i in range(len(rewards))]
    return round(max(0.0, max(smooth) - smooth[-1]), 12)


def loss_oscillation(losses: Sequence[float]) -> float:
    """Population std of successive loss differences: 0 for a steady trend, large for a zig-zag.

    >>> loss_oscillation([1.0, -1.0, 1.0, -1.0, 1.0])
    2.0
    """
    diffs = [b - a for a, b in zip(losses, losses[1:])]
    return statistics.pstdev(diffs) if len(diffs) >= 2 else 0.0


def kl_out_of_band(kls: Sequence[float], band: tuple[float, float]) -> float:
    """Fraction of steps after the first (whose policy is the reference, KL 0) with KL outside ``band``."""
    tail = list(kls[1:])
    if not tail:
        return 0.0
    low, high = band
    return sum(not (low <= k <= high) for k in tail) / len(tail)


def score_history(
    history: Sequence[Mapping[str, float]],
    *,
    beta: float,
    health: Sequence[str] = (),
    weights: ObjectiveWeights = ObjectiveWeights(),
) -> TrialScore:
    """Score a (possibly partial) GRPO history; ``health`` is the summary's list of alert codes."""
    rewards, losses, kls = _series(history, "reward/total"), _series(history, "loss"), _series(history, "kl")
    alarms = sum(code in ALARM_CODES for code in health)
    warnings = len(health) - alarms
    if not all(math.isfinite(v) for v in (*rewards, *losses, *kls)):
        return TrialScore(BROKEN_OBJECTIVE, 0.0, None, 1.0, math.inf, math.inf, alarms, warnings, True,
                          "non-finite loss, reward or KL")
    gain = reward_gain(rewards, weights.window)
    noise = gain_noise(rewards, weights.window)
    collapse = reward_collapse(rewards, weights.window)
    oscillation = loss_oscillation(losses)
    out_of_band = kl_out_of_band(kls, weights.kl_band) if beta > 0 else 0.0
    objective = (gain - weights.kl * out_of_band - weights.oscillation * oscillation
                 - weights.collapse * collapse - weights.alarm * alarms - weights.warning * warnings)
    reasons = []
    if collapse >= weights.unstable_collapse:
        reasons.append(f"reward fell {collapse:.3g} below its best")
    if kls and max(kls) >= weights.unstable_kl:
        reasons.append(f"KL reached {max(kls):.3g}")
    return TrialScore(objective, gain, noise, out_of_band, oscillation, collapse, alarms, warnings, bool(reasons),
                      "; ".join(reasons))
