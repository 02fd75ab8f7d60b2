"""GPU checks of the one-GPU fast path (run on the lent GPU: ``pytest -m gpu tests/gpu``).

* the CUDA-graphed decoder samples exactly what HF generate samples (greedy, float32), also after the
  weights change in place (the graph must read live parameters, not a copy);
* one colocated GRPO step (rollout from the learner's own model, then the learner's update) runs in bf16
  on CUDA and its loss and KL match the float32 CPU step on the same completions within bf16 tolerance.
"""

from __future__ import annotations

import pytest
import torch

from vlm_rl.config import GRPOConfig
from vlm_rl.data.schema import load_jsonl
from vlm_rl.learner.local_engine import LocalEngine
from vlm_rl.learner.policy import build_policy
from vlm_rl.learner.policy_learner import PolicyLearner
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.prompts import detection_instruction, encode_prompts
from vlm_rl.rollout.colocated import ColocatedRollout
from vlm_rl.rollout.engine import eos_token_ids, prepare_prompt
from vlm_rl.rollout.fast_decode import StaticDecoder
from vlm_rl.rollout.types import PromptItem

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _roughen(model, seed: int, std: float = 0.3) -> None:
    """Random weights of std 0.02 make every greedy answer one repeated token; larger ones make them varied."""
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and p.ndim == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * std)


def _prompts(synthetic_dataset, n: int) -> list[PromptItem]:
    return [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:n]]


def _decode_setup(model_dir, synthetic_dataset, dtype: torch.dtype, prompts: int):
    """A roughened model on CUDA, ``prompts`` encoded prompts, and its end/pad ids."""
    processor = load_processor(model_dir)
    model = load_model(model_dir, dtype=dtype)
    _roughen(model, seed=1)
    model = model.to("cuda")
    images = [prepare_prompt(item, 128, "qwen3_vl")[0] for item in _prompts(synthetic_dataset, prompts)]
    enc = encode_prompts(processor, images, detection_instruction(["stop_sign"])).to("cuda")
    return model, enc, eos_token_ids(processor, model), processor.tokenizer.pad_token_id


def test_cuda_graph_decode_matches_hf_generate(tiny_model_dir, synthetic_dataset):
    model, enc, eos, pad = _decode_setup(tiny_model_dir, synthetic_dataset, torch.float32, 3)
    decoder = StaticDecoder(model, eos_ids=eos, pad_id=pad, use_cuda_graph=True)
    for round_ in range(2):
        ref = model.generate(**enc, do_sample=False, max_new_tokens=24, eos_token_id=eos, pad_token_id=pad)
        ref = ref[:, enc["input_ids"].shape[1]:].repeat_interleave(2, dim=0)
        out, _ = decoder.generate(enc, 2, 24, temperature=0.0)
        assert decoder.mode == "graph"  # the step ran as a captured CUDA graph (freed again after generate)
        assert torch.equal(out[:, : ref.shape[1]], ref), f"round {round_}"
        with torch.no_grad():  # an in-place update, as the optimizer makes: the graph must see it
            for name, p in model.named_parameters():
                if "layers.1.mlp" in name:
                    p.mul_(-1.5)


def _learner(config: GRPOConfig, device: str, labels):
    torch.manual_seed(0)
    model, processor, family = build_policy(config, device=device)
    with torch.no_grad():  # a non-zero adapter, the same on both devices, so the KL to the reference is not 0
        gen = torch.Generator().manual_seed(3)
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.copy_((torch.randn(p.shape, generator=gen) * 0.05).to(p.dtype))
    engine = LocalEngine(model, config, device)
    return PolicyLearner(engine, processor, family, config, labels), engine, processor, family


@pytest.mark.parametrize("compiled,packed_attention", [(False, "dense"), (True, "dense"), (True, "flex")],
                         ids=["eager", "compiled", "compiled-flex"])
