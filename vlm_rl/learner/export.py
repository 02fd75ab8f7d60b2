"""The ``final/`` export of an SFT/DPO run: a full model (base + LoRA merged) that loads like any checkpoint.

GRPO, eval and a later DPO then start from ``model_path=<output_dir>/final`` with no PEFT in the loop.
The merge is done on a fresh CPU copy of the base model on rank 0, from the exported trainable weights,
so it does not depend on how DeepSpeed sharded the training copy.
"""

from __future__ import annotations

import copy
import shutil
from pathlib import Path

import torch

from vlm_rl.models.checkpoints import copy_processor_files
from vlm_rl.models.loading import merged_model

__all__ = ["copy_processor_files", "merged_model", "write_merged_model", "write_model_files"]


def write_model_files(model_config, base_path: str | Path, out_dir: str | Path) -> None:
    """``config.json`` (+ ``generation_config.json``) and the base's processor files beside full weights, so a
    full-fine-tuning checkpoint loads as a model folder (eval, compare, dpo-data, a later ``model_path``).

    Training changes no architecture: the base's own config is copied when it is a local folder (the training
    copy's config has ``use_cache`` off under gradient checkpointing); else ``model_config`` is written."""
    base, out_dir = Path(base_path), Path(out_dir)
    if (base / "config.json").is_file():
        shutil.copy2(base / "config.json", out_dir / "config.json")
    else:
        config = copy.deepcopy(model_config)
        for part in (config, getattr(config, "text_config", None)):
            if part is not None and hasattr(part, "use_cache"):
                part.use_cache = True
        config.save_pretrained(str(out_dir))
    if base.is_dir():
        copy_processor_files(base, out_dir)
        if (base / "generation_config.json").is_file():
            shutil.copy2(base / "generation_config.json", out_dir / "generation_config.json")


def write_merged_model(base_path: str | Path, weights: dict[str, torch.Tensor], out_dir: str | Path,
                       adapter_config=None) -> Path:
    """Write the merged model (safetensors) + the base's processor files to ``out_dir`` via a temp folder."""
    out_dir = Path(out_dir)
    tmp = out_dir.with_name(out_dir.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    model = merged_model(base_path, weights, adapter_config)
    model.save_pretrained(str(tmp), safe_serialization=True)
    copy_processor_files(base_path, tmp)
    shutil.rmtree(out_dir, ignore_errors=True)
    tmp.rename(out_dir)
    return out_dir
