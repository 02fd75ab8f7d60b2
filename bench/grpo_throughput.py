"""GRPO throughput, vlm-rl vs TRL's GRPOTrainer: same model, data and algorithm, one process, one GPU.

Both sides get the same random-weight Qwen3-VL architecture (Qwen's real vocabulary), the same pre-resized
synthetic images, 8 prompts x 4 generations per step, exactly ``--new-tokens`` completion tokens (EOS is
suppressed until then on both sides: random weights rarely stop), LoRA r=64 on the language model,
gradient checkpointing, beta=0, loss dapo, bf16. vlm-rl runs its real loop (``grpo_train`` with
``PolicyLearner`` on a DeepSpeed engine and the colocated rollout source); TRL runs ``GRPOTrainer.train``.

``--rollout-mode pool`` (or ``colocated pool`` for both) runs vlm-rl's distributed shape on the same GPU: the
learner in this process as above, plus one ``RolloutWorker`` Ray actor holding its own policy copy on a
fraction of the same GPU (``--rollout-gpus``), sampling with the same engine and synced after every step
(CUDA IPC when both sit on one GPU). Its results are keyed ``vlm-rl-pool``. ``--max-staleness N`` is passed
to ``GRPOConfig.max_staleness`` (asynchronous GRPO: the pool samples up to N steps ahead).

  python bench/grpo_throughput.py --arch 2b 8b --steps 3 --out results.json        # GPU
  python bench/grpo_throughput.py --arch 8b --rollout-mode colocated pool --max-staleness 1   # + pool mode
  python bench/grpo_throughput.py --arch tiny --device cpu --steps 1                 # CPU smoke run

Prints one table row per (arch, framework) and the vlm-rl / TRL ratio; writes everything as JSON.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCHS = {"tiny": "tiny-qwen3-vl", "2b": "qwen3-vl-2b", "8b": "qwen3-vl-8b"}


# -- shared set-up ------------------------------------------------------------------------------------
def build_model_dir(arch: str, root: Path, device: str) -> Path:
    """A saved random-weight model of ``arch`` (tiny: the test model; 2b/8b: built on ``device`` in bf16)."""
    from vlm_rl.models.loading import resolve_model_path

    if arch == "tiny":
        return resolve_model_path(ARCHS[arch])
    out = root / ARCHS[arch]
    if (out / "config.json").is_file():
        return out
    from transformers import GenerationConfig, Qwen3VLForConditionalGeneration

    from vlm_rl.models.processor import make_processor
    from vlm_rl.models.tiny import _BOS, _EOS, _PAD, real_architecture_config
    from vlm_rl.models.tokenizer import load_qwen_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    config = real_architecture_config(ARCHS[arch])
    with torch.device(device):
        model = Qwen3VLForConditionalGeneration(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=_BOS, eos_token_id=[_EOS, _PAD], pad_token_id=_PAD)
    model.save_pretrained(out, safe_serialization=True)
    make_processor(load_qwen_tokenizer("qwen3_vl"), "qwen3_vl").save_pretrained(out)
    del model
    _free()
    print(f"built {arch} in {time.perf_counter() - t0:.1f}s -> {out}", flush=True)
    return out


def make_data(root: Path, n: int, image_size: int) -> str:
    from vlm_rl.data.synthetic import make_synthetic_dataset

    train, _ = make_synthetic_dataset(root / f"data{image_size}", n_train=n, n_val=1, seed=0,
                                      min_size=image_size, max_size=image_size)
    return str(train)


def _free() -> None:
    gc.collect()
    if torch.cuda.is_available():
        torch.cuda.empty_cache()


def _peak_gb() -> float:
    return torch.cuda.max_memory_allocated() / 2**30 if torch.cuda.is_available() else float("nan")


def _reset_peak() -> None:
    if torch.cuda.is_available():
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()


def summarise(name: str, step_rows: list[dict], args) -> dict:
    """Median phase seconds over the timed steps, prompts/hour and completion tokens/s."""
    rows = step_rows[args.warmup:]
    phases = sorted({k for r in rows for k in r if k not in ("tokens",)})
    med = {k: statistics.median(r.get(k, 0.0) for r in rows) for k in phases}
    step = med["step"]
    tokens = statistics.median(r["tokens"] for r in rows)
    return {
        "framework": name, "steps_timed": len(rows), "phase_seconds": med,
        "prompts_per_hour": 3600.0 * args.prompts / step, "seconds_per_prompt": step / args.prompts,
        "completion_tokens_per_step": tokens, "completion_tokens_per_s": tokens / step,
        "generation_tokens_per_s": tokens / med["generation"] if med.get("generation") else None,
        "peak_memory_gb": _peak_gb(), "per_step": step_rows,
    }


# -- vlm-rl ---------------------------------------------------------------------------------------------
#: result key of each vlm-rl rollout mode
MODE_KEYS = {"colocated": "vlm-rl", "pool": "vlm-rl-pool", "pool-async": "vlm-rl-pool-async"}


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
        rollout_mode="pool" if pool_mode else mode, output_dir=tempfile.mkdtemp(prefix="vlmrl-bench-"),
        micro_batch_size=args.micro_batch, compile_layers=args.compile_learner,
        compile_decode=args.compile_decode and not pool_mode,  # the actor gets it through its own kwargs
        max_staleness=staleness,
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
                                   fast=not args.hf_generate, compile_decode=config.compile_decode)
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


def run_isolated(framework: str, arch: str, argv: list[str], mode: str | None = None) -> dict:
    """``framework`` on ``arch`` (vlm-rl: in rollout ``mode``) in a fresh Python process (same arguments
    otherwise); its result dict."""
    import subprocess

    with tempfile.TemporaryDirectory(prefix="bench-child-") as tmp:
        out = Path(tmp) / "child.json"
        child = _without_options(argv, {"--arch": True, "--frameworks": True, "--out": True, "--isolate": False,
                                        "--rollout-mode": True})
        modes = ["--rollout-mode", mode] if mode else []
        cmd = [sys.executable, str(Path(__file__).resolve()), *child, "--arch", arch, "--frameworks", framework,
               *modes, "--out", str(out), "--skip-ceilings"]
        subprocess.run(cmd, check=True)
        key = MODE_KEYS[mode] if mode else framework
        return json.loads(out.read_text())["results"][arch][key]


def _without_options(argv: list[str], options: dict[str, bool]) -> list[str]:
    """``argv`` minus the named options (``True``: the option takes values, dropped up to the next ``--``)."""
    kept, skipping = [], False
    for token in argv:
        name = token.split("=", 1)[0]
        if name in options:
            skipping = options[name] and "=" not in token
            continue
        if skipping and not token.startswith("--"):
            continue
        skipping = False
        kept.append(token)
    return kept


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


# -- TRL --------------------------------------------------------------------------------------------------
def run_trl(model_dir: Path, train: str, args) -> dict:
    from datasets import Dataset
    from peft import LoraConfig
    from transformers import TrainerCallback
    from trl import GRPOConfig as TRLConfig
    from trl import GRPOTrainer

    from vlm_rl.data.schema import load_jsonl
    from vlm_rl.models.loading import load_model, load_processor
    from vlm_rl.models.lora import LANGUAGE_TARGETS
    from vlm_rl.models.prompts import build_messages, detection_instruction
    from vlm_rl.rewards.detection import combined_reward
    from vlm_rl.rollout.types import PromptItem
    from vlm_rl.rollout.worker import prepare_prompt

    gpu = args.device == "cuda"
    instruction = detection_instruction(None)
    records = []
    for s in load_jsonl(train).samples:
        image, solution = prepare_prompt(PromptItem.from_sample(s), args.image_size, "qwen3_vl")
        records.append({"prompt": build_messages(instruction), "image": image, "solution": solution})
    dataset = Dataset.from_list(records)

    def reward(completions, solution, **kwargs):
        texts = [c[-1]["content"] if isinstance(c, list) else c for c in completions]
        return [r["total"] for r in combined_reward(texts, solution)]

    _reset_peak()
    t0 = time.perf_counter()
    model = load_model(model_dir, dtype=torch.bfloat16 if gpu else torch.float32, device=args.device)
    processor = load_processor(model_dir)
    n = args.prompts * args.generations
    trl_args = TRLConfig(
        output_dir=tempfile.mkdtemp(prefix="trl-bench-"), per_device_train_batch_size=n,
        gradient_accumulation_steps=1, num_generations=args.generations, max_completion_length=args.new_tokens,
        generation_kwargs={"min_new_tokens": args.new_tokens}, beta=args.beta, loss_type="dapo",
        learning_rate=1e-5, gradient_checkpointing=True, bf16=gpu, use_cpu=not gpu,
        max_steps=args.warmup + args.steps, logging_steps=1, report_to="none", save_strategy="no",
        seed=0, dataloader_num_workers=0, remove_unused_columns=False,
    )
    peft_config = LoraConfig(r=args.lora_r, lora_alpha=2 * args.lora_r, lora_dropout=0.0,
                             target_modules=LANGUAGE_TARGETS, bias="none")
    trainer = GRPOTrainer(model=model, reward_funcs=[reward], args=trl_args, train_dataset=dataset,
                          processing_class=processor, peft_config=peft_config)
    rows: list[dict] = []
    gen_time = {"s": 0.0, "tokens": 0}
    inner = trainer._generate_single_turn

    def timed_generate(*a, **kw):
        if gpu:
            torch.cuda.synchronize()
        t = time.perf_counter()
        completion_ids, logprobs = inner(*a, **kw)
        if gpu:
            torch.cuda.synchronize()
        gen_time["s"] += time.perf_counter() - t
        gen_time["tokens"] += sum(len(c) for c in completion_ids)
        return completion_ids, logprobs

    trainer._generate_single_turn = timed_generate

    class Timer(TrainerCallback):
        def on_step_begin(self, *a, **kw):
            if gpu:
                torch.cuda.synchronize()
            gen_time.update(s=0.0, tokens=0)
            self.t = time.perf_counter()

        def on_step_end(self, *a, **kw):
            if gpu:
                torch.cuda.synchronize()
            step = time.perf_counter() - self.t
            row = {"step": step, "generation": gen_time["s"], "training_and_rest": step - gen_time["s"],
                   "tokens": gen_time["tokens"]}
            rows.append(row)
            print(f"  trl step {len(rows)}: " + " ".join(f"{k}={v:.2f}" for k, v in row.items()), flush=True)

    trainer.add_callback(Timer())
    setup = time.perf_counter() - t0
    trainer.train()
    result = summarise("trl", rows, args)
    result["setup_seconds"] = setup
    del trainer, model
    _free()
    return result


# -- floors -----------------------------------------------------------------------------------------------
def physical_floor(model_dir: Path, args, bandwidth_tbs: float, peak_tflops: float) -> dict:
    """Lower bounds per step: decode = weight (+KV) bytes / bandwidth per token; training = FLOPs / peak."""
    from transformers import Qwen3VLForConditionalGeneration

    from vlm_rl.models.tiny import real_architecture_config

    config = real_architecture_config(ARCHS[args.arch_now]) if args.arch_now != "tiny" else None
    if config is None:
        from transformers import AutoConfig

        config = AutoConfig.from_pretrained(model_dir)
    with torch.device("meta"):
        model = Qwen3VLForConditionalGeneration(config)
    text = config.text_config
    n_text = sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    n_embed = text.vocab_size * text.hidden_size
    n_vision = sum(p.numel() for n, p in model.named_parameters() if "visual" in n)
    tied = bool(config.tie_word_embeddings)
    # Bytes read per decode step: every text weight once (the tied/untied lm_head included; embedding rows ~0).
    decode_weight_bytes = 2 * (n_text - (0 if tied else n_embed))
    rows = args.prompts * args.generations
    prompt_tokens = (args.image_size // 32) ** 2 + 70
    kv_per_token = 2 * text.num_hidden_layers * text.num_key_value_heads * text.head_dim * 2
    avg_ctx = prompt_tokens + args.new_tokens / 2
    decode_kv_bytes = rows * avg_ctx * kv_per_token
    decode_s = args.new_tokens * (decode_weight_bytes + decode_kv_bytes) / (bandwidth_tbs * 1e12)
    seq = prompt_tokens + args.new_tokens
    n_active = n_text - n_embed * (1 if tied else 2)  # matmul weights; the vocab projection is counted below
    train_tokens = rows * seq
    # forward 2N + recompute under checkpointing 2N + backward: under LoRA the base weights are frozen, so
    # only input gradients (2N; the adapter's own GEMMs are <2 % at r=64), else 4N; lm_head on completions.
    backward = 2 if args.lora_r > 0 else 4
    matmul_flops = (4 + backward) * n_active * train_tokens + 6 * n_embed * rows * args.new_tokens
    vision_flops = 2 * n_vision * args.prompts * (args.image_size // 16) ** 2 * 2  # prefill + learner fwd
    train_s = (matmul_flops + vision_flops) / (peak_tflops * 1e12)
    prefill_s = 2 * n_active * args.prompts * prompt_tokens / (peak_tflops * 1e12)
    del model
    return {
        "text_params": n_text, "vision_params": n_vision, "decode_weight_bytes": decode_weight_bytes,
        "decode_kv_bytes_per_step_avg": decode_kv_bytes, "decode_floor_s": decode_s,
        "train_floor_s": train_s, "prefill_floor_s": prefill_s, "step_floor_s": decode_s + train_s + prefill_s,
        "bandwidth_tbs": bandwidth_tbs, "peak_tflops": peak_tflops,
        "prompts_per_hour_floor": 3600 * args.prompts / (decode_s + train_s + prefill_s),
    }


def measure_ceilings() -> tuple[float, float]:
    """Measured HBM copy bandwidth (TB/s) and bf16 matmul rate (TFLOP/s) of this GPU."""
    x = torch.empty(2 * 2**30, dtype=torch.uint8, device="cuda")
    y = torch.empty_like(x)
    for _ in range(3):
        y.copy_(x)
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(10):
        y.copy_(x)
    torch.cuda.synchronize()
    bw = 10 * 2 * x.numel() / (time.perf_counter() - t) / 1e12
    del x, y
    a = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    b = torch.randn(8192, 8192, dtype=torch.bfloat16, device="cuda")
    for _ in range(3):
        a @ b
    torch.cuda.synchronize()
    t = time.perf_counter()
    for _ in range(20):
        a @ b
    torch.cuda.synchronize()
    flops = 20 * 2 * 8192**3 / (time.perf_counter() - t) / 1e12
    del a, b
    _free()
    return bw, flops


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--arch", nargs="+", default=["2b"], choices=sorted(ARCHS))
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--frameworks", nargs="+", default=["trl", "vlm-rl"], choices=["trl", "vlm-rl"])
    parser.add_argument("--steps", type=int, default=3, help="timed steps")
    parser.add_argument("--warmup", type=int, default=1, help="untimed first steps")
    parser.add_argument("--prompts", type=int, default=8)
    parser.add_argument("--generations", type=int, default=4)
    parser.add_argument("--new-tokens", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=512)
    parser.add_argument("--lora-r", type=int, default=64)
    parser.add_argument("--beta", type=float, default=0.0)
    parser.add_argument("--hf-generate", action="store_true", help="vlm-rl samples with HF generate (ablation)")
    parser.add_argument("--rollout-mode", nargs="+", default=["colocated"], choices=sorted(MODE_KEYS),
                        help="vlm-rl rollout source(s): colocated (the learner's own model samples) and/or pool "
                             "(a Ray rollout actor with its own copy on the same GPU, synced every step; "
                             "results keyed vlm-rl-pool)")
    parser.add_argument("--rollout-gpus", type=float, default=0.5,
                        help="pool mode: the rollout actor's share of the GPU (the learner has the rest)")
    parser.add_argument("--max-staleness", type=int, default=0,
                        help="pool mode: GRPOConfig.max_staleness (0 = on-policy; k = sample up to k steps ahead)")
    parser.add_argument("--compile-decode", action="store_true", help="torch.compile the decode step (vlm-rl)")
    parser.add_argument("--compile-learner", action="store_true",
                        help="torch.compile each decoder layer for the learner's forward/backward (vlm-rl)")
    parser.add_argument("--engine", default="deepspeed", choices=["deepspeed", "local"],
                        help="vlm-rl learner engine: DeepSpeed ZeRO-0 or LocalEngine (plain AdamW, fp32 masters)")
    parser.add_argument("--micro-batch", type=int, default=0,
                        help="vlm-rl sequences per forward/backward (0 = the whole step's batch)")
    parser.add_argument("--model-root", default=os.environ.get("BENCH_MODEL_ROOT", "/tmp/vlmrl-bench-models"))
    parser.add_argument("--skip-ceilings", action="store_true", help=argparse.SUPPRESS)  # children of --isolate
    parser.add_argument("--isolate", action="store_true",
                        help="run each framework in its own child process: every peak-memory figure is then that "
                             "framework's alone (in one process the second one's set-up still sees the first's "
                             "leftovers)")
    parser.add_argument("--out", default=None, help="JSON file for all results")
    parser.add_argument("--profile", default=None, help="folder: torch.profiler kernel tables of vlm-rl's last "
                        "step (learner and rollout); that step is excluded from nothing, so use --steps >= 3")
    args = parser.parse_args(argv)

    root = Path(args.model_root)
    root.mkdir(parents=True, exist_ok=True)
    train = make_data(root, max(2 * args.prompts, 16), args.image_size)
    report: dict = {"args": vars(args), "device": _device_name(args.device), "results": {}}
    if args.device == "cuda" and not args.skip_ceilings:
        bw, flops = measure_ceilings()
        report["measured"] = {"copy_bandwidth_tbs": bw, "bf16_matmul_tflops": flops}
        print(f"{report['device']}: copy {bw:.2f} TB/s, bf16 matmul {flops:.0f} TFLOP/s", flush=True)
    for arch in args.arch:
        model_dir = build_model_dir(arch, root, args.device)
        args.arch_now = arch
        res: dict = {}
        runs = []  # (result key, framework, vlm-rl rollout mode), in the order asked for
        for fw in args.frameworks:
            runs += [("trl", fw, None)] if fw == "trl" else [(MODE_KEYS[m], fw, m) for m in args.rollout_mode]
        for key, fw, mode in runs:
            print(f"== {arch} {key}", flush=True)
            try:
                if args.isolate:
                    res[key] = run_isolated(fw, arch, argv if argv is not None else sys.argv[1:], mode)
                elif fw == "trl":
                    res[key] = run_trl(model_dir, train, args)
                else:
                    res[key] = run_vlmrl(model_dir, train, args, mode)
            except Exception as exc:  # keep the other measurements of this (expensive) run
                import traceback

                traceback.print_exc()
                res[key] = {"error": f"{type(exc).__name__}: {exc}"}
                _free()
            report["results"][arch] = res
            if args.out:  # keep what is measured if a later framework runs out of time
                Path(args.out).write_text(json.dumps(report, indent=2, default=str))
        if "measured" in report:
            res["floor"] = physical_floor(model_dir, args, report["measured"]["copy_bandwidth_tbs"],
                                          report["measured"]["bf16_matmul_tflops"])
        if all("prompts_per_hour" in res.get(fw, {}) for fw in ("trl", "vlm-rl")):
            res["ratio_prompts_per_hour"] = res["vlm-rl"]["prompts_per_hour"] / res["trl"]["prompts_per_hour"]
            res["ratio_peak_memory"] = res["vlm-rl"]["peak_memory_gb"] / res["trl"]["peak_memory_gb"]
        for pool_key, name in (("vlm-rl-pool", "pool"), ("vlm-rl-pool-async", "pool_async")):
            pool = res.get(pool_key, {})
            for other in ("trl", "vlm-rl", "vlm-rl-pool"):
                if other != pool_key and "prompts_per_hour" in pool and "prompts_per_hour" in res.get(other, {}):
                    res[f"ratio_{name}_vs_{other}_prompts_per_hour"] = \
                        pool["prompts_per_hour"] / res[other]["prompts_per_hour"]
        report["results"][arch] = res
        if args.out:
            Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    print_table(report)
    if args.out:
        Path(args.out).write_text(json.dumps(report, indent=2, default=str))
    return 0


def _device_name(device: str) -> str:
    return torch.cuda.get_device_name() if device == "cuda" else "cpu"


def print_table(report: dict) -> None:
    print(f"\n{report['device']}  (prompts x gens = {report['args']['prompts']} x {report['args']['generations']}, "
          f"{report['args']['new_tokens']} new tokens, {report['args']['image_size']} px, "
          f"LoRA r={report['args']['lora_r']})")
    head = f"{'arch':5} {'framework':17} {'s/step':>7} {'gen s':>7} {'train s':>7} {'prompts/h':>10} " \
           f"{'s/prompt':>8} {'tok/s':>8} {'peak GB':>8}"
    print(head)
    for arch, res in report["results"].items():
        for fw in ("trl", *MODE_KEYS.values()):
            r = res.get(fw)
            if not r:
                continue
            if "error" in r:
                print(f"{arch:5} {fw:17} ERROR {r['error'][:90]}")
                continue
            ph = r["phase_seconds"]
            train = ph.get("training", ph.get("training_and_rest", 0.0))
            print(f"{arch:5} {fw:17} {ph['step']:7.2f} {ph.get('generation', 0):7.2f} {train:7.2f} "
                  f"{r['prompts_per_hour']:10.0f} {r['seconds_per_prompt']:8.3f} "
                  f"{r['completion_tokens_per_s']:8.0f} {r['peak_memory_gb']:8.2f}")
        if "ratio_prompts_per_hour" in res:
            print(f"{arch:5} ratio vlm-rl/TRL: prompts/h x{res['ratio_prompts_per_hour']:.2f}, "
                  f"peak memory x{res['ratio_peak_memory']:.2f}")
        for key in sorted(k for k in res if k.startswith("ratio_pool")):
            print(f"{arch:5} {key.removesuffix('_prompts_per_hour')}: prompts/h x{res[key]:.2f}")
        if "floor" in res:
            f = res["floor"]
            print(f"{arch:5} floor: decode {f['decode_floor_s']:.2f}s + prefill {f['prefill_floor_s']:.2f}s + "
                  f"train {f['train_floor_s']:.2f}s = {f['step_floor_s']:.2f}s/step "
                  f"({f['prompts_per_hour_floor']:.0f} prompts/h)")


if __name__ == "__main__":
    raise SystemExit(main())
