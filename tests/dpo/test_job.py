"""DPO end to end on CPU with the real parts: Ray Train (2 gloo learners) + DeepSpeed ZeRO-2, LoRA with the
adapter-disabled reference, MLflow (SQLite), on hand-built pairs: the right answer against garbage."""

from __future__ import annotations

import json

import pytest
from mlflow.tracking import MlflowClient

from vlm_rl.config import ConfigError, DPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.dpo.pairs import load_pairs
from vlm_rl.eval.runner import ground_truth_in_model_coords, instruction_for
from vlm_rl.models.prompts import answer_text

STEPS = 5
GARBAGE = ["no idea", "stop stop stop", "{bbox: ???}", "I cannot see any image.", "[[[", "42", "yes", "."]


def make_pairs(dataset: dict, path) -> None:
    samples = load_jsonl(dataset["train"]).samples[:8]
    prompt = instruction_for(samples)
    with path.open("w") as fh:
        for i, s in enumerate(samples):
            chosen = answer_text(ground_truth_in_model_coords(s, 64, "qwen3_vl"))
            fh.write(json.dumps({"id": s.id, "image": s.image, "prompt": prompt, "chosen": chosen,
                                 "rejected": GARBAGE[i], "chosen_reward": 1.5, "rejected_reward": 0.0,
                                 "margin": 1.5}) + "\n")


@pytest.fixture
def dataset(tmp_path):
    from vlm_rl.data.synthetic import make_synthetic_dataset

    train, val = make_synthetic_dataset(tmp_path / "data", n_train=8, n_val=2, seed=1, max_objects=2)
    return {"train": train, "val": val}


def test_load_pairs_names_the_bad_row_and_field(tmp_path, dataset):
    good = tmp_path / "pairs.jsonl"
    make_pairs(dataset, good)
    assert len(load_pairs(good)) == 8
    lines = good.read_text().splitlines()
    bad = tmp_path / "bad.jsonl"
    bad.write_text(lines[0] + "\n" + json.dumps({**json.loads(lines[1]), "rejected": None}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:2: rejected: expected a string"):
        load_pairs(bad)
    bad.write_text(json.dumps({**json.loads(lines[0]), "image": "missing.png"}) + "\n")
    with pytest.raises(ValueError, match=r"bad.jsonl:1: image: file not found"):
        load_pairs(bad)


def test_dpo_refuses_full_fine_tuning(tmp_path):
    from vlm_rl.dpo.job import prepare_dpo

    with pytest.raises(ConfigError, match="lora_r"):
        prepare_dpo(DPOConfig(lora_r=0, output_dir=str(tmp_path)))


def test_synthetic_pairs_without_a_pairs_file(tmp_path):
    from vlm_rl.dpo.job import prepare_dpo

    config, n_pairs, steps = prepare_dpo(DPOConfig(output_dir=str(tmp_path), synthetic_train_size=6, batch_size=4,
                                                   num_epochs=2, max_image_size=64))
    pairs = load_pairs(config.pairs)
    assert n_pairs == len(pairs) == 6 and steps == 3
    samples = load_jsonl(config.train_data).samples
    for pair, sample in zip(pairs, samples):
        assert pair.chosen == answer_text(ground_truth_in_model_coords(sample, 64, "qwen3_vl"))
        assert pair.rejected != pair.chosen and "[]" in (pair.chosen, pair.rejected)


def test_dpo_prefers_the_right_answer(ray_cluster, tmp_path, dataset):
    from vlm_rl.dpo.job import run_dpo

    pairs = tmp_path / "pairs.jsonl"
    make_pairs(dataset, pairs)
    config = DPOConfig(
        model_path="tiny-qwen3-vl", pairs=str(pairs), lora_r=8, learning_rate=5e-3, beta=0.1, num_learners=2,
        batch_size=4, max_steps=STEPS, max_image_size=64, disable_gradient_checkpointing=True, seed=0,
        max_failures=0, output_dir=str(tmp_path / "out"),
    )
    summary = run_dpo(config)
    history = summary["history"]
    assert [row["step"] for row in history] == list(range(1, STEPS + 1))
    # step 1 runs at the reference (adapter B = 0): no preference yet, then the margin opens up
    assert history[0]["rewards/margin"] == pytest.approx(0.0, abs=1e-4)
    assert history[0]["loss"] == pytest.approx(0.6931, abs=1e-3)
    assert history[-1]["rewards/margin"] > 0.3, [round(r["rewards/margin"], 4) for r in history]
    assert history[-1]["rewards/accuracy"] == 1.0
    assert history[-1]["loss"] < history[0]["loss"]

    out = tmp_path / "out"
    assert (out / f"checkpoint-samples-{4 * STEPS}" / "adapter_model.safetensors").is_file()
    assert (out / "final" / "model.safetensors").is_file()
    client = MlflowClient(f"sqlite:///{out / 'mlflow.db'}")
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED" and run.data.tags["vlm_rl.algorithm"] == "dpo"
    assert run.data.params["beta"] == "0.1"
    for key in ("loss", "rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin", "grad_norm"):
        assert [m.step for m in client.get_metric_history(run.info.run_id, key)] == list(range(1, STEPS + 1)), key
