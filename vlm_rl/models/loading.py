"""Find, identify and load Qwen VL checkpoints (local folders, hub ids, or built-on-demand tiny models).

The *family* string ("qwen3_vl", "qwen2_5_vl", and "qwen2_vl" for Qwen2-VL checkpoints) is what the rest
of vlm-rl passes around: it decides the image side factor, the coordinate system of answers
(`vlm_rl.models.coords`) and the classes to load.
"""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
from typing import Any

import torch

from vlm_rl.config import TINY_MODELS
from vlm_rl.models.cache import cache_root
from vlm_rl.models.checkpoints import (
    ADAPTER_CONFIG,
    ADAPTER_WEIGHTS,
    FULL_WEIGHTS,
    PROCESSOR_MARKERS,
    STATE_FILE,
    checkpoint_base,
    copy_processor_files,
    needs_base,
)
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


def merged_model(base_path: str | Path, weights: dict[str, torch.Tensor], adapter_config=None):
    """The base model with ``weights`` applied: a LoRA adapter state (merged in) or (some) full weights."""
    model = load_model(base_path)
    if adapter_config is not None:
        from peft import get_peft_model, set_peft_model_state_dict

        peft_model = get_peft_model(model, adapter_config)
        result = set_peft_model_state_dict(peft_model, weights)
        missing = [k for k in getattr(result, "unexpected_keys", []) if "lora_" in k]
        if missing:
            raise ValueError(f"adapter weights do not fit the base model: unexpected keys {missing[:3]}...")
        return peft_model.merge_and_unload()
    _, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"trained weights do not fit the base model: unexpected keys {unexpected[:3]}...")
    return model


def _assemble(path: Path, base: Path, out: Path) -> None:
    from peft import LoraConfig
    from safetensors.torch import load_file

    if (path / ADAPTER_CONFIG).is_file():
        weights = load_file(str(path / ADAPTER_WEIGHTS))
        model = merged_model(base, weights, LoraConfig.from_pretrained(str(path)))
    elif (path / FULL_WEIGHTS).is_file():
        model = merged_model(base, load_file(str(path / FULL_WEIGHTS)))
    else:
        raise FileNotFoundError(f"{path}: no {ADAPTER_WEIGHTS} or {FULL_WEIGHTS} (a ZeRO shard folder alone "
                                "is not a model; use a checkpoint-samples-N folder)")
    model.save_pretrained(str(out), safe_serialization=True)
    has_processor = any((path / f).is_file() for f in PROCESSOR_MARKERS)
    copy_processor_files(path if has_processor else base, out)


def assembled_model_dir(path: str | Path) -> Path:
    """A whole model folder for ``path`` (``needs_base``), built once into the cache."""
    from vlm_rl.models.cache import build_once

    path = Path(path).resolve()
    stamp = path / (STATE_FILE if (path / STATE_FILE).is_file() else ADAPTER_CONFIG)
    weights = next((path / n for n in (ADAPTER_WEIGHTS, FULL_WEIGHTS) if (path / n).is_file()), stamp)
    st, sw = stamp.stat(), weights.stat()
    key = hashlib.sha1(f"{path}:{st.st_mtime_ns}:{st.st_size}:{sw.st_mtime_ns}:{sw.st_size}".encode()).hexdigest()[:16]
    base = resolve_model_path(checkpoint_base(path))
    if not Path(base).is_dir():
        raise FileNotFoundError(f"{path}: its base model {base} is not a local folder")
    return build_once(cache_root() / "assembled" / f"{path.name}-{key}", lambda out: _assemble(path, Path(base), out))
