"""Rank-0 side effects of a GRPO run: MLflow, health alerts, rollout records and pictures, progress, eval."""

from __future__ import annotations

import json
import time
from pathlib import Path

from vlm_rl.config import GRPOConfig
from vlm_rl.grpo.loop import LoopSinks, LoopState
from vlm_rl.learner.checkpoint import log_checkpoint_artifacts
from vlm_rl.rollout.types import Completion, PromptItem

#: At the end of a run, how long to wait for an unreachable MLflow to come back before giving up
#: (everything is in metrics.jsonl regardless).
FINAL_FLUSH_WAIT_S = 120.0
#: Rollout pictures are drawn at least this wide, whatever MAX_IMAGE_SIZE the model sees.
MIN_PICTURE_SIDE = 320


def _mean(rows: list[dict], key: str) -> float | None:
    values = [r[key] for r in rows if key in r]
    return sum(values) / len(values) if values else None


def eval_line(step: int, metrics: dict) -> str:
    """The console line for an evaluation on val_data (keys with or without the ``eval/`` prefix)."""
    def get(key: str) -> float:
        return float(metrics.get(f"eval/{key}", metrics.get(key, float("nan"))))

    return (f"[eval] step {step}: mAP@0.5 {get('mAP_50'):.3f} mAP@[.5:.95] {get('mAP_50_95'):.3f} "
            f"precision {get('precision'):.2f} recall {get('recall'):.2f} format-valid {get('format_valid_rate'):.2f} "
            f"({get('n_pred'):.0f} boxes predicted for {get('n_gt'):.0f} objects in {get('n_images'):.0f} images)")


