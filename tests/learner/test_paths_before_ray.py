"""Issue 26 item 3: output_dir, data paths, model_path and resume are checked before any cluster resource is
taken: exit 2 and one line naming the key, through `python -m ray_jobs.grpo` (main) and `vlm-rl`. No Ray."""

from __future__ import annotations

import pytest

import ray_jobs.dpo
import ray_jobs.grpo
import ray_jobs.sft
from vlm_rl.cli import main as cli


@pytest.fixture(autouse=True)
def no_ray(monkeypatch):
    """Any attempt to reach Ray fails the test: the checks must come first."""
    import vlm_rl.learner.job_common as job_common

    def refuse(*args, **kwargs):
        raise AssertionError("connect_ray was called before the bad path was reported")

    monkeypatch.setattr(job_common, "connect_ray", refuse)
    monkeypatch.setattr("ray.init", refuse)


def _one_line(capsys) -> str:
    captured = capsys.readouterr()
    lines = [line for line in captured.err.splitlines() if line.strip()]
    assert len(lines) == 1 and "Traceback" not in captured.err, captured.err
    return lines[0]


@pytest.mark.parametrize("entry", [ray_jobs.grpo.main, ray_jobs.sft.main, ray_jobs.dpo.main])
def test_unwritable_output_dir(entry, capsys):
    assert entry(["output_dir=/proc/forbidden/run"]) == 2
    line = _one_line(capsys)
    assert "output_dir: /proc/forbidden/run is not a writable folder" in line


def test_output_dir_that_is_a_file(tmp_path, capsys):
    (tmp_path / "taken").write_text("x")
    assert ray_jobs.grpo.main([f"output_dir={tmp_path / 'taken' / 'run'}"]) == 2
    assert "output_dir:" in _one_line(capsys)


@pytest.mark.parametrize(("override", "expected"), [
    ("model_path=/nope/model", "model_path: /nope/model does not exist"),
    ("model_path=./missing-model", "model_path: ./missing-model does not exist"),
    ("train_data=/nope/train.jsonl", "train_data: file not found: /nope/train.jsonl"),
    ("val_data=/nope/val.jsonl", "val_data: file not found: /nope/val.jsonl"),
    ("resume=/tmp", "resume: /tmp is not a complete checkpoint"),
])
def test_missing_paths_name_their_key(override, expected, tmp_path, capsys):
    assert ray_jobs.grpo.main([override, f"output_dir={tmp_path / 'run'}"]) == 2
    assert expected in _one_line(capsys)


def test_model_path_folder_without_a_model(tmp_path, capsys):
    (tmp_path / "empty").mkdir()
    assert ray_jobs.grpo.main([f"model_path={tmp_path / 'empty'}", f"output_dir={tmp_path / 'run'}"]) == 2
    line = _one_line(capsys)
    assert "model_path:" in line and "holds no model" in line


def test_cli_unwritable_output_dir(capsys):
    assert cli(["grpo", "output_dir=/proc/forbidden/run"]) == 2
    assert _one_line(capsys).startswith("vlm-rl: output_dir: /proc/forbidden/run")
