"""Does a run's checkpointing fit the disk at ``output_dir``? Checked before Ray starts and before each checkpoint.

A full-fine-tuning checkpoint with Adam state is ~14 bytes per trainable parameter (the vision tower is frozen:
~25 GB at 2B, ~120 GB at 8B); ``keep_checkpoints`` of them stay on disk, and while the next one is written the old ones are still
there. A disk that fills mid-write surfaces as ``basic_ios::clear: iostream error`` from ``torch.save``
(issue 23), so the run compares what it will write with what is free first, and a write that fails anyway
is re-raised with the same numbers.

What one checkpoint holds (``checkpoint_size``), per trainable parameter T and all parameters P:

* optimizer state: ZeRO's fp32 copy of the weights (4 bytes: the master copy under bf16) + Adam's two fp32
  moments (8);
* the module's weights in DeepSpeed's model file: T x 2 (bf16) or 4 (fp32); frozen weights are not saved
  (``exclude_frozen_parameters``: a LoRA checkpoint holds the adapter, not the base model, except a tied
  ``lm_head``, vocab x hidden, which DeepSpeed keeps under its second name). Under ZeRO-3 full fine-tuning
  the trainable weights live only in the optimizer's partition and the file holds the frozen vision tower,
  (P - T) x 2: measured on a lent H100, 24.9 GB for Qwen3-VL-2B (T = 1.72 B, P = 2.13 B) and 23.0 GB for a
  2.2 B Qwen2.5-VL, each within 0.1 % of this sum;
* the exported trainable weights (``model.safetensors`` / ``adapter_model.safetensors``): T x 2 or 4;
* the KL reference (full fine-tuning, beta > 0, after an SFT warm-up): P x 2 or 4, written once and
  hard-linked into every later checkpoint, so counted once for the run.

SFT/DPO runs add the merged ``final/`` export (P x 2 or 4) at the end.

>>> size = CheckpointSize(state=14e9, export=2e9, reference=0, final=0)
>>> size.per_checkpoint
16000000000.0
>>> round(run_need(size, checkpoints=3) / 1e9)
48
>>> "a checkpoint needs 16.0 GB, 5.0 GB are free at /x" in need_message(16e9, 5e9, "/x")
True
"""

from __future__ import annotations

import shutil
from dataclasses import dataclass
from pathlib import Path

from vlm_rl.config import BaseConfig, ConfigError

GB = 1e9
#: Slack over the estimate: DeepSpeed's pickled metadata, RNG files, MLflow's store, rollouts.jsonl, logs.
MARGIN = 1.10
MARGIN_BYTES = 64 * 2**20


class DiskSpaceError(ConfigError):
    """The run's checkpoints cannot fit the free space at output_dir (a ConfigError: exit code 2)."""


@dataclass(frozen=True)
class CheckpointSize:
    """Bytes of one checkpoint's parts; ``reference`` and ``final`` are written once per run."""

    state: float  # DeepSpeed: module weights + optimizer (per checkpoint)
    export: float  # exported trainable weights (per checkpoint)
    reference: float  # frozen KL reference weights (once)
    final: float  # SFT/DPO merged export (once)
    trainable: float = 0.0
    params: float = 0.0

    @property
    def per_checkpoint(self) -> float:
        return self.state + self.export

    def to_dict(self) -> dict:
        return {"checkpoint_gb": self.per_checkpoint / GB, "optimizer_and_weights_gb": self.state / GB,
                "export_gb": self.export / GB, "reference_gb": self.reference / GB, "final_export_gb": self.final / GB,
                "trainable_params": self.trainable, "params": self.params}


def saves_reference(config: BaseConfig) -> bool:
    """GRPO full fine-tuning with a KL term after an SFT warm-up: the reference is not the base model, so
    checkpoints carry it (``reference.safetensors``)."""
    from vlm_rl.learner.reference import needs_frozen_reference

    return needs_frozen_reference(config) and bool(getattr(config, "sft_warmup_steps", 0))


def checkpoint_size(config: BaseConfig, spec=None) -> CheckpointSize:
    """Estimated bytes of one checkpoint of this run (parameters counted from the model's config.json)."""
    from vlm_rl.tracking.model_specs import model_spec, trainable_params

    spec = spec or model_spec(config.model_path)
    params = float(spec.params)
    trainable = trainable_params(spec, config.lora_r)
    weight = 2 if config.bf16 else 4
    optimizer = 4 + 8  # ZeRO's fp32 partition of the weights (the master copy under bf16) + Adam m and v
    if config.lora_r == 0 and config.zero_stage == 3:
        # ZeRO-3's module file: the frozen vision tower, its trainable weights living in the optimizer's partition
        # (measured: 12 T + 2 (P - T) + the 2 T export, within 0.1 % at 2B)
        state = trainable * optimizer + (params - trainable) * weight
    else:
        state = trainable * (weight + optimizer)
    if config.lora_r > 0:  # DeepSpeed keeps a tied lm_head in the module file (its name is no parameter's)
        state += float(spec.vocab) * spec.hidden * weight
    export = trainable * weight
    reference = params * weight if saves_reference(config) else 0.0
    final = params * weight if not hasattr(config, "num_generations") else 0.0  # SFT/DPO merge to final/
    return CheckpointSize(state=state, export=export, reference=reference, final=final, trainable=trainable,
                          params=params)


