"""Speed advice for `vlm-rl advise`: candidate knob changes, each judged by re-running the time estimate
(tracking/estimator.py) on the changed config, best first. Split from the estimator: the model of a step is one
job, the search over changes to it another."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

from vlm_rl.config import GRPOConfig
from vlm_rl.tracking.estimator import estimate
from vlm_rl.tracking.hardware import Hardware, get_hardware
from vlm_rl.tracking.model_specs import HUB_IDS, KNOWN_MODELS, SMALLER, known_key, model_spec


@dataclass(frozen=True)
class Advice:
    title: str
    detail: str
    estimated_speedup: float
    change: dict[str, Any] = field(default_factory=dict)


def _variants(config: GRPOConfig, hw: Hardware | None = None) -> list[tuple[str, dict[str, Any], str]]:
    """Candidate changes. On CPU (``hw.is_cpu``) nothing that needs a GPU (colocated CUDA-graph decode, compiled
    layers, more GPUs); more processes only onto cores the run leaves idle."""
    out: list[tuple[str, dict[str, Any], str]] = []
    cpu = hw is not None and hw.is_cpu
    qwen3 = model_spec(config.model_path).family == "qwen3_vl" and not cpu
    if config.num_learners == 1 and config.rollout_mode == "pool" and qwen3:
        out.append(("one GPU: colocated rollout, compiled decode and learner layers",
                    {"rollout_mode": "colocated", "compile_decode": True, "compile_layers": True,
                     "zero_stage": min(config.zero_stage, 2), "rollout_gpus": 0.0},
                    "the learner's own model samples (no actor, no weight sync); the first step compiles (~2 min)"))
    elif config.rollout_mode == "colocated" and qwen3 and not (config.compile_decode and config.compile_layers):
        out.append(("compile the decode step and the learner's layers",
                    {"compile_decode": True, "compile_layers": True, "zero_stage": min(config.zero_stage, 2)},
                    "the first step compiles (~2 min)"))
    if config.rollout_mode == "pool" and not config.compile_layers and config.zero_stage < 3 and not cpu:
        out.append(("compile the learner's decoder layers", {"compile_layers": True},
                    "the first step compiles; fuses the learner's elementwise work"))
    if config.max_image_size > 256:
        smaller = max(256, int(config.max_image_size * 0.75) // 32 * 32)
        out.append((f"MAX_IMAGE_SIZE {config.max_image_size} → {smaller}", {"max_image_size": smaller},
                    "fewer visual tokens; small objects (distant traffic lights) may become unreadable"))
    key = known_key(config.model_path)
    if key in SMALLER:
        target = SMALLER[key]
        out.append((f"smaller model: {KNOWN_MODELS[target].name}",
                    {"model_path": HUB_IDS.get(target, target)}, "lower ceiling on detection quality"))
    if config.num_generations > 4:
        fewer = max(4, config.num_generations // 2)
        out.append((f"NUM_GENERATIONS {config.num_generations} → {fewer}", {"num_generations": fewer},
                    "noisier group advantages; watch the health monitor's no-signal alert"))
    if config.eval_steps > 0:
        out.append(("EVAL_STEPS 0 (evaluate only at the end)", {"eval_steps": 0},
                    "no intermediate validation curve"))
        out.append((f"EVAL_STEPS {config.eval_steps} → {config.eval_steps * 4}",
                    {"eval_steps": config.eval_steps * 4}, "sparser validation curve"))
    if config.num_iterations > 1:
        out.append((f"num_iterations {config.num_iterations} → 1", {"num_iterations": 1},
                    "one update per rollout: less learning per sampled completion, and the clip never acts"))
    if config.lora_r > 16:
        out.append((f"LORA_R {config.lora_r} → 16", {"lora_r": 16}, "smaller adapter: faster sync, less capacity"))
    if config.gradient_checkpointing is True:
        out.append(("gradient checkpointing off", {"gradient_checkpointing": False},
                    "skips the recomputation forward; only offered when the memory estimate fits"))
    if cpu:
        return out + _cpu_process_variants(config, hw)
    out.append((f"rollout workers {config.num_rollout_workers} → {config.num_rollout_workers * 2}",
                {"num_rollout_workers": config.num_rollout_workers * 2}, "one more model copy per worker (GPUs)"))
    learners = config.num_learners * 2
    prompts = max(config.prompts_per_step, learners)
    prompts = math.ceil(prompts / learners) * learners
    out.append((f"learner GPUs {config.num_learners} → {learners}",
                {"num_learners": learners, "prompts_per_step": prompts, "zero_stage": config.zero_stage},
                "more GPUs; ZeRO shards optimizer state over them"))
    return out


def _cpu_process_variants(config: GRPOConfig, hw: Hardware) -> list[tuple[str, dict[str, Any], str]]:
    """More learners or rollout actors, only onto cores the run leaves idle (CPU processes time-share the cores)."""
    pool = config.rollout_mode == "pool"
    busy = config.num_learners * config.cpus_per_learner + (config.num_rollout_workers if pool else 0)
    spare = int(hw.cores - busy + 1e-9)
    out: list[tuple[str, dict[str, Any], str]] = []
    if pool and spare >= 1:
        out.append((f"rollout workers {config.num_rollout_workers} → {config.num_rollout_workers + 1}",
                    {"num_rollout_workers": config.num_rollout_workers + 1}, f"uses one of the {spare} idle core(s)"))
    if spare >= config.num_learners:
        learners = config.num_learners * 2
        prompts = math.ceil(max(config.prompts_per_step, learners) / learners) * learners
        out.append((f"learners {config.num_learners} → {learners}", {"num_learners": learners, "prompts_per_step": prompts},
                    f"uses {config.num_learners} of the {spare} idle core(s)"))
    return out


def advise(config: GRPOConfig, hardware: str | Hardware = "h100", num_samples: int = 1000) -> list[Advice]:
    """Knob changes that speed a step up, each measured by re-running :func:`estimate`, best first. A CPU run gets
    no GPU advice (see ``_variants``)."""
    hardware = get_hardware(hardware, config) if isinstance(hardware, str) else hardware
    base = estimate(config, num_samples, hardware)
    advice: list[Advice] = []
    for title, change, caveat in _variants(config, hardware):
        try:
            changed = GRPOConfig.model_validate({**config.model_dump(), **change})
            new = estimate(changed, num_samples, hardware)
        except (ValueError, OSError):
            continue
        if "gradient_checkpointing" in change and not new.fits:
            continue
        per_prompt_base = base.seconds_per_step / config.prompts_per_step
        per_prompt_new = new.seconds_per_step / changed.prompts_per_step
        speedup = per_prompt_base / per_prompt_new
        if speedup <= 1.01:
            continue
        detail = (
            f"{per_prompt_base:.2f} → {per_prompt_new:.2f} s per prompt, peak memory ({base.memory_scope}) "
            f"{base.peak_memory_gb:.1f} → {new.peak_memory_gb:.1f} GB; {caveat}"
        )
        advice.append(Advice(title, detail, speedup, change))
    return sorted(advice, key=lambda a: a.estimated_speedup, reverse=True)
