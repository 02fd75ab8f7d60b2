"""Sweep GRPO knobs with Ray Tune: trials are GRPO runs on Ray Train, nested under one MLflow run.

    python -m tuning.sweep_grpo --config ray_jobs/configs/recipes/grpo-tiny-cpu.yaml \\
        --space tiny-cpu --num-samples 3 --sweep-dir outputs/sweep [key=value ...]

Where it runs (``--address``, default ``auto``): the cluster named by RAY_ADDRESS (`ray job submit` sets it), else a
Ray cluster already running on this machine (the vlm-rl local cluster of cluster/local/start-local-cluster.sh,
joined with the settings of its env.sh, or the last `ray start --head`), else a private local Ray that advertises
the CPUs its trials need. On a cluster it first checks that ``--max-concurrent`` trials fit and stops in seconds
with the numbers and an override that fits when they do not (vlm_rl.learner.resources).

Each trial reports its score after every step (see ``tuning.trial``); ASHA stops trials that fall
behind the others at the same step, and a stopper ends any trial whose reward collapses or whose KL
runs away. At the end the parent run holds the trials table, a plot of the objective per trial and the
comparison report. A winner is named only when it beats the others beyond the noise (``sweep_verdict``):
then ``recommended.yaml`` holds the recipe and the knobs it chose, and is printed; else the sweep says so.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import os
import statistics
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Stopper

from tuning.cluster import FoundCluster, choose_cluster, connect
from tuning.objective import ObjectiveWeights
from tuning.search_spaces import describe_space, load_space
from vlm_rl.commands._common import load_config_with_hints, normalise_tokens
from vlm_rl.config import ConfigError, GRPOConfig

#: Trial table columns besides the knobs.
SCORE_COLUMNS = ("objective", "val_map50", "reward_gain", "gain_noise", "kl_out_of_band", "loss_oscillation", "reward_collapse", "alarms",
                 "warnings", "step", "reward", "samples_per_hour")


#: What ASHA may compare trials by (``--stop-on``).
STOP_ON = ("objective", "val_map50")

#: A winner must lead by more than NOISE_Z standard errors of the difference, and by at least NOISE_FLOOR (in units
#: of mean reward, like the objective): below that a sweep cannot tell its trials apart (see ``sweep_verdict``).
NOISE_Z = 2.0
NOISE_FLOOR = 0.01
#: Knobs whose trials are repeats of one configuration (the other knobs equal), not configurations of their own.
REPEAT_KNOBS = ("seed",)
#: Config keys that are paths or names of one run: never carried into recommended.yaml.
RUN_KEYS = ("output_dir", "tracking_uri", "run_name", "resume", "train_data", "val_data")


class UnstableStopper(Stopper):
    """Tune stopper: end a trial as soon as its score says ``unstable`` (reward collapse, KL runaway)."""

    def __call__(self, trial_id: str, result: Mapping[str, Any]) -> bool:
        return bool(result.get("unstable"))

    def stop_all(self) -> bool:
        return False


def artifact_root(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts beside the database; for a server, its own default (None)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def trial_resources(config: GRPOConfig):
    """The trial's placement group: a sliver for the trial itself, one bundle per rollout actor.

    Tune captures a trial's child actors in its placement group, so the rollout actors need bundles
    there; the learners are placed by Ray Train in a placement group of their own.
    """
    from ray.tune import PlacementGroupFactory

    rollout = {"CPU": 1.0, **({"GPU": config.rollout_gpus} if config.rollout_gpus else {})}
    actors = config.num_rollout_workers if config.rollout_mode == "pool" else 0
    return PlacementGroupFactory([{"CPU": 0.01}] + [dict(rollout) for _ in range(actors)])


def ensure_experiment(tracking_uri: str, name: str) -> str:
    """Create the experiment before any run does, so parent and trials share one artifact root."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    experiment = client.get_experiment_by_name(name)
    if experiment is not None:
        return experiment.experiment_id
    from vlm_rl.tracking.mlflow_logger import CLASSIC_EXPERIMENT_TAGS

    return client.create_experiment(name, artifact_location=artifact_root(tracking_uri), tags=CLASSIC_EXPERIMENT_TAGS)


