"""An analytic model of one GRPO step's time and per-GPU memory, for `vlm-rl estimate` / `advise`.

The point is ranking and order of magnitude before a cluster is booked, not a stopwatch. Every
constant below is named, and `calibrate` rescales the phases from a short measured run so that the
model reproduces the measurement exactly and extrapolates from there.

Time per step (completions C = prompts_per_step x NUM_GENERATIONS, sequence = image tokens + prompt
text + max_new_tokens; every completion is assumed to run to max_new_tokens, an upper bound):

* generation: prefill FLOPs 2·N·prompt_tokens / (peak·PREFILL_MFU) plus, per decode step,
  DECODE_STEP_OVERHEAD_S + (weight bytes + KV-cache bytes) / (HBM bandwidth · DECODE_BANDWIDTH_EFFICIENCY):
  decoding is memory-bandwidth-bound in principle, but HF ``generate`` was measured at ≈31 ms per step
  for 32 sequences of Qwen3-VL-2B on an H100 against a ≈1.5 ms bandwidth floor, and TRL's 8B step was
  only 1.19x its 2B step — a fixed per-token cost (kernel launches, Python) dominates. The two
  constants reproduce both measurements. Split over rollout workers. The fast engine (Qwen3-VL and
  Qwen2.5-VL, ``rollout_engine: fast``, the default) decodes on a static CUDA graph at a much smaller fixed
  cost: GRAPH_DECODE_STEP_OVERHEAD_S on the pool's actors, FAST_DECODE_STEP_OVERHEAD_S for the colocated
  path's compiled step, which also decodes every completion of a step in one batch and folds LoRA into the
  weights around each rollout (LORA_FOLD_*). Asynchronous GRPO with the actors on their own GPUs hides the
  shorter of sampling and training (a step is the longer one); on a shared GPU they add up.
* training: forward 2·N·tokens + backward (2·N under LoRA: frozen base weights need input gradients only;
  4·N for full fine-tuning) + 2·N with gradient checkpointing + 2·N for the reference forward when
  BETA > 0, over num_learners GPUs at TRAIN_MFU (TRAIN_MFU_COMPILED with compile_layers); ZeRO-3 adds
  ZERO3_COMM_OVERHEAD on more than one GPU. Several updates per batch (issue 25): the forward + backward runs
  once per pass (num_iterations), the reference forward once per batch, and with steps_per_generation > 1 a
  no-grad forward over all mini-batches but the first takes the proximal log-probs before the first update.
* sync: the LoRA adapter (or all weights) to every rollout worker at SYNC_BANDWIDTH + SYNC_LATENCY, or as a
  CUDA IPC buffer (IPC_SYNC_*) to an actor sharing the learner's GPU; none when colocated (generation reads
  the learner's tensors). The fast engine prefills each prompt once for its group.
* evaluation (EVAL_STEPS > 0): one greedy completion per validation prompt every EVAL_STEPS steps.

Memory per learner GPU: bf16 weights (+ a reference copy for full fine-tuning with BETA > 0),
gradients and Adam states for the trainable parameters (sharded by the ZeRO stage), activations of
one micro-batch (one prompt's group) and the logits of its completion tokens; rollout workers hold
weights + KV cache, added to the learner's when they share its GPU (rollout_gpus < 1).
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass, field
from typing import Any

from vlm_rl.config import GRPOConfig
from vlm_rl.learner.checkpointing import MARGIN as CHECKPOINTING_MARGIN
from vlm_rl.models.families import FAST_DECODE_FAMILIES
from vlm_rl.tracking.hardware import HARDWARE, HARDWARE_CHOICES, Hardware, detect_cpu, get_hardware
from vlm_rl.tracking.model_specs import (
    ModelSpec,
    model_spec,
    trainable_params,
)

# ----------------------------------------------------------------------------- documented constants
PREFILL_MFU = 0.35  # compute-bound prefill, typical for HF eager/SDPA kernels
TRAIN_MFU = 0.25  # forward+backward of a ~2-8B model with DeepSpeed, bf16, small micro-batches
DECODE_STEP_OVERHEAD_S = 0.028  # HF generate per-token fixed cost, measured on H100 (see docstring)
DECODE_BANDWIDTH_EFFICIENCY = 0.7  # fraction of HBM bandwidth reached streaming weights + KV cache
# One-GPU colocated path (Qwen3-VL's static CUDA-graph decode, docs/PERFORMANCE.md, H100): 8.6 ms/token at 8B
# and 3.7 ms at 2B for 32 rows reproduce with this fixed cost; the eager (not compiled) graph measured 9.5 ms
# at 2B before the LoRA fold.
FAST_DECODE_STEP_OVERHEAD_S = 0.0008  # compile_decode
GRAPH_DECODE_STEP_OVERHEAD_S = 0.007  # CUDA graph of the eager step
LORA_FOLD_S = 0.05  # fold LoRA into the weights before a rollout and restore them after: fixed part
LORA_FOLD_S_PER_GB = 0.012  # ... plus this per GB of bf16 weights (8B: 0.23 s measured)
TRAIN_MFU_COMPILED = 0.5  # compile_layers: fused elementwise work; 8B learner 1.80 s measured on H100
ZERO3_COMM_OVERHEAD = 1.15  # parameter all-gathers not hidden behind compute
SYNC_BANDWIDTH_GBPS = 5.0  # Ray object store / NCCL broadcast to rollout actors, effective GB/s
SYNC_LATENCY_S = 0.2  # per sync per worker: ray.get, load_state_dict, cache reset
# An actor on the learner's GPU (rollout_gpus < 1) takes the weights as one CUDA IPC buffer, device to device:
# 0.35 GB (8B LoRA) in 0.06-0.09 s and 3.44 GB (2B full weights) in 0.031 s of pool time on an H100
# (docs/PERFORMANCE.md, 2026-12-06/07).
IPC_SYNC_LATENCY_S = 0.05
IPC_SYNC_BANDWIDTH_GBPS = 100.0
PROMPT_TEXT_TOKENS = 80  # chat template + detection instruction
BYTES_PER_PARAM = 2  # bf16 weights
ADAM_BYTES_PER_TRAINABLE = 12  # fp32 master weights + two fp32 moments
GRAD_BYTES_PER_TRAINABLE = 2  # bf16 gradients
ACTIVATION_BYTES_PER_TOKEN_LAYER = 34  # x hidden size: Korthikanti et al. 2022, flash attention (no a·s/h term)
CHECKPOINTED_BYTES_PER_TOKEN_LAYER = 2  # x hidden size: only each layer's bf16 input is kept
LOGIT_BYTES = 6  # bf16 logits + fp32 upcast of the selected rows, per completion token x vocab
CUDA_OVERHEAD_GB = 2.0  # CUDA context, NCCL buffers, allocator fragmentation
LORA_TARGETS = ("q", "k", "v", "o", "gate", "up", "down")
# CPU runs (use_gpu=false): every learner and rollout actor is one single-threaded process (Ray sets
# OMP_NUM_THREADS=1) training in float32, all time-sharing the machine's cores. Fixed costs dominate a small model.
# The constants reproduce the tiny recipe (grpo-tiny-cpu.yaml) on a 2-core AMD EPYC (Zen 4, AVX-512): steady steps
# of 4 runs: generation 2.66 s, training 1.29 s, weight sync 0.02 s (docs/PERFORMANCE.md); the split between the
# fixed and the per-FLOP parts is an assumption. For another model or machine, --calibrate.
CPU_MFU = 0.15  # sampling: fraction of one core's fp32 FMA peak reached by small batched matmuls
CPU_TRAIN_MFU = 0.35  # training: the learner's larger matmuls (all of a step's tokens at once)
CPU_DECODE_STEP_OVERHEAD_S = 0.05  # HF generate per generated token on one core: Python, sampling, cache update
CPU_TRAIN_STEP_OVERHEAD_S = 0.65  # per optimizer step: DeepSpeed bookkeeping, gloo all-reduce, Adam on CPU
CPU_SYNC_LATENCY_S = 0.02  # per sync per actor on one machine (object store in shared memory)
CPU_BYTES_PER_PARAM = 4  # float32 weights
CPU_PROCESS_GB = 0.85  # resident memory of a learner or rollout process besides its model (torch, Ray, DeepSpeed)
CPU_RAY_GB = 3.0  # the rest of a one-machine Ray session: raylet, GCS, dashboard, agents, driver, Train controller


# ----------------------------------------------------------------------------- results
@dataclass(frozen=True)
class Calibration:
    """Per-phase factors (measured / modelled) and measured phases the model does not cover."""

    factors: dict[str, float]
    extra_seconds: dict[str, float] = field(default_factory=dict)
    hardware: str | None = None


@dataclass(frozen=True)
class Estimate:
    total_seconds: float
    seconds_per_step: float
    steps: int
    phases: dict[str, float]  # seconds per step
    peak_memory_gb: float
    memory: dict[str, float]  # GB per GPU, by component
    fits: bool
    hardware: str
    assumptions: list[str]
    memory_scope: str = "per GPU"  # or "RAM (all processes)" on CPU

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


# ----------------------------------------------------------------------------- the model
def image_tokens(max_image_size: int, factor: int) -> int:
    """Visual tokens of a square image resized to MAX_IMAGE_SIZE (the worst case for that limit)."""
    side = max(factor, (max_image_size // factor) * factor)
    return (side // factor) ** 2


def _val_size(config: GRPOConfig) -> int:
    if config.val_data:
        with open(config.val_data) as f:
            return sum(1 for line in f if line.strip())
    return config.synthetic_val_size


def _checkpointing_resolved(config: GRPOConfig, spec: ModelSpec, hw: Hardware) -> GRPOConfig:
    """``gradient_checkpointing: auto`` decided as the learner decides it (learner/checkpointing.py): off when the
    step's memory without it fits in MARGIN of the GPU, else on."""
    if config.gradient_checkpointing is True or config.gradient_checkpointing is False:
        return config
    off = config.model_copy(update={"gradient_checkpointing": False})
    _, memory = _model_phases(off, spec, hw)
    if _memory_peak(memory, hw) <= CHECKPOINTING_MARGIN * hw.memory_gb:
        return off
    return config.model_copy(update={"gradient_checkpointing": True})


