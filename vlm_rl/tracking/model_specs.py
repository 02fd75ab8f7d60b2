"""What a model is, for the estimator and the disk check: total parameters and the text decoder's shape, by
known Qwen-VL name or counted from ``<model_path>/config.json`` on the meta device (no weights loaded)."""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path

from vlm_rl.config import TINY_MODELS


@dataclass(frozen=True)
class ModelSpec:
    """What the model needs: total parameters and the text decoder's shape (KV cache, LoRA, logits)."""

    name: str
    params: float
    hidden: int
    layers: int
    heads: int
    kv_heads: int
    head_dim: int
    intermediate: int
    vocab: int
    image_factor: int  # pixels per side of one visual token (patch x merge)
    family: str = "qwen3_vl"  # model_type: the static-graph decode exists for qwen3_vl only
    vision_params: float = 0.0  # the vision tower's, frozen under full fine-tuning (0: not known, all counted)


VOCAB = 151_936
KNOWN_MODELS: dict[str, ModelSpec] = {
    "qwen3-vl-2b": ModelSpec("Qwen3-VL-2B", 2.13e9, 2048, 28, 16, 8, 128, 6144, VOCAB, 32, vision_params=0.407e9),
    "qwen3-vl-4b": ModelSpec("Qwen3-VL-4B", 4.44e9, 2560, 36, 32, 8, 128, 9728, VOCAB, 32),
    "qwen3-vl-8b": ModelSpec("Qwen3-VL-8B", 8.77e9, 4096, 36, 32, 8, 128, 12288, VOCAB, 32, vision_params=0.576e9),
    "qwen3-vl-32b": ModelSpec("Qwen3-VL-32B", 33.4e9, 5120, 64, 64, 8, 128, 25600, VOCAB, 32),
    "qwen2.5-vl-3b": ModelSpec("Qwen2.5-VL-3B", 3.75e9, 2048, 36, 16, 2, 128, 11008, VOCAB, 28, "qwen2_5_vl",
                               vision_params=0.669e9),
    "qwen2.5-vl-7b": ModelSpec("Qwen2.5-VL-7B", 8.29e9, 3584, 28, 28, 4, 128, 18944, VOCAB, 28, "qwen2_5_vl"),
    "qwen2.5-vl-72b": ModelSpec("Qwen2.5-VL-72B", 73.4e9, 8192, 80, 64, 8, 128, 29568, VOCAB, 28, "qwen2_5_vl"),
    "tiny-qwen3-vl": ModelSpec("tiny-qwen3-vl", 10.3e6, 64, 2, 4, 2, 16, 128, VOCAB, 32),
    "tiny-qwen2.5-vl": ModelSpec("tiny-qwen2.5-vl", 10.3e6, 64, 2, 4, 2, 16, 128, VOCAB, 28, "qwen2_5_vl"),
}
#: Smaller sibling in the same family, for `advise`.
SMALLER = {
    "qwen3-vl-32b": "qwen3-vl-8b", "qwen3-vl-8b": "qwen3-vl-4b", "qwen3-vl-4b": "qwen3-vl-2b",
    "qwen2.5-vl-72b": "qwen2.5-vl-7b", "qwen2.5-vl-7b": "qwen2.5-vl-3b",
}
HUB_IDS = {
    "qwen3-vl-2b": "Qwen/Qwen3-VL-2B-Instruct", "qwen3-vl-4b": "Qwen/Qwen3-VL-4B-Instruct",
    "qwen3-vl-8b": "Qwen/Qwen3-VL-8B-Instruct", "qwen2.5-vl-3b": "Qwen/Qwen2.5-VL-3B-Instruct",
    "qwen2.5-vl-7b": "Qwen/Qwen2.5-VL-7B-Instruct",
}
_FACTORS = {"qwen3_vl": 32, "qwen3_vl_moe": 32, "qwen2_vl": 28, "qwen2_5_vl": 28}


def known_key(model_path: str) -> str | None:
    name = model_path.lower().replace("_", "-")
    if name in TINY_MODELS or "tiny" in name:
        return "tiny-qwen2.5-vl" if "2.5" in name or "2-5" in name else "tiny-qwen3-vl"
    match = re.search(r"(?<![\d.])(\d+)b(?![a-z0-9])", name)
    if match is None:
        return None
    size = f"{match.group(1)}b"
    family = "qwen2.5-vl" if ("2.5" in name or "2-5" in name) else "qwen3-vl"
    key = f"{family}-{size}"
    return key if key in KNOWN_MODELS else None


def _spec_from_config_dir(path: Path) -> ModelSpec:
    """Count parameters of the architecture in ``config.json`` on the meta device (no weights, no RAM)."""
    import torch
    from transformers import AutoConfig, AutoModelForImageTextToText

    config = AutoConfig.from_pretrained(path)
    with torch.device("meta"):
        model = AutoModelForImageTextToText.from_config(config)
    from vlm_rl.models.families import is_vision_parameter

    params = float(sum(p.numel() for p in model.parameters()))
    vision = float(sum(p.numel() for name, p in model.named_parameters() if is_vision_parameter(name)))
    text = getattr(config, "text_config", config)
    heads = text.num_attention_heads
    return ModelSpec(
        name=path.name,
        params=params,
        hidden=text.hidden_size,
        layers=text.num_hidden_layers,
        heads=heads,
        kv_heads=getattr(text, "num_key_value_heads", heads) or heads,
        head_dim=getattr(text, "head_dim", None) or text.hidden_size // heads,
        intermediate=text.intermediate_size,
        vocab=text.vocab_size,
        image_factor=_FACTORS.get(config.model_type, 28),
        family=config.model_type,
        vision_params=vision,
    )


def model_spec(model_path: str) -> ModelSpec:
    """Known Qwen-VL sizes by name, else the architecture in ``<model_path>/config.json``."""
    path = Path(model_path)
    if (path / "config.json").is_file():
        return _spec_from_config_dir(path)
    key = known_key(model_path)
    if key is None:
        raise ValueError(
            f"model_path: cannot size {model_path!r}: not a known Qwen-VL name "
            f"({', '.join(KNOWN_MODELS)}) and no config.json there"
        )
    return KNOWN_MODELS[key]


def lora_params(spec: ModelSpec, rank: int) -> float:
    """LoRA A+B parameters on every attention and MLP projection of the text decoder."""
    q, kv, h, i = spec.heads * spec.head_dim, spec.kv_heads * spec.head_dim, spec.hidden, spec.intermediate
    per_layer = (h + q) + 2 * (h + kv) + (q + h) + 2 * (h + i) + (i + h)
    return float(rank * per_layer * spec.layers)


def trainable_params(spec: ModelSpec, lora_r: int) -> float:
    """What the optimizer updates: the LoRA adapter, or under full fine-tuning every parameter but the frozen
    vision tower (learner/policy.py). Checked on a lent H100 (2026-12-07): ZeRO-3 checkpoints of Qwen3-VL-2B and
    a 2.2 B Qwen2.5-VL came to 14 bytes per such parameter + 2 per vision parameter, within 0.1 %."""
    return lora_params(spec, lora_r) if lora_r > 0 else spec.params - spec.vision_params
