"""Every checkpoint vlm-rl writes is a model path (issue 26): full fine-tuning (a model folder as it stands),
LoRA (merged into the recorded base, once, into the cache) and an older trainable-only checkpoint; each loads
through resolve_model_path/load_model/load_for_eval and as a job's model_path. Function level, no Ray."""

from __future__ import annotations

import json

import pytest
import torch
from safetensors.torch import load_file

from vlm_rl.config import GRPOConfig
from vlm_rl.learner.checkpoint import STATE_FILE, save_checkpoint
from vlm_rl.learner.engine import export_trainable_weights
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.models.loading import load_model, load_processor, resolve_model_path


@pytest.fixture(autouse=True)
def own_cache(tmp_path, monkeypatch):
    monkeypatch.setenv("VLM_RL_CACHE", str(tmp_path / "cache"))


def _checkpoint(tiny_model_dir, out, lora_r: int, legacy: bool = False):
    """A trained-looking checkpoint: one update's worth of change to the trainable weights, then the save."""
    config = GRPOConfig(model_path=str(tiny_model_dir), lora_r=lora_r, output_dir=str(out),
                        disable_gradient_checkpointing=True)
    model, _, _ = build_policy(config)
    engine = LocalEngine(model, config, "cpu")
    with torch.no_grad():
        for name, p in model.named_parameters():
            if p.requires_grad and ("lora_B" in name or (not lora_r and "q_proj" in name)):
                p.add_(0.05)
    lora = lora_r > 0
    weights = export_trainable_weights(engine, lora, 0, include_frozen=not legacy)
    adapter = model.peft_config["default"] if lora else None
    path = save_checkpoint(engine, out, 8, {"config": config.model_dump(mode="json")}, weights,
                           adapter_config=adapter, disk_check=False,
                           model_config=None if lora or legacy else model.config,
                           base_model=None if legacy else str(tiny_model_dir))
    merged = (model.merge_and_unload() if lora else model).eval()
    return path, {n: p.detach().clone() for n, p in merged.named_parameters()}


def _same(model, expected: dict) -> None:
    loaded = dict(model.named_parameters())
    assert loaded.keys() == expected.keys()
    worst = max((loaded[n].detach() - expected[n]).abs().max().item() for n in expected)
    assert worst < 1e-5, worst


def test_full_finetuning_checkpoint_is_a_model_folder(tiny_model_dir, tmp_path):
    path, expected = _checkpoint(tiny_model_dir, tmp_path / "run", lora_r=0)
    assert (path / "config.json").is_file() and (path / "tokenizer.json").is_file()
    assert json.loads((path / STATE_FILE).read_text())["base_model"] == str(tiny_model_dir)
    assert any("visual" in k for k in load_file(str(path / "model.safetensors")))  # frozen tower saved too
    assert resolve_model_path(path) == path.resolve()  # nothing to assemble
    _same(load_model(path), expected)
    assert load_processor(path).tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645


def test_lora_checkpoint_loads_merged_with_its_base(tiny_model_dir, tmp_path):
    from vlm_rl.eval.runner import load_for_eval

    path, expected = _checkpoint(tiny_model_dir, tmp_path / "run", lora_r=4)
    assembled = resolve_model_path(path)
    assert assembled != path and (assembled / "config.json").is_file()
    assert resolve_model_path(path) == assembled  # built once
    model, processor, family = load_for_eval(path, device="cpu")
    _same(model, expected)
    assert family == "qwen3_vl" and processor.tokenizer.convert_tokens_to_ids("<|im_end|>") == 151645
    base = dict(load_model(tiny_model_dir).named_parameters())
    assert any(not torch.equal(base[n], expected[n]) for n in base)  # the adapter did change the model

    # as a job's model_path: prepared before Ray like any model folder
    from vlm_rl.learner.job_common import prepare_output_and_data

    config = GRPOConfig(model_path=str(path), output_dir=str(tmp_path / "next"), synthetic_train_size=4,
                        synthetic_val_size=2, disk_check=False)
    assert prepare_output_and_data(config).model_path == str(assembled)


def test_trainable_only_checkpoint_of_older_versions_loads_over_its_base(tiny_model_dir, tmp_path):
    path, expected = _checkpoint(tiny_model_dir, tmp_path / "run", lora_r=0, legacy=True)
    assert not (path / "config.json").exists()
    assert not any("visual" in k for k in load_file(str(path / "model.safetensors")))
    _same(load_model(path), expected)  # base from trainer_state's config.model_path, vision tower from the base


def test_checkpoint_without_a_base_names_what_is_missing(tmp_path):
    (tmp_path / STATE_FILE).write_text("{}")
    with pytest.raises(ValueError, match="no base model recorded"):
        resolve_model_path(tmp_path)
