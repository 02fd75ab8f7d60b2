"""Checkpoints on a full or failing disk (issue 23): the free-space check before the run and before each
checkpoint, a failed write re-raised with the sizes (never a bare iostream error), every rank told when one
fails (no rank left at a barrier), and no half-written or half-deleted folder ever becoming a resume point.
A small stand-in engine writes the files; the real engines are exercised by the run tests."""

from __future__ import annotations

import json
import multiprocessing as mp
import os
import shutil
import time
import traceback
from pathlib import Path

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.learner import checkpoint as ckpt
from vlm_rl.learner.checkpoint import (
    STATE_FILE,
    CheckpointError,
    is_complete,
    list_checkpoints,
    resolve_resume,
    save_checkpoint,
)
from vlm_rl.learner.disk import GB, checkpoint_size, ensure_disk_space

IOSTREAM = "[enforce fail at inline_container.cc:672] . unexpected pos 2624 vs 2516 basic_ios::clear: iostream error"


class FakeEngine:
    """Writes an optimizer-state file like an engine does; ``fail`` makes that write die half-way."""

    def __init__(self, fail: bool = False):
        self.fail = fail

    def save_checkpoint(self, save_dir: str, tag: str = "state", save_latest: bool = False) -> None:
        out = Path(save_dir) / tag
        out.mkdir(parents=True, exist_ok=True)
        (out / "optim.pt").write_bytes(b"x" * 1000 if not self.fail else b"x" * 300)
        if self.fail:
            raise RuntimeError(IOSTREAM)


def save(root: Path, samples: int, engine=None, **kw) -> Path:
    weights = {"w": torch.arange(256, dtype=torch.float32)}
    return save_checkpoint(engine or FakeEngine(), root, samples, {"loop": {"samples": samples}}, weights, **kw)


def fake_disk(monkeypatch, free_gb: float) -> None:
    usage = shutil.disk_usage("/")
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(free=int(free_gb * GB)))


# ----------------------------------------------------------------------------- before the run
def test_run_that_cannot_fit_the_disk_is_refused_before_ray(tmp_path, tiny_model_dir, monkeypatch, capsys):
    from ray_jobs.grpo import main

    fake_disk(monkeypatch, free_gb=0.1)
    args = [f"model_path={tiny_model_dir}", f"output_dir={tmp_path / 'run'}", "lora_r=0", "num_steps=4",
            "prompts_per_step=2", "save_every_samples=2", "keep_checkpoints=2", "synthetic_train_size=4",
            "synthetic_val_size=2"]
    assert main(args) == 2  # before any Ray cluster: a config error
    err = capsys.readouterr().err
    assert "needs" in err and "GB are free at" in err and str(tmp_path / "run") in err
    assert "lower keep_checkpoints, save LoRA only" in err and "(3 x " in err  # keep 2 + the one being written
    # filesystems that misreport their free space: the check can be switched off
    config = GRPOConfig(model_path=str(tiny_model_dir), output_dir=str(tmp_path / "run"), disk_check=False)
    assert ensure_disk_space(config) is None


def test_checkpoint_size_full_vs_lora():
    """~14 bytes per trainable parameter under bf16 (2 weights + 4 fp32 master + 8 Adam) + the export; LoRA:
    the adapter. The 2B architecture (2.13 B parameters, 0.407 B of them the frozen vision tower) from its known
    size; under ZeRO-3 the module file holds the frozen tower instead of the trainable weights, which gives the
    24.9 GB a lent H100 wrote (bench/results/gpu_recipes_2026-12-07.json)."""
    text = 2.13e9 - 0.407e9
    full = checkpoint_size(GRPOConfig(model_path="Qwen/Qwen3-VL-2B-Instruct", lora_r=0, bf16=True, use_gpu=True))
    assert full.state == pytest.approx(14 * text) and full.export == pytest.approx(2 * text)
    zero3 = checkpoint_size(GRPOConfig(model_path="Qwen/Qwen3-VL-2B-Instruct", lora_r=0, bf16=True, use_gpu=True,
                                       zero_stage=3))
    assert zero3.state == pytest.approx(12 * text + 2 * 0.407e9)
    assert zero3.per_checkpoint == pytest.approx(24.914e9, rel=0.005)  # measured, checkpoint-samples-32
    lora = checkpoint_size(GRPOConfig(model_path="Qwen/Qwen3-VL-2B-Instruct", lora_r=64, bf16=True, use_gpu=True))
    # the adapter (~35 M parameters at r=64) + the tied lm_head DeepSpeed keeps (151,936 x 2048): ~1.7 GB
    assert 1.5 < lora.per_checkpoint / GB < 2.0
    warm = checkpoint_size(GRPOConfig(model_path="Qwen/Qwen3-VL-2B-Instruct", lora_r=0, bf16=True, use_gpu=True,
                                      sft_warmup_steps=4, beta=0.04))
    assert warm.reference == pytest.approx(2 * 2.13e9)  # the KL reference, once per run


