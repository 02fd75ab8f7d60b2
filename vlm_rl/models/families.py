"""Model families: which Qwen VL a checkpoint is, its classes and its image side factor.

The *family* string ("qwen3_vl", "qwen2_5_vl", and "qwen2_vl" for Qwen2-VL checkpoints) is what the rest
of vlm-rl passes around. It lives apart from loading so that the tiny-model builder and the loader both
depend on it without depending on each other.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

#: model_type in config.json → family.
_FAMILY_OF_MODEL_TYPE = {"qwen3_vl": "qwen3_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_vl"}
#: Vision patch size x spatial merge size: image sides must be multiples of this.
_IMAGE_FACTOR = {"qwen3_vl": 32, "qwen2_5_vl": 28, "qwen2_vl": 28}
#: Families whose text decoder the fast rollout engine drives (rollout/fast_decode.py); others sample with HF
#: generate. Here, apart from the engine, so the time estimate models the same engine without importing it.
FAST_DECODE_FAMILIES = ("qwen3_vl", "qwen2_5_vl")


def is_vision_parameter(name: str) -> bool:
    """A vision-tower parameter (``visual.*`` / ``model.visual.*``): frozen under full fine-tuning, so neither
    the optimizer nor a checkpoint's trainable part holds it (the checkpoint size estimate counts it the same way)."""
    return ".visual." in f".{name}" or name.startswith("visual.") or "model.visual" in name


def _config_dict(config_or_path: Any) -> dict:
    if isinstance(config_or_path, dict):
        return config_or_path
    if hasattr(config_or_path, "model_type"):
        return {"model_type": config_or_path.model_type}
    path = Path(config_or_path)
    if path.is_dir():
        file = path / "config.json"
        if not file.is_file():
            raise FileNotFoundError(f"{file}: no config.json in model folder")
        try:
            return json.loads(file.read_text())
        except json.JSONDecodeError as exc:
            raise ValueError(f"{file}: invalid JSON: {exc}") from exc
    from transformers import AutoConfig  # a hub id

    return {"model_type": AutoConfig.from_pretrained(str(config_or_path)).model_type}


def model_family(config_or_path: Any) -> str:
    """"qwen3_vl", "qwen2_5_vl" or "qwen2_vl" from a config object, config dict, model folder or hub id."""
    model_type = _config_dict(config_or_path).get("model_type")
    if model_type not in _FAMILY_OF_MODEL_TYPE:
        raise ValueError(
            f"model_type: {model_type!r} is not a supported Qwen VL model (supported: {sorted(_FAMILY_OF_MODEL_TYPE)})"
        )
    return _FAMILY_OF_MODEL_TYPE[model_type]


def image_factor(family: str) -> int:
    """Side multiple for the family's vision encoder: patch size x merge size (32 Qwen3-VL, 28 Qwen2.5-VL)."""
    if family not in _IMAGE_FACTOR:
        raise ValueError(f"family: unknown model family {family!r}; expected one of {sorted(_IMAGE_FACTOR)}")
    return _IMAGE_FACTOR[family]


def model_class(family: str):
    """The ``...ForConditionalGeneration`` class of ``family``."""
    import transformers

    names = {
        "qwen3_vl": "Qwen3VLForConditionalGeneration",
        "qwen2_5_vl": "Qwen2_5_VLForConditionalGeneration",
        "qwen2_vl": "Qwen2VLForConditionalGeneration",
    }
    if family not in names:
        raise ValueError(f"family: unknown model family {family!r}; expected one of {sorted(names)}")
    return getattr(transformers, names[family])