def _cpu_phases(config: GRPOConfig, spec: ModelSpec, hw: Hardware) -> tuple[dict[str, float], dict[str, float]]:
    """One step on CPU cores: single-threaded processes, float32, fixed per-token and per-update costs; memory is
    the RAM of every process together."""
    n = spec.params
    # The output head (vocab x hidden) runs only where logits are needed: the last prompt token and every generated
    # token when sampling, the completion tokens when training; the rest of the model on every token. On a small
    # model the head is most of the parameters (tiny: 9.7 M of 10.3 M).
    head = min(float(spec.vocab * spec.hidden), 0.9 * n)
    body = n - head
    core = hw.peak_tflops * 1e12 * CPU_MFU  # FLOP/s one process reaches
    prompt_tokens = image_tokens(config.max_image_size, spec.image_factor) + PROMPT_TEXT_TOKENS
    seq = prompt_tokens + config.max_new_tokens
    completions = config.prompts_per_step * config.num_generations
    kv_bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * CPU_BYTES_PER_PARAM
    colocated = config.rollout_mode == "colocated"
    workers = 1 if colocated else config.num_rollout_workers
    # the processes that run at once in a phase share the cores
    generation_share = max(1.0, workers / hw.cores)
    learner_parallel = min(config.num_learners, hw.cores)

    def generate(num_completions: int) -> tuple[float, float]:
        per_worker = math.ceil(num_completions / workers)
        batch = min(config.rollout_batch_size, per_worker)
        batches = math.ceil(per_worker / batch)
        prefill = 2 * (body * prompt_tokens + head) * per_worker / core
        decode = batches * config.max_new_tokens * (CPU_DECODE_STEP_OVERHEAD_S + 2 * n * batch / core)
        kv_gb = kv_bytes_per_token * seq * batch / 1e9
        return (prefill + decode) * generation_share, kv_gb

    generation, kv_gb = generate(completions)
    # FLOPs of one forward over the step's sequences: the body on every token, the head on the completion tokens
    forward = 2 * (body * completions * seq + head * completions * config.max_new_tokens)
    checkpointing = config.gradient_checkpointing is True
    backward = 1 if config.lora_r > 0 else 2  # x forward: frozen base weights need input gradients only
    passes, minis = config.num_iterations, config.steps_per_generation
    train_flops = passes * (1 + backward + (1 if checkpointing else 0)) * forward
    train_flops += forward * (minis - 1) / minis  # proximal log-probs of the later mini-batches
    if config.beta > 0:
        train_flops += forward  # the reference forward, once per batch
    train_rate = hw.peak_tflops * 1e12 * CPU_TRAIN_MFU
    training = train_flops / (learner_parallel * train_rate) + passes * minis * CPU_TRAIN_STEP_OVERHEAD_S
    trainable = trainable_params(spec, config.lora_r)
    sync = 0.0 if colocated else workers * (
        CPU_SYNC_LATENCY_S + trainable * CPU_BYTES_PER_PARAM / (SYNC_BANDWIDTH_GBPS * 1e9))
    phases = {"generation": generation, "training": training, "sync": sync}
    if config.eval_steps > 0:
        eval_time, _ = generate(_val_size(config))
        phases["evaluation"] = eval_time / config.eval_steps

    learners = config.num_learners
    weights = n * CPU_BYTES_PER_PARAM * (1 if config.zero_stage == 3 else learners)
    if config.lora_r == 0 and config.beta > 0:
        weights *= 2  # the frozen reference copy
    grads = trainable * 4 * (1 if config.zero_stage >= 2 else learners)
    optimizer = trainable * ADAM_BYTES_PER_TRAINABLE * (1 if config.zero_stage >= 1 else learners)
    micro_tokens = config.num_generations * seq
    per_layer = CHECKPOINTED_BYTES_PER_TOKEN_LAYER if checkpointing else ACTIVATION_BYTES_PER_TOKEN_LAYER
    activations = 2 * micro_tokens * spec.hidden * per_layer * spec.layers  # x2: float32, not bf16
    logits = config.num_generations * config.max_new_tokens * spec.vocab * 8  # float32 logits + their gradient
    memory = {
        "weights": weights / 1e9,
        "gradients": grads / 1e9,
        "optimizer": optimizer / 1e9,
        "activations": learners * (activations + logits) / 1e9,
        "processes": (learners + (0 if colocated else workers)) * CPU_PROCESS_GB,
        "Ray (daemons, driver, controller)": CPU_RAY_GB,
    }
    if colocated:
        memory["rollout KV cache"] = kv_gb
    else:
        memory["rollout actors"] = workers * (n * CPU_BYTES_PER_PARAM / 1e9 + kv_gb)
    return phases, memory


