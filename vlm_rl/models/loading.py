"""Find, identify and load Qwen VL checkpoints (local folders, hub ids, or built-on-demand tiny models).

The *family* string ("qwen3_vl", "qwen2_5_vl", and "qwen2_vl" for Qwen2-VL checkpoints) is what the rest
of vlm-rl passes around: it decides the image side factor, the coordinate system of answers
(`vlm_rl.models.coords`) and the classes to load.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import torch

from vlm_rl.config import TINY_MODELS
from vlm_rl.models.cache import cache_root

#: model_type in config.json → family.
_FAMILY_OF_MODEL_TYPE = {"qwen3_vl": "qwen3_vl", "qwen2_5_vl": "qwen2_5_vl", "qwen2_vl": "qwen2_vl"}
#: TINY_MODELS name → family of the tiny model built for it.
TINY_FAMILIES = {"tiny-qwen3-vl": "qwen3_vl", "tiny-qwen2.5-vl": "qwen2_5_vl"}
#: Vision patch size x spatial merge size: image sides must be multiples of this.
_IMAGE_FACTOR = {"qwen3_vl": 32, "qwen2_5_vl": 28, "qwen2_vl": 28}


def resolve_model_path(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A loadable location for ``name_or_path``.

    TINY_MODELS names are built on first use into ``cache_dir/<name>`` (default
    ``~/.cache/vlm-rl/models``; concurrent callers wait for one build). Existing local paths come back
    absolute, so Ray workers with another working directory find them; anything else (a hub id) is
    returned unchanged.
    """
    name = str(name_or_path)
    if name in TINY_MODELS:
        from vlm_rl.models.tiny import build_tiny_model

        root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "models"
        return build_tiny_model(root / name, family=TINY_FAMILIES[name])
    path = Path(name).expanduser()
    return path.resolve() if path.exists() else Path(name)


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


def _local_dir(path: str | os.PathLike) -> Path:
    """A local folder with the checkpoint's small files (a hub id is fetched without its weights)."""
    if Path(path).is_dir():
        return Path(path)
    from huggingface_hub import snapshot_download

    return Path(snapshot_download(str(path), allow_patterns=["*.json", "*.jinja", "*.txt"]))


def load_processor(path: str | os.PathLike):
    """The torchvision-free processor of the model at ``path`` (see ``vlm_rl.models.processor``)."""
    from vlm_rl.models.processor import load_family_processor

    local = _local_dir(resolve_model_path(path))
    return load_family_processor(local, model_family(local))


def load_model(
    path: str | os.PathLike,
    *,
    dtype: torch.dtype = torch.float32,
    device: str | torch.device = "cpu",
    attn_implementation: str | None = None,
):
    """The family's ``...ForConditionalGeneration`` in eval mode, in ``dtype`` on ``device``."""
    resolved = resolve_model_path(path)
    cls = model_class(model_family(resolved if Path(resolved).exists() else str(resolved)))
    kwargs: dict[str, Any] = {"dtype": dtype}
    if attn_implementation is not None:
        kwargs["attn_implementation"] = attn_implementation
    model = cls.from_pretrained(str(resolved), **kwargs)
    return model.to(device).eval()
