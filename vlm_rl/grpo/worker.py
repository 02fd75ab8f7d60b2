"""The Ray Train worker function: wires the real collaborators into ``grpo_train`` on each learner rank."""

from __future__ import annotations

import os
import time
from pathlib import Path

import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.grpo.loop import LoopSinks, LoopState, grpo_train, state_dict
from vlm_rl.learner.checkpoint import (
    REFERENCE_FILE,
    load_checkpoint,
    resolve_resume,
    save_checkpoint,
)
from vlm_rl.learner.comm import Comm
from vlm_rl.learner.disk import saves_reference, size_for_checks
from vlm_rl.learner.engine import build_engine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner, accumulation_steps
from vlm_rl.learner.reference import (
    freeze_reference,
    load_reference_state,
    reference_state,
)
from vlm_rl.learner.run_end import SUMMARY_FILE, FatalRunError, FinalExportError, end_fatal, write_json
from vlm_rl.learner.sampler import PromptSampler
from vlm_rl.sft.targets import SFTTargets


def _device() -> str:
    if torch.cuda.is_available():
        import ray.train.torch

        return str(ray.train.torch.get_device())
    return "cpu"


def colocated_rollout(engine, processor, family: str, config: GRPOConfig, labels: list[str]):
    """The one-learner rollout source: the learner's own model samples (no actor pool, no weight copies)."""
    from vlm_rl.rollout.colocated import ColocatedRollout

    if config.num_learners != 1:
        raise ValueError(f"rollout_mode: colocated needs num_learners=1, got {config.num_learners}")
    return ColocatedRollout(engine, processor, family, labels=labels, max_image_size=config.max_image_size,
                            max_new_tokens=config.max_new_tokens, temperature=config.temperature,
                            top_p=config.top_p, format_weight=config.format_weight, seed=config.seed,
                            compile_decode=config.compile_decode, fp8=config.rollout_dtype == "fp8")


