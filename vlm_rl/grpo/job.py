"""The GRPO job, driver side: validate → prepare data and model → connect to Ray → pool + trainer → summary.

``run_grpo(config)`` is the single entry point used by ``vlm-rl grpo``, ``ray_jobs/grpo.py`` and Tune.
"""

from __future__ import annotations

from vlm_rl.config import ConfigError, GRPOConfig
from vlm_rl.data.schema import DatasetError, load_jsonl
from vlm_rl.learner.checkpoint import resolve_resume
from vlm_rl.learner.job_common import connect_ray, make_torch_trainer, prepare_output_and_data
from vlm_rl.learner.run_end import clear_run_end, raise_if_failed


def prepare_run(config: GRPOConfig) -> tuple[GRPOConfig, list[str]]:
    """Resolve paths, make the synthetic dataset if none is given, build tiny models; no Ray yet."""
    config = prepare_output_and_data(config)
    try:  # bad data or a bad resume path is the user's input: a clear error (exit 2), before Ray starts
        samples = load_jsonl(config.train_data, labels=config.labels, on_error="raise").samples
        resolve_resume(config.resume, config.output_dir)
    except (DatasetError, FileNotFoundError) as exc:
        raise ConfigError(str(exc) if isinstance(exc, FileNotFoundError) else f"train_data: {exc}") from exc
    if len(samples) < config.prompts_per_step:
        raise ConfigError(
            f"train_data: {config.train_data} has {len(samples)} samples, fewer than prompts_per_step="
            f"{config.prompts_per_step}"
        )
    labels = config.labels or sorted({o.label for s in samples for o in s.objects})
    return config, labels


def rollout_worker_kwargs(config: GRPOConfig, labels: list[str]) -> dict:
    return dict(
        model_path=config.model_path, labels=labels, max_image_size=config.max_image_size,
        max_new_tokens=config.max_new_tokens, temperature=config.temperature, top_p=config.top_p,
        batch_size=config.rollout_batch_size, format_weight=config.format_weight,
        lora_rank=config.lora_r, lora_alpha=config.effective_lora_alpha, seed=config.seed,
        dtype="bfloat16" if config.bf16 else "float32", engine=config.rollout_engine,
        fp8=config.rollout_dtype == "fp8",
    )


def make_rollout_pool(config: GRPOConfig, labels: list[str]):
    from vlm_rl.rollout.pool import RolloutPool

    return RolloutPool(config.num_rollout_workers, rollout_worker_kwargs(config, labels),
                       num_cpus=1, num_gpus=config.rollout_gpus, transport=config.weight_sync)


def run_grpo(config: GRPOConfig, *, parent_run_id: str | None = None, run_name: str | None = None,
             storage_path: str | None = None, pool=None, advantage_scale: float = 1.0) -> dict:
    """Run GRPO to ``config.num_steps``; returns the summary (also in <output_dir>/summary.json).

    ``pool``: an existing rollout pool (kept alive afterwards, e.g. to inspect its weights); else one is
    made for the run and shut down at the end. ``advantage_scale=0`` makes a same-seed control run: the
    same warm-up, prompts and sampling, with the policy-gradient signal removed.
    """
    config, labels = prepare_run(config)  # bad paths and data end here, before the worker's imports and Ray
    from vlm_rl.grpo.worker import train_grpo_worker

    connect_ray(config)  # fails in seconds when the run cannot fit the cluster
    own_pool = pool is None and config.rollout_mode == "pool"  # colocated: the learner samples itself
    pool = make_rollout_pool(config, labels) if own_pool else pool
    trainer = make_torch_trainer(
        train_grpo_worker,
        {
            "config": config.model_dump(mode="json"), "rollout_pool": pool, "labels": labels,
            "parent_run_id": parent_run_id, "run_name": run_name or config.run_name,
            "micro_batch_size": config.micro_batch_size, "advantage_scale": advantage_scale,
        },
        config, "grpo", storage_path,
    )
    clear_run_end(config.output_dir)
    try:
        trainer.fit()
    finally:
        if own_pool:
            pool.shutdown()
    return raise_if_failed(config.output_dir)  # a full disk or failed export: FatalRunError, no restart loop
