"""FP8 rollouts (rollout/fp8.py) on CPU: the quantizer, the FP8 GEMM against its dequantized reference, and the
decode loop with FP8 projections against the same loop in the model's dtype."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.data.schema import load_jsonl
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import detection_instruction, encode_prompts
from vlm_rl.rollout.engine import eos_token_ids, prepare_prompt
from vlm_rl.rollout.fast_decode import StaticDecoder
from vlm_rl.rollout.fp8 import FP8, FP8_MAX, Fp8Decoder, fake_fp8_linear, fp8_linear, quantize_rows
from vlm_rl.rollout.types import PromptItem


def test_rows_quantize_within_e4m3_precision_and_zero_rows_stay_zero():
    gen = torch.Generator().manual_seed(0)
    w = torch.randn(64, 48, generator=gen) * torch.logspace(-3, 1, 64)[:, None]  # rows 4 decades apart
    w[5] = 0.0
    q, s = quantize_rows(w)
    assert q.dtype == FP8 and s.shape == (64, 1)
    assert torch.allclose(q.float().abs().amax(dim=1)[w.abs().amax(dim=1) > 0], torch.tensor(FP8_MAX))
    back = q.float() * s
    assert torch.equal(back[5], torch.zeros(48))
    rel = ((back - w).abs() / w.abs().amax(dim=1, keepdim=True).clamp(min=1e-30))[w.abs().amax(dim=1) > 0]
    assert rel.max() <= 2 ** -4  # e4m3: 3 mantissa bits, half an ulp relative to the row's max


def test_fp8_gemm_equals_its_dequantized_reference_and_is_close_to_the_exact_product():
    gen = torch.Generator().manual_seed(1)
    x, w, b = torch.randn(3, 5, 64, generator=gen), torch.randn(32, 64, generator=gen), torch.randn(32, generator=gen)
    q, s = quantize_rows(w)
    out = fp8_linear(x, q, s.view(1, -1), b)
    ref = fake_fp8_linear(x, q, s, b)
    exact = torch.nn.functional.linear(x, w, b)
    assert out.shape == (3, 5, 32)
    assert torch.allclose(out, ref, atol=1e-4, rtol=1e-4)
    assert (out - exact).abs().mean() / exact.abs().mean() < 0.05
    assert not torch.equal(out, exact)  # it did quantize


def test_fp8_decode_samples_close_to_the_model_and_leaves_it_untouched(tiny_model_dir, synthetic_dataset, rough_model):
    processor, model = load_processor(tiny_model_dir), rough_model(tiny_model_dir)
    items = [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]
    images = [prepare_prompt(item, 96, model.config.model_type)[0] for item in items]
    enc = encode_prompts(processor, images, [detection_instruction(None)] * 2)
    eos, pad = eos_token_ids(processor, model), processor.tokenizer.pad_token_id
    before = {k: v.clone() for k, v in model.state_dict().items()}

    def run(fp8: bool):
        decoder = StaticDecoder(model, eos_ids=eos, pad_id=pad, fp8=fp8)
        gen = torch.Generator().manual_seed(3)
        ids, _ = decoder.generate(enc, 4, 12, temperature=1.0, min_new_tokens=12, generator=gen, logprobs=True)
        return decoder, ids, decoder.last_logprobs.clone()

    _, ids, lp = run(False)
    decoder, ids8, lp8 = run(True)
    layers = model.config.text_config.num_hidden_layers
    assert decoder.fp8.count == 7 * layers and decoder.fp8.refreshes == 1  # q k v o gate up down per layer
    assert decoder.fp8.nbytes > 0
    assert all("forward" not in m.__dict__ for m in decoder.fp8.modules)  # plain again after the rollout
    for k, v in model.state_dict().items():
        assert torch.equal(v, before[k]), k
    # Same noise, slightly different distribution: most tokens agree, and where they do the log-probs are
    # close but not equal (the gap the learner's importance weight corrects).
    same = ids8 == ids
    print(f'fp8 decode: {same.float().mean():.3f} of tokens agree; |lp gap| mean {(lp8-lp)[same].abs().mean():.4f}')
    assert same.float().mean() > 0.6, same.float().mean()
    gap = (lp8 - lp)[same]
    assert gap.abs().max() > 0 and gap.abs().mean() < 0.1, gap.abs().mean()
    # The learner's view of the FP8 samples: the bf16 model's log-probs of the same tokens differ by that gap too.
    fp8 = Fp8Decoder(list(model.model.language_model.layers))
    with fp8.active():
        assert all("forward" in m.__dict__ for m in fp8.modules)
    assert fp8.refreshes == 1 and all("forward" not in m.__dict__ for m in fp8.modules)


def test_fp8_config_is_refused_where_it_cannot_quantize():
    from pydantic import ValidationError

    from vlm_rl.config import GRPOConfig

    base = dict(model_path="tiny-qwen3-vl", rollout_dtype="fp8")
    with pytest.raises(ValidationError, match="fp8 sampling is a mode of the fast engine"):
        GRPOConfig(**base, rollout_engine="hf")
    with pytest.raises(ValidationError, match="a colocated ZeRO-3 learner holds only shards"):
        GRPOConfig(**base, rollout_mode="colocated", num_learners=1, zero_stage=3)
    GRPOConfig(**base, rollout_mode="pool", zero_stage=3)  # the actors hold full weights


def test_a_decoder_with_nothing_to_quantize_samples_in_its_own_dtype(tiny_model_dir, caplog):
    """Partitioned (empty) weights, as a ZeRO-3 shard holds: no FP8 copies, a warning, plain sampling."""
    model = load_model(tiny_model_dir).eval()
    with torch.no_grad():
        for layer in model.model.language_model.layers:
            for module in layer.modules():
                if isinstance(module, torch.nn.Linear):
                    module.weight = torch.nn.Parameter(torch.empty(0), requires_grad=False)
    with caplog.at_level("WARNING"):
        decoder = StaticDecoder(model, eos_ids=[0], pad_id=0, fp8=True)
    assert decoder.fp8 is None and "no projection of this decoder can be quantized" in caplog.text
