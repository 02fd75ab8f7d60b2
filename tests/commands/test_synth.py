"""`vlm-rl synth` writes a loadable dataset of the requested size."""

from __future__ import annotations

from vlm_rl.cli import main
from vlm_rl.data.schema import load_jsonl
from vlm_rl.data.synthetic import LABELS


def test_synth_command(tmp_path, capsys):
    out = tmp_path / "synth"
    code = main(["synth", "--output", str(out), "--train", "5", "--val", "2", "--seed", "1", "--max-objects", "1"])
    assert code == 0
    train = load_jsonl(out / "train.jsonl", labels=LABELS).samples
    assert len(train) == 5 and len(load_jsonl(out / "val.jsonl").samples) == 2
    assert all(len(s.objects) <= 1 for s in train)
    assert str(out / "train.jsonl") in capsys.readouterr().out
    assert main(["synth", "--output", str(out), "--min-size", "10"]) == 2
