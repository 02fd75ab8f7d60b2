"""Set-up and measurement pieces shared by both sides of bench/grpo_throughput.py: models, data, memory, medians."""

from __future__ import annotations

import gc
import statistics
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

ARCHS = {"tiny": "tiny-qwen3-vl", "2b": "qwen3-vl-2b", "8b": "qwen3-vl-8b"}


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
        # the first step pays compile and CUDA-graph capture (less with a warm VLM_RL_CACHE: --cold-warm)
        "first_step_seconds": step_rows[0].get("step") if step_rows else None,
    }
