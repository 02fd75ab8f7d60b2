"""The frozen KL reference under full fine-tuning: the policy as it was when GRPO started.

Under LoRA the reference is free (the same network with the adapter off, ``policy.reference_context``).
Under full fine-tuning (``lora_r=0``) with ``beta > 0`` it must be a second set of weights, else the
"reference" forward is the current policy again and the KL is exactly 0. Which kind, as TRL does it:

* learners on ZeRO-3: a DeepSpeed inference engine (ZeRO-3, no optimizer) built under ``zero.Init``, so
  each rank holds ``1/world`` of the reference in the training dtype (8B in bf16 on 8 ranks: ~2.2 GB per
  GPU) and its forward gathers layer by layer like the policy's. The copy goes one parameter at a time
  (gather both, rank 0 writes, DeepSpeed re-partitions), never a whole model on one rank.
* otherwise (ZeRO-0/1/2, ``LocalEngine``): a frozen deep copy on the learner's device, the whole model
  in the training dtype (2 bytes per parameter under bf16: 17.5 GB for 8B).

``reference_bytes`` reports what this rank holds; the estimator reserves the same.
"""

from __future__ import annotations

import copy

import torch
import torch.distributed as dist

from vlm_rl.config import BaseConfig


class FrozenReference:
    """``module`` is what ``completion_logprobs`` runs (an inference engine under ZeRO-3); ``kind`` says which."""

    def __init__(self, module, kind: str):
        self.module = module
        self.kind = kind

    def reference_bytes(self) -> int:
        """Bytes of reference weights this rank holds (its ZeRO-3 partitions, or the whole copy)."""
        total = 0
        for p in self.module.parameters():
            held = getattr(p, "ds_tensor", None)
            total += (held.numel() * held.element_size()) if held is not None else p.numel() * p.element_size()
        return total


def needs_frozen_reference(config: BaseConfig) -> bool:
    """Full fine-tuning with a KL term: the adapter-off trick does not exist, a copy is needed."""
    return config.lora_r == 0 and float(getattr(config, "beta", 0.0)) > 0


def freeze_reference(engine, config: BaseConfig) -> FrozenReference:
    """Copy the engine's current policy into a frozen reference (collective under ZeRO-3)."""
    from vlm_rl.learner.policy import _causal_lm

    policy = _causal_lm(engine)
    if config.zero_stage == 3:
        return FrozenReference(_zero3_copy(policy, config), "zero3-sharded")
    was_training = policy.training
    ref = copy.deepcopy(policy)
    policy.train(was_training)
    ref.eval()
    for p in ref.parameters():
        p.requires_grad_(False)
        p.grad = None
    return FrozenReference(ref, "frozen-copy")


def _zero3_copy(policy, config: BaseConfig):
    import deepspeed

    dtype = next(p.dtype for p in policy.parameters())
    ds_config = {
        "train_micro_batch_size_per_gpu": 1,
        "gradient_accumulation_steps": 1,
        "zero_optimization": {"stage": 3, "stage3_param_persistence_threshold": 10_000},
        "bf16": {"enabled": dtype == torch.bfloat16},
        "steps_per_print": 10**9,
    }
    try:
        from transformers.initialization import no_init_weights
    except ImportError:  # transformers 4.x
        from transformers.modeling_utils import no_init_weights
    # Partitioned at construction; no random init (it cannot index empty partitions, and every weight is copied).
    # dtype comes from ds_config's bf16 flag (zero.Init's own ``dtype=`` argument is ignored off-GPU).
    with deepspeed.zero.Init(config_dict_or_path=ds_config), no_init_weights():
        ref = type(policy)._from_config(copy.deepcopy(policy.config), dtype=dtype)  # it writes dtype on it
        ref.tie_weights()  # init_weights would have tied them (tied embeddings: lm_head is embed_tokens)
    src, dst = list(policy.named_parameters()), list(ref.named_parameters())
    if [n for n, _ in src] != [n for n, _ in dst]:
        theirs, ours = {n for n, _ in src}, {n for n, _ in dst}
        raise RuntimeError(f"reference: the ZeRO-3 copy's parameters do not match the policy's: only in the "
                           f"policy {sorted(theirs - ours)[:4]}, only in the copy {sorted(ours - theirs)[:4]}")
    rank = dist.get_rank() if dist.is_initialized() else 0
    with torch.no_grad():
        for (_, s), (_, d) in zip(src, dst):  # one parameter at a time: never a whole model on a rank
            with deepspeed.zero.GatheredParameters([s, d], modifier_rank=0):
                if rank == 0:
                    d.data.copy_(s.data)
    for name, buf in policy.named_buffers():  # rotary tables etc. are not partitioned: copy them as they are
        target = ref.get_buffer(name)
        target.data.copy_(buf.data)
    for p in ref.parameters():
        p.requires_grad_(False)
    engine, *_ = deepspeed.initialize(model=ref, config=ds_config)
    engine.eval()
    return engine


def _reference_model(ref: FrozenReference):
    return ref.module.module if ref.kind == "zero3-sharded" else ref.module


def reference_state(ref: FrozenReference) -> dict[str, torch.Tensor] | None:
    """The reference's weights on rank 0 (CPU), None elsewhere; collective under ZeRO-3 (one parameter
    gathered at a time). Saved with the first GRPO checkpoint, so a resume measures KL to the same weights."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    out: dict[str, torch.Tensor] = {}
    for name, p in _reference_model(ref).named_parameters():
        if ref.kind == "zero3-sharded":
            import deepspeed

            with deepspeed.zero.GatheredParameters([p]):
                if rank == 0:
                    out[name] = p.data.detach().to("cpu", copy=True)
        elif rank == 0:
            out[name] = p.detach().to("cpu", copy=True)
    return out if rank == 0 else None


def load_reference_state(ref: FrozenReference, state: dict[str, torch.Tensor] | None) -> None:
    """Overwrite the reference's weights with ``state`` (what ``reference_state`` saved). Under ZeRO-3 only
    rank 0's ``state`` is read (collective); a frozen copy needs it on every rank."""
    rank = dist.get_rank() if dist.is_initialized() else 0
    params = list(_reference_model(ref).named_parameters())
    if state is not None:
        names = {n for n, _ in params}
        if names != set(state):
            raise ValueError(f"reference: saved weights do not fit the model: only saved {sorted(set(state) - names)[:3]}, "
                             f"only in the model {sorted(names - set(state))[:3]}")
    with torch.no_grad():
        for name, p in params:
            if ref.kind == "zero3-sharded":
                import deepspeed

                with deepspeed.zero.GatheredParameters([p], modifier_rank=0):
                    if rank == 0:
                        p.data.copy_(state[name])
            else:
                p.copy_(state[name])
