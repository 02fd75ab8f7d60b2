"""Training checkpoints as model paths: every folder vlm-rl writes loads wherever a model path is accepted.

A full-fine-tuning checkpoint (``model.safetensors`` with every parameter + ``config.json`` + the processor
files) is a model folder as it stands. Two kinds are not, and are assembled on demand into a cached model
folder (``$VLM_RL_CACHE/assembled/<name>-<key>``, built once, rebuilt when the checkpoint changes):

- a LoRA checkpoint or adapter folder (``adapter_model.safetensors`` + ``adapter_config.json``): merged
  into its base model;
- a full-fine-tuning checkpoint written before config and frozen weights were saved beside the weights
  (``model.safetensors`` of the trainable parameters only, no ``config.json``): laid over its base model.

The base is the ``model_path`` the run trained from, as ``trainer_state.json`` records it (``base_model``,
else ``config.model_path``), else the adapter's ``base_model_name_or_path``. A base may itself be a checkpoint.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import torch

STATE_FILE = "trainer_state.json"
ADAPTER_CONFIG = "adapter_config.json"
ADAPTER_WEIGHTS = "adapter_model.safetensors"
FULL_WEIGHTS = "model.safetensors"
#: Files of a model folder that a merged/assembled model writes itself; training-state files are never copied.
MODEL_FILES = ("config.json", "generation_config.json", STATE_FILE, ADAPTER_CONFIG)
WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".pt")
PROCESSOR_MARKERS = ("preprocessor_config.json", "processor_config.json", "tokenizer_config.json")


def needs_base(path: str | Path) -> bool:
    """A folder that is no whole model by itself: an adapter, or a checkpoint with trainable weights only."""
    path = Path(path)
    if not path.is_dir():
        return False
    if (path / ADAPTER_CONFIG).is_file():
        return True
    return (path / STATE_FILE).is_file() and not (path / "config.json").is_file()


def checkpoint_base(path: str | Path) -> str:
    """The base model of a checkpoint or adapter folder (see the module docstring for where it is read)."""
    path = Path(path)
    base = None
    if (path / STATE_FILE).is_file():
        try:
            state = json.loads((path / STATE_FILE).read_text())
        except ValueError as exc:
            raise ValueError(f"{path / STATE_FILE}: invalid JSON: {exc}") from exc
        base = state.get("base_model") or (state.get("config") or {}).get("model_path")
    if not base and (path / ADAPTER_CONFIG).is_file():
        base = json.loads((path / ADAPTER_CONFIG).read_text()).get("base_model_name_or_path")
    if not base:
        raise ValueError(f"{path}: no base model recorded ({STATE_FILE} config.model_path or {ADAPTER_CONFIG} "
                         "base_model_name_or_path): cannot load these trained weights")
    return str(base)


def copy_processor_files(src_dir: str | Path, out_dir: str | Path) -> None:
    """Tokenizer/processor/chat-template files of a model folder (not weights, configs, state or dot-files)."""
    for src in Path(src_dir).iterdir():
        name = src.name
        if (src.is_file() and not name.startswith(".") and name not in MODEL_FILES
                and not name.endswith(WEIGHT_SUFFIXES)):
            shutil.copy2(src, Path(out_dir) / name)


def merged_model(base_path: str | Path, weights: dict[str, torch.Tensor], adapter_config=None):
    """The base model with ``weights`` applied: a LoRA adapter state (merged in) or (some) full weights."""
    from vlm_rl.models.loading import load_model

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
    from vlm_rl.models.cache import build_once, cache_root
    from vlm_rl.models.loading import resolve_model_path

    path = Path(path).resolve()
    stamp = path / (STATE_FILE if (path / STATE_FILE).is_file() else ADAPTER_CONFIG)
    weights = next((path / n for n in (ADAPTER_WEIGHTS, FULL_WEIGHTS) if (path / n).is_file()), stamp)
    st, sw = stamp.stat(), weights.stat()
    key = hashlib.sha1(f"{path}:{st.st_mtime_ns}:{st.st_size}:{sw.st_mtime_ns}:{sw.st_size}".encode()).hexdigest()[:16]
    base = resolve_model_path(checkpoint_base(path))
    if not Path(base).is_dir():
        raise FileNotFoundError(f"{path}: its base model {base} is not a local folder")
    return build_once(cache_root() / "assembled" / f"{path.name}-{key}", lambda out: _assemble(path, Path(base), out))