# ----------------------------------------------------------------------------- at each checkpoint
def test_checkpoint_refused_when_the_disk_cannot_hold_it(tmp_path, monkeypatch):
    first = save(tmp_path, 2)
    fake_disk(monkeypatch, free_gb=1.0)
    with pytest.raises(CheckpointError) as caught:
        save(tmp_path, 4, expected_bytes=30e9)
    message = str(caught.value)
    assert "checkpoint-samples-4: a checkpoint needs 33.1 GB, 1.0 GB are free at" in message
    assert "lower keep_checkpoints, save LoRA only" in message
    assert list_checkpoints(tmp_path) == [first] and not (tmp_path / "checkpoint-samples-4.tmp").exists()
    save(tmp_path, 4, expected_bytes=30e9, disk_check=False)  # the override


def test_failed_write_is_reraised_with_sizes_not_as_an_iostream_error(tmp_path):
    first = save(tmp_path, 2)
    with pytest.raises(CheckpointError) as caught:
        save(tmp_path, 4, engine=FakeEngine(fail=True), expected_bytes=3e9)
    message = str(caught.value)
    assert message.startswith("checkpoint-samples-4 could not be written (RuntimeError: ")
    assert "iostream error" in message and "a checkpoint needs 3.0 GB" in message and "GB are free at" in message
    assert not (tmp_path / "checkpoint-samples-4.tmp").exists()  # the half-written folder gave its space back
    assert resolve_resume("auto", tmp_path) == first


# ----------------------------------------------------------------------------- never a half checkpoint
class Crash(BaseException):
    """The process dying (SIGKILL, power cut): nothing after it runs, no except clause sees it."""


def crash_mid_delete(monkeypatch) -> None:
    """``shutil.rmtree`` that deletes the folder's weights and dies before the rest."""
    real = shutil.rmtree

    def rmtree(path, ignore_errors=False, **kw):
        path = Path(path)
        if not path.is_dir():
            return real(path, ignore_errors=True)
        for name in ("model.safetensors", "deepspeed"):
            victim = path / name
            if victim.is_file():
                victim.unlink()
            elif victim.is_dir():
                real(victim)
        raise Crash(path)

    monkeypatch.setattr(ckpt.shutil, "rmtree", rmtree)


def assert_every_resume_point_complete(root: Path) -> None:
    for path in list_checkpoints(root):
        assert (path / "model.safetensors").is_file() and (path / "deepspeed" / "state" / "optim.pt").is_file(), \
            f"{path.name} looks complete but is not"


def test_crash_while_replacing_a_checkpoint_of_the_same_name(tmp_path, monkeypatch):
    """After a restart the re-done step writes a checkpoint that exists already: the old one is deleted first.
    A crash in the middle of that delete must not leave a folder with a state file and no weights."""
    save(tmp_path, 2)
    save(tmp_path, 4)
    crash_mid_delete(monkeypatch)
    with pytest.raises(Crash):
        save(tmp_path, 4)
    assert_every_resume_point_complete(tmp_path)
    assert resolve_resume("auto", tmp_path).name == "checkpoint-samples-4"