def size_for_checks(config: BaseConfig) -> CheckpointSize | None:
    """The estimate rank 0 checks each checkpoint against; None (the check then uses the last checkpoint's
    measured size) when the run opts out or the model cannot be sized."""
    if not config.disk_check:
        return None
    try:
        return checkpoint_size(config)
    except (ValueError, OSError) as exc:
        print(f"[vlm-rl] checkpoint size unknown, the disk check uses the last checkpoint's: {exc}", flush=True)
        return None


def checkpoints_written(config: BaseConfig) -> int:
    """How many checkpoints are on disk at the worst moment: ``keep_checkpoints`` + the one being written,
    or fewer when the run writes fewer (GRPO knows its sample count; a checkpoint at the end always)."""
    most = config.keep_checkpoints + 1
    steps, batch = getattr(config, "num_steps", None), getattr(config, "prompts_per_step", None)
    if steps and batch:
        every = config.save_every_samples
        written = (steps * batch // every if every else 0) + 1
        return min(most, written)
    return most


def run_need(size: CheckpointSize, checkpoints: int) -> float:
    return size.per_checkpoint * checkpoints + size.reference + size.final


def free_bytes(path: str | Path) -> int:
    """Free bytes on the filesystem of ``path`` (or of its nearest existing parent)."""
    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    return shutil.disk_usage(path).free


#: Ray stops creating and moving objects once a node's disk is this full (``local_fs_capacity_threshold``):
#: a driver then waits forever ("Attempting to recover N lost objects"), which is how the GPU runs of issue 23
#: hung after their last checkpoint at 96 % full. Checkpoints must leave the disk below it.
RAY_DISK_THRESHOLD_ENV = "RAY_local_fs_capacity_threshold"


def usable_bytes(path: str | Path) -> int:
    """Free bytes at ``path`` that checkpoints may fill: what is free, less what Ray needs to stay under its
    disk-full threshold (5 % of the disk by default)."""
    import os

    path = Path(path).resolve()
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    threshold = min(max(float(os.environ.get(RAY_DISK_THRESHOLD_ENV, "0.95")), 0.0), 1.0)
    return max(0, int(usage.free - (1.0 - threshold) * usage.total))


def need_message(need: float, free: float, where: str | Path, what: str = "a checkpoint",
                 usable: float | None = None) -> str:
    ray_note = "" if usable is None or usable >= free else (
        f" ({usable / GB:.1f} GB of it usable: above 95 % full, Ray stops storing objects and a run hangs)")
    return (f"{what} needs {need / GB:.1f} GB, {free / GB:.1f} GB are free at {where}{ray_note}: lower "
            f"keep_checkpoints, save LoRA only (lora_r > 0), or free space (disk_check=false skips this check, "
            f"e.g. on a filesystem that misreports its free space)")


def with_margin(nbytes: float) -> float:
    return nbytes * MARGIN + MARGIN_BYTES


def ensure_disk_space(config: BaseConfig, spec=None) -> CheckpointSize | None:
    """Before the run: raise :class:`DiskSpaceError` when its checkpoints (and exports) cannot fit."""
    if not getattr(config, "disk_check", True):
        return None
    try:
        size = checkpoint_size(config, spec)
    except (ValueError, OSError) as exc:  # an unknown model name: nothing to size it by, say so and go on
        print(f"[vlm-rl] disk check skipped: {exc}", flush=True)
        return None
    count = checkpoints_written(config)
    need = with_margin(run_need(size, count))
    free, usable = free_bytes(config.output_dir), usable_bytes(config.output_dir)
    if need > usable:
        what = (f"the run's checkpoints ({count} x {size.per_checkpoint / GB:.1f} GB"
                + (f" + the KL reference {size.reference / GB:.1f} GB" if size.reference else "")
                + (f" + the final export {size.final / GB:.1f} GB" if size.final else "") + ")")
        raise DiskSpaceError(f"output_dir: {need_message(need, free, config.output_dir, what, usable)}")
    return size


def directory_bytes(path: str | Path) -> int:
    """Bytes of the files under ``path`` (a hard-linked file counted once)."""
    seen, total = set(), 0
    for f in Path(path).rglob("*"):
        try:
            st = f.stat()
        except OSError:
            continue
        if f.is_file() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total
