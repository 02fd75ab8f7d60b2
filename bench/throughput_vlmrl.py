"""vlm-rl's side of the throughput bench: its real GRPO loop, colocated or with a rollout-actor pool on the same GPU."""

from __future__ import annotations

import os
import tempfile
import time
from pathlib import Path

import torch
from throughput_common import _free, _peak_gb, _reset_peak, summarise

#: result key of each vlm-rl rollout mode
#: ("colocated-unshared": the learner repeats each prompt per completion, share_prompt_forward off, for an A/B;
#: "colocated-fp8": the same rollout sampling with FP8 projections, rollout_dtype=fp8;
#: "colocated-flex": the shared-prompt row on a FlexAttention block mask, packed_attention=flex, against the dense
#: mask of "colocated")
MODE_KEYS = {"colocated": "vlm-rl", "colocated-unshared": "vlm-rl-unshared", "colocated-fp8": "vlm-rl-fp8",
             "colocated-flex": "vlm-rl-flex",
             "pool": "vlm-rl-pool", "pool-async": "vlm-rl-pool-async"}


def start_pool(model_dir: Path, args, gpu: bool):
    """One rollout actor on (a fraction of) this process's GPU, in a private local Ray cluster."""
    import ray

    from vlm_rl.rollout.pool import RolloutPool

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    if not ray.is_initialized():  # one GPU advertised: the actor lands on the GPU the learner uses (cuda:0)
        ray.init(address="local", num_cpus=max(2, os.cpu_count() or 1), num_gpus=1 if gpu else 0,
                 logging_level="WARNING")
    worker = dict(
        model_path=str(model_dir), labels=None, max_image_size=args.image_size, max_new_tokens=args.new_tokens,
        min_new_tokens=args.new_tokens, batch_size=args.prompts * args.generations, lora_rank=args.lora_r,
        lora_alpha=2 * args.lora_r, seed=0, dtype="bfloat16" if gpu else "float32",
        engine="hf" if args.hf_generate else "fast", compile_decode=args.compile_decode,
    )
    return RolloutPool(1, worker, num_cpus=1, num_gpus=args.rollout_gpus if gpu else 0)


