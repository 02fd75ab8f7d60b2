"""Folding LoRA into the base weights for sampling: same outputs, base weights restored bit for bit."""

from __future__ import annotations

import pytest
import torch
from peft import get_peft_model

from vlm_rl.models.loading import load_model
from vlm_rl.models.lora import lora_config
from vlm_rl.models.lora_merge import merged_lora


def _lora_model(path, dtype, b_std: float):
    torch.manual_seed(0)
    model = get_peft_model(load_model(path, dtype=dtype), lora_config(8, 16))
    gen = torch.Generator().manual_seed(2)
    with torch.no_grad():  # PEFT starts B at zero (a no-op adapter): give it a real delta
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * b_std).to(p.dtype))
    return model


def _base_weights(model) -> dict[str, torch.Tensor]:
    return {n: p.detach().clone() for n, p in model.named_parameters() if "base_layer" in n}


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float32])
def test_restore_is_bitwise_even_where_plain_subtraction_is_not(tiny_model_dir, dtype):
    model = _lora_model(tiny_model_dir, dtype, b_std=0.5)  # a large delta: many binade crossings
    before = _base_weights(model)
    with merged_lora(model) as merged:
        assert merged.count == 7 * model.config.text_config.num_hidden_layers
        changed = sum(int((p != before[n]).sum()) for n, p in model.named_parameters() if n in before)
        assert changed > 0
        assert all(m.merged for m in model.modules() if hasattr(m, "merged_adapters") and m.lora_A)
    if dtype == torch.bfloat16:
        assert merged.fixups > 0  # the case the fix-ups exist for: W + d - d != W after bf16 rounding
    after = _base_weights(model)
    assert all(torch.equal(before[n], after[n]) for n in before)
    assert not any(getattr(m, "merged", False) for m in model.modules() if hasattr(m, "merged_adapters"))


def test_merged_forward_matches_adapter_forward(tiny_model_dir):
    model = _lora_model(tiny_model_dir, torch.float32, b_std=0.05).eval()
    ids = torch.randint(0, 1000, (2, 12), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        reference = model(input_ids=ids).logits
        with merged_lora(model):
            merged = model(input_ids=ids).logits
        again = model(input_ids=ids).logits
        with model.disable_adapter():  # the adapter matters: the comparison is not vacuous
            base = model(input_ids=ids).logits
    torch.testing.assert_close(merged, reference, rtol=1e-4, atol=1e-4)
    assert torch.equal(again, reference)
    assert (base - reference).abs().max() > 1e-2


def test_disabled_or_adapterless_model_is_left_alone(tiny_model_dir):
    plain = load_model(tiny_model_dir)
    with merged_lora(plain) as merged:
        assert merged.count == 0
    model = _lora_model(tiny_model_dir, torch.float32, b_std=0.05)
    with merged_lora(model, enabled=False) as merged:
        assert merged.count == 0
        assert not any(getattr(m, "merged", False) for m in model.modules() if hasattr(m, "merged_adapters"))


def test_failure_half_way_through_the_merge_restores_what_was_merged(tiny_model_dir, monkeypatch):
    import vlm_rl.models.lora_merge as lora_merge

    model = _lora_model(tiny_model_dir, torch.bfloat16, b_std=0.5)
    before = _base_weights(model)
    real_run, calls = lora_merge._run, {"n": 0}

    def failing(name, *tensors):
        calls["n"] += 1
        if name == "fold" and calls["n"] > lora_merge._GROUP + 2:  # after the first group was written
            raise torch.cuda.OutOfMemoryError("simulated")
        return real_run(name, *tensors)

    monkeypatch.setattr(lora_merge, "_run", failing)
    with pytest.raises(torch.cuda.OutOfMemoryError):
        with merged_lora(model):
            pass
    assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
    assert not any(getattr(m, "merged", False) for m in model.modules() if hasattr(m, "merged_adapters"))
