"""SFT end to end on CPU with the real parts: Ray Train (2 gloo learners) + DeepSpeed ZeRO-2, LoRA, MLflow
(SQLite): the loss falls, checkpoints and the merged ``final/`` model are written and load."""

from __future__ import annotations

import json

import pytest
import torch
from mlflow.tracking import MlflowClient

from vlm_rl.config import SFTConfig
from vlm_rl.learner.checkpoint import list_checkpoints, load_weights
from vlm_rl.learner.supervised_loop import TrainState, checkpoint_due, rank_share, total_steps
from vlm_rl.models.loading import load_model, load_processor, resolve_model_path

STEPS = 6
SETTINGS = dict(
    model_path="tiny-qwen3-vl", lora_r=8, learning_rate=5e-3, num_learners=2, batch_size=4, max_steps=STEPS,
    max_image_size=64, synthetic_train_size=16, synthetic_val_size=2, disable_gradient_checkpointing=True,
    save_every_samples=12, seed=0, max_failures=0,
)


def test_total_steps_and_rank_share():
    assert total_steps(10, 4, 1, 0) == 3
    assert total_steps(10, 4, 3, 0) == 8
    assert total_steps(10, 4, 3, 2) == 2
    assert rank_share(list(range(6)), 1, 2) == [3, 4, 5]


def test_checkpoint_due_on_sample_multiples_and_at_end():
    due = [checkpoint_due(TrainState(step=s, samples=4 * s), 5, 6, 4) for s in range(1, 6)]
    assert due == [False, True, True, False, True]  # 8 crosses 6, 12 crosses 12, 20 is the end


@pytest.fixture(scope="module")
def sft_run(ray_cluster, tmp_path_factory):
    from vlm_rl.sft.job import run_sft

    out = tmp_path_factory.mktemp("sft")
    config = SFTConfig(**SETTINGS, output_dir=str(out))
    summary = run_sft(config, evaluate=True, eval_limit=2, eval_max_new_tokens=24)
    return {"summary": summary, "out": out, "config": config}


def test_loss_decreases(sft_run):
    history = sft_run["summary"]["history"]
    assert [row["step"] for row in history] == list(range(1, STEPS + 1))
    losses = [row["sft_loss"] for row in history]
    # LoRA does not touch the tied output embedding of the tiny model: the loss falls slowly but steadily
    assert losses[-1] < min(losses[:2]) - 0.2, [round(v, 3) for v in losses]
    assert sum(losses[-2:]) < sum(losses[:2]), [round(v, 3) for v in losses]
    for row in history:
        assert row["grad_norm"] > 0 and row["lr"] == pytest.approx(SETTINGS["learning_rate"])


def test_adapter_checkpoints_load_with_peft(sft_run):
    from peft import PeftModel

    out = sft_run["out"]
    names = [p.name for p in list_checkpoints(out)]
    assert names == ["checkpoint-samples-12", "checkpoint-samples-24"]
    ckpt = out / "checkpoint-samples-24"
    state = json.loads((ckpt / "trainer_state.json").read_text())
    assert state["train"]["step"] == STEPS and state["train"]["cursor"] == 24
    base = load_model(resolve_model_path("tiny-qwen3-vl"))
    model = PeftModel.from_pretrained(base, str(ckpt))
    saved = load_weights(ckpt)
    lora_b = [n for n in saved if "lora_B" in n]
    assert lora_b and all(saved[n].abs().sum() > 0 for n in lora_b)  # B starts at zero: it trained
    loaded = dict(model.named_parameters())
    name = lora_b[0].replace(".lora_B.weight", ".lora_B.default.weight")
    assert torch.equal(loaded[name], saved[lora_b[0]])


def test_lora_checkpoint_is_a_model_path(sft_run):
    """Issue 26: a LoRA checkpoint loads wherever a model path is accepted, merged into the recorded base."""
    from peft import PeftModel

    ckpt = sft_run["out"] / "checkpoint-samples-24"
    assembled = resolve_model_path(ckpt)
    assert (assembled / "config.json").is_file() and not (assembled / "adapter_config.json").exists()
    merged = PeftModel.from_pretrained(load_model(resolve_model_path("tiny-qwen3-vl")), str(ckpt)).merge_and_unload()
    loaded = dict(load_model(ckpt).named_parameters())
    assert all(torch.allclose(loaded[n], p, atol=1e-6) for n, p in merged.named_parameters())


def test_final_model_is_merged_and_differs_from_base(sft_run):
    final = sft_run["out"] / "final"
    assert (final / "model.safetensors").is_file() and not (final / "adapter_config.json").exists()
    trained = dict(load_model(final).named_parameters())
    base = dict(load_model(resolve_model_path("tiny-qwen3-vl")).named_parameters())
    assert trained.keys() == base.keys()
    changed = [n for n in base if not torch.equal(trained[n], base[n])]
    assert changed and all("language_model" in n for n in changed)
    assert load_processor(final).tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    assert sft_run["summary"]["final_model"] == str(final)


def test_mlflow_run_has_loss_history(sft_run):
    summary = sft_run["summary"]
    uri = f"sqlite:///{sft_run['out'] / 'mlflow.db'}"
    client = MlflowClient(uri)
    run = client.get_run(summary["run_id"])
    assert run.info.status == "FINISHED"
    assert run.data.tags["vlm_rl.algorithm"] == "sft"
    assert run.data.params["lora_r"] == "8"
    history = client.get_metric_history(run.info.run_id, "sft_loss")
    assert [m.step for m in history] == list(range(1, STEPS + 1))
    for key in ("grad_norm", "samples_per_hour", "lr"):
        assert key in run.data.metrics, key
    assert any(k.startswith("eval/") for k in run.data.metrics), sorted(run.data.metrics)
    rows = [json.loads(line) for line in (sft_run["out"] / "metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in rows if r["name"] == "sft_loss"] == list(range(1, STEPS + 1))
