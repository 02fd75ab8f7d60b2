"""Bad input through the real entry points (`vlm-rl grpo`, `ray_jobs.grpo`): exit code 2, a message naming
the file/line/field, no Ray resources taken, and nothing already in output_dir touched."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import pytest
import ray
from PIL import Image

import ray_jobs.grpo
from vlm_rl.cli import main as vlm_rl_main
from vlm_rl.data.schema import load_jsonl

GOOD = {"image": "img.png", "objects": [{"label": "stop_sign", "bbox_2d": [2, 2, 20, 20]}]}
TINY = ["num_steps=1", "num_learners=1", "prompts_per_step=1", "num_generations=2", "max_image_size=64"]


def rows_with(bad_row: dict | str, good: int = 3) -> list[str]:
    lines = [json.dumps({**GOOD, "id": f"g{i}"}) for i in range(good)]
    lines.insert(1, bad_row if isinstance(bad_row, str) else json.dumps(bad_row))
    return lines


# name → (train.jsonl lines or None for the good file, extra overrides, text the error must contain)
CASES: dict[str, tuple[list[str] | None, list[str], str]] = {
    "malformed_json": (rows_with('{"image": "img.png", "objects": [}'), [], "train.jsonl:2: json: malformed JSON"),
    "not_an_object": (rows_with("[1, 2]"), [], "train.jsonl:2: row: expected a JSON object"),
    "missing_image": (rows_with({**GOOD, "image": "nope.png"}), [], "train.jsonl:2: image: file not found"),
    "corrupt_image": (rows_with({**GOOD, "image": "corrupt.png"}), [], "train.jsonl:2: image: cannot read image"),
    "box_outside": (rows_with({**GOOD, "objects": [{"label": "stop_sign", "bbox_2d": [0, 0, 90, 10]}]}), [],
                    "train.jsonl:2: objects[0].bbox_2d: box [0, 0, 90, 10] is outside the 32x32 image"),
    "box_degenerate": (rows_with({**GOOD, "objects": [{"label": "stop_sign", "bbox_2d": [5, 5, 5, 9]}]}), [],
                       "train.jsonl:2: objects[0].bbox_2d: degenerate box"),
    "box_three_numbers": (rows_with({**GOOD, "objects": [{"label": "stop_sign", "bbox_2d": [1, 2, 3]}]}), [],
                          "train.jsonl:2: objects[0].bbox_2d: expected 4 numbers"),
    "box_nan": (rows_with('{"image": "img.png", "objects": [{"label": "x", "bbox_2d": [NaN, 1, 2, 3]}]}'), [],
                "train.jsonl:2: objects[0].bbox_2d: non-finite coordinate"),
    "unknown_label": (rows_with({**GOOD, "objects": [{"label": "cow", "bbox_2d": [1, 1, 9, 9]}]}),
                      ["labels=[stop_sign]"], "train.jsonl:2: objects[0].label: unknown label 'cow'"),
    "duplicate_id": (rows_with({**GOOD, "id": "g0"}), [], "train.jsonl:2: id: duplicate id 'g0'"),
    "empty_dataset": ([], [], "train.jsonl: dataset is empty"),
    "too_few_samples": (None, ["prompts_per_step=8"], "fewer than prompts_per_step=8"),
    "missing_train_file": (None, ["train_data=/nonexistent/train.jsonl"], "train_data: file not found"),
    "num_generations_1": (None, ["num_generations=1"], "num_generations: Input should be greater than or equal to 2"),
    "prompts_not_divisible": (None, ["num_learners=2", "prompts_per_step=3"],
                              "prompts_per_step: 3 must be a multiple of num_learners=2"),
    "negative_learning_rate": (None, ["learning_rate=-0.001"], "learning_rate: Input should be greater than 0"),
    "unknown_key": (None, ["num_generation=4"], "num_generation: Extra inputs are not permitted"),
    "zero_steps": (None, ["num_steps=0"], "num_steps: Input should be greater than or equal to 1"),
    "bf16_on_cpu": (None, ["bf16=true"], "bf16: needs use_gpu=true"),
    "compile_layers_zero3": (None, ["compile_layers=true", "zero_stage=3"],
                             "compile_layers: not supported with zero_stage=3"),
    "compile_decode_pool": (None, ["compile_decode=true", "rollout_mode=pool"],
                            "compile_decode: only the colocated rollout"),
    "resume_not_a_checkpoint": (None, ["resume=/nonexistent/checkpoint-samples-4"],
                                "resume: /nonexistent/checkpoint-samples-4 is not a complete checkpoint"),
}
ENTRY_POINTS = {"vlm-rl grpo": lambda argv: vlm_rl_main(["grpo", *argv]), "ray_jobs.grpo": ray_jobs.grpo.main}


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("bad-input")
    Image.new("RGB", (32, 32), "red").save(root / "img.png")
    png = (root / "img.png").read_bytes()
    (root / "corrupt.png").write_bytes(png[: len(png) // 2])  # a download cut short
    return root


def snapshot(folder: Path) -> dict[str, str]:
    return {str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*")) if p.is_file()}


def ray_footprint() -> tuple[bool, int]:
    """(connected?, actors ever created on the connected cluster): both must not change."""
    if not ray.is_initialized():
        return False, 0
    from ray._private.state import actors  # the connected driver's own GCS view (no address lookup)

    return True, len(actors())


@pytest.mark.parametrize("entry", ENTRY_POINTS)
@pytest.mark.parametrize("case", CASES)
def test_bad_input_is_rejected_before_ray(case, entry, data_dir, tmp_path, capsys, monkeypatch):
    lines, overrides, expected = CASES[case]
    train = data_dir / f"{case}.jsonl" if lines is not None else data_dir / "good.jsonl"
    train.write_text("\n".join(lines if lines is not None else rows_with(GOOD)) + "\n")
    train = train.rename(train.with_name("train.jsonl")) if lines is not None else train
    output_dir = tmp_path / "out"
    output_dir.mkdir()
    (output_dir / "metrics.jsonl").write_text('{"step": 1, "name": "loss", "value": 0.5, "timestamp": 0}\n')
    (output_dir / "notes.txt").write_text("an earlier run's files must survive a rejected one\n")
    before = snapshot(output_dir)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:9")  # were Ray contacted with nothing running, it would fail
    ray_before = ray_footprint()

    argv = [*TINY, f"train_data={train}", f"output_dir={output_dir}", *overrides]
    assert ENTRY_POINTS[entry](argv) == 2
    err = capsys.readouterr().err
    assert expected in err, err
    assert "Traceback" not in err
    assert ray_footprint() == ray_before
    assert snapshot(output_dir) == before
    train.unlink()


def test_existing_checkpoints_are_never_overwritten(data_dir, tmp_path, capsys):
    """A new run pointed at an old run's folder is refused unless it resumes; the old files stay."""
    output_dir = tmp_path / "out"
    (output_dir / "checkpoint-samples-4").mkdir(parents=True)
    (output_dir / "checkpoint-samples-4" / "trainer_state.json").write_text("{}")
    before = snapshot(output_dir)
    train = data_dir / "good.jsonl"
    train.write_text("\n".join(rows_with(GOOD)) + "\n")
    assert vlm_rl_main(["grpo", *TINY, f"train_data={train}", f"output_dir={output_dir}"]) == 2
    assert "already holds checkpoints; pass --resume auto" in capsys.readouterr().err
    assert snapshot(output_dir) == before


def test_skip_mode_counts_every_bad_row(data_dir):
    """Where skipping is the documented behaviour (load_jsonl(on_error="skip"), the learners' reader),
    each bad row is dropped and reported, every good row kept."""
    bad = [lines[1] for lines, _, _ in CASES.values() if lines and len(lines) > 1 and "duplicate" not in lines[1]]
    good = [json.dumps({**GOOD, "id": f"g{i}"}) for i in range(3)]
    path = data_dir / "mixed.jsonl"
    path.write_text("\n".join(good[:1] + bad + good[1:]) + "\n")
    result = load_jsonl(path, labels=["stop_sign", "x"], on_error="skip")
    assert [s.id for s in result.samples] == ["g0", "g1", "g2"]
    assert len(result.skipped) == len(bad)
    for i, message in enumerate(result.skipped):
        assert message.startswith(f"{path}:{i + 2}: "), message