def trial_status(metrics: Mapping[str, Any], error: BaseException | None) -> str:
    """completed / stopped: unstable (why) / stopped: ASHA / error."""
    if error is not None:
        return f"error: {type(error).__name__}"
    if metrics.get("finished"):
        return "completed"
    if metrics.get("unstable"):
        return f"stopped: unstable ({metrics.get('reason', '')})"
    return "stopped: ASHA" if metrics else "error: no result"


def trials_table(results: Sequence[tuple[Mapping[str, Any], Mapping[str, Any], BaseException | None]],
                 knobs: Sequence[str]) -> list[dict[str, Any]]:
    """One row per trial from ``(knobs, last reported metrics, error)``, best objective first."""
    rows = []
    for config, metrics, error in results:
        row: dict[str, Any] = {"trial": metrics.get("trial_name", ""), "status": trial_status(metrics, error)}
        row.update({k: config.get(k) for k in knobs})
        row.update({k: metrics.get(k) for k in SCORE_COLUMNS})
        row.update({"run_id": metrics.get("run_id", ""), "output_dir": metrics.get("output_dir", "")})
        rows.append(row)

    def key(row: dict[str, Any]) -> tuple[int, float]:
        value = row["objective"]
        return (row["status"] == "completed", value if isinstance(value, (int, float)) else -math.inf)

    return sorted(rows, key=key, reverse=True)


@dataclass(frozen=True)
class Verdict:
    """``winner``: the row whose knobs are recommended, None when no trial beats the others beyond the noise;
    ``leader``: the best row by objective either way; ``text``: the reason, in a sentence."""

    winner: Mapping[str, Any] | None
    leader: Mapping[str, Any] | None
    text: str


@dataclass
class _Config:
    """The trials of one configuration (repeats differ only in REPEAT_KNOBS): mean objective and gain, and the
    standard error of those means."""

    rows: list[Mapping[str, Any]] = field(default_factory=list)

    @property
    def best(self) -> Mapping[str, Any]:
        return max(self.rows, key=lambda r: r["objective"])

    @property
    def objective(self) -> float:
        return statistics.fmean(r["objective"] for r in self.rows)

    @property
    def gain(self) -> float:
        return statistics.fmean(_number(r.get("reward_gain"), 0.0) for r in self.rows)

    @property
    def noise(self) -> float:
        """Within the runs: their gains' standard errors, combined for the mean; across repeats: the standard
        error of the mean objective. The larger of the two."""
        within = math.sqrt(sum(_number(r.get("gain_noise"), math.inf) ** 2 for r in self.rows)) / len(self.rows)
        if len(self.rows) < 2:
            return within
        between = statistics.stdev(r["objective"] for r in self.rows) / math.sqrt(len(self.rows))
        return max(within, between)

    @property
    def label(self) -> str:
        repeats = len(self.rows) - 1
        return f"{self.best['trial'] or '?'}" + (f" (+{repeats} repeat{'s' * (repeats > 1)})" if repeats else "")


def _number(value: Any, default: float) -> float:
    return float(value) if isinstance(value, (int, float)) and not isinstance(value, bool) else default


def sweep_verdict(rows: Sequence[Mapping[str, Any]], knobs: Sequence[str], *, z: float = NOISE_Z,
                  floor: float = NOISE_FLOOR) -> Verdict:
    """Name a winner only when it beats the others beyond the noise.

    Trials that differ only in REPEAT_KNOBS (seeds) are one configuration, scored by their mean. Completed
    trials are compared (the scored ones when none completed). The best configuration wins when

    1. its reward gain exceeds ``max(z * noise, floor)``: it improved the reward beyond its own step-to-step noise
       (``tuning.objective.gain_noise``; across repeats, the spread of their objectives), and
    2. its objective leads the runner-up's by more than ``max(z * sqrt(noise_1^2 + noise_2^2), floor)``.

    Otherwise no knob is recommended: the sweep says which test failed, with the numbers.
    """
    scored = [r for r in rows if isinstance(r.get("objective"), (int, float))]
    if not scored:
        return Verdict(None, None, "no trial produced a score")
    pool = [r for r in scored if r.get("status") == "completed"] or scored
    config_knobs = [k for k in knobs if k not in REPEAT_KNOBS]
    configs: dict[tuple[str, ...], _Config] = {}
    for row in pool:
        configs.setdefault(tuple(repr(row.get(k)) for k in config_knobs), _Config()).rows.append(row)
    ranked = sorted(configs.values(), key=lambda c: c.objective, reverse=True)
    top = ranked[0]
    needed = max(z * top.noise, floor)
    if not top.gain > needed:
        return Verdict(None, top.best, (
            f"no clear winner: the best trial, {top.label} (objective {top.objective:.3g}), improved the reward by "
            f"{top.gain:.3g} ± {top.noise:.2g}, which is not beyond the noise (needs more than {needed:.2g}: "
            f"{z:g} standard errors and at least {floor:g}); run more steps or repeat seeds to tell the trials apart"))
    if len(ranked) == 1:
        return Verdict(top.best, top.best, (
            f"winner: {top.label}, the only configuration scored: reward gain {top.gain:.3g} ± {top.noise:.2g}"))
    second = ranked[1]
    lead = top.objective - second.objective
    margin = max(z * math.hypot(top.noise, second.noise), floor)
    if not lead > margin:
        return Verdict(None, top.best, (
            f"no clear winner: {top.label} (objective {top.objective:.3g}) leads {second.label} "
            f"({second.objective:.3g}) by {lead:.3g}, within the noise margin {margin:.2g} ({z:g} standard errors "
            f"of the difference, at least {floor:g}); run more steps or repeat seeds to tell them apart"))
    return Verdict(top.best, top.best, (
        f"winner: {top.label}: objective {top.objective:.3g} (reward gain {top.gain:.3g} ± {top.noise:.2g}), "
        f"ahead of {second.label} by {lead:.3g}, beyond the noise margin {margin:.2g}"))