class RunSinks:
    """Everything rank 0 does besides training; one object so the worker function stays short."""

    def __init__(self, config: GRPOConfig, cfg: dict, family: str, rollout, resumed_run_id: str | None = None):
        from vlm_rl.tracking.health import HealthMonitor
        from vlm_rl.tracking.mlflow_logger import RunTracker

        self.config = config
        self.family = family
        self.labels = list(cfg.get("labels") or [])
        self.rollout = rollout
        self.output_dir = Path(config.output_dir)
        self.rollouts_file = self.output_dir / "rollouts.jsonl"
        self.monitor = HealthMonitor.for_config(config, echo=False)  # judged for this config; printed below
        self.alerts: list = []
        self.last_checkpoint: str | None = None
        self.started = time.time()
        name = cfg.get("run_name") or config.run_name or f"grpo-{Path(config.model_path).name}-g{config.num_generations}"
        uri = config.resolved_tracking_uri
        artifacts = None
        if uri.startswith("sqlite:///"):  # artifacts beside the store, so every run of it finds them
            artifacts = (Path(uri.removeprefix("sqlite:///")).parent / "mlartifacts").as_uri()
        self.tracker = RunTracker(
            uri, config.experiment_name, run_name=name, artifact_location=artifacts,
            local_dir=str(self.output_dir), parent_run_id=cfg.get("parent_run_id"), run_id=resumed_run_id,
            tags={"vlm_rl.algorithm": "grpo", "vlm_rl.model_family": family},
        )
        if resumed_run_id is None:
            self.tracker.log_params({**config.model_dump(mode="json"), "labels": ",".join(self.labels)})
        self.run_id = self.tracker.run_id

    def loop_sinks(self) -> LoopSinks:
        return LoopSinks(log_metrics=self.log_metrics, on_rollouts=self.on_rollouts,
                         evaluate=self.evaluate if self.config.eval_steps else None, progress=self.progress)

    # -- sinks ---------------------------------------------------------------------------------
    def log_metrics(self, metrics: dict, step: int) -> None:
        if any(k.startswith("warmup/") for k in metrics):
            self.tracker.log_metrics(metrics, step=step)
            return
        # the rollout pool's last weight sync (seconds, bytes, actors per transport), if the loop left it out
        metrics = {**getattr(self.rollout, "last_sync", {}), **metrics}
        self.tracker.log_metrics(metrics, step=step)
        from vlm_rl.tracking.health import alerts_to_tags

        new = self.monitor.update(step, metrics)
        if new:
            self.alerts.extend(new)
            for alert in new:
                print(f"[health] step {step} {alert.severity.upper()} {alert.code}: {alert.message} "
                      f"→ {alert.remedy}", flush=True)
        tags, numeric = alerts_to_tags(self.alerts)
        self.tracker.set_tags(tags)
        self.tracker.log_metrics(numeric, step=step)

    def on_rollouts(self, step: int, items: list[PromptItem], completions: list[Completion]) -> None:
        with self.rollouts_file.open("a") as fh:
            for c in completions:
                item = items[c.prompt_index]
                fh.write(json.dumps({
                    "step": step, "sample_id": c.sample_id, "image": item.image, "prompt": self._instruction(),
                    "completion": c.text, "reward": c.reward, "rewards": c.rewards, "solution": c.solution,
                }) + "\n")
        every = self.config.log_images_every
        if every and (step == 1 or step % every == 0):
            self.tracker.log_image(self._picture(step, items, completions), f"rollouts/step_{step:05d}.png")

    def _instruction(self) -> str:
        from vlm_rl.models.prompts import detection_instruction

        return detection_instruction(self.labels)

    def _picture(self, step: int, items: list[PromptItem], completions: list[Completion]):
        """The first prompt's group (and one more prompt): ground truth, the model's boxes, the reward."""
        from vlm_rl.reports.rollout_images import rollout_grid, rollout_picture
        from vlm_rl.rollout.engine import prepare_prompt

        pictures = []
        shown = [c for c in completions if c.prompt_index < 2][: 2 * self.config.num_generations]
        for c in shown:
            image, _ = prepare_prompt(items[c.prompt_index], self.config.max_image_size, self.family)
            title = f"step {step} · reward {c.reward:.2f} (det {c.rewards['detection']:.2f}, fmt {c.rewards['format']:.2f})"
            picture, _ = rollout_picture(image, c.solution, c.text, self.family, title=title,
                                         min_side=MIN_PICTURE_SIDE)
            pictures.append(picture)
        return rollout_grid(pictures, columns=self.config.num_generations)

    def evaluate(self, step: int) -> dict:
        metrics = self.rollout.evaluate(self.config.val_data)
        print(eval_line(step, metrics), flush=True)
        if step == 0:  # the starting point (eval_on_start) has no GRPO step row to travel with
            self.tracker.log_metrics(metrics, step=0)
        return metrics

    def progress(self, step: int, metrics: dict) -> None:
        print(
            f"step {step}/{self.config.num_steps} reward {metrics['reward/total']:.3f} "
            f"(fmt {metrics['reward/format']:.2f} det {metrics['reward/detection']:.2f}) loss {metrics['loss']:.4f} "
            f"kl {metrics['kl']:.4f} len {metrics['completion_length/mean']:.0f} "
            f"gen {metrics['time/generation']:.1f}s train {metrics['time/training']:.1f}s "
            f"{metrics['samples_per_hour']:.0f} samples/h",
            flush=True,
        )

    def on_checkpoint(self, path: Path, state: LoopState, seconds: float | None = None) -> None:
        """Record the checkpoint: its path as a tag, its size and write time as metrics (LoRA files as artifacts)."""
        size = sum(f.stat().st_size for f in path.rglob("*") if f.is_file())
        self.tracker.log_metrics({"checkpoint/gb": size / 1e9, **({"checkpoint/seconds": seconds} if seconds else {})},
                                 step=state.step)
        self.last_checkpoint = str(path)
        self.tracker.set_tags({"vlm_rl.last_checkpoint": str(path)})
        log_checkpoint_artifacts(self.tracker, path, lora=self.config.lora_r > 0)

    # -- end -----------------------------------------------------------------------------------
    def finish(self, state: LoopState | None = None, status: str = "FINISHED") -> dict:
        if state is None:
            self.tracker.finish(status=status)
            return {}
        history = state.history
        k = max(1, min(5, len(history) // 3))
        summary = {
            "run_id": self.run_id,
            "steps": state.step,
            "samples": state.samples,
            "reward_first": _mean(history[:k], "reward/total"),
            "reward_last": _mean(history[-k:], "reward/total"),
            "samples_per_hour": history[-1]["samples_per_hour"] if history else None,
            "mean_kl": _mean(history, "kl"),
            "phase_times": {p: _mean(history, f"time/{p}") for p in ("generation", "training", "weight_sync", "step")},
            "checkpoint": self.last_checkpoint,
            "health": [a.code for a in self.alerts],
            "wall_seconds": time.time() - self.started,
            "history": history,
            "start_eval": state.start_eval,
        }
        try:
            from vlm_rl.reports.curves import plot_training_curves

            curves: dict[str, list[tuple[int, float]]] = {}
            for row in history:
                for key, value in row.items():
                    if key != "step" and isinstance(value, (int, float)):
                        curves.setdefault(key, []).append((row["step"], float(value)))
            keep = ("reward/total", "reward/format", "reward/detection", "loss", "kl", "samples_per_hour")
            figure = plot_training_curves({k: v for k, v in curves.items() if k in keep}, title=self.run_id)
            self.tracker.log_figure(figure, "plots/training_curves.png")
        except Exception as exc:  # a plot must never fail a finished run
            print(f"[vlm-rl] could not plot curves: {exc}", flush=True)
        self.tracker.log_dict({k: v for k, v in summary.items() if k != "history"}, "summary.json")
        self.tracker.finish(status=status, wait_seconds=FINAL_FLUSH_WAIT_S)
        return summary
