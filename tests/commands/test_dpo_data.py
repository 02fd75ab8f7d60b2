"""`vlm-rl dpo-data` on hand-written rollouts files: pairs written, counts printed, bad input refused."""

from __future__ import annotations

import json

from vlm_rl.cli import main


def write_rollouts(path, rows):
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


def row(step, sample_id, completion, reward):
    return {"step": step, "sample_id": sample_id, "image": f"/img/{sample_id}.png", "prompt": "Detect signs.",
            "completion": completion, "reward": reward,
            "rewards": {"format": 1.0, "detection": reward - 0.5, "total": reward}}


def test_dpo_data_from_two_rollout_files(tmp_path, capsys):
    first = write_rollouts(tmp_path / "r1.jsonl", [
        row(1, "s1", "best", 1.5), row(1, "s1", "worst", 0.5), row(1, "s1", "mid", 1.0),
        row(1, "s2", "same-a", 0.8), row(1, "s2", "same-b", 0.8),  # tie: no pair
    ])
    second = write_rollouts(tmp_path / "r2.jsonl", [
        row(2, "s1", "bad", 0.0),  # same prompt, later step: joins s1's group
        row(2, "s3", "x", 1.0), row(2, "s3", "y", 0.95),  # margin 0.05 < 0.1: no pair
    ])
    out = tmp_path / "pairs.jsonl"
    code = main(["dpo-data", "--rollouts", str(first), "--rollouts", str(second), "--min_margin", "0.1",
                 "--output", str(out)])
    assert code == 0
    pairs = [json.loads(line) for line in out.read_text().splitlines()]
    # s1 ranked: best 1.5, mid 1.0, worst 0.5, bad 0.0 -> (best, bad), (mid, worst)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "bad"), ("mid", "worst")]
    assert all(p["chosen_reward"] - p["rejected_reward"] == p["margin"] >= 0.1 for p in pairs)
    assert pairs[0]["image"] == "/img/s1.png" and pairs[0]["prompt"] == "Detect signs."
    printed = capsys.readouterr().out
    assert "pairs built: 2" in printed
    assert "prompts skipped for no margin >= 0.1: 2" in printed


def test_dpo_data_refuses_bad_arguments_and_rows(tmp_path, capsys):
    assert main(["dpo-data", "--output", str(tmp_path / "p.jsonl")]) == 2  # no source
    assert main(["dpo-data", "--model_path", "tiny-qwen3-vl", "--output", str(tmp_path / "p.jsonl")]) == 2  # no --data
    bad = write_rollouts(tmp_path / "bad.jsonl", [{"sample_id": "s", "image": "i", "prompt": "p", "completion": "c"}])
    assert main(["dpo-data", "--rollouts", str(bad), "--output", str(tmp_path / "p.jsonl")]) == 2
    assert "bad.jsonl:1: reward: missing" in capsys.readouterr().out
    assert not (tmp_path / "p.jsonl").exists()
