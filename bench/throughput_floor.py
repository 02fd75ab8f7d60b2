"""Physical lower bounds of a GRPO step (bytes / measured bandwidth, FLOPs / measured matmul rate)."""

from __future__ import annotations

import time
from pathlib import Path

import torch
from throughput_common import ARCHS, _free


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
