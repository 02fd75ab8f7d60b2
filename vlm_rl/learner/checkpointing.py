"""``gradient_checkpointing: auto``: recompute activations only when a micro-batch's would not fit.

Why: checkpointing costs one extra forward per step (a third more learner time) to save activations the GPU
often has room for: at 8B / 512 px the learner peaked at 22 GB of 80 with it on. The seed script's knob
(DISABLE_GRADIENT_CHECKPOINTING) leaves the choice to the user; ``auto`` makes it from the model just loaded, the
micro-batch the config implies and the memory this learner actually has, and logs why.

The activation model is the estimator's (vlm_rl/tracking/estimator.py): ~34 bytes x hidden per token and layer in
16-bit without checkpointing (Korthikanti et al. 2022, flash-style attention), twice that in float32, plus the
completion logits. The optimizer state and gradients still to be allocated are added; the weights are already
in the memory reading. Checkpointing stays off when all of it fits in ``MARGIN`` of what is available.
"""

from __future__ import annotations

import logging
import os
from dataclasses import dataclass

import torch

log = logging.getLogger(__name__)

MARGIN = 0.8  # of the memory available to this learner: allocator fragmentation, the rollout's KV, spikes
ACTIVATION_BYTES_PER_TOKEN_LAYER = 34  # x hidden size, 16-bit activations
LOGIT_BYTES = 6  # 16-bit logits + the float32 upcast of the rows the loss reads, per completion token x vocab
PROMPT_TEXT_TOKENS = 80  # chat template + instruction
SUPERVISED_ANSWER_TOKENS = 256  # SFT/DPO target length, an upper bound for detection answers
ADAM_AND_GRAD_BYTES = 14  # per trainable parameter: fp32 master + two moments + 16-bit gradient


@dataclass(frozen=True)
class Decision:
    enabled: bool
    reason: str
    need_gb: float = 0.0
    available_gb: float = 0.0


def micro_batch_shape(config) -> tuple[int, int, int]:
    """(rows, prompt tokens per row, completion tokens per row) of one learner micro-batch.

    GRPO: a rank's share of the step's completions per optimizer step, or ``micro_batch_size``; SFT/DPO: the
    per-rank batch (DPO's chosen and rejected twice). Images are taken at ``max_image_size``, square."""
    factor = 28 if "2_5" in str(config.model_path) or "2.5" in str(config.model_path) else 32
    side = max(config.max_image_size // factor, 1)
    prompt = side * side + PROMPT_TEXT_TOKENS
    learners = max(config.num_learners, 1)
    if hasattr(config, "num_generations"):
        rows = config.prompts_per_step // learners * config.num_generations // max(config.steps_per_generation, 1)
        completion = config.max_new_tokens
    else:
        # (DPO runs chosen and rejected; a detection answer is a few dozen tokens: 256 is an upper bound)
        rows = max(getattr(config, "batch_size", 1) // learners, 1) * (2 if hasattr(config, "pairs") else 1)
        completion = SUPERVISED_ANSWER_TOKENS
    if config.micro_batch_size:
        rows = min(rows, config.micro_batch_size)
    return max(rows, 1), prompt, completion


def activation_bytes(text_config, rows: int, prompt: int, completion: int, dtype: torch.dtype,
                     shared_prompt: bool = False, group: int = 1) -> float:
    """Bytes of one micro-batch's saved activations without checkpointing, plus its completion logits."""
    tokens = rows * (prompt + completion)
    if shared_prompt and group > 1:  # one prompt per group of completions (learner/shared_prompt.py)
        tokens = rows // group * prompt + rows * completion
    per_token_layer = ACTIVATION_BYTES_PER_TOKEN_LAYER * (2 if dtype == torch.float32 else 1)
    layers, hidden = text_config.num_hidden_layers, text_config.hidden_size
    return tokens * hidden * per_token_layer * layers + rows * completion * text_config.vocab_size * LOGIT_BYTES


def available_bytes(device: torch.device | str, config) -> float:
    """What this learner can still allocate: its share of the GPU (``gpus_per_learner``) minus what it holds,
    or the host's available memory split among the learners on it."""
    device = torch.device(device)
    if device.type == "cuda":
        free, total = torch.cuda.mem_get_info(device)
        share = total * min(getattr(config, "gpus_per_learner", 1.0), 1.0)
        return max(min(free, share - torch.cuda.memory_reserved(device)), 0.0)
    return _host_available() / max(config.num_learners, 1)


def _host_available() -> float:
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return float(line.split()[1]) * 1024
    except OSError:
        pass
    return float(os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE"))


def decide(config, model, device: torch.device | str, available: float | None = None) -> Decision:
    """Whether to checkpoint, for ``config.gradient_checkpointing`` True/False (as set) or "auto" (``available``:
    bytes this learner may still allocate; read from the device when None)."""
    setting = config.gradient_checkpointing
    if setting is not True and setting is not False:
        return _auto(config, model, device, available)
    return Decision(bool(setting), "set in the config")


def _auto(config, model, device, available: float | None) -> Decision:
    text = getattr(model.config, "text_config", model.config)
    dtype = next(model.parameters()).dtype
    rows, prompt, completion = micro_batch_shape(config)
    group = getattr(config, "num_generations", 1)
    need = activation_bytes(text, rows, prompt, completion, dtype,
                            shared_prompt=getattr(config, "share_prompt_forward", False), group=group)
    # full fine-tuning trains all but the vision tower; a LoRA adapter is a negligible fraction of the base
    trainable = 0 if config.lora_r > 0 else sum(p.numel() for n, p in model.named_parameters() if "visual" not in n)
    shards = max(config.num_learners, 1) if config.zero_stage >= 1 else 1
    need += trainable * ADAM_AND_GRAD_BYTES / shards
    available = available_bytes(device, config) if available is None else available
    enabled = need > MARGIN * available
    reason = (f"auto: a {rows}-row micro-batch of {prompt}+{completion} tokens needs ~{need / 1e9:.1f} GB without "
              f"it (activations, logits, optimizer still to come); {available / 1e9:.1f} GB available → "
              f"{'on' if enabled else 'off'}")
    return Decision(enabled, reason, need / 1e9, available / 1e9)