def recommended_config(base: GRPOConfig, best: Mapping[str, Any], knobs: Sequence[str]) -> GRPOConfig:
    """``base`` with the best trial's knobs, validated like any user config."""
    return GRPOConfig(**{**base.model_dump(mode="json"), **{k: best[k] for k in knobs}})


def recipe_reference(recipe: str | os.PathLike) -> str:
    """How recommended.yaml names its recipe: relative to the current folder when inside it (the repository root,
    as the recipes' launch commands assume, also inside a `ray job submit` working_dir), else absolute."""
    path = Path(recipe).resolve()
    try:
        return path.relative_to(Path.cwd().resolve()).as_posix()
    except ValueError:
        return str(path)


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else value  # numpy scalars from a sampler


def recommended_yaml(winner: Mapping[str, Any], knobs: Sequence[str], *, recipe: str | os.PathLike | None,
                     overrides: Sequence[str] = (), header: Sequence[str] = ()) -> str:
    """recommended.yaml: ``recipe:`` (when the sweep had one) and the knobs the sweep chose, nothing else: no
    output_dir, no tracking URI, no copy of every default. The sweep's other ``key=value`` overrides (a shortened
    ``num_steps``, a ``cpus_per_learner`` that fit the cluster) are listed in a comment, to repeat them by hand."""
    chosen = {k: _plain(winner[k]) for k in knobs if k not in REPEAT_KNOBS}
    other = [o for o in overrides if o.partition("=")[0].strip().lstrip("-").replace("-", "_").lower()
             not in (*chosen, *RUN_KEYS)]
    lines = [f"# {line}" for line in header]
    lines.append("# Run it: vlm-rl grpo --config recommended.yaml output_dir=...   (or python -m ray_jobs.grpo --config ...)")
    if other:
        lines.append(f"# The sweep's trials also ran with: {' '.join(other)} (not carried over; add them to repeat)")
    body: dict[str, Any] = {}
    if recipe is not None:
        body["recipe"] = recipe_reference(recipe)
    else:
        lines.append("# No recipe: every other key keeps the GRPOConfig default.")
    body.update(chosen)
    return "\n".join(lines) + "\n" + yaml.safe_dump(body, sort_keys=False)


def objective_figure(rows: Sequence[Mapping[str, Any]], histories: Mapping[str, Sequence[tuple[int, float]]]):
    """Left: objective per trial (completed green, stopped orange, error grey). Right: reward per step."""
    from matplotlib.figure import Figure

    fig = Figure(figsize=(11, 4))
    bars, curves = fig.subplots(1, 2)
    names = [str(r["trial"] or f"#{i}") for i, r in enumerate(rows)]
    values = [r["objective"] if isinstance(r["objective"], (int, float)) else 0.0 for r in rows]
    colors = ["tab:green" if r["status"] == "completed" else "tab:grey" if r["status"].startswith("error")
              else "tab:orange" for r in rows]
    bars.barh(names[::-1], values[::-1], color=colors[::-1])
    bars.axvline(0.0, color="black", linewidth=0.8)
    bars.set_xlabel("objective (reward gain − instability penalties)")
    bars.set_title("trials (green completed, orange stopped early)")
    for name, points in histories.items():
        if points:
            curves.plot([s for s, _ in points], [v for _, v in points], marker="o", label=name)
    curves.set_xlabel("step")
    curves.set_ylabel("reward/total")
    curves.set_title("reward per step")
    if any(histories.values()):
        curves.legend(fontsize=7)
    fig.tight_layout()
    return fig


