"""Shared tiny GRPO settings and the uninterrupted reference run the fault and resume runs are compared with."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest
import torch

from vlm_rl.config import GRPOConfig

# Small enough for a 2-core box (1 learner, 1 rollout actor, 4 steps), big enough to move the weights:
# the supervised warm-up and Adam's momentum change every tensor, GRPO steps on top. Full fine-tuning with
# beta > 0 after the warm-up: the KL reference is the post-warm-up policy, which a resume must load from the
# checkpoint (reference.safetensors), not re-freeze from the resumed weights (issue 23).
SETTINGS = dict(
    model_path="tiny-qwen3-vl", lora_r=0, learning_rate=3e-3, num_learners=1, num_rollout_workers=1,
    prompts_per_step=2, num_generations=4, num_steps=4, sft_warmup_steps=4, max_new_tokens=16,
    max_image_size=64, beta=0.04, zero_stage=2, log_images_every=0, eval_steps=0, synthetic_train_size=16,
    synthetic_val_size=4, synthetic_max_objects=1, disable_gradient_checkpointing=True, seed=0,
    save_every_samples=2, keep_checkpoints=2, max_failures=2,
)
#: Metrics that measure the wall clock, not the computation (they differ between any two runs).
TIMING_PREFIXES = ("time/", "samples_per_hour", "tokens_per_second")


def record(name: str, **figures) -> None:
    """Keep a test's measured figures in test-artifacts/reliability/ (docs/RELIABILITY.md quotes them)."""
    folder = Path(__file__).resolve().parents[2] / "test-artifacts" / "reliability"
    folder.mkdir(parents=True, exist_ok=True)
    (folder / f"{name}.json").write_text(json.dumps(figures, indent=2, default=str))


def max_weight_difference(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys()
    return max((x - b[k]).abs().max().item() for k, x in a.items())


def grpo_config(output_dir: Path, **overrides) -> GRPOConfig:
    return GRPOConfig(**{**SETTINGS, **overrides, "output_dir": str(output_dir)})


def computed(history: list[dict]) -> list[dict]:
    """The metric history without wall-clock figures."""
    return [{k: v for k, v in row.items() if not k.startswith(TIMING_PREFIXES)} for row in history]


def final_weights(summary: dict) -> dict[str, torch.Tensor]:
    from vlm_rl.learner.checkpoint import load_weights

    return load_weights(summary["checkpoint"])


def logged_steps(output_dir: Path) -> list[int]:
    """GRPO steps in metrics.jsonl so far (warm-up rows excluded), in the order logged."""
    path = Path(output_dir) / "metrics.jsonl"
    if not path.is_file():
        return []
    steps = []
    for line in path.read_text().splitlines():
        try:
            row = json.loads(line)
        except json.JSONDecodeError:  # a line being written right now
            continue
        if row["name"] == "loss":
            steps.append(row["step"])
    return steps


class Background:
    """``run_grpo`` in a thread, so a test can inject faults while it runs."""

    def __init__(self, fn, *args, **kwargs):
        self.result = None
        self.error: BaseException | None = None
        self.thread = threading.Thread(target=self._run, args=(fn, args, kwargs), daemon=True)
        self.thread.start()

    def _run(self, fn, args, kwargs):
        try:
            self.result = fn(*args, **kwargs)
        except BaseException as exc:  # re-raised in the test by join()
            self.error = exc

    def wait_for(self, predicate, timeout: float, what: str) -> None:
        deadline = time.time() + timeout
        while not predicate():
            if not self.thread.is_alive():
                raise AssertionError(f"run ended before {what}: {self.error!r}")
            if time.time() > deadline:
                raise AssertionError(f"timed out waiting for {what}")
            time.sleep(0.2)

    def join(self, timeout: float) -> dict:
        self.thread.join(timeout)
        assert not self.thread.is_alive(), "run did not finish in time"
        if self.error is not None:
            raise self.error
        return self.result


@pytest.fixture(scope="session")
def straight_run(ray_cluster, tmp_path_factory) -> dict:
    """The reference: SETTINGS run to the end with no fault and no resume."""
    from vlm_rl.grpo.job import run_grpo

    out = tmp_path_factory.mktemp("straight")
    t0 = time.time()
    summary = run_grpo(grpo_config(out))
    return {"summary": summary, "weights": final_weights(summary), "output_dir": out, "seconds": time.time() - t0}
