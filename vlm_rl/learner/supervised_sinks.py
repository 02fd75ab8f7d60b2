"""Rank-0 side effects of an SFT/DPO run: the MLflow run (metrics.jsonl first), progress lines, summary."""

from __future__ import annotations

import time
from pathlib import Path

from vlm_rl.config import BaseConfig
from vlm_rl.learner.checkpoint import log_checkpoint_artifacts
from vlm_rl.learner.supervised_loop import TrainState


def artifact_location(tracking_uri: str) -> str | None:
    """For a SQLite store, artifacts beside the database (else Ray's session folder would get them)."""
    if tracking_uri.startswith("sqlite:///"):
        return (Path(tracking_uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
    return None


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


class RunRecorder:
    """One MLflow run for a supervised job; ``loss_key`` is the metric the summary and progress report."""

    def __init__(self, config: BaseConfig, *, algorithm: str, loss_key: str, family: str,
                 run_name: str | None = None, parent_run_id: str | None = None,
                 resumed_run_id: str | None = None, num_steps: int = 0):
        from vlm_rl.tracking.mlflow_logger import RunTracker

        self.config = config
        self.loss_key = loss_key
        self.num_steps = num_steps
        self.started = time.time()
        self.last_checkpoint: str | None = None
        uri = config.resolved_tracking_uri
        name = run_name or config.run_name or f"{algorithm}-{Path(config.model_path).name}"
        self.tracker = RunTracker(
            uri, config.experiment_name, run_name=name, artifact_location=artifact_location(uri),
            local_dir=config.output_dir, parent_run_id=parent_run_id, run_id=resumed_run_id,
            tags={"vlm_rl.algorithm": algorithm, "vlm_rl.model_family": family},
        )
        if resumed_run_id is None:
            self.tracker.log_params(config.model_dump(mode="json"))
        self.run_id = self.tracker.run_id

    def log_metrics(self, metrics: dict, step: int) -> None:
        self.tracker.log_metrics(metrics, step=step)

    def progress(self, step: int, metrics: dict) -> None:
        extra = "".join(f" {k.split('/')[-1]} {metrics[k]:.3f}" for k in ("rewards/accuracy", "rewards/margin")
                        if k in metrics)
        print(f"step {step}/{self.num_steps} {self.loss_key} {metrics[self.loss_key]:.4f}{extra} "
              f"grad_norm {metrics.get('grad_norm', 0.0):.3f} {metrics['samples_per_hour']:.0f} samples/h",
              flush=True)

    def on_checkpoint(self, path: Path) -> None:
        self.last_checkpoint = str(path)
        self.tracker.set_tags({"vlm_rl.last_checkpoint": str(path)})
        log_checkpoint_artifacts(self.tracker, path, lora=self.config.lora_r > 0)

    def fail(self) -> None:
        self.tracker.finish(status="FAILED")

    def finish(self, state: TrainState, final_dir: str | None, eval_metrics: dict | None = None) -> dict:
        """Log the summary (and eval metrics at the last step), close the run, return the summary."""
        history = state.history
        k = max(1, min(5, len(history) // 3))
        if eval_metrics:
            self.tracker.log_metrics(eval_metrics, step=state.step)
        summary = {
            "run_id": self.run_id,
            "steps": state.step,
            "samples": state.samples,
            "loss_first": _mean(history[:k], self.loss_key),
            "loss_last": _mean(history[-k:], self.loss_key),
            "samples_per_hour": history[-1]["samples_per_hour"] if history else None,
            "checkpoint": self.last_checkpoint,
            "final_model": final_dir,
            "eval": eval_metrics or {},
            "wall_seconds": time.time() - self.started,
            "history": history,
        }
        if final_dir:
            self.tracker.set_tags({"vlm_rl.final_model": final_dir})
        self.tracker.log_dict({k: v for k, v in summary.items() if k != "history"}, "summary.json")
        self.tracker.finish(status="FINISHED")
        return summary