def _memory_peak(memory: dict[str, float], hw: Hardware) -> float:
    """GPU: the busiest GPU (learner, or a rollout actor on its own); CPU: the RAM of every process together."""
    return sum(memory.values()) if hw.is_cpu else _peak(memory)


def _model_phases(config: GRPOConfig, spec: ModelSpec, hw: Hardware) -> tuple[dict[str, float], dict[str, float]]:
    config = _checkpointing_resolved(config, spec, hw)
    if hw.is_cpu:
        return _cpu_phases(config, spec, hw)
    n = spec.params
    peak = hw.peak_tflops * 1e12
    bandwidth = hw.hbm_tbps * 1e12
    prompt_tokens = image_tokens(config.max_image_size, spec.image_factor) + PROMPT_TEXT_TOKENS
    seq = prompt_tokens + config.max_new_tokens
    completions = config.prompts_per_step * config.num_generations
    kv_bytes_per_token = 2 * spec.layers * spec.kv_heads * spec.head_dim * BYTES_PER_PARAM

    colocated = config.rollout_mode == "colocated"
    overhead, batch_limit = _decode_step_overhead(config, spec), config.rollout_batch_size
    fast = _fast_decode(config, spec)
    if colocated and fast:  # one static-graph batch of every completion
        batch_limit = completions
    fold = (LORA_FOLD_S + LORA_FOLD_S_PER_GB * n * BYTES_PER_PARAM / 1e9) if colocated and config.lora_r else 0.0

    def generate(num_completions: int, workers: int, group: int) -> tuple[float, float]:
        """Sampling ``num_completions``, ``group`` per prompt, split over ``workers``."""
        per_worker = math.ceil(num_completions / workers)
        batch = min(batch_limit, per_worker)
        batches = math.ceil(per_worker / batch)
        prompts = per_worker / group if fast else per_worker  # the fast engine prefills each prompt once
        prefill = 2 * n * prompt_tokens * prompts / (peak * PREFILL_MFU)
        avg_context = prompt_tokens + config.max_new_tokens / 2
        step_bytes = n * BYTES_PER_PARAM + kv_bytes_per_token * avg_context * batch
        step_seconds = overhead + step_bytes / (bandwidth * DECODE_BANDWIDTH_EFFICIENCY)
        decode = batches * config.max_new_tokens * step_seconds
        kv_gb = kv_bytes_per_token * seq * batch / 1e9
        return prefill + decode + fold, kv_gb

    workers = 1 if colocated else config.num_rollout_workers
    generation, kv_gb = generate(completions, workers, config.num_generations)
    tokens = completions * seq
    # forward 2N + backward: with LoRA the base weights are frozen (input gradients only, 2N), else 4N;
    # gradient checkpointing adds one forward; the reference forward (BETA > 0) another
    backward = 2 if config.lora_r > 0 else 4
    passes, minis = config.num_iterations, config.steps_per_generation
    train_flops = passes * (2 + backward + (2 if config.gradient_checkpointing else 0)) * n * tokens
    train_flops += 2 * n * tokens * (minis - 1) / minis  # proximal log-probs of the later mini-batches
    if config.beta > 0:
        train_flops += 2 * n * tokens  # once per batch: the reference does not move between passes
    mfu = TRAIN_MFU_COMPILED if config.compile_layers else TRAIN_MFU
    training = train_flops / (config.num_learners * peak * mfu)
    if config.zero_stage == 3 and config.num_learners > 1:
        training *= ZERO3_COMM_OVERHEAD
    trainable = trainable_params(spec, config.lora_r)
    sync_bytes = trainable * BYTES_PER_PARAM
    if colocated:  # generation reads the learner's own tensors
        sync = 0.0
    elif config.rollout_gpus < 1:  # the actor shares the learner's GPU: CUDA IPC
        sync = workers * (IPC_SYNC_LATENCY_S + sync_bytes / (IPC_SYNC_BANDWIDTH_GBPS * 1e9))
    else:
        sync = workers * (SYNC_LATENCY_S + sync_bytes / (SYNC_BANDWIDTH_GBPS * 1e9))
    phases = {"generation": generation, "training": training, "sync": sync}
    if config.eval_steps > 0:
        # one greedy completion per validation prompt
        eval_time, _ = generate(_val_size(config), workers, 1)
        phases["evaluation"] = eval_time / config.eval_steps

    # memory per learner GPU
    shards = config.num_learners
    weights = n * BYTES_PER_PARAM / (shards if config.zero_stage == 3 else 1)
    if config.lora_r == 0 and config.beta > 0:
        # a frozen reference copy, sharded like the policy under ZeRO-3 (vlm_rl/learner/reference.py);
        # LoRA uses the base model with the adapter off
        weights *= 2
    grads = trainable * GRAD_BYTES_PER_TRAINABLE / (shards if config.zero_stage >= 2 else 1)
    optimizer = trainable * ADAM_BYTES_PER_TRAINABLE / (shards if config.zero_stage >= 1 else 1)
    micro_tokens = config.num_generations * seq  # one prompt's group per micro-batch
    per_layer = CHECKPOINTED_BYTES_PER_TOKEN_LAYER if config.gradient_checkpointing else ACTIVATION_BYTES_PER_TOKEN_LAYER
    activations = micro_tokens * spec.hidden * per_layer * spec.layers
    if config.gradient_checkpointing:
        activations += micro_tokens * spec.hidden * ACTIVATION_BYTES_PER_TOKEN_LAYER  # one layer recomputed
    logits = config.num_generations * config.max_new_tokens * spec.vocab * LOGIT_BYTES
    memory = {
        "weights": weights / 1e9,
        "gradients": grads / 1e9,
        "optimizer": optimizer / 1e9,
        "activations": (activations + logits) / 1e9,
        "overhead": CUDA_OVERHEAD_GB,
    }
    rollout_gb = n * BYTES_PER_PARAM / 1e9 + kv_gb
    if colocated:  # the learner's own weights sample: only the static KV cache is added (during rollout)
        memory["rollout (shared GPU)"] = kv_gb
    elif config.rollout_gpus >= 1:
        memory["rollout (own GPU)"] = rollout_gb
    else:
        memory["rollout (shared GPU)"] = rollout_gb
    return phases, memory


