"""Training-health rules for GRPO, evaluated on every step's metrics.

GRPO runs fail quietly: the policy drifts from the reference (KL), the reward collapses, the groups
stop carrying signal (all completions score the same), or the model learns to emit valid JSON without
finding anything (format-only reward hacking). Each rule here turns one of those into an
:class:`Alert` with a remedy, the step it was first seen, and a severity, so it reaches the console
and MLflow tags while the run can still be stopped.

An alert code fires when its condition starts holding and again only after it has cleared, so a
long excursion is one alert, not one per step.
"""

from __future__ import annotations

import math
from collections import deque
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Literal

from rich.console import Console
from rich.text import Text

Severity = Literal["warning", "alarm"]

REMEDIES = {
    "kl_high": "lower LEARNING_RATE or raise BETA (KL coefficient)",
    "kl_low": "the policy barely moves: raise LEARNING_RATE or lower BETA",
    "kl_alarm": "stop or roll back: lower LEARNING_RATE, raise BETA, check the reference model",
    "loss_up_reward_down": "lower LEARNING_RATE; raise NUM_GENERATIONS for less noisy advantages",
    "reward_collapse": "resume from the last good checkpoint with a lower LEARNING_RATE and higher BETA",
    "no_signal": "raise NUM_GENERATIONS or temperature, or SFT-warm the model so groups differ in reward",
    "format_hacking": "lower format_weight or raise the detection weight; check the detection reward parses",
}

_STYLE = {"warning": "yellow", "alarm": "bold red"}


@dataclass(frozen=True)
class Alert:
    step: int
    code: str
    severity: Severity
    message: str
    remedy: str


def _trend(values: Sequence[float]) -> tuple[float, float]:
    """(least-squares slope per step, Pearson correlation with the step index); (0, 0) if flat."""
    n = len(values)
    if n < 2:
        return 0.0, 0.0
    xs = range(n)
    mx, my = (n - 1) / 2, sum(values) / n
    sxx = sum((x - mx) ** 2 for x in xs)
    sxy = sum((x - mx) * (y - my) for x, y in zip(xs, values))
    syy = sum((y - my) ** 2 for y in values)
    slope = sxy / sxx
    corr = sxy / math.sqrt(sxx * syy) if syy > 1e-24 else 0.0
    return slope, corr


