"""The ``final/`` export of an SFT/DPO run: a full model (base + LoRA merged) that loads like any checkpoint.

GRPO, eval and a later DPO then start from ``model_path=<output_dir>/final`` with no PEFT in the loop.
The merge is done on a fresh CPU copy of the base model on rank 0, from the exported trainable weights,
so it does not depend on how DeepSpeed sharded the training copy.
"""

from __future__ import annotations

import shutil
from pathlib import Path

import torch

#: Files of the base model folder that the export writes itself (everything else — tokenizer, processor,
#: chat template — is copied unchanged, so the export's processor is the base model's, byte for byte).
_MODEL_FILES = ("config.json", "generation_config.json")
_WEIGHT_SUFFIXES = (".safetensors", ".bin", ".safetensors.index.json", ".bin.index.json", ".pt")


def merged_model(base_path: str | Path, weights: dict[str, torch.Tensor], adapter_config=None):
    """The base model with ``weights`` applied: a LoRA adapter state (merged in) or full trainable weights."""
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
    missing, unexpected = model.load_state_dict(weights, strict=False)
    if unexpected:
        raise ValueError(f"trained weights do not fit the base model: unexpected keys {unexpected[:3]}...")
    return model


def copy_processor_files(base_path: str | Path, out_dir: str | Path) -> None:
    """Tokenizer/processor/chat-template files of the base folder (not weights, configs or dot-files)."""
    for src in Path(base_path).iterdir():
        name = src.name
        if src.is_file() and not name.startswith(".") and name not in _MODEL_FILES and not name.endswith(_WEIGHT_SUFFIXES):
            shutil.copy2(src, Path(out_dir) / name)


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
