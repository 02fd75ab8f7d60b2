"""The shared-prompt forward gives the row-per-completion forward's log-probs and gradients, with fewer tokens."""

from __future__ import annotations

import pytest
import torch
from PIL import Image

from vlm_rl.learner.policy import completion_logprobs
from vlm_rl.learner.shared_prompt import can_pack, pack_prompt_groups, packing_pays, prompt_groups
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import build_policy_inputs
from vlm_rl.models.tiny import real_architecture_config


def test_prompt_groups_are_runs_of_one_prompt():
    assert prompt_groups([0, 0, 1, 1, 1, 2, 0]) == [(0, 2), (2, 3), (5, 1), (6, 1)]
    assert prompt_groups([]) == []


def _batch(processor, side: int, completions, repeats):
    # Two image sizes: the prompts differ in length, so the shorter one is left-padded.
    images = [Image.new("RGB", (2 * side, 2 * side), (200, 30, 30)), Image.new("RGB", (side, 2 * side), (30, 30, 200)),
              Image.new("RGB", (side, side), (30, 200, 30))]
    return build_policy_inputs(processor, images[: len(repeats)], "Find the signs.", completions, repeats=repeats,
                               share_images=True)


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_packed_logprobs_and_gradients_equal_row_per_completion(request, family):
    path = request.getfixturevalue("tiny_model_dir" if family == "qwen3_vl" else "tiny_qwen25_dir")
    model, processor = load_model(path).eval(), load_processor(path)
    side = 32 if family == "qwen3_vl" else 28
    # Groups of 2, 3 and 1 rows; uneven completion lengths (right padding inside the blocks).
    completions = [[58, 4913, 17, 90], [60, 61], [58, 60, 5, 6, 7], [1, 2], [7], [11, 12, 13]]
    batch = _batch(processor, side, completions, [2, 3, 1])
    assert can_pack(batch, "sdpa") and not can_pack(batch, "flash_attention_2")
    assert can_pack(batch, "sdpa", model.config.text_config)  # the cost rule packs it: the packed path is tested
    mask = batch["completion_mask"].bool()

    def run(share: bool):
        model.zero_grad()
        logp = completion_logprobs(model, dict(batch), share_prompts=share)
        weights = torch.linspace(0.5, 1.5, logp.numel()).view_as(logp)
        (logp * weights * mask).sum().backward()
        grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}
        return logp.detach(), grads

    want, want_grads = run(False)
    got, got_grads = run(True)
    torch.testing.assert_close(got[mask], want[mask], atol=2e-5, rtol=1e-4)
    assert want_grads.keys() == got_grads.keys() and len(want_grads) > 10
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=5e-5, rtol=1e-3, msg=name)


