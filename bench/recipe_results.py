"""What a recipe run left behind, read for bench/gpu_recipes.py: its metrics, checkpoints, MLflow run, fault
recovery and sweep trials, and the docs' markdown table of a results file."""

from __future__ import annotations

import json
import re
import statistics
from pathlib import Path


def logged_steps(output_dir: Path) -> list[int]:
    """GRPO steps in metrics.jsonl in the order logged (one ``loss`` row per step the learner ran)."""
    return [int(r["step"]) for r in read_metrics(output_dir) if r.get("name") == "loss"]


def read_metrics(output_dir: Path) -> list[dict]:
    path = output_dir / "metrics.jsonl"
    rows: list[dict] = []
    if path.is_file():
        for line in path.read_text().splitlines():
            try:
                rows.append(json.loads(line))
            except json.JSONDecodeError:
                pass
    return rows


def series(rows: list[dict], key: str) -> list[float]:
    """Values of metric ``key`` in step order (metrics.jsonl holds one {step, name, value} row per metric)."""
    values = {}
    for row in rows:
        if row.get("name") == key and isinstance(row.get("value"), (int, float)):
            values[int(row.get("step", 0))] = float(row["value"])
    return [values[s] for s in sorted(values)]


def folder_gb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file()) / 1e9


def measure(output_dir: Path) -> dict:
    rows = read_metrics(output_dir)
    steps = series(rows, "time/step")
    later = steps[1:] or steps  # the first step compiles / warms up
    checkpoints = sorted(output_dir.glob("checkpoint-samples-*"), key=lambda p: int(p.name.rsplit("-", 1)[1]))
    sync = series(rows, "time/weight_sync")
    out = {
        "steps": len(steps),
        "s_per_step": statistics.median(later) if later else None,
        "first_step_s": steps[0] if steps else None,
        "learner_peak_gb": max(series(rows, "memory/peak_gb"), default=None),
        "actor_peak_gb": max(series(rows, "memory/rollout_peak_gb"), default=None),
        "weight_sync_s": statistics.median(sync[1:] or sync) if sync else None,
        "weight_sync_export_s": _median(series(rows, "weight_sync/export_seconds")),
        "weight_sync_stage_s": _median(series(rows, "weight_sync/stage_seconds")),
        "weight_sync_send_s": _median(series(rows, "weight_sync/seconds")),
        "weight_sync_gb": max(series(rows, "weight_sync/bytes"), default=0.0) / 1e9 or None,
        "checkpoint_gb": folder_gb(checkpoints[-1]) if checkpoints else None,
        "checkpoints": [p.name for p in checkpoints],
        "checkpoint_s": _median(series(rows, "checkpoint/seconds")),
        "eval_map50": series(rows, "eval/mAP_50")[-1:] or None,
        "final_model": (output_dir / "final" / "config.json").is_file(),
    }
    summary = output_dir / "summary.json"
    if summary.is_file():
        data = json.loads(summary.read_text())
        out["run_id"] = data.get("run_id")
        out["summary_wall_s"] = data.get("wall_seconds")
    return out


def _median(values: list[float]) -> float | None:
    return statistics.median(values[1:] or values) if values else None


def mlflow_check(tracking_uri: str, run_id: str | None) -> dict:
    """What the MLflow server (the UI's REST API) holds for the run: status, metric and artifact counts."""
    if not run_id or not tracking_uri.startswith("http"):
        return {}
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri)
    run = client.get_run(run_id)
    artifacts = [a.path for a in client.list_artifacts(run_id)]
    pictures = [a.path for a in client.list_artifacts(run_id, "rollouts")] if "rollouts" in artifacts else []
    return {"mlflow_status": run.info.status, "mlflow_metrics": len(run.data.metrics), "mlflow_artifacts": artifacts,
            "pictures": len(pictures)}


def fault_result(fault, output_dir: Path) -> dict:
    """Did the run resume by itself and finish, with every step once in its history?"""
    out = dict(fault.record or {"fault": f"{fault.kind}: not injected (step {fault.at_step} never logged)"})
    if fault.record:
        out["recovered_s"] = (output_dir / "summary.json").stat().st_mtime - fault.record["killed_at"] \
            if (output_dir / "summary.json").is_file() else None
    out["steps_logged_in_order"] = logged_steps(output_dir)
    summary = output_dir / "summary.json"
    if summary.is_file():
        history = [row["step"] for row in json.loads(summary.read_text()).get("history", [])]
        out["history_steps"] = history
        out["history_one_row_per_step"] = history == list(range(1, len(history) + 1))
    return out


