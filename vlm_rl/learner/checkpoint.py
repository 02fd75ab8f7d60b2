"""Checkpoints ``checkpoint-samples-N``: written to a temporary folder, then renamed, so a crash
mid-write leaves the previous checkpoint usable. Nothing is unpickled without ``weights_only=True``.

Layout::

    checkpoint-samples-N/
      adapter_model.safetensors | model.safetensors   the LoRA adapter | every parameter (frozen ones too)
      adapter_config.json                              under LoRA
      config.json, processor files                     full fine-tuning: the folder is a model folder as is
                                                       (a LoRA checkpoint loads merged with ``base_model``:
                                                       vlm_rl.models.checkpoints)
      trainer_state.json                               step, samples, data cursor, weights version, run id, config,
                                                       base_model (the model_path trained from)
      rng/rank{r}.safetensors                          torch RNG state per learner rank (CPU, and the rank's GPU)
      deepspeed/                                       DeepSpeed engine + ZeRO optimizer shards (trainable
                                                       weights only: a LoRA checkpoint holds no base model)
      reference.safetensors                            the frozen KL reference, when it is not the base model
                                                       (full fine-tuning after an SFT warm-up); hard-linked
                                                       from the previous checkpoint, so written once

A checkpoint is complete (a resume point) only when its folder has the final name, its state file, and
every file the state file's manifest lists, at the recorded size. It is written under ``<name>.tmp``;
an existing folder of the same name is first renamed aside (``.old``), rotation renames before it deletes
(``.deleting``): a crash at any point leaves either the complete new checkpoint or none of that name.

Every failure inside ``save_checkpoint`` is agreed on by all ranks and raised on each as a
:class:`CheckpointError` (the free space and the checkpoint's size in the message): no rank waits at a
barrier for one that failed, and the worker ends the run without a Ray Train restart (``FatalRunError``).
"""

from __future__ import annotations

import functools
import json
import os
import re
import shutil
from pathlib import Path

import torch
import torch.distributed as dist
from safetensors.torch import load_file, save_file

from vlm_rl.learner.run_end import FatalRunError

PATTERN = re.compile(r"^checkpoint-samples-(\d+)$")
#: Folders a save leaves only when it was interrupted: never resume points, removed by the next save.
LEFTOVER = re.compile(r"^checkpoint-samples-\d+\.(tmp|old|deleting)$")
STATE_FILE = "trainer_state.json"
REFERENCE_FILE = "reference.safetensors"
MANIFEST_KEY = "files"


class CheckpointError(FatalRunError):
    """A checkpoint could not be written; raised on every learner rank alike."""


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
    allowed.extend(_checkpoint_enums())
    # an enum member pickled by name, getattr(EnumClass, "name"): resolved for the enums above only
    allowed.append((_enum_member, "builtins.getattr"))
    return allowed


def _checkpoint_enums() -> tuple[type, ...]:
    try:
        from deepspeed.runtime.zero.config import ZeroStageEnum
    except ImportError:
        return ()
    return (ZeroStageEnum,)


def _enum_member(owner, name: str):
    """What ``weights_only`` loading accepts for ``GLOBAL builtins.getattr``: a member of one of
    ``_checkpoint_enums``, never an attribute of anything else. Python 3.11.2 pickles ``ZeroStageEnum.gradients``
    that way, ``getattr(ZeroStageEnum, 'gradients')`` (3.11.7 by value), so a learner restarted after a fault
    could not load its own checkpoint (the fault test in a clean-clone CI run)."""
    import pickle

    if owner in _checkpoint_enums() and isinstance(name, str) and name in owner.__members__:
        return owner[name]
    raise pickle.UnpicklingError(f"getattr({owner!r}, {name!r}) in a checkpoint: only members of "
                                 f"{[e.__name__ for e in _checkpoint_enums()]} are loaded")


class _ByValuePickle:
    """``torch.save``'s ``pickle_module``: the standard pickler, except that an enum member is always written by
    value, ``EnumClass(value)``, whatever ``__reduce_ex__`` its class has in this process."""

    __name__ = "pickle"

    def __init__(self):
        import enum
        import pickle

        class Pickler(pickle.Pickler):
            def reducer_override(self, obj):
                if isinstance(obj, enum.Enum) and not isinstance(obj, type):
                    return type(obj), (obj._value_,)
                return NotImplemented

        self.Pickler = Pickler
        self.dump = pickle.dump


@functools.cache
def _safe_engine_class() -> type:
    from deepspeed.runtime.checkpoint_engine.torch_checkpoint_engine import TorchCheckpointEngine

    class SafeCheckpointEngine(TorchCheckpointEngine):
        """DeepSpeed's torch checkpoint engine, but loading with ``weights_only=True`` and writing enum members
        by value (what that loading accepts)."""

        def __init__(self):
            super().__init__(None)
            self.zipfile_serialization = True

        def save(self, state_dict, path: str):
            torch.save(state_dict, path, pickle_module=_ByValuePickle(),
                       _use_new_zipfile_serialization=self.zipfile_serialization)

        def load(self, path: str, map_location=None):
            with torch.serialization.safe_globals(_safe_globals()):
                return torch.load(path, map_location=map_location, weights_only=True)

    return SafeCheckpointEngine