def _peak(memory: dict[str, float]) -> float:
    learner = sum(v for k, v in memory.items() if not k.startswith("rollout"))
    own = memory.get("rollout (own GPU)")
    shared = memory.get("rollout (shared GPU)", 0.0)
    return max(learner + shared, (own or 0.0) + CUDA_OVERHEAD_GB)


def _assumptions(config: GRPOConfig, spec: ModelSpec, hw: Hardware) -> list[str]:
    tokens = image_tokens(config.max_image_size, spec.image_factor)
    if hw.is_cpu:
        processes = config.num_learners + (0 if config.rollout_mode == "colocated" else config.num_rollout_workers)
        return [
            f"model {spec.name}: {spec.params / 1e9:.3g} B parameters, image factor {spec.image_factor}px",
            f"hardware {hw.name}: {hw.cores} core(s) read here (affinity, cgroup quota), "
            f"{hw.peak_tflops * 1e3:.0f} GFLOPs fp32 peak each, {CPU_MFU:.0%} of it reached sampling, "
            f"{CPU_TRAIN_MFU:.0%} training; "
            f"{hw.memory_gb:.1f} GB RAM shared by all {processes} processes",
            f"{processes} single-threaded processes ({config.num_learners} learner(s), float32) time-share the cores",
            f"square {config.max_image_size}px images → {tokens} visual tokens + {PROMPT_TEXT_TOKENS} text tokens",
            f"every completion runs to max_new_tokens={config.max_new_tokens} (upper bound)",
            f"decode {CPU_DECODE_STEP_OVERHEAD_S * 1e3:.0f} ms/token fixed (HF generate on one core), "
            f"{CPU_TRAIN_STEP_OVERHEAD_S:.2f} s fixed per optimizer step (DeepSpeed, gloo)",
            "excludes startup (Ray, model loading), rollout pictures and checkpoints; fitted to the tiny recipe "
            "on a 2-core AMD EPYC: --calibrate for another model or machine",
        ]
    return [
        f"model {spec.name}: {spec.params / 1e9:.3g} B parameters, image factor {spec.image_factor}px",
        f"hardware {hw.name}: {hw.peak_tflops:g} TFLOPs bf16 dense, {hw.hbm_tbps:g} TB/s, {hw.memory_gb:g} GB",
        f"square {config.max_image_size}px images → {tokens} visual tokens + {PROMPT_TEXT_TOKENS} text tokens",
        f"every completion runs to max_new_tokens={config.max_new_tokens} (upper bound)",
        _decode_assumption(config, spec),
        f"prefill/training MFU {PREFILL_MFU:.0%}/"
        f"{(TRAIN_MFU_COMPILED if config.compile_layers else TRAIN_MFU):.0%}"
        + (" (compiled layers)" if config.compile_layers else ""),
        "micro-batch = one prompt's group of completions; excludes startup (Ray, model loading)",
        f"{config.num_iterations} pass(es) x {config.steps_per_generation} optimizer step(s) per batch "
        "(num_iterations x steps_per_generation): training time scales with the passes",
    ]