def test_packing_runs_each_prompt_once(request, tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    completions = [[5, 6, 7]] * 4 + [[8, 9]] * 4
    batch = _batch(processor, 32, completions, [4, 4])
    packed = pack_prompt_groups(batch, pad_id=0)
    prompt_len, width = batch["prompt_length"], batch["completion_mask"].shape[1]
    packed_len = -(-(prompt_len + 4 * width) // 16) * 16  # whole 16-column tiles for the masked SDPA kernels
    assert packed["input_ids"].shape == (2, packed_len)  # was 8 rows of prompt + completion
    end = prompt_len + 4 * width
    assert not packed["attention_mask"][0, 0, :end, end:].any()  # tile padding: no real token attends to it
    image_token = batch["input_ids"][0, :prompt_len].tolist().count(
        processor.tokenizer.convert_tokens_to_ids("<|image_pad|>"))
    assert image_token > 0
    assert packed["input_ids"][0].tolist().count(processor.tokenizer.convert_tokens_to_ids("<|image_pad|>")) \
        == image_token  # the image's tokens appear once per group
    allowed = packed["attention_mask"][0, 0]
    first, second = prompt_len, prompt_len + width  # first token of completion 0 and of completion 1
    assert allowed[second, : prompt_len].any() and not allowed[second, first : first + width].any()


def test_eager_attention_gets_an_additive_mask(tiny_model_dir):
    processor = load_processor(tiny_model_dir)
    batch = _batch(processor, 32, [[5, 6], [7]], [2])
    packed = pack_prompt_groups(batch, pad_id=0, float_mask_dtype=torch.float32)
    mask = packed["attention_mask"]
    assert mask.dtype == torch.float32 and float(mask.max()) == 0.0 and float(mask.min()) < -1e30


def test_packing_is_skipped_where_its_attention_outgrows_what_the_prompt_saves():
    """8B text decoder: 8 groups of 4 with a 512-px prompt (336 tokens) and 256 completion tokens pack (the
    prompt's projections run once); 1024-token completions in groups of 16 behind a 100-token prompt do not:
    the packed row's dense attention grows with (P + kC)², the repeated prompts only with k(P + C)."""
    text = real_architecture_config("qwen3-vl-8b").text_config
    assert packing_pays(336, 256, [4] * 8, text)
    assert packing_pays(1150, 256, [4] * 8, text)  # 1024 px
    assert not packing_pays(100, 1024, [16], text)
    assert not packing_pays(336, 1024, [16] * 2, text)


def test_flex_block_mask_is_the_dense_mask(tiny_model_dir):
    """The FlexAttention block mask allows exactly the pairs of the dense mask, and skips tiles: a key block
    of another completion is never visited."""
    from torch.nn.attention.flex_attention import create_mask

    from vlm_rl.learner.packed_attention import FLEX_BLOCK, dense_mask

    processor = load_processor(tiny_model_dir)
    completions = [[58, 4913, 17, 90], [60, 61], [58, 60, 5, 6, 7], [1, 2], [7], [11, 12, 13]]
    batch = _batch(processor, 32, completions, [2, 3, 1])
    dense = pack_prompt_groups(batch, pad_id=0)
    flex = pack_prompt_groups(batch, pad_id=0, kernel="flex")
    mask = flex["attention_mask"]
    assert not isinstance(mask, torch.Tensor)  # a BlockMask: no [L, L] tensor held
    length, short = flex["input_ids"].shape[1], dense["input_ids"].shape[1]
    assert length % FLEX_BLOCK == 0 and length >= short and mask.shape == (3, 1, length, length)
    allowed = create_mask(mask.mask_mod, 3, 1, length, length, device="cpu")
    assert torch.equal(allowed, dense_mask(flex["key_valid"], flex["block_of"]))
    # the same packing as the dense one, padded to whole 128-wide blocks that nothing real attends to
    assert torch.equal(allowed[..., :short, :short], dense["attention_mask"])
    assert not allowed[..., :short, short:].any()  # no query of the dense packing sees the extra padding
    assert torch.equal(flex["input_ids"][:, :short], dense["input_ids"]) and not flex["key_valid"][:, short:].any()
    n = dense["hidden_index"] // short  # each completion token's group
    assert torch.equal(flex["hidden_index"], n * length + dense["hidden_index"] % short)


def test_flex_block_mask_skips_other_completions_tiles():
    """A 1024-px-like group (prompt 200, 4 completions of 300): the block mask visits fewer 128 x 128 tiles than
    a causal mask would (a completion's tiles against an earlier completion's block are skipped)."""
    from vlm_rl.learner.packed_attention import FLEX_BLOCK, block_mask

    prompt, k, c = 200, 4, 300
    length = -(-(prompt + k * c) // FLEX_BLOCK) * FLEX_BLOCK
    block_of = torch.full((1, length), -1)
    block_of[0, :prompt] = 0
    for j in range(k):
        block_of[0, prompt + j * c: prompt + (j + 1) * c] = j + 1
    mask = block_mask(block_of >= 0, block_of)
    visited = int(mask.kv_num_blocks.sum()) + int(mask.full_kv_num_blocks.sum())
    tiles = length // FLEX_BLOCK
    assert visited < tiles * (tiles + 1) // 2, (visited, tiles)  # fewer than the causal lower triangle


@pytest.mark.parametrize("family", ["qwen3_vl", "qwen2_5_vl"])
def test_flex_packed_logprobs_equal_the_dense_and_unpacked_ones(request, family):
    """The text layers switched to the dispatcher: a block mask goes to FlexAttention (eager form on CPU, no
    grad), unpacked rows still go to SDPA; all three give the same log-probs."""
    from vlm_rl.learner.packed_attention import ATTENTION_NAME

    path = request.getfixturevalue("tiny_model_dir" if family == "qwen3_vl" else "tiny_qwen25_dir")
    model, processor = load_model(path).eval(), load_processor(path)
    completions = [[58, 4913, 17, 90], [60, 61], [58, 60, 5, 6, 7], [1, 2], [7], [11, 12, 13]]
    batch = _batch(processor, 32 if family == "qwen3_vl" else 28, completions, [2, 3, 1])
    mask = batch["completion_mask"].bool()
    with torch.no_grad():
        dense = completion_logprobs(model, dict(batch), share_prompts=True, packed_attention="dense")
        flex_batch = dict(batch)
        flex = completion_logprobs(model, flex_batch, share_prompts=True, packed_attention="flex")
        assert not isinstance(flex_batch["_packed"]["attention_mask"], torch.Tensor)  # the flex path ran
        assert model.config.text_config._attn_implementation == ATTENTION_NAME
        unpacked = completion_logprobs(model, dict(batch), share_prompts=False)
    torch.testing.assert_close(flex[mask], dense[mask], atol=2e-5, rtol=1e-4)
    torch.testing.assert_close(unpacked[mask], dense[mask], atol=2e-5, rtol=1e-4)


def test_flex_is_chosen_on_cuda_and_refused_for_training_on_cpu():
    from vlm_rl.learner.packed_attention import check_trainable, resolve

    assert resolve("auto", "cpu") == "dense" and resolve("dense", "cuda") == "dense"
    assert resolve("auto", "cuda") == "flex" and resolve("flex", "cpu") == "flex"  # no-grad passes may use it
    with pytest.raises(ValueError, match="packed_attention: flex trains on a CUDA GPU only"):
        check_trainable("flex", "cpu")
    check_trainable("auto", "cpu")
    with pytest.raises(ValueError, match="packed_attention: 'sparse' is not one of auto, flex, dense"):
        resolve("sparse", "cpu")


def test_with_flex_packing_pays_where_the_dense_mask_does_not():
    """FlexAttention computes the allowed pairs (plus edge tiles), not (P + kC)²: the long-completion cases the
    dense rule refuses pay under it, and a group of one (nothing shared) never does."""
    text = real_architecture_config("qwen3-vl-8b").text_config
    assert packing_pays(100, 1024, [16], text, kernel="flex")
    assert packing_pays(336, 1024, [16] * 2, text, kernel="flex")
    assert packing_pays(336, 256, [4] * 8, text, kernel="flex")
    assert not packing_pays(336, 256, [1] * 8, text, kernel="flex")
