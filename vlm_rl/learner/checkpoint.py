"""Checkpoints ``checkpoint-samples-N``: written to a temporary folder, then renamed, so a crash
mid-write leaves the previous checkpoint usable. Nothing is unpickled without ``weights_only=True``.

Layout::

    checkpoint-samples-N/
      adapter_model.safetensors | model.safetensors   trainable weights (what rollout/eval load)
      adapter_config.json                              under LoRA
      trainer_state.json                               step, samples, data cursor, weights version, run id, config
      rng/rank{r}.safetensors                          torch RNG state per learner rank
      deepspeed/                                       DeepSpeed engine + ZeRO optimizer shards
"""

from __future__ import annotations

import json
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine
from safetensors.torch import load_file, save_file

PATTERN = re.compile(r"^checkpoint-samples-(\d+)$")
STATE_FILE = "trainer_state.json"


def _safe_globals() -> list:
    """The few non-tensor types DeepSpeed puts in its optimizer/engine state."""
    import argparse
    import collections

    allowed: list = [argparse.Namespace, collections.OrderedDict, collections.defaultdict, set, dict, slice]
    try:
        from deepspeed.runtime.fp16.loss_scaler import LossScaler

        allowed.append(LossScaler)
    except ImportError:
        pass
    try:
        from deepspeed.utils.tensor_fragment import fragment_address

        allowed.append(fragment_address)
    except ImportError:
        pass
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum

        allowed.append(ZeroStageEnum)
    except ImportError:
        pass
    return allowed


class SafeCheckpointEngine(TorchCheckpointEngine):
    """DeepSpeed's torch checkpoint engine, but loading with ``weights_only=True``."""

    def __init__(self):
        super().__init__(None)
        self.zipfile_serialization = True

    def load(self, path: str, map_location=None):
        with torch.serialization.safe_globals(_safe_globals()):
            return torch.load(path, map_location=map_location, weights_only=True)


def checkpoint_name(samples: int) -> str:
    return f"checkpoint-samples-{samples}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (temporary folders excluded), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and (p / STATE_FILE).is_file()]
    return [p for _, p in sorted(found)]


def resolve_resume(resume: str | None, output_dir: str | Path) -> Path | None:
    """'auto' → newest complete checkpoint in output_dir (or None); a path must be a complete checkpoint."""
    if not resume:
        return None
    if resume == "auto":
        found = list_checkpoints(output_dir)
        return found[-1] if found else None
    path = Path(resume)
    if not (path / STATE_FILE).is_file():
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (no {STATE_FILE})")
    return path


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def _barrier() -> None:
    if dist.is_initialized():
        dist.barrier()


def save_checkpoint(engine, output_dir: str | Path, samples: int, state: dict, weights: dict | None,
                    adapter_config=None, keep: int = 2) -> Path:
    """Collective: every learner rank calls it. ``weights`` is the rank-0 export (None elsewhere)."""
    final = Path(output_dir) / checkpoint_name(samples)
    tmp = final.with_name(final.name + ".tmp")
    rank = _rank()
    if rank == 0:
        shutil.rmtree(tmp, ignore_errors=True)
        tmp.mkdir(parents=True)
    _barrier()
    engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
    (tmp / "rng").mkdir(exist_ok=True)
    save_file({"cpu": torch.get_rng_state()}, str(tmp / "rng" / f"rank{rank}.safetensors"))
    _barrier()
    if rank == 0:
        if weights is not None:
            name = "adapter_model.safetensors" if adapter_config is not None else "model.safetensors"
            save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / name))
        if adapter_config is not None:
            adapter_config.save_pretrained(str(tmp))
        (tmp / STATE_FILE).write_text(json.dumps(state, indent=2, sort_keys=True, default=str))
        shutil.rmtree(final, ignore_errors=True)
        tmp.rename(final)
        for old in list_checkpoints(output_dir)[:-keep]:
            shutil.rmtree(old, ignore_errors=True)
    _barrier()
    return final


def load_checkpoint(engine, path: str | Path) -> dict:
    """Collective: restore engine, optimizer and RNG; return the trainer state."""
    path = Path(path)
    engine.load_checkpoint(str(path / "deepspeed"), tag="state", load_optimizer_states=True,
                           load_lr_scheduler_states=True)
    rng = path / "rng" / f"rank{_rank()}.safetensors"
    if rng.is_file():
        torch.set_rng_state(load_file(str(rng))["cpu"])
    return json.loads((path / STATE_FILE).read_text())


def load_weights(path: str | Path) -> dict[str, torch.Tensor]:
    """The exported trainable weights of a checkpoint (safetensors, never pickle)."""
    path = Path(path)
    for name in ("adapter_model.safetensors", "model.safetensors"):
        if (path / name).is_file():
            return load_file(str(path / name))
    raise FileNotFoundError(f"{path}: no adapter_model.safetensors or model.safetensors")


def log_checkpoint_artifacts(tracker, path: Path, lora: bool) -> None:
    """LoRA adapters are small: keep them browsable in MLflow (full weights stay on disk, path in a tag)."""
    if lora:
        for name in ("adapter_model.safetensors", "adapter_config.json", "trainer_state.json"):
            if (path / name).is_file():
                tracker.log_artifact(str(path / name), artifact_path=f"checkpoints/{path.name}")