def _fast_decode(config: GRPOConfig, spec: ModelSpec) -> bool:
    """The fast engine samples (static KV cache, CUDA-graphed decode): the colocated path and the pool's actors
    alike, for the families it drives; everything else samples with HF generate."""
    return config.rollout_engine == "fast" and spec.family in FAST_DECODE_FAMILIES


def _decode_step_overhead(config: GRPOConfig, spec: ModelSpec) -> float:
    if not _fast_decode(config, spec):
        return DECODE_STEP_OVERHEAD_S
    compiled = config.compile_decode and config.rollout_mode == "colocated"  # only the colocated step compiles
    return FAST_DECODE_STEP_OVERHEAD_S if compiled else GRAPH_DECODE_STEP_OVERHEAD_S


def _decode_assumption(config: GRPOConfig, spec: ModelSpec) -> str:
    bandwidth = f"{DECODE_BANDWIDTH_EFFICIENCY:.0%} of HBM bandwidth"
    fixed = _decode_step_overhead(config, spec)
    if not _fast_decode(config, spec):
        return f"decode {fixed * 1e3:.0f} ms/token fixed + {bandwidth} (HF generate)"
    kind = "compiled CUDA-graph" if fixed == FAST_DECODE_STEP_OVERHEAD_S else "CUDA-graph"
    if config.rollout_mode == "colocated":
        return (f"decode {fixed * 1e3:.1f} ms/token fixed + {bandwidth} ({kind} decode of every completion "
                "at once, colocated: no weight sync)")
    return (f"decode {fixed * 1e3:.1f} ms/token fixed + {bandwidth} ({kind} decode on each rollout actor, "
            f"rollout_batch_size {config.rollout_batch_size} rows at a time)")


