"""Sweep GRPO knobs with Ray Tune: trials are GRPO runs on Ray Train, nested under one MLflow run.

    python -m tuning.sweep_grpo --config ray_jobs/configs/recipes/grpo-tiny-cpu.yaml \\
        --space tiny-cpu --num-samples 3 --sweep-dir outputs/sweep [key=value ...]

Without RAY_ADDRESS the sweep starts a private local Ray that advertises the CPUs its trials need; on a
cluster (RAY_ADDRESS, `ray job submit`) it first checks that ``--max-concurrent`` trials fit and stops in
seconds with the numbers and an override that fits when they do not (vlm_rl.learner.resources).

Each trial reports its score after every step (see ``tuning.trial``); ASHA stops trials that fall
behind the others at the same step, and a stopper ends any trial whose reward collapses or whose KL
runs away. At the end the parent run holds the trials table, a plot of the objective per trial, the
comparison report and the recommended config, which is also printed.
"""

from __future__ import annotations

import argparse
import csv
import json
import math
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import yaml
from ray.tune import Stopper

from tuning.objective import ObjectiveWeights
from tuning.search_spaces import describe_space, load_space
from vlm_rl.commands._common import load_config_with_hints, normalise_tokens
from vlm_rl.config import ConfigError, GRPOConfig

#: Trial table columns besides the knobs.
SCORE_COLUMNS = ("objective", "val_map50", "reward_gain", "kl_out_of_band", "loss_oscillation", "reward_collapse", "alarms",
                 "warnings", "step", "reward", "samples_per_hour")


#: What ASHA may compare trials by (``--stop-on``).
STOP_ON = ("objective", "val_map50")


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


def pick_best(rows: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
    """The best completed trial (rows come sorted by ``trials_table``); else the best scored one."""
    scored = [r for r in rows if isinstance(r.get("objective"), (int, float))]
    return scored[0] if scored else None


def recommended_config(base: GRPOConfig, best: Mapping[str, Any], knobs: Sequence[str]) -> GRPOConfig:
    """``base`` with the best trial's knobs, validated like any user config."""
    return GRPOConfig(**{**base.model_dump(mode="json"), **{k: best[k] for k in knobs}})


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
    columns = ["trial", "status", *knobs, "objective", "reward_gain", "kl_out_of_band", "loss_oscillation",
               "reward_collapse", "step"]
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
) -> dict[str, Any]:
    """Run the sweep; returns ``{parent_run_id, rows, best, recommended_path, sweep_dir}``.

    ``stop_on``: what ASHA compares trials by at each rung: ``objective`` (reward gain, penalised for KL and
    instability) or ``val_map50`` (the latest val mAP@0.5: needs ``eval_steps`` and ``val_data``; each trial
    then also evaluates before its first step, so every report carries one).
    """
    if stop_on not in STOP_ON:
        raise ConfigError(f"--stop-on: expected one of {STOP_ON}, got {stop_on!r}")
    if stop_on == "val_map50":
        if not base.eval_steps:
            raise ConfigError("--stop-on val_map50: needs eval_steps > 0 (the trials must evaluate on val_data)")
        base = base.model_copy(update={"eval_on_start": True})
    from mlflow.tracking import MlflowClient
    from ray import tune
    from ray.tune.schedulers import ASHAScheduler
    from ray.tune.search import BasicVariantGenerator

    from tuning.trial import grpo_trial
    from vlm_rl.learner.job_common import connect_ray
    from vlm_rl.reports.compare import write_report
    from vlm_rl.tracking.mlflow_logger import RunTracker

    # First: a sweep that cannot fit the cluster fails here, in seconds, before any run is recorded.
    connect_ray(base, sweep_trials=max_concurrent_trials)
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
        best = pick_best(rows)
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
        if best is not None:
            recommended = recommended_config(base, best, knobs)
            # absolute, so the recommended file runs from any folder (and on a cluster, see cluster/README.md)
            recommended = recommended.model_copy(update={"output_dir": str(Path(base.output_dir).resolve())})
            recommended_path = sweep / "recommended.yaml"
            header = (f"# Recommended by GRPO sweep {parent.run_id}: trial {best['trial']} "
                      f"(objective {best['objective']:.4g}, {best['status']})\n")
            recommended_path.write_text(header + yaml.safe_dump(recommended.model_dump(mode="json"), sort_keys=True))
            parent.log_artifact(recommended_path, "sweep")
            parent.log_metrics({"best_objective": float(best["objective"])}, step=0)
            parent.set_tags({"vlm_rl.best_trial": best["trial"], "vlm_rl.best_run_id": best["run_id"]})
        status = "FINISHED"
        print_table(rows, knobs)
        return {"parent_run_id": parent.run_id, "rows": rows, "best": best, "sweep_dir": str(sweep),
                "recommended_path": str(recommended_path) if recommended_path else None, "tracking_uri": uri}
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
        result = run_sweep(base, space, num_samples=args.num_samples, sweep_dir=args.sweep_dir,
                           max_concurrent_trials=args.max_concurrent, grace_period=args.grace_period,
                           reduction_factor=args.reduction_factor, seed=args.seed, stop_on=args.stop_on)
    except ConfigError as exc:  # a bad config, or a sweep the cluster cannot fit
        print(f"tuning.sweep_grpo: {exc}", file=sys.stderr)
        return 2
    if result["recommended_path"] is None:
        print("tuning.sweep_grpo: no trial produced a score; see the trials table", file=sys.stderr)
        return 1
    print(f"# recommended config ({result['recommended_path']}):")
    print(Path(result["recommended_path"]).read_text())
    print(f"# parent MLflow run {result['parent_run_id']} at {result['tracking_uri']}")
    from vlm_rl.tracking.ui_links import browse_lines, sweep_links  # the trials and results, classic UI

    print("\n".join(browse_lines(result["tracking_uri"], result["parent_run_id"], links=sweep_links)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