def __getattr__(name: str):
    """``SafeCheckpointEngine`` is made on first use: importing DeepSpeed costs seconds (and prints a line),
    and the checks before Ray (``resolve_resume``, ``list_checkpoints``) need none of it."""
    if name == "SafeCheckpointEngine":
        return _safe_engine_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def checkpoint_name(samples: int) -> str:
    return f"checkpoint-samples-{samples}"


def list_checkpoints(output_dir: str | Path) -> list[Path]:
    """Complete checkpoints (temporary folders excluded), oldest first."""
    root = Path(output_dir)
    if not root.is_dir():
        return []
    found = [(int(m.group(1)), p) for p in root.iterdir() if (m := PATTERN.match(p.name)) and is_complete(p)]
    return [p for _, p in sorted(found)]


def is_complete(path: str | Path) -> bool:
    """The state file is there and readable, and every file of its manifest has the size it was written with
    (checkpoints written before the manifest existed: the state file alone)."""
    path = Path(path)
    try:
        state = json.loads((path / STATE_FILE).read_text())
    except (OSError, ValueError):
        return False
    for name, size in (state.get(MANIFEST_KEY) or {}).items():
        try:
            if (path / name).stat().st_size != size:
                return False
        except OSError:
            return False
    return True


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
    if not is_complete(path):
        raise FileNotFoundError(f"resume: {path} is not a complete checkpoint (files missing or cut short)")
    return path


def _rank() -> int:
    return dist.get_rank() if dist.is_initialized() else 0


def agree(error: str | None) -> str | None:
    """Collective: the first failing rank's error, on every rank (None when all succeeded)."""
    if not dist.is_initialized() or dist.get_world_size() == 1:
        return error
    gathered: list = [None] * dist.get_world_size()
    dist.all_gather_object(gathered, error)
    return next((e for e in gathered if e), None)


def _is_deepspeed(engine) -> bool:
    from deepspeed.runtime.engine import DeepSpeedEngine

    return isinstance(engine, DeepSpeedEngine)


def _failure(name: str, exc: BaseException, root: Path, expected: float | None) -> str:
    from vlm_rl.learner.disk import GB, free_bytes, need_message

    free = free_bytes(root)
    reason = f"{type(exc).__name__}: {exc}".strip()
    if expected:
        return f"{name} could not be written ({reason}); {need_message(expected, free, root)}"
    return (f"{name} could not be written ({reason}); {free / GB:.1f} GB are free at {root}: if the disk is "
            "full, lower keep_checkpoints, save LoRA only (lora_r > 0), or free space")


def _space_problem(name: str, root: Path, expected: float | None) -> str | None:
    from vlm_rl.learner.disk import free_bytes, need_message, usable_bytes, with_margin

    if not expected:
        return None
    need, usable = with_margin(expected), usable_bytes(root)
    return f"{name}: {need_message(need, free_bytes(root), root, usable=usable)}" if need > usable else None


def _manifest(folder: Path) -> dict[str, int]:
    return {str(f.relative_to(folder)): f.stat().st_size for f in sorted(folder.rglob("*"))
            if f.is_file() and f.name != STATE_FILE}


def _remove(path: Path) -> None:
    """Rename out of the checkpoint namespace first, then delete: a crash mid-delete leaves no resume point."""
    if not path.exists():
        return
    aside = path.with_name(path.name + ".deleting")
    shutil.rmtree(aside, ignore_errors=True)
    path.rename(aside)
    shutil.rmtree(aside, ignore_errors=True)


def _publish(tmp: Path, final: Path) -> None:
    """``tmp`` becomes ``final``; an existing ``final`` (a re-done step after a restart) is renamed aside first."""
    aside = final.with_name(final.name + ".old")
    if final.exists():
        shutil.rmtree(aside, ignore_errors=True)
        final.rename(aside)
    tmp.rename(final)
    shutil.rmtree(aside, ignore_errors=True)


def _link_or_copy(src: Path, dst: Path) -> None:
    try:
        os.link(src, dst)  # no second copy on disk; survives the rotation of src's checkpoint
    except OSError:
        shutil.copyfile(src, dst)