def _async_overlap(config: GRPOConfig, phases: dict[str, float], hw: Hardware) -> float:
    """Seconds per step that asynchronous GRPO hides: with max_staleness > 0 the actors sample the next batch
    while the learners train, so a step takes max(generation, training + sync) where each has its own GPUs.
    On a shared GPU (rollout_gpus < 1) both contend for it and the step is close to the sum (8B LoRA async on
    one H100, 2026-12-07: training 0.95 s alone, 2.6-2.9 s beside the actor's sampling; step 2.68 s); on CPU
    they time-share the cores."""
    if config.max_staleness == 0 or config.rollout_mode != "pool" or config.rollout_gpus < 1 or hw.is_cpu:
        return 0.0
    return min(phases["generation"], phases["training"] + phases["sync"])


def estimate(
    config: GRPOConfig, num_samples: int, hardware: str | Hardware = "h100", calibration: Calibration | None = None
) -> Estimate:
    """Time to train on ``num_samples`` prompts and peak memory (per GPU; on CPU the RAM of all processes), for
    this config and hardware."""
    hw = get_hardware(hardware, config) if isinstance(hardware, str) else hardware
    spec = model_spec(config.model_path)
    phases, memory = _model_phases(config, spec, hw)
    assumptions = _assumptions(config, spec, hw)
    if config.gradient_checkpointing == "auto":
        on = _checkpointing_resolved(config, spec, hw).gradient_checkpointing
        assumptions.append(f"gradient_checkpointing auto → {'on' if on else 'off'} (off when the step fits in "
                           f"{CHECKPOINTING_MARGIN:.0%} of the memory of {hw.name} without it)")
    if calibration is not None:
        phases = {k: v * calibration.factors.get(k, 1.0) for k, v in phases.items()}
        phases.update(calibration.extra_seconds)
        assumptions.append(
            "calibrated from a measured run: "
            + ", ".join(f"{k} x{v:.3g}" for k, v in calibration.factors.items())
            + (f" on {calibration.hardware}" if calibration.hardware else "")
        )
    hidden = _async_overlap(config, phases, hw)
    if hidden:
        phases["hidden by async overlap"] = -hidden
        assumptions.append(f"asynchronous (max_staleness {config.max_staleness}) on the actors' own GPUs: "
                           "sampling overlaps training, a step takes max(generation, training + sync)")
    per_step = sum(phases.values())
    steps = math.ceil(num_samples / config.prompts_per_step)
    peak = _memory_peak(memory, hw)
    return Estimate(
        total_seconds=per_step * steps,
        seconds_per_step=per_step,
        steps=steps,
        phases=phases,
        peak_memory_gb=peak,
        memory=memory,
        fits=peak <= hw.memory_gb,
        hardware=hw.name,
        assumptions=assumptions,
        memory_scope=hw.memory_label,
    )


