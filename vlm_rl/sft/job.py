"""The SFT job: LoRA supervised fine-tuning on detection answers, on Ray Train + DeepSpeed learners.

``run_sft(config) -> dict`` is the one entry point (``vlm-rl sft``, ``ray_jobs/sft.py``). The target of
each image is the ideal answer (``vlm_rl.sft.targets``): ground-truth boxes in the model's
coordinates, as JSON, ending with ``<|im_end|>`` — the recommended first stage before GRPO, which then
starts from ``<output_dir>/final`` (merged) or loads the adapter of a ``checkpoint-samples-N``.
"""

from __future__ import annotations

from vlm_rl.config import ConfigError, SFTConfig
from vlm_rl.data.schema import dataset_labels, load_jsonl
from vlm_rl.learner.job_common import make_torch_trainer, prepare_output_and_data
from vlm_rl.learner.supervised_loop import total_steps


def prepare_sft(config: SFTConfig) -> tuple[SFTConfig, list[str], int]:
    """Paths, data (synthetic when none), model; returns (config, labels, number of steps). No Ray yet."""
    config = prepare_output_and_data(config)
    samples = load_jsonl(config.train_data, labels=config.labels, on_error="raise").samples
    if config.batch_size % config.num_learners:
        raise ConfigError(f"batch_size: {config.batch_size} must be a multiple of num_learners={config.num_learners}")
    if not samples:
        raise ConfigError(f"train_data: {config.train_data} has no samples")
    steps = total_steps(len(samples), config.batch_size, config.num_epochs, config.max_steps)
    return config, config.labels or dataset_labels(samples), steps


def train_sft_worker(cfg: dict) -> None:
    """Entry point of every learner rank (``TorchTrainer(train_loop_per_worker=...)``)."""
    from vlm_rl.learner.comm import Comm
    from vlm_rl.learner.sampler import PromptSampler
    from vlm_rl.learner.supervised_worker import make_learner, per_rank_batch, run_supervised_worker
    from vlm_rl.rollout.types import PromptItem
    from vlm_rl.sft.targets import SFTTargets

    config = SFTConfig(**cfg["config"])
    learner = make_learner(config, cfg["labels"], per_rank_batch(config.batch_size, Comm().world_size))
    targets = SFTTargets(learner.processor, learner.family, config.max_image_size)
    items = [PromptItem.from_sample(s) for s in load_jsonl(config.train_data, on_error="skip").samples]

    def step(batch: list[PromptItem]) -> dict:
        return learner.sft_step(batch, targets(batch))

    run_supervised_worker(
        cfg, config, learner, step, PromptSampler(items, seed=config.seed), algorithm="sft",
        loss_key="sft_loss", num_steps=cfg["num_steps"], num_examples=len(items),
    )


def run_sft(config: SFTConfig, *, parent_run_id: str | None = None, run_name: str | None = None,
            storage_path: str | None = None, evaluate: bool = True, eval_limit: int | None = None,
            eval_max_new_tokens: int = 128) -> dict:
    """Train to ``max_steps`` (or ``num_epochs``); returns the summary (also in <output_dir>/summary.json).

    ``evaluate``: score ``<output_dir>/final`` on val_data at the end (``eval/*`` metrics in the run).
    """
    from vlm_rl.learner.job_common import connect_ray

    config, labels, steps = prepare_sft(config)
    connect_ray(config)  # fails in seconds when the run cannot fit the cluster
    trainer = make_torch_trainer(
        train_sft_worker,
        {"config": config.model_dump(mode="json"), "labels": labels, "num_steps": steps,
         "batch_size": config.batch_size, "parent_run_id": parent_run_id, "run_name": run_name,
         "evaluate": evaluate, "eval_limit": eval_limit, "eval_max_new_tokens": eval_max_new_tokens},
        config, "sft", storage_path,
    )
    from vlm_rl.learner.run_end import clear_run_end, raise_if_failed

    clear_run_end(config.output_dir)
    trainer.fit()
    return raise_if_failed(config.output_dir)  # a full disk or failed export: FatalRunError, no restart loop
