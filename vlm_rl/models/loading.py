"""Find, identify and load Qwen VL checkpoints (local folders, hub ids, or built-on-demand tiny models).

The *family* string ("qwen3_vl", "qwen2_5_vl", and "qwen2_vl" for Qwen2-VL checkpoints) is what the rest
of vlm-rl passes around: it decides the image side factor, the coordinate system of answers
(`vlm_rl.models.coords`) and the classes to load.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import torch

from vlm_rl.config import TINY_MODELS
from vlm_rl.models.cache import cache_root
from vlm_rl.models.families import model_class, model_family

#: TINY_MODELS name → family of the tiny model built for it.
TINY_FAMILIES = {"tiny-qwen3-vl": "qwen3_vl", "tiny-qwen2.5-vl": "qwen2_5_vl"}
def resolve_model_path(name_or_path: str | os.PathLike, cache_dir: str | os.PathLike | None = None) -> Path:
    """A loadable location for ``name_or_path``.

    TINY_MODELS names are built on first use into ``cache_dir/<name>`` (default
    ``~/.cache/vlm-rl/models``; concurrent callers wait for one build). Existing local paths come back
    absolute, so Ray workers with another working directory find them; a training checkpoint that is no
    whole model by itself (LoRA, see ``vlm_rl.models.checkpoints``) comes back as its assembled model
    folder; anything else (a hub id) is returned unchanged.
    """
    name = str(name_or_path)
    if name in TINY_MODELS:
        from vlm_rl.models.tiny import build_tiny_model

        root = Path(cache_dir).expanduser() if cache_dir is not None else cache_root() / "models"
        return build_tiny_model(root / name, family=TINY_FAMILIES[name])
    path = Path(name).expanduser()
    if not path.exists():
        return Path(name)
    from vlm_rl.models.checkpoints import assembled_model_dir, needs_base

    # A LoRA checkpoint/adapter, or an older checkpoint of trainable weights only: merged with its base, once.
    return assembled_model_dir(path) if needs_base(path) else path.resolve()


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