def train_grpo_worker(cfg: dict) -> None:
    """Entry point of every learner rank (``TorchTrainer(train_loop_per_worker=...)``)."""
    import ray.train

    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    config = GRPOConfig(**cfg["config"])
    rollout = cfg["rollout_pool"]
    labels: list[str] = cfg["labels"]
    output_dir = Path(config.output_dir)
    comm = Comm()

    model, processor, family = build_policy(config, device=_device())
    # completions per rank per optimizer step: steps_per_generation mini-batches of a rank's share (issue 25)
    per_rank = config.prompts_per_step // comm.world_size * config.num_generations // config.steps_per_generation
    micro, accumulation = accumulation_steps(per_rank, cfg.get("micro_batch_size") or config.micro_batch_size)
    if config.rollout_mode == "colocated" and comm.world_size == 1:
        # One GPU: nothing to shard; plain AdamW keeps no persistent fp32 gradient buffers (peak memory).
        from vlm_rl.learner.local_engine import LocalEngine

        engine = LocalEngine(model, config, _device(), accumulation=accumulation)
    else:
        engine = build_engine(model, config, micro_batch=micro, accumulation=accumulation)
    learner = PolicyLearner(engine, processor, family, config, labels, micro_batch_size=micro)
    learner.advantage_scale = float(cfg.get("advantage_scale", 1.0))
    if not config.sft_warmup_steps:
        # Full fine-tuning with beta > 0: freeze the starting weights as the KL reference now, before any
        # resume, so a restarted run measures KL to the same reference. (After an SFT warm-up the learner
        # takes it at its first GRPO step instead.)
        learner.take_reference()
    if config.rollout_mode == "colocated":
        rollout = colocated_rollout(engine, processor, family, config, labels)
    samples = load_jsonl(config.train_data, on_error="skip").samples
    sampler = PromptSampler(samples, seed=config.seed)

    # Resume: an explicit --resume, or (after a worker failure, when Ray Train restarts us) the newest one.
    state = LoopState()
    resume = config.resume or ("auto" if cfg.get("auto_resume", True) else None)
    checkpoint = resolve_resume(resume, output_dir)
    # The KL reference after an SFT warm-up is the policy GRPO started from: checkpoints carry it
    # (reference.safetensors, written once, hard-linked into later ones) and a resume loads it.
    saved_reference: dict[str, Path | None] = {"file": None}
    if checkpoint is not None:
        saved = load_checkpoint(engine, checkpoint)
        state = LoopState(**saved["loop"])
        if learner.reference is None and saves_reference(config) and state.sft_steps >= config.sft_warmup_steps:
            if comm.broadcast((checkpoint / REFERENCE_FILE).is_file()):
                from safetensors.torch import load_file

                learner.reference = freeze_reference(engine, config)  # the structure; then the saved weights
                mine = comm.rank == 0 or learner.reference.kind != "zero3-sharded"
                load_reference_state(learner.reference, load_file(str(checkpoint / REFERENCE_FILE)) if mine else None)
                saved_reference["file"] = checkpoint / REFERENCE_FILE
            elif comm.rank == 0:
                print(f"[vlm-rl] {checkpoint} has no {REFERENCE_FILE} (written by an older version): the KL "
                      "reference is frozen from the resumed weights, not from the policy at GRPO start", flush=True)

    sinks = LoopSinks()
    run_sinks = None
    if comm.rank == 0:
        from vlm_rl.grpo.sinks import RunSinks

        run_sinks = RunSinks(config, cfg, family, rollout, resumed_run_id=(saved["run_id"] if checkpoint else None))
        sinks = run_sinks.loop_sinks()

    size = size_for_checks(config) if comm.rank == 0 else None

    def save(loop_state: LoopState) -> None:
        started = time.perf_counter()
        weights = learner.export_weights()
        keep_reference = saves_reference(config) and learner.reference is not None
        linked = saved_reference["file"]
        payload = {"loop": state_dict(loop_state), "config": config.model_dump(mode="json"),
                   "run_id": run_sinks.run_id if run_sinks else None,
                   "link_reference": str(linked) if keep_reference and linked and linked.is_file() else None}
        payload = comm.broadcast(payload)
        link = payload.pop("link_reference")
        reference = reference_state(learner.reference) if keep_reference and link is None else None
        expected = size.per_checkpoint + (size.reference if keep_reference and link is None else 0) if size else None
        path = save_checkpoint(engine, output_dir, loop_state.samples, payload, weights,
                               adapter_config=learner.adapter_config(), keep=config.keep_checkpoints,
                               expected_bytes=expected, reference=reference, reference_from=link,
                               disk_check=config.disk_check,
                               model_config=learner.model_config(), base_model=config.model_path)
        if keep_reference:
            saved_reference["file"] = path / REFERENCE_FILE
        if run_sinks:
            run_sinks.on_checkpoint(path, loop_state, seconds=time.perf_counter() - started)

    sinks.checkpoint = save
    sft = SFTTargets(processor, family, config.max_image_size) if config.sft_warmup_steps else None
    summary: dict = {}
    try:
        final = grpo_train(config, learner=learner, rollout=rollout, sampler=sampler, comm=comm, state=state,
                           sinks=sinks, sft_targets=sft)
        if comm.rank == 0:
            try:  # trained to the end: a failure now is not worth a restart (it would only fail again)
                summary = run_sinks.finish(final)
                write_json(output_dir / SUMMARY_FILE, summary)
            except Exception as exc:  # noqa: BLE001
                raise FinalExportError(f"training finished and its last checkpoint is {run_sinks.last_checkpoint}, "
                                       f"but the summary could not be written: {type(exc).__name__}: {exc}") from exc
    except FatalRunError as exc:  # a full disk, a failed export: no Ray Train restart (vlm_rl.learner.run_end)
        end_fatal(exc, output_dir, comm.rank, (lambda: run_sinks.finish(status="FAILED")) if run_sinks else None)
        return
    except BaseException:
        if run_sinks:
            run_sinks.finish(status="FAILED")
        raise
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})
