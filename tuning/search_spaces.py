"""Ray Tune search spaces over GRPOConfig knobs. Plain data: importing this module starts no Ray.

Named spaces cover the knobs users tune first (NUM_GENERATIONS, BETA, LEARNING_RATE); any other
GRPOConfig field can be searched through a YAML spec, e.g.::

    num_generations: {choice: [2, 4, 8]}
    beta: {choice: [0.0, 0.04]}
    learning_rate: {loguniform: [1.0e-5, 1.0e-3]}
    temperature: {uniform: [0.7, 1.1]}
"""

from __future__ import annotations

import os
import random
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import yaml
from ray import tune
from ray.tune.search.sample import Domain

from vlm_rl.config import ConfigError, GRPOConfig

#: The knobs every named space searches.
CORE_KNOBS = ("num_generations", "beta", "learning_rate")

#: Spec keyword → Tune sampler; the value is the list of arguments.
SAMPLERS = {
    "choice": lambda args: tune.choice(list(args)),
    "grid": lambda args: tune.grid_search(list(args)),
    "uniform": lambda args: tune.uniform(*args),
    "loguniform": lambda args: tune.loguniform(*args),
    "randint": lambda args: tune.randint(*args),
    "quniform": lambda args: tune.quniform(*args),
}

#: Named specs. "default" is for real models; "tiny-cpu" keeps the tiny test model learnable in a few steps.
SPECS: dict[str, dict[str, dict[str, list[Any]]]] = {
    "default": {
        "num_generations": {"choice": [4, 8, 16]},
        "beta": {"choice": [0.0, 0.01, 0.04, 0.1]},
        "learning_rate": {"loguniform": [1e-6, 1e-4]},
    },
    "tiny-cpu": {
        "num_generations": {"choice": [2, 4]},
        "beta": {"choice": [0.0, 0.04]},
        "learning_rate": {"loguniform": [1e-3, 5e-3]},
    },
}


def space_from_spec(spec: Mapping[str, Any], source: str = "search space") -> dict[str, Any]:
    """Turn ``{knob: {sampler: args}}`` (or a constant) into a Tune param space; errors name the knob."""
    if not isinstance(spec, Mapping) or not spec:
        raise ConfigError(f"{source}: expected a non-empty mapping of GRPOConfig fields to samplers")
    space: dict[str, Any] = {}
    for knob, entry in spec.items():
        key = str(knob).lower()
        if key not in GRPOConfig.model_fields:
            raise ConfigError(f"{source}: {knob!r} is not a GRPOConfig field")
        if not isinstance(entry, Mapping):
            space[key] = entry  # a constant override, the same in every trial
            continue
        if len(entry) != 1:
            raise ConfigError(f"{source}: {knob}: give exactly one of {sorted(SAMPLERS)}, got {sorted(entry)}")
        (kind, args), = entry.items()
        if kind not in SAMPLERS:
            raise ConfigError(f"{source}: {knob}: unknown sampler {kind!r}; use one of {sorted(SAMPLERS)}")
        if not isinstance(args, (list, tuple)) or not args:
            raise ConfigError(f"{source}: {knob}: {kind} needs a non-empty list, got {args!r}")
        try:
            space[key] = SAMPLERS[kind](args)
        except (TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: {knob}: bad {kind} arguments {args!r}: {exc}") from exc
    return space


def named_space(name: str) -> dict[str, Any]:
    """One of :data:`SPECS` as a Tune param space."""
    if name not in SPECS:
        raise ConfigError(f"search space {name!r}: unknown; choose from {sorted(SPECS)} or pass a YAML file")
    return space_from_spec(SPECS[name], source=f"search space {name!r}")


def load_space(name_or_path: str | os.PathLike) -> dict[str, Any]:
    """A named space, or a YAML file holding a spec (see the module docstring)."""
    path = Path(name_or_path)
    if str(name_or_path) in SPECS:
        return named_space(str(name_or_path))
    if not path.is_file():
        raise ConfigError(f"search space {str(name_or_path)!r}: neither a named space {sorted(SPECS)} nor a file")
    try:
        spec = yaml.safe_load(path.read_text())
    except yaml.YAMLError as exc:
        raise ConfigError(f"{path}: cannot parse YAML: {exc}") from exc
    return space_from_spec(spec, source=str(path))


def sample_space(space: Mapping[str, Any], seed: int = 0) -> dict[str, Any]:
    """One random point of ``space`` (grid axes give their first value); for checks and dry runs."""
    rng = random.Random(seed)
    point: dict[str, Any] = {}
    for key, value in space.items():
        if isinstance(value, Mapping) and "grid_search" in value:
            point[key] = value["grid_search"][0]
        elif isinstance(value, Domain):
            point[key] = value.sample(random_state=rng.randrange(2**31))
        else:
            point[key] = value
    return {k: v.item() if hasattr(v, "item") else v for k, v in point.items()}


def describe_space(space: Mapping[str, Any]) -> dict[str, str]:
    """Human-readable ``knob -> sampler`` strings (MLflow params of the parent run)."""
    out: dict[str, str] = {}
    for key, value in space.items():
        if isinstance(value, Mapping) and "grid_search" in value:
            out[key] = f"grid {list(value['grid_search'])}"
        elif hasattr(value, "categories"):
            out[key] = f"choice {list(value.categories)}"
        elif isinstance(value, Domain) and hasattr(value, "lower"):
            sampler = type(value.get_sampler()).__name__.lower().lstrip("_")
            kind = "int " if type(value).__name__ == "Integer" else ""
            out[key] = f"{kind}{sampler} [{value.lower:g}, {value.upper:g}]"
        else:
            out[key] = str(value)
    return out