def sweep_result(sweep_dir: Path, log: str, env: dict, wall_s: float) -> dict:
    """Trials, their outcome and val mAP, trials per hour, and the parent/child runs in MLflow."""
    out: dict = {}
    table = sweep_dir / "trials.json"
    if table.is_file():
        rows = json.loads(table.read_text())
        out["trials"] = [{k: r.get(k) for k in ("trial", "status", "num_generations", "beta", "learning_rate",
                                                 "val_map50", "objective", "step")} for r in rows]
        out["trials_per_hour"] = 3600.0 * len(rows) / wall_s if wall_s else None
        steps = [series(read_metrics(Path(r["output_dir"])), "memory/peak_gb") for r in rows if r.get("output_dir")]
        out["trial_learner_peak_gb"] = max((max(s) for s in steps if s), default=None)
    match = re.search(r"parent MLflow run (\w+)", log)
    uri = env.get("MLFLOW_TRACKING_URI", "")
    if match and uri.startswith("http"):
        from mlflow.tracking import MlflowClient

        client = MlflowClient(uri)
        parent = client.get_run(match.group(1))
        children = client.search_runs([parent.info.experiment_id],
                                      filter_string=f"tags.mlflow.parentRunId = '{parent.info.run_id}'")
        out.update(parent_run_id=parent.info.run_id, parent_status=parent.info.status,
                   child_runs=[(c.info.run_name, c.info.status) for c in children])
    return out


def markdown_table(results: list[dict]) -> str:
    """The docs' table of one results file (docs/PERFORMANCE.md, issue 23)."""
    def num(value, fmt="{:.2f}"):
        return fmt.format(value) if isinstance(value, (int, float)) else "-"

    lines = ["| run | ok (exit) | job wall s | s/step (first) | learner / actor peak GB | weight sync s "
             "(export + stage, send) | checkpoint GB, s | MLflow | fault / sweep | error |", "|" + " --- |" * 10]
    for r in results:
        sync = f"{num(r.get('weight_sync_s'))} ({num(r.get('weight_sync_export_s'))} + " \
               f"{num(r.get('weight_sync_stage_s'))}, {num(r.get('weight_sync_send_s'))})"
        mlflow = f"{r.get('mlflow_status', '-')}, {r.get('pictures', 0)} pictures"
        error = (r.get("error") or "").strip().splitlines()[:1]
        lines.append(
            f"| `{r.get('name', r['recipe'])}` | {r['ok']} ({r.get('exit')}) | {num(r.get('wall_s'), '{:.0f}')} | "
            f"{num(r.get('s_per_step'))} ({num(r.get('first_step_s'), '{:.0f}')}) | "
            f"{num(r.get('learner_peak_gb'), '{:.1f}')} / {num(r.get('actor_peak_gb'), '{:.1f}')} | {sync} | "
            f"{num(r.get('checkpoint_gb'), '{:.1f}')}, {num(r.get('checkpoint_s'), '{:.1f}')} | {mlflow} | "
            f"{_fault_or_sweep(r)} | {error[0][:120] if error else ''} |")
    return "\n".join(lines)


def _fault_or_sweep(r: dict) -> str:
    """The table's cell for a fault run (what was killed, the steps as logged, one history row per step, seconds
    from the kill to the end) or a sweep (trials, their outcome, trials/hour, the MLflow parent)."""
    if r.get("fault"):
        return (f"{r['fault']}; steps {r.get('steps_logged_in_order')}; one history row per step: "
                f"{r.get('history_one_row_per_step')}; ended {r.get('recovered_s') or 0:.0f} s after the kill")
    if r.get("trials") is not None:
        statuses = [t.get("status") for t in r["trials"]]
        return (f"{len(statuses)} trials ({', '.join(map(str, statuses))}), "
                f"{r.get('trials_per_hour') or 0:.1f} trials/h, parent {r.get('parent_status')} with "
                f"{len(r.get('child_runs') or [])} children")
    return ""
