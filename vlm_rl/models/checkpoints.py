"""Training checkpoints as model paths: every folder vlm-rl writes loads wherever a model path is accepted.

This module reads folders only; the merge itself (``merged_model``, ``assembled_model_dir``) lives in
``vlm_rl.models.loading``, which loads models.

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

import json
import shutil
from pathlib import Path

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
