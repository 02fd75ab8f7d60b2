"""DPO pairs: ranking, margin filter, ties, one use per answer, rollouts JSONL validation."""

from __future__ import annotations

import json

import pytest

from vlm_rl.dpo.pairs import build_pairs, group_rollouts, load_rollouts


def rollouts(sample_id, scored, prompt="Detect the signs."):
    return [
        {"sample_id": sample_id, "image": f"/data/{sample_id}.png", "prompt": prompt, "completion": text, "reward": r}
        for text, r in scored
    ]


def test_pairs_best_vs_worst_then_next():
    group = rollouts("a", [("c1", 0.5), ("c2", 1.4), ("c3", 0.0), ("c4", 1.0), ("c5", 0.2)])
    pairs = build_pairs([group], min_margin=0.1, max_pairs_per_prompt=2)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("c2", "c3"), ("c4", "c5")]
    assert [p["margin"] for p in pairs] == pytest.approx([1.4, 0.8])
    assert all(p["chosen_reward"] > p["rejected_reward"] for p in pairs)
    assert [p["id"] for p in pairs] == ["a/0", "a/1"]
    assert pairs[0]["image"] == "/data/a.png" and pairs[0]["prompt"] == "Detect the signs."
    assert set(pairs[0]) >= {"id", "image", "prompt", "chosen", "rejected", "chosen_reward", "rejected_reward", "margin"}


def test_max_pairs_per_prompt_limits_and_each_answer_used_once():
    group = rollouts("a", [(f"c{i}", float(i)) for i in range(8)])
    one = build_pairs([group], min_margin=0.0, max_pairs_per_prompt=1)
    assert [(p["chosen"], p["rejected"]) for p in one] == [("c7", "c0")]
    many = build_pairs([group], min_margin=0.0, max_pairs_per_prompt=10)
    assert len(many) == 4
    used = [p["chosen"] for p in many] + [p["rejected"] for p in many]
    assert len(used) == len(set(used))


def test_margin_filter_drops_close_pairs():
    group = rollouts("a", [("best", 1.0), ("mid", 0.95), ("mid2", 0.92), ("worst", 0.9)])
    assert build_pairs([group], min_margin=0.2) == []
    pairs = build_pairs([group], min_margin=0.1)
    assert [(p["chosen"], p["rejected"]) for p in pairs] == [("best", "worst")]  # inner pair: 0.03 < 0.1


def test_ties_are_never_paired():
    tied = rollouts("a", [("x", 0.7), ("y", 0.7), ("z", 0.7)])
    assert build_pairs([tied], min_margin=0.0) == []
    same_text = rollouts("b", [("same", 1.0), ("same", 0.0)])
    assert build_pairs([same_text], min_margin=0.0) == []


def test_groups_from_mapping_and_grouping_by_prompt():
    records = rollouts("a", [("g", 1.0), ("b", 0.0)]) + rollouts("b", [("g", 2.0)]) + rollouts("a", [("w", -1.0)])
    groups = group_rollouts(records)
    assert sorted(groups) == [("a", "Detect the signs."), ("b", "Detect the signs.")]
    pairs = build_pairs(groups, max_pairs_per_prompt=2)
    # a: [g 1.0, b 0.0, w -1.0] -> (g, w); single-answer group b gives nothing
    assert [(p["sample_id"], p["chosen"], p["rejected"]) for p in pairs] == [("a", "g", "w")]


def test_load_rollouts_reads_trainer_format_and_names_bad_rows(tmp_path):
    path = tmp_path / "rollouts.jsonl"
    good = {"step": 2, "sample_id": "s1", "image": "/i.png", "prompt": "p", "completion": "[]", "reward": 1.5,
            "rewards": {"format": 1.0, "detection": 1.0, "total": 1.5}}
    alias = {"prompt_id": 7, "image": "/i.png", "prompt": "p", "completion": "x", "reward": 0}
    path.write_text(json.dumps(good) + "\n\n" + json.dumps(alias) + "\n")
    records = load_rollouts(path)
    assert records[0]["rewards"]["detection"] == 1.0 and records[0]["step"] == 2
    assert records[1]["sample_id"] == "7" and records[1]["step"] == 0 and records[1]["reward"] == 0.0

    bad = tmp_path / "bad.jsonl"
    bad.write_text(json.dumps(good) + "\n" + json.dumps({**good, "reward": "high"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: reward"):
        load_rollouts(bad)
    bad.write_text(json.dumps({k: v for k, v in good.items() if k != "completion"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: completion: missing"):
        load_rollouts(bad)
    bad.write_text("{not json\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: not valid JSON"):
        load_rollouts(bad)