def test_crash_while_rotating_old_checkpoints(tmp_path, monkeypatch):
    save(tmp_path, 2, keep=1)
    crash_mid_delete(monkeypatch)
    with pytest.raises(Crash):
        save(tmp_path, 4, keep=1)  # written and renamed; then deleting checkpoint-samples-2 dies
    assert_every_resume_point_complete(tmp_path)
    assert [p.name for p in list_checkpoints(tmp_path)] == ["checkpoint-samples-4"]


def test_a_file_cut_short_disqualifies_the_checkpoint(tmp_path):
    first, second = save(tmp_path, 2), save(tmp_path, 4)
    weights = second / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:100])  # what a full disk or a killed copy leaves
    assert not is_complete(second) and resolve_resume("auto", tmp_path) == first
    with pytest.raises(FileNotFoundError, match="cut short"):
        resolve_resume(str(second), tmp_path)
    assert json.loads((first / STATE_FILE).read_text())["files"]["model.safetensors"] > 0


# ----------------------------------------------------------------------------- two ranks
def _rank_main(rank: int, port: int, root: str, results) -> None:
    import torch.distributed as dist

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=2)
    started = time.time()
    try:
        save(Path(root), 2, engine=FakeEngine(fail=(rank == 0)))
        results.put((rank, "saved", time.time() - started))
    except Exception as exc:  # noqa: BLE001
        results.put((rank, f"{type(exc).__name__}: {exc}"[:300], time.time() - started))
        if rank == 0:
            time.sleep(60)  # like a Ray Train worker whose error is being reported: alive, not at the barrier
    except BaseException:
        results.put((rank, traceback.format_exc()[-300:], time.time() - started))


def test_a_write_failing_on_rank_0_fails_every_rank_at_once(tmp_path):
    from tests.conftest import free_port

    ctx = mp.get_context("fork")
    results = ctx.Queue()
    port = free_port()
    procs = [ctx.Process(target=_rank_main, args=(r, port, str(tmp_path), results), daemon=True) for r in (0, 1)]
    for p in procs:
        p.start()
    try:
        got = {}
        deadline = time.time() + 45
        while len(got) < 2 and time.time() < deadline:
            try:
                rank, outcome, seconds = results.get(timeout=1)
                got[rank] = (outcome, seconds)
            except Exception:  # noqa: BLE001 - queue.Empty
                continue
        assert 1 in got, f"rank 1 still waiting after 45 s (rank 0: {got.get(0)})"
        for rank in (0, 1):
            outcome, seconds = got[rank]
            assert outcome.startswith("CheckpointError: checkpoint-samples-2 could not be written"), (rank, outcome)
            assert seconds < 30
    finally:
        for p in procs:
            p.kill()
    assert list_checkpoints(tmp_path) == []


# ----------------------------------------------------------------------------- the run's end
def test_failed_final_export_is_a_fatal_error_not_a_restart(tmp_path, monkeypatch):
    """SFT/DPO's merged ``final/`` export failing on rank 0 (a full disk): FinalExportError (no Ray Train
    restart) with the free space; the half-written ``final.tmp`` is removed."""
    import errno

    from vlm_rl.config import SFTConfig
    from vlm_rl.learner import export
    from vlm_rl.learner.comm import Comm
    from vlm_rl.learner.run_end import FinalExportError
    from vlm_rl.learner.supervised_worker import export_final

    def full_disk(base, weights, out_dir, adapter_config=None):
        Path(str(out_dir) + ".tmp").mkdir(parents=True)
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(export, "write_merged_model", full_disk)

    class Learner:
        def export_weights(self):
            return {"w": torch.zeros(2)}

        def adapter_config(self):
            return None

    config = SFTConfig(output_dir=str(tmp_path))
    with pytest.raises(FinalExportError, match=r"the final export to .*final failed \(OSError: .*No space left on "
                                               r"device\); .* GB are free at"):
        export_final(Learner(), config, Comm())
    assert not (tmp_path / "final.tmp").exists()