def run_vlmrl(model_dir: Path, train: str, args, mode: str = "colocated") -> dict:
    from vlm_rl.config import GRPOConfig
    from vlm_rl.data.schema import load_jsonl
    from vlm_rl.grpo.loop import LoopSinks, grpo_train
    from vlm_rl.learner.engine import build_engine
    from vlm_rl.learner.policy import build_policy
    from vlm_rl.learner.policy_learner import PolicyLearner
    from vlm_rl.learner.sampler import PromptSampler
    from vlm_rl.rollout.colocated import ColocatedRollout

    gpu = args.device == "cuda"
    labels = None
    if args.engine == "deepspeed":  # one DeepSpeed rank, no MPI (LocalEngine needs no process group; left
        for key, value in (("RANK", "0"), ("LOCAL_RANK", "0"), ("WORLD_SIZE", "1")):  # unset, TRL after it
            os.environ.setdefault(key, value)  # does not try an env:// rendezvous)
    pool_mode = mode in ("pool", "pool-async")
    # "pool-async" is the pool with max(1, --max-staleness), so one call measures sync and async side by side
    staleness = (max(1, args.max_staleness) if mode == "pool-async" else args.max_staleness) if pool_mode else 0
    config = GRPOConfig(
        model_path=str(model_dir), train_data=train, max_image_size=args.image_size, num_learners=1,
        use_gpu=gpu, bf16=gpu, zero_stage=0, lora_r=args.lora_r, lora_alpha=2 * args.lora_r,
        num_generations=args.generations, prompts_per_step=args.prompts, num_steps=args.warmup + args.steps,
        beta=args.beta, loss_type="dapo", max_new_tokens=args.new_tokens, learning_rate=1e-5,
        rollout_mode="pool" if pool_mode else "colocated", share_prompt_forward=mode != "colocated-unshared",
        packed_attention="flex" if mode == "colocated-flex" else "dense",
        output_dir=tempfile.mkdtemp(prefix="vlmrl-bench-"),
        micro_batch_size=args.micro_batch, compile_layers=args.compile_learner,
        compile_decode=args.compile_decode and not pool_mode,  # the actor gets it through its own kwargs
        max_staleness=staleness, rollout_dtype="fp8" if mode == "colocated-fp8" else "model",
        rollout_engine="hf" if args.hf_generate else "fast", rollout_gpus=args.rollout_gpus if pool_mode else 0.0,
        gpus_per_learner=1.0 - args.rollout_gpus if pool_mode and gpu else 1.0,
    )
    _reset_peak()
    t0 = time.perf_counter()
    model, processor, family = build_policy(config, device=args.device)
    n = config.prompts_per_step * config.num_generations
    micro = min(args.micro_batch or n, n)
    accumulation = -(-n // micro)
    if args.engine == "local":
        from vlm_rl.learner.local_engine import LocalEngine

        engine = LocalEngine(model, config, args.device, accumulation=accumulation)
    else:
        engine = build_engine(model, config, micro_batch=micro, accumulation=accumulation)
    learner = PolicyLearner(engine, processor, family, config, labels, micro_batch_size=micro)
    if pool_mode:
        rollout = start_pool(model_dir, args, gpu)
        actor_out: dict = {}
        _keep_last_result(rollout, "collect", actor_out)  # generate is collect(submit); async calls collect
    else:
        rollout = ColocatedRollout(engine, processor, family, labels=labels, max_image_size=args.image_size,
                                   max_new_tokens=args.new_tokens, min_new_tokens=args.new_tokens, seed=0,
                                   fast=not args.hf_generate, compile_decode=config.compile_decode,
                                   fp8=config.rollout_dtype == "fp8")
    samples = load_jsonl(train).samples
    rows: list[dict] = []
    phase_peaks: dict[str, float] = {}
    if gpu:
        phase_peaks["setup_gb"] = _peak_gb()
        if not pool_mode:  # (the pool's memory is the actor's, another process: read from its results)
            _track_phase_peak(rollout, "generate", "rollout_peak_gb", phase_peaks)
        _track_phase_peak(learner, "grpo_step", "learner_peak_gb", phase_peaks)
    if args.profile:
        _profile_last_call(learner, "grpo_step", config.num_steps, Path(args.profile) / "learner_kernels.txt")
        if not pool_mode:
            _profile_last_call(rollout, "generate", config.num_steps, Path(args.profile) / "rollout_kernels.txt")

    def progress(step: int, metrics: dict) -> None:
        row = {k[5:]: v for k, v in metrics.items() if k.startswith("time/")}
        if pool_mode:
            row.update({f"rollout_{k}": v for k, v in actor_out.get("timings", {}).items()})
            row.update(rollout.last_sync)  # weight_sync/seconds, bytes, actors per transport
            if "peak_memory_gb" in actor_out:
                row["actor_peak_gb"] = actor_out["peak_memory_gb"]
            if gpu:  # both processes: what the GPU itself has in use
                free, total = torch.cuda.mem_get_info()
                row["device_used_gb"] = (total - free) / 2**30
        else:
            row.update({f"rollout_{k}": v for k, v in rollout.last_timings.items()})
        row.update(phase_peaks)
        row.update({k: v for k, v in metrics.items() if k.startswith("tis/")})  # sampler/learner mismatch
        row["tokens"] = metrics["completion_length/mean"] * n
        if gpu:
            row["peak_gb_so_far"] = torch.cuda.max_memory_allocated() / 2**30
        rows.append(row)
        print(f"  vlm-rl step {step}: " + " ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)

    setup = time.perf_counter() - t0
    try:
        grpo_train(config, learner=learner, rollout=rollout, sampler=PromptSampler(samples, seed=0),
                   sinks=LoopSinks(progress=progress))
        info = rollout.engine_info() if pool_mode else _engine_info(rollout)
    finally:
        rollout.shutdown()
    result = summarise(MODE_KEYS[mode], rows, args)
    result["setup_seconds"] = setup
    if gpu:  # phases reset the peak counter: the run's peak is the max over them (and the setup)
        result["peak_memory_gb"] = max(result["peak_memory_gb"], phase_peaks.get("overall_peak_gb", 0.0))
        result["phase_peaks_gb"] = dict(phase_peaks)
        if pool_mode:  # learner and actor are two processes on one GPU: their peaks add up (an upper bound)
            result["learner_peak_memory_gb"] = result["peak_memory_gb"]
            result["actor_peak_memory_gb"] = max(r.get("actor_peak_gb", 0.0) for r in rows)
            result["peak_memory_gb"] += result["actor_peak_memory_gb"]
    result["rollout_mode"] = mode
    result["max_staleness"] = config.max_staleness
    result["engine"] = type(engine).__name__
    result["micro_batch"] = micro
    result["decode_mode"] = info["decode_mode"]
    result["decode_lora_merged_modules"] = info["merged_modules"]
    result["compiled_learner_layers"] = len(learner.compiled.layers)
    del engine, learner, model  # rollout (its static cache already released) goes with this frame
    _free()
    return result


def _engine_info(rollout) -> dict:
    decoder = rollout.decoder
    return {"decode_mode": decoder.mode if decoder is not None else "hf-generate",
            "merged_modules": decoder.merged_modules if decoder is not None else 0}


def _keep_last_result(obj, method: str, into: dict) -> None:
    """Wrap ``obj.method`` so ``into`` holds its last result's extras (the pool's actor timings, memory)."""
    inner = getattr(obj, method)

    def wrapped(*a, **kw):
        out = inner(*a, **kw)
        into.clear()
        into.update({k: v for k, v in out.items() if k != "completions"})
        return out

    setattr(obj, method, wrapped)


def _track_phase_peak(obj, method: str, key: str, into: dict) -> None:
    """Wrap ``obj.method`` so ``into[key]`` holds the peak GPU GB reached inside its last call (peak reset
    before it, so each phase's figure is its own; the overall peak is the max over phases)."""
    inner = getattr(obj, method)

    def wrapped(*a, **kw):
        into["overall_peak_gb"] = max(into.get("overall_peak_gb", 0.0), _peak_gb())
        _reset_peak()
        into[key.replace("peak", "start")] = torch.cuda.memory_allocated() / 2**30
        try:
            return inner(*a, **kw)
        finally:
            torch.cuda.synchronize()
            into[key] = torch.cuda.max_memory_allocated() / 2**30
            into[key.replace("peak", "end")] = torch.cuda.memory_allocated() / 2**30
            into["overall_peak_gb"] = max(into.get("overall_peak_gb", 0.0), into[key])

    setattr(obj, method, wrapped)


def _profile_last_call(obj, method: str, calls: int, out: Path) -> None:
    """Profile the ``calls``-th call of ``obj.method`` (the last timed step): the top kernels by GPU time go
    to ``out`` (where the step's time goes, beyond the phase totals). That step's time includes the
    profiler's overhead, so the bench's medians are read from the other steps."""
    inner = getattr(obj, method)
    seen = {"n": 0}

    def wrapped(*a, **kw):
        seen["n"] += 1
        if seen["n"] != calls:
            return inner(*a, **kw)
        from torch.profiler import ProfilerActivity, profile

        activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if torch.cuda.is_available() else [])
        with profile(activities=activities) as prof:
            result = inner(*a, **kw)
            if torch.cuda.is_available():
                torch.cuda.synchronize()
        sort = "cuda_time_total" if torch.cuda.is_available() else "cpu_time_total"
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(prof.key_averages().table(sort_by=sort, row_limit=45, max_name_column_width=90))
        print(f"  profile of {method} -> {out}", flush=True)
        return result

    setattr(obj, method, wrapped)