def save_checkpoint(engine, output_dir: str | Path, samples: int, state: dict, weights: dict | None,
                    adapter_config=None, keep: int = 2, *, expected_bytes: float | None = None,
                    reference: dict | None = None, reference_from: str | Path | None = None,
                    disk_check: bool = True, model_config=None, base_model: str | Path | None = None) -> Path:
    """Collective: every learner rank calls it. ``weights`` is the rank-0 export (None elsewhere).

    ``expected_bytes``: the checkpoint's estimated size (vlm_rl.learner.disk), compared with the free space
    before anything is written (``disk_check``). ``reference`` (rank 0's tensors) or ``reference_from`` (the
    previous checkpoint's file, hard-linked) adds ``reference.safetensors``. ``model_config`` (full weights): its
    ``config.json`` and ``base_model``'s processor files are written beside the weights; ``base_model`` is
    recorded in the state file (what a LoRA checkpoint is merged into when loaded as a model). Raises :class:`CheckpointError`
    on every rank when any rank fails; the half-written ``.tmp`` folder is then removed.
    """
    root = Path(output_dir)
    final = root / checkpoint_name(samples)
    tmp = final.with_name(final.name + ".tmp")
    rank = _rank()
    previous = list_checkpoints(root)[-1:] if rank == 0 else []
    if not expected_bytes and previous:  # the last checkpoint measures the next one best
        from vlm_rl.learner.disk import directory_bytes

        linked = previous[0] / REFERENCE_FILE
        expected_bytes = float(directory_bytes(previous[0]) - (linked.stat().st_size if reference_from is not None
                                                               and linked.is_file() else 0))

    def check(error: str | None) -> None:
        error = agree(error)
        if error:
            if rank == 0:
                shutil.rmtree(tmp, ignore_errors=True)  # give the space back
            raise CheckpointError(error)

    error = None
    if rank == 0:
        try:
            if tmp.is_dir():  # an earlier, interrupted attempt
                shutil.rmtree(tmp)
            tmp.mkdir(parents=True)
            error = _space_problem(final.name, root, expected_bytes) if disk_check else None
        except Exception as exc:  # noqa: BLE001 - whatever it is, every rank must hear of it
            error = _failure(final.name, exc, root, expected_bytes)
    check(error)

    error = None
    try:
        if _is_deepspeed(engine):  # frozen weights come from model_path on resume: a LoRA checkpoint holds no base
            engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False,
                                   exclude_frozen_parameters=True)
        else:
            engine.save_checkpoint(str(tmp / "deepspeed"), tag="state", save_latest=False)
        (tmp / "rng").mkdir(exist_ok=True)
        save_file(rng_state(), str(tmp / "rng" / f"rank{rank}.safetensors"))
    except Exception as exc:  # noqa: BLE001 - e.g. torch.save's "iostream error" on a full disk
        error = _failure(final.name, exc, root, expected_bytes)
    check(error)

    error = None
    if rank == 0:
        try:
            if weights is not None:
                name = "adapter_model.safetensors" if adapter_config is not None else "model.safetensors"
                save_file({k: v.contiguous() for k, v in weights.items()}, str(tmp / name))
            if adapter_config is not None:
                adapter_config.save_pretrained(str(tmp))
            elif weights is not None and model_config is not None:
                from vlm_rl.learner.export import write_model_files

                write_model_files(model_config, base_model or "", tmp)
            if reference_from is not None:
                _link_or_copy(Path(reference_from), tmp / REFERENCE_FILE)
            elif reference is not None:
                save_file({k: v.contiguous() for k, v in reference.items()}, str(tmp / REFERENCE_FILE))
            full = {**state, MANIFEST_KEY: _manifest(tmp), "frozen_excluded": _is_deepspeed(engine)}
            if base_model is not None:
                full["base_model"] = str(base_model)
            (tmp / STATE_FILE).write_text(json.dumps(full, indent=2, sort_keys=True, default=str))
            _publish(tmp, final)
        except Exception as exc:  # noqa: BLE001
            error = _failure(final.name, exc, root, expected_bytes)
    check(error)
    if rank == 0:  # the new checkpoint is complete: rotation and leftovers may fail without failing the run
        try:
            for old in list_checkpoints(root)[:-keep]:
                _remove(old)
            for leftover in root.iterdir():
                if LEFTOVER.match(leftover.name):
                    shutil.rmtree(leftover, ignore_errors=True)
        except OSError as exc:
            print(f"[vlm-rl] could not remove an old checkpoint in {root}: {exc}", flush=True)
    agree(None)  # nobody reads the folder before rank 0 has renamed it
    return final


def rng_state() -> dict[str, torch.Tensor]:
    """This rank's torch RNG: the CPU generator, and the current GPU's (LoRA dropout draws from it on a GPU)."""
    state = {"cpu": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state()
    return state


def set_rng_state(state: dict[str, torch.Tensor]) -> None:
    torch.set_rng_state(state["cpu"])
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state(state["cuda"])


def load_checkpoint(engine, path: str | Path) -> dict:
    """Collective: restore engine, optimizer and RNG; return the trainer state."""
    path = Path(path)
    saved = json.loads((path / STATE_FILE).read_text())
    kwargs = {"load_module_strict": False} if saved.get("frozen_excluded") and _is_deepspeed(engine) else {}
    engine.load_checkpoint(str(path / "deepspeed"), tag="state", load_optimizer_states=True,
                           load_lr_scheduler_states=True, **kwargs)
    rng = path / "rng" / f"rank{_rank()}.safetensors"
    if rng.is_file():
        set_rng_state(load_file(str(rng)))
    return saved


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