class HealthMonitor:
    """Feed it each step's metrics; it returns the alerts that newly started at that step."""

    def __init__(
        self,
        kl_band: tuple[float, float] = (0.01, 0.05),
        kl_alarm: float = 0.1,
        window: int = 5,
        warmup_steps: int = 5,
        trend_corr: float = 0.7,
        min_reward_drop: float = 0.05,
        collapse_drop: float = 0.2,
        min_reward_std: float = 1e-3,
        format_rise: float = 0.1,
        detection_flat: float = 0.02,
        echo: bool = True,
        console: Console | None = None,
        judge_kl: bool = True,
    ) -> None:
        self.kl_band, self.kl_alarm, self.window, self.warmup_steps = kl_band, kl_alarm, window, warmup_steps
        self.judge_kl = judge_kl
        self.trend_corr, self.min_reward_drop, self.collapse_drop = trend_corr, min_reward_drop, collapse_drop
        self.min_reward_std, self.format_rise, self.detection_flat = min_reward_std, format_rise, detection_flat
        self.echo = echo
        self.console = console or Console(stderr=True)
        self._hist: dict[str, deque[float]] = {}
        self._steps_seen = 0
        self._best_reward = -math.inf
        self._below_best = 0
        self._std_zero = 0
        self._active: set[str] = set()
        self.alerts: list[Alert] = []

    @classmethod
    def for_config(cls, config, **kwargs) -> HealthMonitor:
        """A monitor that judges only what the run's config makes meaningful: with ``beta == 0`` there is
        no reference model, the logged KL is not a training signal, and the KL rules stay silent."""
        return cls(judge_kl=float(getattr(config, "beta", 0.0) or 0.0) > 0, **kwargs)

    # ---------------------------------------------------------------- rules
    def _window(self, name: str) -> list[float] | None:
        values = self._hist.get(name)
        return list(values) if values is not None and len(values) >= self.window else None

    def _conditions(self, metrics: Mapping[str, float]) -> dict[str, tuple[Severity, str]]:
        found: dict[str, tuple[Severity, str]] = {}
        kl = metrics.get("kl") if self.judge_kl else None
        low, high = self.kl_band
        if kl is not None:
            if kl > self.kl_alarm:
                found["kl_alarm"] = ("alarm", f"KL {kl:.3g} > {self.kl_alarm:g}: the policy is running away")
            kls = self._window("kl")
            if kls is not None and self._steps_seen > self.warmup_steps:
                mean_kl = sum(kls) / len(kls)
                if mean_kl > high:
                    found["kl_high"] = ("warning", f"KL {mean_kl:.3g} (mean of {self.window}) above {high:g}")
                elif mean_kl < low:
                    found["kl_low"] = ("warning", f"KL {mean_kl:.3g} (mean of {self.window}) below {low:g}")

        losses, rewards = self._window("loss"), self._window("reward/total")
        if losses is not None and rewards is not None:
            (_, loss_corr), (_, reward_corr) = _trend(losses), _trend(rewards)
            drop = rewards[0] - rewards[-1]
            if loss_corr > self.trend_corr and reward_corr < -self.trend_corr and drop > self.min_reward_drop:
                found["loss_up_reward_down"] = (
                    "warning",
                    f"loss rising ({losses[0]:.3g}→{losses[-1]:.3g}) while reward falls "
                    f"({rewards[0]:.3g}→{rewards[-1]:.3g}) over {self.window} steps",
                )

        if self._below_best >= self.window:
            recent = self._hist["reward/total"][-1]
            found["reward_collapse"] = (
                "alarm",
                f"reward {recent:.3g} has stayed > {self.collapse_drop:g} below its best {self._best_reward:.3g} "
                f"for {self._below_best} steps",
            )
        if self._std_zero >= self.window:
            found["no_signal"] = (
                "alarm",
                f"reward std < {self.min_reward_std:g} within groups for {self._std_zero} steps: "
                "no advantages, no learning signal",
            )

        fmt, det = self._window("reward/format"), self._window("reward/detection")
        if fmt is not None and det is not None:
            (_, fmt_corr), det_change = _trend(fmt), det[-1] - det[0]
            if fmt_corr > self.trend_corr and fmt[-1] - fmt[0] > self.format_rise and det_change < self.detection_flat:
                found["format_hacking"] = (
                    "warning",
                    f"format reward climbs ({fmt[0]:.3g}→{fmt[-1]:.3g}) while detection reward does not "
                    f"({det[0]:.3g}→{det[-1]:.3g}): rewarded for JSON, not for boxes",
                )
        return found

    # ---------------------------------------------------------------- API
    def update(self, step: int, metrics: Mapping[str, float]) -> list[Alert]:
        """Record one step's metrics; return the alerts that start at this step."""
        self._steps_seen += 1
        for name, value in metrics.items():
            if value is None or not math.isfinite(float(value)):
                continue
            self._hist.setdefault(name, deque(maxlen=self.window)).append(float(value))
        rewards = self._hist.get("reward/total")
        if "reward/total" in metrics and rewards:
            smoothed = sum(rewards) / len(rewards)
            if len(rewards) >= self.window:
                self._best_reward = max(self._best_reward, smoothed)
            self._below_best = self._below_best + 1 if rewards[-1] < self._best_reward - self.collapse_drop else 0
        if "reward/std" in metrics:
            self._std_zero = self._std_zero + 1 if float(metrics["reward/std"]) < self.min_reward_std else 0

        conditions = self._conditions(metrics)
        new = [
            Alert(step=step, code=code, severity=severity, message=message, remedy=REMEDIES[code])
            for code, (severity, message) in conditions.items()
            if code not in self._active
        ]
        self._active = set(conditions)
        self.alerts.extend(new)
        if self.echo:
            for alert in new:
                self.console.print(render_alert(alert))
        return new

    def summary(self) -> dict:
        """Status and counts of every alert so far (JSON-ready)."""
        by_code: dict[str, int] = {}
        for alert in self.alerts:
            by_code[alert.code] = by_code.get(alert.code, 0) + 1
        tags, metrics = alerts_to_tags(self.alerts)
        return {
            "status": tags["health.status"],
            "alarms": int(metrics["health/alarms"]),
            "warnings": int(metrics["health/warnings"]),
            "by_code": by_code,
            "active": sorted(self._active),
            "alerts": [asdict(a) for a in self.alerts],
        }


def alerts_to_tags(alerts: Iterable[Alert]) -> tuple[dict[str, str], dict[str, float]]:
    """MLflow tags (``health.status`` ok/warning/alarm, ``health.alerts`` text) and metrics (counts)."""
    alerts = list(alerts)
    alarms = sum(a.severity == "alarm" for a in alerts)
    warns = len(alerts) - alarms
    status = "alarm" if alarms else "warning" if warns else "ok"
    text = "; ".join(f"step {a.step} {a.code}: {a.message}" for a in alerts[-20:])
    return (
        {"health.status": status, "health.alerts": text[:5000] or "none"},
        {"health/alarms": float(alarms), "health/warnings": float(warns)},
    )


def render_alert(alert: Alert) -> Text:
    """One console line: severity, step, code, message, remedy."""
    line = Text()
    line.append(f"[{alert.severity}] ", style=_STYLE[alert.severity])
    line.append(f"step {alert.step} {alert.code}: ", style="bold")
    line.append(alert.message)
    line.append(f" → {alert.remedy}", style="dim")
    return line