def write_table(rows: Sequence[Mapping[str, Any]], folder: Path) -> tuple[Path, Path]:
    folder.mkdir(parents=True, exist_ok=True)
    csv_path, json_path = folder / "trials.csv", folder / "trials.json"
    with csv_path.open("w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=list(rows[0]) if rows else ["trial"])
        writer.writeheader()
        writer.writerows(rows)
    json_path.write_text(json.dumps(list(rows), indent=2, default=str))
    return csv_path, json_path


def print_table(rows: Sequence[Mapping[str, Any]], knobs: Sequence[str]) -> None:
    from rich.console import Console
    from rich.table import Table

    table = Table(title="GRPO sweep trials (best first)")
    columns = ["trial", "status", *knobs, "objective", "reward_gain", "gain_noise", "kl_out_of_band",
               "loss_oscillation", "reward_collapse", "step"]
    for column in columns:
        table.add_column(column, overflow="fold")  # never cut a trial name or a status to "tri…"
    for row in rows:
        table.add_row(*(f"{v:.4g}" if isinstance(v, float) else str(v) for v in (row.get(c) for c in columns)))
    console = Console(stderr=True)
    if not console.is_terminal:  # a log file or a pipe has no width: print the table at its natural width
        console = Console(stderr=True, width=400)  # the table itself stays as narrow as its content
    console.print(table)


def _reward_points(output_dir: str) -> list[tuple[int, float]]:
    from tuning.trial import read_step_rows

    rows = read_step_rows(Path(output_dir) / "metrics.jsonl") if output_dir else {}
    return [(s, r["reward/total"]) for s, r in sorted(rows.items()) if "reward/total" in r]


def check_stop_on(base: GRPOConfig, stop_on: str) -> None:
    if stop_on not in STOP_ON:
        raise ConfigError(f"--stop-on: expected one of {STOP_ON}, got {stop_on!r}")
    if stop_on == "val_map50" and not base.eval_steps:
        raise ConfigError("--stop-on val_map50: needs eval_steps > 0 (the trials must evaluate on val_data)")


def run_sweep(
    base: GRPOConfig,
    space: Mapping[str, Any],
    *,
    num_samples: int = 4,
    sweep_dir: str | Path | None = None,
    max_concurrent_trials: int = 1,
    grace_period: int = 1,
    reduction_factor: int = 2,
    weights: ObjectiveWeights = ObjectiveWeights(),
    seed: int = 0,
    stop_on: str = "objective",
    recipe: str | os.PathLike | None = None,
    overrides: Sequence[str] = (),
    cluster: FoundCluster | None = None,
) -> dict[str, Any]:
    """Run the sweep; returns ``{parent_run_id, rows, best, verdict, recommended_path, sweep_dir, tracking_uri}``
    (``best``: the winner, None when no trial beats the others beyond the noise; ``recipe`` and ``overrides``: what
    recommended.yaml refers to; ``cluster``: the running cluster ``choose_cluster`` picked, left for a private Ray
    when it cannot be joined).

    ``stop_on``: what ASHA compares trials by at each rung: ``objective`` (reward gain, penalised for KL and
    instability) or ``val_map50`` (the latest val mAP@0.5: needs ``eval_steps`` and ``val_data``; each trial
    then also evaluates before its first step, so every report carries one).
    """
    check_stop_on(base, stop_on)
    if stop_on == "val_map50":
        base = base.model_copy(update={"eval_on_start": True})
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from tuning.trial import grpo_trial
    from vlm_rl.reports.compare import write_report
    from vlm_rl.tracking.mlflow_logger import RunTracker

    # First: a sweep that cannot fit the cluster fails here, in seconds, before any run is recorded.
    connect(base, max_concurrent_trials, cluster)
    sweep = Path(sweep_dir or base.output_dir).resolve()
    sweep.mkdir(parents=True, exist_ok=True)
    uri = base.tracking_uri or f"sqlite:///{sweep / 'mlflow.db'}"
    knobs = list(space)
    ensure_experiment(uri, base.experiment_name)
    model = Path(base.model_path).name
    parent = RunTracker(uri, base.experiment_name, run_name=f"sweep-grpo-{model}-{num_samples}trials",
                        artifact_location=artifact_root(uri), local_dir=sweep,
                        tags={"vlm_rl.kind": "sweep", "vlm_rl.algorithm": "grpo"})
    parent.log_params({
        **{f"space.{k}": v for k, v in describe_space(space).items()},
        "num_samples": num_samples,
        "scheduler": f"ASHA(time_attr=step, metric={stop_on}, grace={grace_period}, rf={reduction_factor})",
        "max_concurrent_trials": max_concurrent_trials, "objective": json.dumps(weights.__dict__),
        **{f"base.{k}": v for k, v in base.model_dump(mode="json").items() if k not in knobs},
    })
    trial_base = {**base.model_dump(mode="json"), "tracking_uri": uri}
    trainable = tune.with_resources(
        tune.with_parameters(grpo_trial, base=trial_base, sweep_dir=str(sweep), parent_run_id=parent.run_id,
                             weights=weights),
        trial_resources(base),
    )
    tuner = tune.Tuner(
        trainable,
        param_space=dict(space),
        tune_config=tune.TuneConfig(
            # the concurrency limit lives in the search algorithm below; Tune ignores (and warns about)
            # max_concurrent_trials next to a BasicVariantGenerator
            metric=stop_on, mode="max", num_samples=num_samples,
            scheduler=ASHAScheduler(time_attr="step", max_t=base.num_steps, grace_period=grace_period,
                                    reduction_factor=reduction_factor),
            search_alg=BasicVariantGenerator(random_state=seed, max_concurrent=max_concurrent_trials),
            reuse_actors=False,
        ),
        run_config=tune.RunConfig(name="tune", storage_path=str(sweep / "ray_tune"), stop=UnstableStopper(),
                                  verbose=0),
    )
    status = "FAILED"
    try:
        grid = tuner.fit()
        results = [(r.config or {}, r.metrics or {}, r.error) for r in grid]
        rows = trials_table(results, knobs)
        _close_trial_runs(MlflowClient(uri), rows)
        verdict = sweep_verdict(rows, knobs)
        best = verdict.winner
        csv_path, json_path = write_table(rows, sweep)
        for path in (csv_path, json_path):
            parent.log_artifact(path, "sweep")
        for i, row in enumerate(rows):
            if isinstance(row["objective"], (int, float)):
                parent.log_metrics({"trial_objective": row["objective"]}, step=i)
        histories = {str(r["trial"]): _reward_points(str(r["output_dir"])) for r in rows}
        parent.log_figure(objective_figure(rows, histories), "sweep/objective_per_trial.png")
        dirs = [str(r["output_dir"]) for r in rows if r["output_dir"] and (Path(r["output_dir"]) / "metrics.jsonl").is_file()]
        if dirs:
            parent.log_artifact(write_report(dirs, sweep / "comparison.html"), "sweep")
        recommended_path = None
        parent.set_tags({"vlm_rl.sweep.verdict": verdict.text})
        stale = sweep / "recommended.yaml"
        if stale.is_file():  # an earlier sweep's recommendation in this folder would read as this one's
            stale.unlink()
        if best is not None:
            recommended_config(base, best, knobs)  # the knobs validate over the base, like any user config
            recommended_path = sweep / "recommended.yaml"
            header = [f"Recommended by GRPO sweep {parent.run_id} ({uri}):", verdict.text]
            recommended_path.write_text(recommended_yaml(best, knobs, recipe=recipe, overrides=overrides,
                                                         header=header))
            parent.log_artifact(recommended_path, "sweep")
            parent.log_metrics({"best_objective": float(best["objective"])}, step=0)
            parent.set_tags({"vlm_rl.best_trial": best["trial"], "vlm_rl.best_run_id": best["run_id"]})
        status = "FINISHED"
        print_table(rows, knobs)
        return {"parent_run_id": parent.run_id, "rows": rows, "best": best, "verdict": verdict.text,
                "sweep_dir": str(sweep), "recommended_path": str(recommended_path) if recommended_path else None,
                "tracking_uri": uri}
    finally:
        parent.finish(status)


def _close_trial_runs(client, rows: Sequence[Mapping[str, Any]]) -> None:
    """Trials Tune stopped never closed their MLflow run: mark them KILLED and tag every trial's outcome."""
    for row in rows:
        run_id = row.get("run_id")
        if not run_id:
            continue
        try:
            client.set_tag(run_id, "vlm_rl.sweep.status", row["status"])
            if isinstance(row["objective"], (int, float)):
                client.log_metric(run_id, "sweep/objective", float(row["objective"]), step=int(row["step"] or 0))
            if client.get_run(run_id).info.status == "RUNNING":
                client.set_terminated(run_id, "KILLED")
        except Exception as exc:  # bookkeeping must not lose the sweep's results
            print(f"[sweep] could not update trial run {run_id}: {exc}", file=sys.stderr)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m tuning.sweep_grpo", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--config", help="base GRPO config YAML (the knobs not searched)")
    parser.add_argument("--space", default="default",
                        help="named search space (default, tiny-cpu) or a YAML file {knob: {choice|uniform|...: [...]}}")
    parser.add_argument("--num-samples", type=int, default=4, help="trials to run")
    parser.add_argument("--sweep-dir", help="folder for trials, tables and the MLflow store; default output_dir")
    parser.add_argument("--max-concurrent", type=int, default=1, help="trials at once (1 on a small machine)")
    parser.add_argument("--grace-period", type=int, default=1, help="ASHA: steps before a trial may be stopped")
    parser.add_argument("--reduction-factor", type=int, default=2, help="ASHA: keep 1/N of trials at each rung")
    parser.add_argument("--seed", type=int, default=0, help="seed of the search (trials keep the config's seed)")
    parser.add_argument("--stop-on", choices=STOP_ON, default="objective",
                        help="what ASHA stops trials on: the objective, or the latest val mAP@0.5 (needs eval_steps)")
    parser.add_argument("--address", default="auto",
                        help="Ray to run on: auto (default) = RAY_ADDRESS, else a cluster running here (the vlm-rl "
                             "local cluster, the last `ray start`), else a private local Ray; local = always a "
                             "private Ray; HOST:PORT = that cluster")
    parser.add_argument("overrides", nargs="*", help="key=value overrides of the base config")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(normalise_tokens(parser, list(sys.argv[1:] if argv is None else argv)))
    try:
        base = load_config_with_hints(GRPOConfig, args.config, args.overrides)
        space = load_space(args.space)
        if args.num_samples < 1:
            raise ConfigError(f"--num-samples: must be at least 1, got {args.num_samples}")
        check_stop_on(base, args.stop_on)
        cluster = choose_cluster(args.address)  # after every check that needs no Ray
        if cluster is not None and base.tracking_uri is None and os.environ.get("MLFLOW_TRACKING_URI"):
            # the joined local cluster's MLflow server (its env.sh), as for the jobs submitted to it
            base = load_config_with_hints(GRPOConfig, args.config, args.overrides)
        result = run_sweep(base, space, num_samples=args.num_samples, sweep_dir=args.sweep_dir,
                           max_concurrent_trials=args.max_concurrent, grace_period=args.grace_period,
                           reduction_factor=args.reduction_factor, seed=args.seed, stop_on=args.stop_on,
                           recipe=args.config, overrides=args.overrides, cluster=cluster)
    except ConfigError as exc:  # a bad config, or a sweep the cluster cannot fit
        print(f"tuning.sweep_grpo: {exc}", file=sys.stderr)
        return 2
    if not any(isinstance(r.get("objective"), (int, float)) for r in result["rows"]):
        print("tuning.sweep_grpo: no trial produced a score; see the trials table", file=sys.stderr)
        return 1
    print(f"# verdict: {result['verdict']}")
    if result["recommended_path"] is not None:
        print(f"# recommended config ({result['recommended_path']}):")
        print(Path(result["recommended_path"]).read_text())
    else:
        print("# no recommended config: no trial beats the others beyond the noise (trials.csv has every score)")
    print(f"# parent MLflow run {result['parent_run_id']} at {result['tracking_uri']}")
    from vlm_rl.tracking.ui_links import browse_lines, sweep_links  # the trials and results, classic UI

    print("\n".join(browse_lines(result["tracking_uri"], result["parent_run_id"], links=sweep_links)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