def test_colocated_step_matches_cpu_loss(tiny_model_dir, synthetic_dataset, tmp_path, compiled, packed_attention):
    """``compiled``: the one-GPU fast path of the recipe (compiled decode step, compiled learner layers). The GPU
    learner runs each group's prompt once (share_prompt_forward; ``packed_attention``: the dense mask or a
    FlexAttention block mask inside the compiled layers); the CPU reference repeats it per row."""
    labels = None
    base = dict(model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), num_learners=1,
                lora_r=8, beta=0.1, loss_type="dapo", max_new_tokens=32, max_image_size=128,
                prompts_per_step=2, num_generations=4, rollout_mode="colocated", output_dir=str(tmp_path))
    gpu_cfg = GRPOConfig(**base, use_gpu=True, bf16=True, compile_layers=compiled, compile_decode=compiled,
                         packed_attention=packed_attention)
    cpu_cfg = GRPOConfig(**base, share_prompt_forward=False)  # the GPU runs each prompt once; the CPU per row
    items = _prompts(synthetic_dataset, 2)

    gpu_learner, gpu_engine, processor, family = _learner(gpu_cfg, "cuda", labels)
    rollout = ColocatedRollout(gpu_engine, processor, family, labels=labels, max_image_size=128,
                               max_new_tokens=32, min_new_tokens=8, seed=0, compile_decode=gpu_cfg.compile_decode)
    out = rollout.generate(items, 4, step=1)
    completions = out["completions"]
    assert len(completions) == 8 and out["tokens"] >= 8 * 8
    assert all(c.prompt_index == i // 4 for i, c in enumerate(completions))
    advantages = torch.linspace(-0.5, 1.5, 8)  # non-zero mean: the policy term is in the loss too
    before = {n: p.detach().clone() for n, p in gpu_engine.module.named_parameters() if p.requires_grad}
    gpu_metrics = gpu_learner.grpo_step(items, completions, advantages)
    changed = [n for n, p in gpu_engine.module.named_parameters() if p.requires_grad and not torch.equal(p, before[n])]
    assert changed, "the GPU step did not update the adapter"

    cpu_learner, *_ = _learner(cpu_cfg, "cpu", labels)
    cpu_metrics = cpu_learner.grpo_step(items, completions, advantages)
    assert torch.isfinite(torch.tensor(gpu_metrics["loss"]))
    assert cpu_metrics["kl"] > 1e-4
    assert gpu_metrics["kl"] == pytest.approx(cpu_metrics["kl"], rel=0.1)
    assert gpu_metrics["loss"] == pytest.approx(cpu_metrics["loss"], rel=0.02, abs=2e-3)
    assert gpu_metrics["grad_norm"] == pytest.approx(cpu_metrics["grad_norm"], rel=0.1)

    # the next rollout reads the updated adapter in place (no sync): it still runs and is on the new version
    rollout.sync_weights(None, 2)
    again = rollout.generate(items, 4, step=2)
    assert {c.weights_version for c in again["completions"]} == {2}


def test_lora_merge_for_decode_restores_base_weights_on_cuda(tiny_model_dir, synthetic_dataset):
    """The in-place LoRA fold around a CUDA-graphed decode leaves the bf16 base weights bit-identical, and
    the graph (captured while merged) samples what the un-merged adapter model samples (greedy, float32)."""
    from peft import get_peft_model

    from vlm_rl.models.lora import lora_config
    from vlm_rl.models.lora_merge import merged_lora

    processor = load_processor(tiny_model_dir)
    for dtype, b_std in ((torch.bfloat16, 0.5), (torch.float32, 0.05)):
        base_model = load_model(tiny_model_dir, dtype=dtype)
        _roughen(base_model, seed=1)
        model = get_peft_model(base_model.to(dtype), lora_config(8, 16)).to("cuda")
        gen = torch.Generator().manual_seed(4)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "lora_B" in name:
                    p.copy_((torch.randn(p.shape, generator=gen) * b_std).to(p.dtype))
        before = {n: p.clone() for n, p in model.named_parameters() if "base_layer" in n}
        with merged_lora(model) as merged:
            pass
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)
        if dtype == torch.bfloat16:
            assert merged.fixups > 0
            continue
        images = [prepare_prompt(item, 128, "qwen3_vl")[0] for item in _prompts(synthetic_dataset, 2)]
        enc = encode_prompts(processor, images, detection_instruction(None)).to("cuda")
        eos, pad = eos_token_ids(processor, model), processor.tokenizer.pad_token_id
        ref = model.generate(**enc, do_sample=False, max_new_tokens=16, eos_token_id=eos, pad_token_id=pad)
        ref = ref[:, enc["input_ids"].shape[1]:].repeat_interleave(2, dim=0)
        decoder = StaticDecoder(model, eos_ids=eos, pad_id=pad, use_cuda_graph=True)
        out, _ = decoder.generate(enc, 2, 16, temperature=0.0)
        assert decoder.mode == "graph" and decoder.merged_modules > 0
        assert torch.equal(out[:, : ref.shape[1]], ref)
        assert all(torch.equal(p, before[n]) for n, p in model.named_parameters() if n in before)


