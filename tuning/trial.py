"""One sweep trial: a GRPO run on Ray Train whose per-step scores reach Tune while it trains.

``run_grpo`` reports to Ray Train only at the end, so the trial runs it in a thread and tails the
run's ``metrics.jsonl`` (written by rank 0 as each step ends), reporting every finished step to Tune.
That is what lets ASHA and the instability stopper end a bad trial after a few steps: Tune then
stops this trial's actor, and the Train controller, learners and rollout actors it owns go with it.
"""

from __future__ import annotations

import json
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from tuning.objective import ObjectiveWeights, score_history

#: Metric names in metrics.jsonl that are not GRPO step metrics (same step numbers, other meaning).
_SKIP_PREFIXES = ("warmup/", "health/", "eval/")


def trial_name(index: int, knobs: Mapping[str, Any]) -> str:
    """``trial-03-g4-beta0.04-lr1.54e-03``: the MLflow run name says what the trial tried, the learning rate
    to three significant digits (a rounded ``lr2e-03`` named a trial of 0.001544).

    >>> trial_name(3, {"num_generations": 4, "beta": 0.04, "learning_rate": 0.001544})
    'trial-03-g4-beta0.04-lr1.54e-03'
    """
    parts = [f"trial-{index:02d}"]
    short = {"num_generations": "g", "beta": "beta", "learning_rate": "lr"}
    for key, value in knobs.items():
        label = short.get(key, key)
        text = f"{value:.2e}" if key == "learning_rate" else (f"{value:g}" if isinstance(value, float) else str(value))
        parts.append(f"{label}{text}")
    return "-".join(parts)


def _metric_lines(path: Path):
    """The ``{step, name, value}`` rows of a run's metrics.jsonl (a torn last line is skipped)."""
    if not path.is_file():
        return
    for line in path.read_text().splitlines():
        try:
            yield json.loads(line)
        except json.JSONDecodeError:
            continue


def read_step_rows(path: Path) -> dict[int, dict[str, float]]:
    """GRPO step metrics from metrics.jsonl as ``{step: {name: value}}``."""
    rows: dict[int, dict[str, float]] = {}
    for item in _metric_lines(path):
        name = str(item.get("name", ""))
        if not name.startswith(_SKIP_PREFIXES):
            rows.setdefault(int(item["step"]), {})[name] = float(item["value"])
    return rows


def read_val_map(path: Path) -> dict[int, float]:
    """``{step: val mAP@0.5}`` of the run's evaluations (step 0 = ``eval_on_start``)."""
    return {int(item["step"]): float(item["value"]) for item in _metric_lines(path) if item.get("name") == "eval/mAP_50"}


def latest_at(values: Mapping[int, float], step: int) -> float | None:
    """The value logged at the latest step <= ``step`` (evaluations come every ``eval_steps``).

    >>> latest_at({0: 0.1, 5: 0.3}, 7), latest_at({0: 0.1, 5: 0.3}, 4), latest_at({}, 3)
    (0.3, 0.1, None)
    """
    before = [s for s in values if s <= step]
    return values[max(before)] if before else None


def step_report(step: int, history: list[dict], beta: float, health: list[str], weights: ObjectiveWeights,
                extra: Mapping[str, Any], val_map: Mapping[int, float] | None = None) -> dict[str, Any]:
    """What Tune sees after ``step``: the score so far, the latest val mAP@0.5 (when the run evaluates: ASHA
    can stop on it) and the step's headline metrics."""
    row = history[-1]
    score = score_history(history, beta=beta, health=health, weights=weights)
    current_map = latest_at(val_map or {}, step)
    return {
        "step": step, **score.as_metrics(),
        **({"val_map50": current_map} if current_map is not None else {}),
        "reward": row.get("reward/total"), "loss": row.get("loss"), "kl": row.get("kl"),
        "samples_per_hour": row.get("samples_per_hour"), **extra,
    }


def grpo_trial(knobs: dict, *, base: dict, sweep_dir: str, parent_run_id: str | None,
               weights: ObjectiveWeights, poll_seconds: float = 1.0) -> None:
    """Tune function trainable: ``knobs`` (sampled by Tune) over ``base`` (a GRPOConfig dump)."""
    from ray import tune

    from vlm_rl.config import GRPOConfig
    from vlm_rl.grpo.job import run_grpo

    context = tune.get_context()
    index = int(str(context.get_trial_id()).rsplit("_", 1)[-1]) if "_" in str(context.get_trial_id()) else 0
    name = trial_name(index, knobs)
    output_dir = Path(sweep_dir) / "trials" / name
    config = GRPOConfig(**{**base, **knobs, "output_dir": str(output_dir), "run_name": name})
    extra = {"trial_name": name, "output_dir": str(output_dir)}

    outcome: dict[str, Any] = {}

    def target() -> None:
        try:
            outcome["summary"] = run_grpo(config, parent_run_id=parent_run_id, run_name=name)
        except BaseException as exc:  # handed to the Tune thread, which raises it
            outcome["error"] = exc

    thread = threading.Thread(target=target, name=f"grpo-{name}", daemon=True)
    thread.start()
    metrics_file = output_dir / "metrics.jsonl"
    reported = 0
    while thread.is_alive():
        thread.join(poll_seconds)
        rows = read_step_rows(metrics_file)
        # A step is complete once a later one has begun logging (or the run has ended, below).
        complete = sorted(s for s in rows if s < max(rows, default=0) and s > reported)
        for step in complete:
            history = [rows[s] for s in sorted(rows) if s <= step]
            tune.report(step_report(step, history, config.beta, [], weights, {**extra, **_run_id(output_dir)},
                                    read_val_map(metrics_file)))
            reported = step
    if "error" in outcome:
        raise outcome["error"]
    summary = outcome["summary"]
    history = summary["history"]
    for i, row in enumerate(history):
        step = int(row.get("step", i + 1))
        if step <= reported:
            continue
        final = i == len(history) - 1
        tune.report(step_report(step, history[: i + 1], config.beta, summary["health"] if final else [], weights,
                                {**extra, "run_id": summary["run_id"], "finished": final}, read_val_map(metrics_file)))
    if not history:
        raise RuntimeError(f"{name}: the GRPO run finished without a single step ({output_dir})")


def _run_id(output_dir: Path) -> dict[str, str]:
    """The child MLflow run id, once RunTracker has written it to tags.json."""
    tags = output_dir / "tags.json"
    try:
        return {"run_id": json.loads(tags.read_text()).get("mlflow.runId", "")}
    except (OSError, json.JSONDecodeError):
        return {}

