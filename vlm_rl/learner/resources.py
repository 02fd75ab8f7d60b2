"""Does a run fit the Ray cluster? Checked before any actor is created, so a misfit fails in seconds.

Ray queues an actor that asks for more than the cluster has, and Ray Train retries a worker group that
cannot be placed; on a fixed-size cluster both wait forever. So every entry point (grpo, sft, dpo, the
sweep, `ray job submit`) compares what the run asks for with what the cluster has, or can grow to when
an autoscaler manages it, and stops with both numbers and an override that fits.

>>> d = Demand([Part("learner", 2, {"CPU": 1.0}), Part("rollout actor", 1, {"CPU": 1.0})])
>>> d.total("CPU")
3.0
>>> problems = misfits(d, Capacity(totals={"CPU": 2.0}, largest_node={"CPU": 2.0}, autoscaling=False))
>>> problems[0].startswith("CPU: the run needs 3 (2 learner x 1 + 1 rollout actor x 1), the cluster has 2")
True
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

from vlm_rl.config import BaseConfig, ConfigError

#: Ray's name of each resource and how a message calls it.
RESOURCE_NAMES = {"CPU": "CPU", "GPU": "GPU"}
#: CPU of one Ray Tune trial (the function that drives a sweep trial; see tuning/sweep_grpo.py).
TRIAL_CPU = 0.01
_EPS = 1e-9


class ClusterTooSmallError(ConfigError):
    """The run asks for more CPUs/GPUs than the cluster has or can ever get."""


@dataclass(frozen=True)
class Part:
    """``count`` actors of one kind, each asking for ``each`` (Ray resource name -> amount)."""

    what: str
    count: int
    each: Mapping[str, float]


@dataclass(frozen=True)
class Demand:
    parts: Sequence[Part]

    def total(self, resource: str) -> float:
        return float(sum(p.count * p.each.get(resource, 0.0) for p in self.parts))

    def explain(self, resource: str) -> str:
        """``2 learner x 1 + 1 rollout actor x 1`` (only the parts that ask for ``resource``)."""
        terms = [f"{p.count} {p.what} x {_num(p.each[resource])}" for p in self.parts
                 if p.count and p.each.get(resource, 0.0) > 0]
        return " + ".join(terms) or "nothing"


@dataclass(frozen=True)
class Capacity:
    """What the cluster has now (``totals``), its biggest node, and whether an autoscaler can add nodes
    (then ``totals`` is the autoscaler's maximum)."""

    totals: Mapping[str, float]
    largest_node: Mapping[str, float] = field(default_factory=dict)
    autoscaling: bool = False


def _num(value: float) -> str:
    return f"{value:g}"


def run_demand(config: BaseConfig, *, sweep_trials: int = 0) -> Demand:
    """The actors a run creates: learners (Ray Train workers) and, for GRPO with a rollout pool, the
    rollout actors (1 CPU each, plus ``rollout_gpus``). The Ray Train controller asks for 0 CPUs; a
    sweep adds one sliver per concurrent trial. ``sweep_trials`` multiplies the run for concurrent trials.
    """
    learner = {"CPU": float(config.cpus_per_learner)}
    if config.use_gpu:
        learner["GPU"] = float(getattr(config, "gpus_per_learner", 1.0))
    copies = max(1, sweep_trials)
    parts = [Part("learner", config.num_learners * copies, learner)]
    if getattr(config, "rollout_mode", None) == "pool":
        rollout = {"CPU": 1.0}
        if getattr(config, "rollout_gpus", 0.0):
            rollout["GPU"] = float(config.rollout_gpus)
        parts.append(Part("rollout actor", config.num_rollout_workers * copies, rollout))
    if sweep_trials:
        parts.append(Part("tune trial", sweep_trials, {"CPU": TRIAL_CPU}))
    return Demand(parts)


def misfits(demand: Demand, capacity: Capacity) -> list[str]:
    """One sentence per resource the run cannot get; empty when it fits."""
    problems = []
    grow = "its autoscaler's maximum" if capacity.autoscaling else "and cannot grow (no autoscaler)"
    for resource, name in RESOURCE_NAMES.items():
        need = demand.total(resource)
        have = float(capacity.totals.get(resource, 0.0))
        if need > have + _EPS:
            problems.append(f"{name}: the run needs {_num(need)} ({demand.explain(resource)}), the cluster has "
                            f"{_num(have)} ({grow})")
            continue
        node_max = float(capacity.largest_node.get(resource, have)) if not capacity.autoscaling else have
        for part in demand.parts:  # one actor must fit on one node
            each = part.each.get(resource, 0.0)
            if part.count and each > node_max + _EPS:
                problems.append(f"{name}: one {part.what} needs {_num(each)}, the largest node has {_num(node_max)}")
                break
    return problems


def fitting_overrides(config: BaseConfig, capacity: Capacity, *, sweep_trials: int = 0,
                      limit: int = 3) -> list[str]:
    """Up to ``limit`` single overrides (``key=value``) under which the run fits, smallest change first."""
    candidates: list[dict] = []
    for n in range(config.num_learners - 1, 0, -1):
        steps = getattr(config, "prompts_per_step", None)
        if steps is None or steps % n == 0:
            candidates.append({"num_learners": n})
    if getattr(config, "rollout_mode", None) == "pool":
        for n in range(config.num_rollout_workers - 1, 0, -1):
            candidates.append({"num_rollout_workers": n})
    cpus = float(capacity.totals.get("CPU", 0.0))
    learners = config.num_learners * max(1, sweep_trials)
    rollout_cpu = run_demand(config, sweep_trials=sweep_trials).total("CPU") - learners * config.cpus_per_learner
    share = math.floor((cpus - rollout_cpu) / learners * 100) / 100 if learners else 0.0
    if 0 < share < config.cpus_per_learner:
        candidates.append({"cpus_per_learner": share})
    found = []
    for change in candidates:
        try:
            changed = config.model_copy(update=change)
        except Exception:  # noqa: BLE001 - an impossible candidate is simply skipped
            continue
        if not misfits(run_demand(changed, sweep_trials=sweep_trials), capacity):
            found.append(" ".join(f"{k}={_num(v) if isinstance(v, float) else v}" for k, v in change.items()))
        if len(found) >= limit:
            break
    return found


def fit_message(config: BaseConfig, capacity: Capacity, *, sweep_trials: int = 0) -> str | None:
    """None when the run fits; else what is missing and which overrides would fit."""
    problems = misfits(run_demand(config, sweep_trials=sweep_trials), capacity)
    if not problems:
        return None
    fixes = fitting_overrides(config, capacity, sweep_trials=sweep_trials)
    text = "the run does not fit the Ray cluster: " + "; ".join(problems) + "."
    if fixes:
        text += " Overrides that fit: " + ", or ".join(fixes) + "."
    else:
        text += " Give the cluster more nodes, or ask for fewer learners / rollout actors."
    if sweep_trials > 1:
        text += f" (--max-concurrent {sweep_trials} runs that many trials at once; --max-concurrent 1 needs less.)"
    return text


def cluster_capacity() -> Capacity:
    """What the connected Ray cluster has; with an autoscaler (KubeRay, cluster launcher), its maximum."""
    import ray

    totals = {k: float(v) for k, v in ray.cluster_resources().items() if k in RESOURCE_NAMES}
    largest: dict[str, float] = {}
    for node in ray.nodes():
        if node.get("Alive"):
            for key in RESOURCE_NAMES:
                largest[key] = max(largest.get(key, 0.0), float(node.get("Resources", {}).get(key, 0.0)))
    try:  # Ray's own pre-check (ray.train worker_group) reads the autoscaler's limits the same way
        from ray._private.state import state

        maximum = state.get_max_resources_from_cluster_config()
    except Exception:  # noqa: BLE001 - private API: without it the cluster is taken as fixed-size
        maximum = None
    if maximum:
        grown = {k: max(float(maximum.get(k, 0)), totals.get(k, 0.0)) for k in RESOURCE_NAMES}
        return Capacity(totals=grown, largest_node=largest, autoscaling=True)
    return Capacity(totals=totals, largest_node=largest, autoscaling=False)


def ensure_fits(config: BaseConfig, *, sweep_trials: int = 0) -> None:
    """Raise :class:`ClusterTooSmallError` (a ConfigError: exit code 2) when the run cannot be placed."""
    message = fit_message(config, cluster_capacity(), sweep_trials=sweep_trials)
    if message:
        raise ClusterTooSmallError(message)
