"""HealthMonitor on synthetic metric streams: each unhealthy pattern is flagged, a healthy one is not."""

from __future__ import annotations

import random

from vlm_rl.tracking.health import HealthMonitor, alerts_to_tags


def healthy(step: int, rng: random.Random) -> dict[str, float]:
    return {
        "loss": 0.05 - 0.001 * step + rng.gauss(0, 0.01),
        "kl": 0.02 + 0.01 * (step / 40) + rng.gauss(0, 0.002),
        "reward/total": 0.3 + 0.01 * step + rng.gauss(0, 0.03),
        "reward/format": min(1.0, 0.5 + 0.01 * step) + rng.gauss(0, 0.02),
        "reward/detection": 0.1 + 0.01 * step + rng.gauss(0, 0.02),
        "reward/std": 0.2 + rng.gauss(0, 0.02),
    }


def run(stream, steps=40, **kwargs):
    monitor = HealthMonitor(echo=False, **kwargs)
    rng = random.Random(0)
    alerts = []
    for step in range(steps):
        alerts += monitor.update(step, stream(step, rng))
    return monitor, alerts


def codes(alerts):
    return {a.code for a in alerts}


def test_healthy_stream_raises_nothing():
    for seed in range(5):
        monitor = HealthMonitor(echo=False)
        rng = random.Random(seed)
        for step in range(60):
            assert monitor.update(step, healthy(step, rng)) == [], f"seed {seed} step {step}"
    assert monitor.summary()["status"] == "ok"


def test_kl_drift_is_a_warning_after_warmup():
    def stream(step, rng):
        return {**healthy(step, rng), "kl": 0.02 + 0.003 * step}

    monitor, alerts = run(stream, steps=26)  # KL reaches 0.095, below the alarm
    (alert,) = [a for a in alerts if a.code == "kl_high"]
    assert alert.severity == "warning" and "BETA" in alert.remedy
    assert 5 <= alert.step <= 15
    assert codes(alerts) == {"kl_high"}


def test_kl_near_zero_only_flagged_after_warmup():
    monitor = HealthMonitor(echo=False)
    early = [monitor.update(s, {"kl": 0.0}) for s in range(5)]
    assert early == [[]] * 5
    assert [a.code for a in monitor.update(5, {"kl": 0.0})] == ["kl_low"]


def test_no_kl_alerts_when_the_config_has_no_reference():
    """beta=0 (the demo): no reference model, so a KL near zero (or any KL) is no alarm (issue 12)."""
    from vlm_rl.config import GRPOConfig, load_config

    no_ref = HealthMonitor.for_config(load_config(GRPOConfig, None, {"beta": 0.0}, env={}), echo=False)
    with_ref = HealthMonitor.for_config(load_config(GRPOConfig, None, {"beta": 0.04}, env={}), echo=False)
    quiet = [a for s in range(20) for a in no_ref.update(s, {"kl": 0.0 if s < 10 else 0.5})]
    loud = [a for s in range(20) for a in with_ref.update(s, {"kl": 0.0 if s < 10 else 0.5})]
    assert quiet == []
    assert {"kl_low", "kl_alarm"} <= codes(loud)


def test_kl_alarm_fires_once_per_excursion():
    def stream(step, rng):
        return {**healthy(step, rng), "kl": 0.5 if 10 <= step < 14 or step == 20 else 0.03}

    _, alerts = run(stream, steps=25, window=3, warmup_steps=100)
    assert [(a.step, a.code, a.severity) for a in alerts if a.code == "kl_alarm"] == [
        (10, "kl_alarm", "alarm"), (20, "kl_alarm", "alarm")
    ]


def test_loss_up_while_reward_down():
    def stream(step, rng):
        base = healthy(step, rng)
        if step >= 20:
            base["loss"] = 0.03 + 0.05 * (step - 20)
            base["reward/total"] = 0.5 - 0.04 * (step - 20)
        return base

    _, alerts = run(stream, steps=30, collapse_drop=10)
    assert codes(alerts) == {"loss_up_reward_down"}
    assert 22 <= alerts[0].step <= 25 and "LEARNING_RATE" in alerts[0].remedy


def test_reward_collapse_is_an_alarm():
    def stream(step, rng):
        base = healthy(step, rng)
        base["reward/total"] = 0.6 + rng.gauss(0, 0.02) if step < 15 else 0.1 + rng.gauss(0, 0.02)
        return base

    monitor, alerts = run(stream, steps=30)
    collapse = [a for a in alerts if a.code == "reward_collapse"]
    assert len(collapse) == 1 and collapse[0].severity == "alarm" and collapse[0].step == 19
    assert monitor.summary()["status"] == "alarm"


def test_zero_reward_std_means_no_signal():
    def stream(step, rng):
        return {**healthy(step, rng), "reward/std": 0.0 if step >= 10 else 0.2}

    _, alerts = run(stream, steps=20)
    assert [(a.step, a.code) for a in alerts] == [(14, "no_signal")]
    assert "NUM_GENERATIONS" in alerts[0].remedy


def test_format_only_reward_hacking():
    def stream(step, rng):
        base = healthy(step, rng)
        base["reward/format"] = 0.2 + 0.04 * step
        base["reward/detection"] = 0.3 - 0.005 * step + rng.gauss(0, 0.005)
        return base

    _, alerts = run(stream, steps=20)
    assert "format_hacking" in codes(alerts)


def test_alerts_to_tags_and_summary():
    _, alerts = run(lambda s, r: {**healthy(s, r), "kl": 0.5 if s == 3 else 0.02, "reward/std": 0.0}, steps=12, warmup_steps=100)
    tags, metrics = alerts_to_tags(alerts)
    assert tags["health.status"] == "alarm"
    assert "kl_alarm" in tags["health.alerts"] and "no_signal" in tags["health.alerts"]
    assert metrics == {"health/alarms": 2.0, "health/warnings": 0.0}
    assert alerts_to_tags([]) == ({"health.status": "ok", "health.alerts": "none"},
                                  {"health/alarms": 0.0, "health/warnings": 0.0})


def test_new_alerts_are_printed(capsys):
    from rich.console import Console

    console = Console(file=None, stderr=True, width=200, force_terminal=False)
    monitor = HealthMonitor(console=console)
    monitor.update(0, {"kl": 1.0})
    err = capsys.readouterr().err
    assert "[alarm] step 0 kl_alarm" in err and "BETA" in err
