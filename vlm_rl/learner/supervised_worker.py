"""What every SFT/DPO learner rank does around its step function: policy + engine, resume, MLflow,
checkpoints, the merged ``final/`` export, an optional evaluation, the summary.

``sft.job`` and ``dpo.job`` differ only in the data they sample and the step they take.
"""

from __future__ import annotations

import copy
import os
import shutil
from collections.abc import Callable
from pathlib import Path

import torch

from vlm_rl.config import BaseConfig
from vlm_rl.learner.checkpoint import agree, load_checkpoint, resolve_resume, save_checkpoint
from vlm_rl.learner.comm import Comm
from vlm_rl.learner.disk import size_for_checks
from vlm_rl.learner.engine import build_engine
from vlm_rl.learner.job_common import worker_device
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner, accumulation_steps
from vlm_rl.learner.run_end import SUMMARY_FILE, FatalRunError, FinalExportError, end_fatal, write_json
from vlm_rl.learner.supervised_loop import TrainSinks, TrainState, state_dict, supervised_train

FINAL_DIR = "final"


def per_rank_batch(batch_size: int, world: int) -> int:
    """Examples per rank per step; the global batch must split evenly over the learners."""
    if batch_size % world:
        raise ValueError(f"batch_size: {batch_size} must be a multiple of num_learners={world}")
    return batch_size // world


def make_learner(config: BaseConfig, labels: list[str] | None, per_rank: int,
                 learner_cls: type[PolicyLearner] = PolicyLearner) -> PolicyLearner:
    """Policy (LoRA or full) in a DeepSpeed engine, accumulating ``per_rank`` examples per optimizer step."""
    torch.set_num_threads(max(1, int(os.environ.get("OMP_NUM_THREADS", "1"))))
    model, processor, family = build_policy(config, device=worker_device())
    micro, accumulation = accumulation_steps(per_rank, config.micro_batch_size)
    engine = build_engine(model, config, micro_batch=micro, accumulation=accumulation)
    return learner_cls(engine, processor, family, config, labels, micro_batch_size=micro)


def export_final(learner: PolicyLearner, config: BaseConfig, comm: Comm) -> str | None:
    """Collective: gather the trained weights, then rank 0 writes base + weights merged to ``final/``.
    A failed write raises :class:`FinalExportError` on every rank (no rank left at a barrier)."""
    weights = learner.export_weights()
    path, error = None, None
    if comm.rank == 0:
        from vlm_rl.learner.export import write_merged_model

        out = Path(config.output_dir) / FINAL_DIR
        try:
            adapter = copy.deepcopy(learner.adapter_config())
            path = str(write_merged_model(config.model_path, weights, out, adapter))
        except Exception as exc:  # noqa: BLE001 - every rank must hear of it
            from vlm_rl.learner.disk import GB, free_bytes

            shutil.rmtree(out.with_name(out.name + ".tmp"), ignore_errors=True)
            error = (f"the final export to {out} failed ({type(exc).__name__}: {exc}); {free_bytes(out.parent) / GB:.1f} "
                     f"GB are free at {out.parent}; the last checkpoint is intact")
    error = agree(error)
    if error:
        raise FinalExportError(error)
    return path


def evaluate_final(final_dir: str, config: BaseConfig, options: dict) -> dict:
    """Detection metrics of the exported model on val_data (``eval/*``); {} when not asked or unavailable."""
    if not (options.get("evaluate") and config.val_data):
        return {}
    try:
        from vlm_rl.eval.runner import evaluate_model
    except ImportError as exc:
        print(f"[vlm-rl] evaluation skipped: {exc}", flush=True)
        return {}
    try:
        metrics = evaluate_model(final_dir, config.val_data, max_image_size=config.max_image_size,
                                 max_new_tokens=int(options.get("eval_max_new_tokens", 128)),
                                 limit=options.get("eval_limit"))
    except Exception as exc:  # a failed evaluation must not fail a finished training run
        print(f"[vlm-rl] evaluation of {final_dir} failed: {exc!r}", flush=True)
        return {}
    from vlm_rl.eval.metrics import mlflow_metrics

    return mlflow_metrics(metrics, prefix="eval")


def run_supervised_worker(
    cfg: dict,
    config: BaseConfig,
    learner: PolicyLearner,
    step_fn: Callable[[list], dict],
    sampler,
    *,
    algorithm: str,
    loss_key: str,
    num_steps: int,
    num_examples: int,
) -> None:
    """The rank's whole run (every rank calls it); rank 0 writes summary.json and reports to Ray Train."""
    import ray.train

    comm = Comm()
    output_dir = Path(config.output_dir)
    state, run_id = TrainState(), None
    # An explicit --resume, or (when Ray Train restarts failed workers) the newest checkpoint of this run.
    checkpoint = resolve_resume(config.resume or "auto", output_dir)
    if checkpoint is not None:
        saved = load_checkpoint(learner.engine, checkpoint)
        state, run_id = TrainState(**saved["train"]), saved.get("run_id")

    recorder = None
    if comm.rank == 0:
        from vlm_rl.learner.supervised_sinks import RunRecorder

        recorder = RunRecorder(config, algorithm=algorithm, loss_key=loss_key, family=learner.family,
                               run_name=cfg.get("run_name"), parent_run_id=cfg.get("parent_run_id"),
                               resumed_run_id=run_id, num_steps=num_steps)

    size = size_for_checks(config) if comm.rank == 0 else None

    def save(s: TrainState) -> None:
        weights = learner.export_weights()  # collective under ZeRO-3
        payload = comm.broadcast({"train": state_dict(s), "algorithm": algorithm,
                                  "config": config.model_dump(mode="json"),
                                  "run_id": recorder.run_id if recorder else None})
        path = save_checkpoint(learner.engine, output_dir, s.samples, payload, weights,
                               adapter_config=learner.adapter_config(), keep=config.keep_checkpoints,
                               expected_bytes=size.per_checkpoint if size else None, disk_check=config.disk_check,
                               model_config=learner.model_config(), base_model=config.model_path)
        if recorder:
            recorder.on_checkpoint(path)

    sinks = TrainSinks(checkpoint=save)
    if recorder:
        sinks.log_metrics, sinks.progress = recorder.log_metrics, recorder.progress
    summary: dict = {}
    try:
        state = supervised_train(
            step_fn, sampler=sampler, batch_size=cfg["batch_size"], num_steps=num_steps,
            num_examples=num_examples, save_every_samples=config.save_every_samples,
            lr=lambda: learner.engine.get_lr()[0], comm=comm, state=state, sinks=sinks,
        )
        final_dir = export_final(learner, config, comm)
        if recorder:
            try:  # trained and exported: a failure now is not worth a restart (it would only fail again)
                summary = recorder.finish(state, final_dir, evaluate_final(final_dir, config, cfg))
                write_json(output_dir / SUMMARY_FILE, summary)
            except Exception as exc:  # noqa: BLE001
                raise FinalExportError(f"training finished and {final_dir} is written, but the summary could not "
                                       f"be: {type(exc).__name__}: {exc}") from exc
    except FatalRunError as exc:  # a full disk, a failed export: no Ray Train restart (vlm_rl.learner.run_end)
        end_fatal(exc, output_dir, comm.rank, recorder.fail if recorder else None)
        return
    except BaseException:
        if recorder:
            recorder.fail()
        raise
    ray.train.report({k: v for k, v in summary.items() if isinstance(v, (int, float))})