def test_driver_raises_the_learners_fatal_error(tmp_path):
    from vlm_rl.learner.run_end import FatalRunError, clear_run_end, raise_if_failed, write_json

    write_json(tmp_path / "summary.json", {"steps": 3})
    assert raise_if_failed(tmp_path) == {"steps": 3}
    write_json(tmp_path / "failure.json", {"error": "CheckpointError", "message": "checkpoint-samples-4 could not"})
    with pytest.raises(FatalRunError, match="checkpoint-samples-4 could not"):
        raise_if_failed(tmp_path)
    clear_run_end(tmp_path)  # the next attempt (resume) starts clean
    with pytest.raises(FatalRunError, match="ended without writing .*summary.json"):
        raise_if_failed(tmp_path)  # on a full disk even failure.json may not fit: still an error, not a hang


def test_checkpoint_must_leave_the_disk_below_rays_threshold(tmp_path, monkeypatch):
    """Free space that holds the checkpoint but would leave the disk over 95 % full is refused: above that Ray
    stops storing objects and the driver waits forever (the GPU hang of issue 23 at 96 % full)."""
    from vlm_rl.learner.disk import usable_bytes

    usage = shutil.disk_usage("/")
    total = 100 * GB
    monkeypatch.setattr(shutil, "disk_usage", lambda _p: usage._replace(total=int(total), free=int(8 * GB)))
    assert usable_bytes(tmp_path) == pytest.approx(3 * GB, abs=2)  # 8 GB free, 5 GB of them Ray's
    with pytest.raises(CheckpointError) as caught:
        save(tmp_path, 2, expected_bytes=4e9)  # fits the 8 GB free, not the 3 GB usable
    assert "8.0 GB are free at" in str(caught.value) and "3.0 GB of it usable" in str(caught.value)
    monkeypatch.setenv("RAY_local_fs_capacity_threshold", "0.99")  # a cluster configured otherwise
    assert usable_bytes(tmp_path) == pytest.approx(7 * GB, abs=2)
    save(tmp_path, 2, expected_bytes=4e9)


def test_rng_state_round_trip():
    """A resumed rank draws the numbers the uninterrupted one would (the GPU generator rides along on a GPU:
    LoRA dropout draws from it there)."""
    from vlm_rl.learner.checkpoint import rng_state, set_rng_state

    torch.manual_seed(7)
    saved = rng_state()
    expected = torch.rand(4)
    torch.manual_seed(123)
    set_rng_state(saved)
    assert torch.equal(torch.rand(4), expected)


def test_enum_members_are_written_by_value_and_a_by_name_file_still_loads(tmp_path, monkeypatch):
    """Python 3.11.2 pickles DeepSpeed's ZeroStageEnum by name (``getattr(ZeroStageEnum, 'gradients')``), and a
    learner resumed after a fault could not load its own checkpoint under ``weights_only``. The engine now writes enum
    members by value whatever their class's ``__reduce_ex__``; a by-name file loads, and ``getattr`` on anything
    but those enums is refused."""
    import collections
    import io
    import pickle

    from deepspeed.runtime.zero.config import ZeroStageEnum

    engine = ckpt.SafeCheckpointEngine()
    state = {"zero_stage": ZeroStageEnum.gradients, "step": torch.tensor(3)}
    def by_name(member, protocol):  # what Python 3.11.2 writes (a no-op there)
        return getattr, (type(member), member._name_)

    monkeypatch.setattr(ZeroStageEnum, "__reduce_ex__", by_name)
    engine.save(state, str(tmp_path / "by_value.pt"))
    torch.save(state, tmp_path / "by_name.pt")  # plain torch.save: the by-name form
    monkeypatch.undo()
    for name in ("by_value.pt", "by_name.pt"):
        loaded = engine.load(str(tmp_path / name))
        assert loaded["zero_stage"] is ZeroStageEnum.gradients and int(loaded["step"]) == 3, name
    raw = (tmp_path / "by_value.pt").read_bytes()
    assert b"getattr" not in raw and b"getattr" in (tmp_path / "by_name.pt").read_bytes()

    class Sneaky:  # getattr on an allowed class that is not one of the checkpoint's enums
        def __reduce__(self):
            return getattr, (collections.OrderedDict, "fromkeys")

    buffer = io.BytesIO()
    torch.save({"x": Sneaky()}, buffer)
    (tmp_path / "sneaky.pt").write_bytes(buffer.getvalue())
    with pytest.raises(pickle.UnpicklingError, match="only members of"):
        engine.load(str(tmp_path / "sneaky.pt"))
