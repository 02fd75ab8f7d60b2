"""The DPO job: LoRA DPO on chosen/rejected pairs, on Ray Train + DeepSpeed learners.

``run_dpo(config) -> dict`` is the one entry point (``vlm-rl dpo``, ``ray_jobs/dpo.py``). Written on the
shared pieces (policy, engine, checkpoints, the SFT/DPO loop) rather than TRL's DPOTrainer, so it runs in
the same Ray Train + DeepSpeed workers, with the same prompts (``build_policy_inputs``) as GRPO and SFT.
Without ``pairs`` it makes synthetic ones (ground truth vs a wrong answer) from the synthetic dataset.
"""

from __future__ import annotations

from pathlib import Path

from vlm_rl.config import ConfigError, DPOConfig
from vlm_rl.learner.job_common import make_torch_trainer, prepare_output_and_data
from vlm_rl.learner.supervised_loop import total_steps


def prepare_dpo(config: DPOConfig) -> tuple[DPOConfig, int, int]:
    """Paths, model, pairs (synthetic when none, validated either way); returns (config, n_pairs, steps)."""
    from vlm_rl.dpo.pairs import load_pairs, synthetic_pairs, write_pairs

    if config.lora_r <= 0:
        raise ConfigError("lora_r: DPO needs LoRA (lora_r > 0): the reference is the model with its adapter disabled")
    if config.batch_size % config.num_learners:
        raise ConfigError(f"batch_size: {config.batch_size} must be a multiple of num_learners={config.num_learners}")
    config = prepare_output_and_data(config, synthetic=config.pairs is None)
    if config.pairs is None:
        from vlm_rl.data.schema import dataset_labels, load_jsonl
        from vlm_rl.models.families import model_family

        samples = load_jsonl(config.train_data, labels=config.labels).samples
        rows = synthetic_pairs(samples, config.labels or dataset_labels(samples), model_family(config.model_path),
                               config.max_image_size)
        pairs_file = write_pairs(rows, Path(config.output_dir) / "data" / "dpo_pairs.jsonl")
        config = config.model_copy(update={"pairs": str(pairs_file)})
    try:
        n_pairs = len(load_pairs(config.pairs))
    except (OSError, ValueError) as exc:
        raise ConfigError(f"pairs: {exc}") from exc
    return config, n_pairs, total_steps(n_pairs, config.batch_size, config.num_epochs, config.max_steps)


def train_dpo_worker(cfg: dict) -> None:
    """Entry point of every learner rank (``TorchTrainer(train_loop_per_worker=...)``)."""
    from vlm_rl.dpo.learner import DPOLearner
    from vlm_rl.dpo.pairs import load_pairs
    from vlm_rl.learner.comm import Comm
    from vlm_rl.learner.sampler import PromptSampler
    from vlm_rl.learner.supervised_worker import make_learner, per_rank_batch, run_supervised_worker

    config = DPOConfig(**cfg["config"])
    learner = make_learner(config, None, per_rank_batch(config.batch_size, Comm().world_size), DPOLearner)
    pairs = load_pairs(config.pairs)
    run_supervised_worker(
        cfg, config, learner, learner.dpo_step, PromptSampler(pairs, seed=config.seed), algorithm="dpo",
        loss_key="loss", num_steps=cfg["num_steps"], num_examples=len(pairs),
    )


def run_dpo(config: DPOConfig, *, parent_run_id: str | None = None, run_name: str | None = None,
            storage_path: str | None = None, evaluate: bool = False, eval_limit: int | None = None,
            eval_max_new_tokens: int = 128) -> dict:
    """Train to ``max_steps`` (or ``num_epochs`` over the pairs); returns the summary (also summary.json).

    ``evaluate``: score ``<output_dir>/final`` on val_data at the end (``eval/*`` metrics in the run).
    """
    from vlm_rl.learner.job_common import connect_ray

    config, _, steps = prepare_dpo(config)
    connect_ray(config)  # fails in seconds when the run cannot fit the cluster
    trainer = make_torch_trainer(
        train_dpo_worker,
        {"config": config.model_dump(mode="json"), "num_steps": steps, "batch_size": config.batch_size,
         "parent_run_id": parent_run_id, "run_name": run_name, "evaluate": evaluate, "eval_limit": eval_limit,
         "eval_max_new_tokens": eval_max_new_tokens},
        config, "dpo", storage_path,
    )
    from vlm_rl.learner.run_end import clear_run_end, raise_if_failed

    clear_run_end(config.output_dir)
    trainer.fit()
    return raise_if_failed(config.output_dir)  # a full disk or failed export: FatalRunError, no restart loop
