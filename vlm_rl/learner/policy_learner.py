"""One learner rank's work per step: rebuild the policy inputs, compute the GRPO (or SFT) loss, step."""

from __future__ import annotations

import torch

from vlm_rl.algos.grpo_loss import grpo_loss
from vlm_rl.config import BaseConfig, GRPOConfig
from vlm_rl.learner.compiled_layers import CompiledLayers
from vlm_rl.learner.engine import export_trainable_weights
from vlm_rl.learner.policy import completion_logprobs, reference_context
from vlm_rl.models.prompts import (
    build_policy_inputs,
    detection_instruction,
    encode_prompts,
    policy_inputs_from_encoding,
)
from vlm_rl.rollout.prefetch import Prefetcher
from vlm_rl.rollout.types import Completion, PromptItem
from vlm_rl.rollout.worker import prepare_prompt


def micro_batches(n: int, size: int) -> list[slice]:
    size = n if size <= 0 else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


class PolicyLearner:
    """Owns the DeepSpeed engine of one rank. Pure torch apart from the engine; no Ray."""

    def __init__(self, engine, processor, family: str, config: BaseConfig, labels: list[str] | None,
                 micro_batch_size: int = 0):
        self.engine = engine
        self.processor = processor
        self.family = family
        self.config = config
        self.instruction = detection_instruction(labels)
        self.lora = config.lora_r > 0
        self.micro_batch_size = micro_batch_size
        self.device = engine.device
        self.compiled = CompiledLayers(engine.module, enabled=config.compile_layers)
        self._prefetch = Prefetcher(self._encode, "vlmrl-learner-prefetch")  # prompts -> their encoding

    def prefetch(self, items: list[PromptItem]) -> None:
        """Start loading and encoding a step's prompts on a CPU thread (while the rollout generates), so the
        learner's step builds its micro-batches without the image processor."""
        self._prefetch.start(tuple(items))

    def _encode(self, items: tuple[PromptItem, ...]):
        images = [prepare_prompt(item, self.config.max_image_size, self.family)[0] for item in items]
        return encode_prompts(self.processor, images, self.instruction)

    def _to_device(self, batch: dict) -> dict:
        pin = self.device.type == "cuda"  # pinned + non_blocking: the copy does not wait for queued GPU work
        return {k: (v.pin_memory().to(self.device, non_blocking=True) if pin else v.to(self.device))
                if torch.is_tensor(v) else v for k, v in batch.items()}

    def _inputs(self, items: list[PromptItem], completion_ids: list[list[int]]) -> dict:
        # A GRPO group shares its prompt: load and encode each image once, then repeat its rows.
        unique: list[PromptItem] = []
        repeats: list[int] = []
        for item in items:
            if unique and item == unique[-1]:
                repeats[-1] += 1
            else:
                unique.append(item)
                repeats.append(1)
        images = [prepare_prompt(item, self.config.max_image_size, self.family)[0] for item in unique]
        batch = build_policy_inputs(self.processor, images, self.instruction, completion_ids, repeats=repeats,
                                    share_images=True)
        return self._to_device(batch)

    def grpo_step(self, items: list[PromptItem], completions: list[Completion], advantages: torch.Tensor) -> dict:
        """One optimizer step over this rank's completions (``items[c.prompt_index]`` is each one's prompt)."""
        self.engine.train()  # before the switch: it picks the checkpointed variant from the train flag
        with self.compiled.active():
            return self._grpo_step(items, completions, advantages)

    def _grpo_step(self, items: list[PromptItem], completions: list[Completion], advantages: torch.Tensor) -> dict:
        config: GRPOConfig = self.config  # type: ignore[assignment]
        engine = self.engine
        engine.train()
        n_tokens_total = sum(len(c.completion_ids) for c in completions)
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0}
        slices = micro_batches(len(completions), self.micro_batch_size)

        encoding = self._prefetch.take(tuple(items))  # every prompt of the step, encoded once (usually prefetched)
        pad_id = self.processor.tokenizer.pad_token_id

        def inputs(sl: slice) -> dict:
            chunk = completions[sl]
            return self._to_device(policy_inputs_from_encoding(
                encoding, [c.prompt_index for c in chunk], [c.completion_ids for c in chunk], pad_id,
                share_images=True))

        # Metrics stay on the device until the end: no host sync between micro-batches, so the CPU builds
        # the next micro-batch's inputs (image load, processor) while the GPU runs this one's backward.
        pending: list[tuple[float, torch.Tensor, dict]] = []
        batch = inputs(slices[0])
        for i, sl in enumerate(slices):
            mask = batch["completion_mask"].float()
            logp = completion_logprobs(engine, batch, config.temperature)
            ref_logp = None
            if config.beta > 0:
                with torch.no_grad(), reference_context(engine.module, self.lora):
                    ref_logp = completion_logprobs(engine, batch, config.temperature)
            adv = advantages[sl].to(self.device, dtype=logp.dtype)
            loss, metrics = grpo_loss(
                logp, logp.detach(), ref_logp, adv, mask, beta=config.beta, eps_low=config.epsilon,
                eps_high=config.clip_high, loss_type=config.loss_type,
                max_completion_length=config.max_new_tokens, num_items_in_batch=n_tokens_total,
            )
            # The engine divides by the accumulation steps; dapo already normalises by the whole batch's tokens.
            scale = len(slices) if config.loss_type == "dapo" else 1.0
            engine.backward(loss * scale)
            del logp, ref_logp, mask
            if i + 1 < len(slices):
                batch = inputs(slices[i + 1])
            engine.step()
            pending.append(((sl.stop - sl.start) / len(completions), loss.detach(), metrics))
        for weight, loss, metrics in pending:
            sums["loss"] += float(loss) * (1.0 if config.loss_type == "dapo" else weight)
            sums["kl"] += float(metrics.get("kl", 0.0)) * weight
            sums["clip_ratio"] += float(metrics.get("clip_ratio", 0.0)) * weight
        sums["grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
        return sums

    def sft_step(self, items: list[PromptItem], target_ids: list[list[int]]) -> dict:
        """Supervised step: mean negative log-likelihood of the target answer tokens."""
        self.engine.train()
        with self.compiled.active():
            return self._sft_step(items, target_ids)

    def _sft_step(self, items: list[PromptItem], target_ids: list[list[int]]) -> dict:
        engine = self.engine
        engine.train()
        total_tokens = sum(len(t) for t in target_ids)
        slices = micro_batches(len(items), self.micro_batch_size)
        loss_sum = 0.0
        for sl in slices:
            batch = self._inputs(items[sl], target_ids[sl])
            mask = batch["completion_mask"].float()
            logp = completion_logprobs(engine, batch)
            loss = -(logp * mask).sum() / max(total_tokens, 1)
            engine.backward(loss * len(slices))
            engine.step()
            loss_sum += float(loss.detach())
        return {"sft_loss": loss_sum, "grad_norm": float(engine.get_global_grad_norm() or 0.0)}

    def export_weights(self) -> dict | None:
        """Collective under ZeRO-3; returns the state on rank 0 only."""
        return export_trainable_weights(self.engine, self.lora, self.config.zero_stage)

    def adapter_config(self):
        return self.engine.module.peft_config["default"] if self.lora else None