# ----------------------------------------------------------------------------- calibration
_PHASE_WORDS = (
    ("evaluation", ("eval",)),
    ("sync", ("sync", "weight", "broadcast")),
    ("generation", ("gen", "rollout", "sample")),
    ("training", ("train", "learn", "policy", "update", "backward")),
)


def canonical_phase(name: str) -> str | None:
    """Map a measured phase name (``rollout``, ``weight_sync``, ``policy_training``) to the model's."""
    lowered = name.lower()
    for phase, words in _PHASE_WORDS:
        if any(w in lowered for w in words):
            return phase
    return None


def calibrate(measured: dict[str, float], config: GRPOConfig, hardware: str | Hardware = "h100") -> Calibration:
    """Factors that make ``estimate(config, ..., calibration=...)`` reproduce ``measured`` per phase.

    ``measured`` is mean seconds per step by phase name; unknown phases (rewards, data loading) are
    kept as fixed seconds per step.
    """
    hw = get_hardware(hardware, config) if isinstance(hardware, str) else hardware
    modelled, _ = _model_phases(config, model_spec(config.model_path), hw)
    totals: dict[str, float] = {}
    extra: dict[str, float] = {}
    for name, seconds in measured.items():
        phase = canonical_phase(name)
        if phase is None or phase not in modelled:
            extra[name] = extra.get(name, 0.0) + float(seconds)
        else:
            totals[phase] = totals.get(phase, 0.0) + float(seconds)
    factors = {phase: seconds / modelled[phase] for phase, seconds in totals.items() if modelled[phase] > 0}
    return Calibration(factors=factors, extra_seconds=extra, hardware=hw.name)


def estimate_to_json(result: Estimate) -> str:
    return json.dumps(result.to_dict(), indent=2)


__all__ = [
    "Calibration", "Estimate", "HARDWARE", "HARDWARE_CHOICES", "Hardware", "ModelSpec", "calibrate", "detect_cpu",
    "estimate", "get_hardware", "model_spec",
]