def test_fp8_decode_in_a_cuda_graph_follows_the_weights_and_stays_close(tiny_model_dir, synthetic_dataset):
    """rollout_dtype=fp8 on Hopper: the graphed FP8 step samples close to the bf16 one (same noise), and after an
    in-place weight change the refreshed FP8 copies (same buffers, same graph) follow it."""
    model, enc, eos, pad = _decode_setup(tiny_model_dir, synthetic_dataset, torch.bfloat16, 2)
    bf16 = StaticDecoder(model, eos_ids=eos, pad_id=pad, use_cuda_graph=True)
    fp8 = StaticDecoder(model, eos_ids=eos, pad_id=pad, use_cuda_graph=True, fp8=True, keep_cache=True)
    for round_ in range(2):
        runs = []
        for decoder in (bf16, fp8):
            gen = torch.Generator(device="cuda").manual_seed(5)
            ids, _ = decoder.generate(enc, 4, 16, temperature=1.0, min_new_tokens=16, generator=gen, logprobs=True)
            runs.append((ids, decoder.last_logprobs.clone()))
        assert fp8.mode == "graph" and fp8.fp8.refreshes == round_ + 1
        same = runs[0][0] == runs[1][0]
        assert same.float().mean() > 0.6, (round_, same.float().mean())
        gap = (runs[1][1] - runs[0][1])[same].abs()
        assert 0 < gap.mean() < 0.1, (round_, gap.mean())
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "layers.1.mlp" in name:
                    p.mul_(-1.5)


def test_flex_packed_forward_and_backward_match_the_dense_mask_on_cuda(tiny_model_dir):
    """The shared-prompt row under FlexAttention's block mask (compiled, with its backward: CUDA only) gives the
    dense-mask SDPA forward's log-probs and gradients (float32)."""
    from PIL import Image

    from vlm_rl.learner.policy import completion_logprobs
    from vlm_rl.models.prompts import build_policy_inputs

    model, processor = load_model(tiny_model_dir).to("cuda").eval(), load_processor(tiny_model_dir)
    images = [Image.new("RGB", (64, 64), (200, 30, 30)), Image.new("RGB", (32, 64), (30, 30, 200))]
    completions = [[58, 4913, 17, 90], [60, 61], [58, 60, 5, 6, 7], [1, 2], [7]]
    batch = build_policy_inputs(processor, images, "Find the signs.", completions, repeats=[2, 3], share_images=True)
    batch = {k: v.to("cuda") if isinstance(v, torch.Tensor) else v for k, v in batch.items()}
    mask = batch["completion_mask"].bool()

    def run(kernel: str):
        model.zero_grad()
        work = dict(batch)
        logp = completion_logprobs(model, work, share_prompts=True, packed_attention=kernel)
        assert isinstance(work["_packed"]["attention_mask"], torch.Tensor) == (kernel == "dense")
        (logp * mask).sum().backward()
        return logp.detach(), {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}

    want, want_grads = run("dense")
    got, got_grads = run("flex")
    torch.testing.assert_close(got[mask], want[mask], atol=1e-4, rtol=1e-3)
    assert want_grads.keys() == got_grads.keys()
    for name, grad in want_grads.items():
        torch.testing.assert_close(got_grads[name], grad, atol=2e-4, rtol=2e-3, msg=name)
