"""The static decode loop (CPU, eager) against HF generate for both Qwen VL families, and the colocated rollout
source's contract."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.data.schema import load_jsonl
from vlm_rl.models.loading import load_processor
from vlm_rl.models.prompts import detection_instruction, encode_prompts
from vlm_rl.models.tokenizer import SPECIAL_IDS
from vlm_rl.rollout.colocated import ColocatedRollout
from vlm_rl.rollout.engine import eos_token_ids, prepare_prompt
from vlm_rl.rollout.fast_decode import StaticDecoder, sample_tokens
from vlm_rl.rollout.types import PromptItem


@pytest.mark.parametrize("family_fixture", ["tiny_model_dir", "tiny_qwen25_dir"])
def test_greedy_matches_hf_generate_with_left_padding(request, family_fixture, synthetic_dataset, rough_model):
    model_dir = request.getfixturevalue(family_fixture)
    processor, model = load_processor(model_dir), rough_model(model_dir)
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    images = [prepare_prompt(item, 128, model.config.model_type)[0] for item in items]
    # different instructions → different prompt lengths → the shorter prompt is left-padded
    instructions = [detection_instruction(None), detection_instruction(["stop_sign", "traffic_light", "yield_sign"])]
    enc = encode_prompts(processor, images, instructions)
    assert (enc["attention_mask"] == 0).any()
    eos, pad = eos_token_ids(processor, model), processor.tokenizer.pad_token_id
    ref = model.generate(**enc, do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=pad)
    ref = ref[:, enc["input_ids"].shape[1]:].repeat_interleave(2, dim=0)
    out, steps = StaticDecoder(model, eos_ids=eos, pad_id=pad).generate(enc, 2, 16, temperature=0.0)
    assert len(set(ref[0].tolist())) > 3  # a real sequence, not one repeated token
    assert torch.equal(out[:, : ref.shape[1]], ref)


def test_sample_tokens_respects_bans_and_top_p():
    logits = torch.tensor([[5.0, 4.0, -10.0, 0.0]] * 64)
    gen = torch.Generator().manual_seed(0)
    banned = torch.tensor([0])
    picks = sample_tokens(logits, 1.0, 1.0, gen, banned)
    assert not (picks == 0).any()
    nucleus = sample_tokens(logits, 1.0, 0.5, gen)  # token 0 alone holds 73% of the mass
    assert (nucleus == 0).all()


def test_colocated_rollout_groups_scores_and_suppresses(tiny_model_dir, synthetic_dataset, rough_model):
    processor, model = load_processor(tiny_model_dir), rough_model(tiny_model_dir)
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    rollout = ColocatedRollout(model, processor, "qwen3_vl", labels=None, max_image_size=96, max_new_tokens=12,
                               min_new_tokens=12, seed=0)
    out = rollout.generate(items, 3, step=1)
    completions = out["completions"]
    assert [c.prompt_index for c in completions] == [0, 0, 0, 1, 1, 1]
    assert all(len(c.completion_ids) == 12 for c in completions) and out["tokens"] == 72
    assert all(set(c.rewards) == {"format", "detection", "total"} for c in completions)
    assert not any(SPECIAL_IDS["<|image_pad|>"] in c.completion_ids for c in completions)
    again = rollout.generate(items, 3, step=1)  # same step, same seed: same samples
    assert [c.completion_ids for c in again["completions"]] == [c.completion_ids for c in completions]
    assert rollout.sync_weights(None, 5) == 0.0 and rollout.versions() == [5]
    rollout.prefetch(items)  # encoded on a thread ahead of time: used by the next generate, same samples
    pending = rollout._prefetch.pending[1]
    prefetched = rollout.generate(items, 3, step=1)
    assert pending.done() and rollout._prefetch.pending is None
    assert [c.completion_ids for c in prefetched["completions"]] == [c.completion_ids for c in completions]
    rollout.prefetch(items[:1])  # a prefetch for other prompts is ignored, not misused
    other = rollout.generate(items, 3, step=1)
    assert [c.completion_ids for c in other["completions"]] == [c.completion_ids for c in completions]
    rollout.shutdown()


def test_lora_policy_decodes_merged_and_matches_hf_generate(tiny_model_dir, synthetic_dataset, rough_model):
    from peft import get_peft_model

    from vlm_rl.models.lora import lora_config

    processor = load_processor(tiny_model_dir)
    model = get_peft_model(rough_model(tiny_model_dir), lora_config(8, 16))
    with torch.no_grad():
        gen = torch.Generator().manual_seed(5)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.05)
    base = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    enc = encode_prompts(processor, [prepare_prompt(i, 128, "qwen3_vl")[0] for i in items], detection_instruction(None))
    eos, pad = eos_token_ids(processor, model), processor.tokenizer.pad_token_id
    ref = model.generate(**enc, do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=pad)
    ref = ref[:, enc["input_ids"].shape[1]:].repeat_interleave(2, dim=0)
    decoder = StaticDecoder(model, eos_ids=eos, pad_id=pad)
    out, _ = decoder.generate(enc, 2, 16, temperature=0.0)
    assert decoder.merged_modules == 7 * model.config.text_config.num_hidden_layers
    assert torch.equal(out[:, : ref.shape[1]], ref)  # the folded adapter samples what the adapter does
    assert all(torch.equal(p, base[n]) for n, p in model.named_parameters() if n in base)
