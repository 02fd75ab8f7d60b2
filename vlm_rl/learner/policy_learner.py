"""One learner rank's work per step: rebuild the policy inputs, compute the GRPO (or SFT) loss, step."""

from __future__ import annotations

import torch
import torch.distributed as dist

from vlm_rl.algos.grpo_loss import engine_loss_scale, grpo_loss
from vlm_rl.algos.importance import (
    MAX_KEYS,
    MIN_KEYS,
    SUM_KEYS,
    add_stats,
    importance_metrics,
    importance_weights,
    sampler_logprob_matrix,
)
from vlm_rl.config import BaseConfig, GRPOConfig
from vlm_rl.learner.compiled_layers import CompiledLayers
from vlm_rl.learner.engine import export_trainable_weights, reset_optimizer_moments, set_learning_rate
from vlm_rl.learner.policy import completion_logprobs, reference_context
from vlm_rl.learner.reference import FrozenReference, freeze_reference, needs_frozen_reference
from vlm_rl.models.prompts import (
    build_policy_inputs,
    detection_instruction,
    encode_prompts,
    policy_inputs_from_encoding,
)
from vlm_rl.rollout.engine import prepare_prompt
from vlm_rl.rollout.prefetch import Prefetcher
from vlm_rl.rollout.types import Completion, PromptItem


def micro_batches(n: int, size: int) -> list[slice]:
    size = n if size <= 0 else size
    return [slice(i, min(i + size, n)) for i in range(0, n, size)]


def accumulation_steps(examples_per_rank: int, micro_batch_size: int) -> tuple[int, int]:
    """``(micro-batch size, gradient-accumulation steps)`` for one optimizer step over a rank's examples.

    The one place the engine's accumulation steps are derived; ``PolicyLearner`` then splits every step
    into exactly that many micro-batches (``engine.gradient_accumulation_steps()``), so each GRPO/SFT
    step is one optimizer step.
    """
    if examples_per_rank < 1:
        raise ValueError(f"examples per rank: must be >= 1, got {examples_per_rank}")
    micro = min(micro_batch_size or examples_per_rank, examples_per_rank)
    return micro, -(-examples_per_rank // micro)


def even_slices(n: int, parts: int) -> list[slice]:
    """``n`` examples in ``parts`` contiguous slices whose sizes differ by at most one (larger first)."""
    base, extra = divmod(n, parts)
    out, start = [], 0
    for i in range(parts):
        stop = start + base + (1 if i < extra else 0)
        out.append(slice(start, stop))
        start = stop
    return out


def has_sampler_logprobs(completions: list[Completion]) -> bool:
    """True when the completions carry their sampler's per-token log-probs (the learner then applies the
    truncated importance-sampling correction); a row whose count does not match its tokens is an error."""
    if not any(c.sampling_logprobs for c in completions):
        return False
    for c in completions:
        if len(c.sampling_logprobs) != len(c.completion_ids):
            raise ValueError(f"sampling_logprobs: a completion of sample {c.sample_id!r} has "
                             f"{len(c.sampling_logprobs)} log-probs for {len(c.completion_ids)} tokens")
    return True


def _fits_twice(model, device: torch.device) -> bool:
    """True when two copies of the trainable weights fit the GPU's free memory with 2 GB to spare."""
    nbytes = sum(getattr(p, "ds_numel", p.numel()) * p.element_size() for p in model.parameters() if p.requires_grad)
    free, _ = torch.cuda.mem_get_info(device)
    return free > 2 * nbytes + (2 << 30)


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
        self.accumulation = int(engine.gradient_accumulation_steps())
        self.world = int(getattr(engine, "dp_world_size", 1))  # ranks the engine averages gradients over
        self.reference: FrozenReference | None = None  # full fine-tuning with beta > 0: see take_reference
        self.advantage_scale = 1.0  # 0: a control run (same seed, no policy-gradient signal; run_grpo)
        self.device = engine.device
        if getattr(config, "share_prompt_forward", False):
            from vlm_rl.learner.packed_attention import check_trainable

            check_trainable(config.packed_attention, self.device)  # before the first step, not inside it
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

    def take_reference(self) -> FrozenReference | None:
        """Freeze the current policy as the KL reference when full fine-tuning has beta > 0 (collective under
        ZeRO-3). Taken once, at GRPO start: after any SFT warm-up, before the first GRPO update."""
        if self.reference is None and needs_frozen_reference(self.config):
            self.reference = freeze_reference(self.engine, self.config)
        return self.reference

    def _plan(self, n: int) -> list[tuple[slice, bool]]:
        """Exactly ``accumulation`` micro-batches (one optimizer step). With fewer examples than that (an SFT
        warm-up step has a rank's prompts, the engine was sized for its completions) the missing ones
        repeat the last example with zero weight: a wasted forward/backward, but the step stays whole."""
        if n < 1:
            raise ValueError("learner: a step with no examples on this rank")
        if n >= self.accumulation:
            return [(sl, True) for sl in even_slices(n, self.accumulation)]
        return [(slice(i, i + 1), True) for i in range(n)] + [(slice(n - 1, n), False)] * (self.accumulation - n)

    def _global_counts(self, *counts: int) -> list[int]:
        """``counts`` summed over the ranks the engine averages gradients over (one all-reduce)."""
        if self.world == 1 or not dist.is_initialized():
            return list(counts)
        device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = torch.tensor(counts, dtype=torch.int64, device=device)
        dist.all_reduce(t)
        return [int(v) for v in t.tolist()]

    def _check_steps(self, steps_before: int, micro: int, expected: int = 1) -> None:
        taken = int(self.engine.global_steps) - steps_before
        if taken != expected:
            raise RuntimeError(f"learner: {micro} micro-batches took {taken} optimizer steps, expected {expected} "
                               f"(engine accumulation {self.accumulation})")

    def grpo_step(self, items: list[PromptItem], completions: list[Completion], advantages: torch.Tensor) -> dict:
        """``num_iterations`` passes of ``steps_per_generation`` optimizer steps over this rank's completions
        (``items[c.prompt_index]`` is each one's prompt): one optimizer step with the defaults."""
        self.take_reference()  # outside the compiled switch: the copy gets plain layers
        if self.advantage_scale != 1.0:
            advantages = advantages * self.advantage_scale
        self.engine.train()  # before the switch: it picks the checkpointed variant from the train flag
        with self.compiled.active():
            return self._grpo_step(items, completions, advantages)

    def _grpo_step(self, items: list[PromptItem], completions: list[Completion], advantages: torch.Tensor) -> dict:
        """Decoupled PPO (docs/ARCHITECTURE.md, "Off-policy objective"). The proximal log-probs (the centre of
        the clip) are the learner's before the batch's first update, taken once: from the first pass's own
        forward where no update has happened yet (every micro-batch of a single mini-batch, so one update per
        batch costs nothing extra), else from one no-grad forward before the first update. The IS weights
        against the sampler and the reference log-probs are computed once too, and reused by later passes."""
        config: GRPOConfig = self.config  # type: ignore[assignment]
        engine = self.engine
        engine.train()
        passes, minis = config.num_iterations, config.steps_per_generation
        if len(completions) < minis:
            raise ValueError(f"steps_per_generation: {minis} mini-batches for {len(completions)} completions")
        mini_slices = even_slices(len(completions), minis)
        mini_tokens = [sum(len(c.completion_ids) for c in completions[m]) for m in mini_slices]
        local_tokens = sum(mini_tokens)
        # Every token / sequence weighs the same over each optimizer step, whatever rank or micro-batch holds it.
        counts = self._global_counts(*mini_tokens, *(m.stop - m.start for m in mini_slices))
        tokens_total, sequences_total = counts[:minis], counts[minis:]
        scale = engine_loss_scale(config.loss_type, self.world, self.accumulation)
        # each mini-batch: exactly `accumulation` micro-batches (one optimizer step), as absolute slices
        plans = [[(slice(m.start + sl.start, m.start + sl.stop), live) for sl, live in self._plan(m.stop - m.start)]
                 for m in mini_slices]
        schedule = [(k, m, i, sl, live) for k in range(passes) for m in range(minis)
                    for i, (sl, live) in enumerate(plans[m])]
        steps_before = int(engine.global_steps)
        # IS against the sampler (algos/importance.py) whenever the sampler's log-probs came along, on- or off-policy.
        tis, tis_stats = has_sampler_logprobs(completions), None

        encoding = self._prefetch.take(tuple(items))  # every prompt of the step, encoded once (usually prefetched)
        pad_id = self.processor.tokenizer.pad_token_id
        share = _sharing(config)  # each group's prompt once (learner/shared_prompt.py)

        def inputs(sl: slice) -> dict:
            chunk = completions[sl]
            return self._to_device(policy_inputs_from_encoding(
                encoding, [c.prompt_index for c in chunk], [c.completion_ids for c in chunk], pad_id,
                share_images=True))

        # Per micro-batch (mini-batch m, index i), computed once: proximal log-probs, IS weights, reference.
        proximal: dict[tuple[int, int], torch.Tensor] = {}
        weights: dict[tuple[int, int], torch.Tensor] = {}
        references: dict[tuple[int, int], torch.Tensor | None] = {}
        if minis > 1:  # mini-batches after the first are trained after an update: their pi_prox comes first
            with torch.no_grad():
                for m in range(1, minis):
                    for i, (sl, _) in enumerate(plans[m]):
                        proximal[m, i] = completion_logprobs(engine, inputs(sl), config.temperature,
                                                             **share)

        # Metrics stay on the device until the end: no host sync between micro-batches, so the CPU builds
        # the next micro-batch's inputs (image load, processor) while the GPU runs this one's backward.
        pending: list[tuple[int, float, torch.Tensor, dict]] = []
        grad_norms: list = []
        batch = inputs(schedule[0][3])
        for j, (k, m, i, sl, live) in enumerate(schedule):
            mask = batch["completion_mask"].float()
            logp = completion_logprobs(engine, batch, config.temperature, **share)
            key = (m, i)
            if key not in proximal:  # first mini-batch of the first pass: no update yet, pi_prox = pi_theta
                proximal[key] = logp.detach()
            if key not in references:
                references[key] = self._reference_logprobs(batch) if config.beta > 0 else None
            if tis and key not in weights:  # the sampler's correction, against pi_prox: once per micro-batch
                sampler_logp = sampler_logprob_matrix([c.sampling_logprobs for c in completions[sl]], logp.shape[1])
                weights[key], stats = importance_weights(proximal[key], sampler_logp.to(self.device, logp.dtype),
                                                         mask, config.tis_cap, config.tis_mode)
                tis_stats = add_stats(tis_stats, stats) if live else tis_stats
            loss, metrics = grpo_loss(
                logp, proximal[key], references[key], advantages[sl].to(self.device, dtype=logp.dtype), mask,
                beta=config.beta, eps_low=config.epsilon, eps_high=config.clip_high, loss_type=config.loss_type,
                max_completion_length=config.max_new_tokens, num_items_in_batch=tokens_total[m],
                num_sequences_in_batch=sequences_total[m], is_weights=weights.get(key),
            )
            # The loss is this micro-batch's share of its mini-batch's; undo the engine's /accumulation and rank mean.
            engine.backward(loss * (scale if live else 0.0))
            tokens = sum(len(c.completion_ids) for c in completions[sl]) if live else 0  # no host sync
            del logp, mask
            if j + 1 < len(schedule):
                batch = inputs(schedule[j + 1][3])
            engine.step()
            if i == len(plans[m]) - 1:  # the optimizer step of this mini-batch
                grad_norms.append(engine.get_global_grad_norm())
            if live:
                pending.append((k, tokens / max(local_tokens, 1), loss.detach(), metrics))
        self._check_steps(steps_before, len(schedule), passes * minis)
        return self._step_metrics(pending, grad_norms, scale, passes, minis, tis_stats)

    def _reference_logprobs(self, batch: dict) -> torch.Tensor:
        """The KL reference's log-probs for a micro-batch (no grad): fixed over the step, so taken once."""
        config: GRPOConfig = self.config  # type: ignore[assignment]
        share = _sharing(config)
        with torch.no_grad():
            if self.reference is not None:  # full fine-tuning: the frozen copy taken at GRPO start
                return completion_logprobs(self.reference.module, batch, config.temperature, **share)
            with reference_context(self.engine.module, self.lora):  # LoRA: the same network with the adapter off
                return completion_logprobs(self.engine, batch, config.temperature, **share)

    def _step_metrics(self, pending, grad_norms, scale: float, passes: int, minis: int, tis_stats) -> dict:
        """Means over the step's updates: ``loss`` (each optimizer step's loss), ``kl``, ``clip_ratio`` (and
        ``/low``, ``/high``; token-weighted), ``grad_norm``; ``clip_ratio/pass_k`` for each pass when there are
        several; the IS metrics of ``tis_mode``."""
        config: GRPOConfig = self.config  # type: ignore[assignment]
        sums = {"loss": 0.0, "kl": 0.0, "clip_ratio": 0.0, "clip_ratio/low": 0.0, "clip_ratio/high": 0.0}
        per_pass = [0.0] * passes
        for k, weight, loss, metrics in pending:
            # comm.mean averages ranks: this rank reports world x its share, so the mean is the update's loss.
            sums["loss"] += float(loss) * scale / self.accumulation / (passes * minis)
            sums["kl"] += float(metrics.get("kl", 0.0)) * weight / passes
            for name in ("clip_ratio", "clip_ratio/low", "clip_ratio/high"):
                sums[name] += float(metrics[name]) * weight / passes
            per_pass[k] += float(metrics["clip_ratio"]) * weight
        if passes > 1:
            sums.update({f"clip_ratio/pass_{k + 1}": v for k, v in enumerate(per_pass)})
        sums["grad_norm"] = sum(float(g or 0.0) for g in grad_norms) / max(len(grad_norms), 1)
        if tis_stats is not None:
            sums.update(importance_metrics(self._global_tis_stats(tis_stats), config.tis_mode))
        return sums

    def _global_tis_stats(self, stats: dict[str, torch.Tensor]) -> dict[str, float]:
        """The step's IS statistics over every rank (sums added, extrema kept): each rank reports the same
        values, so the loop's mean over ranks leaves them as they are."""
        sums = torch.stack([stats[k].double() for k in SUM_KEYS])
        extrema = torch.stack([stats[k].double() for k in MAX_KEYS] + [-stats[k].double() for k in MIN_KEYS])
        if self.world > 1 and dist.is_initialized():
            device = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
            sums, extrema = sums.to(device), extrema.to(device)
            dist.all_reduce(sums)
            dist.all_reduce(extrema, op=dist.ReduceOp.MAX)
        out = dict(zip(SUM_KEYS, sums.tolist()))
        values = extrema.tolist()
        out.update(zip(MAX_KEYS, values[: len(MAX_KEYS)]))
        out.update(zip(MIN_KEYS, (-v for v in values[len(MAX_KEYS):])))
        return out

    def sft_step(self, items: list[PromptItem], target_ids: list[list[int]]) -> dict:
        """Supervised step: mean negative log-likelihood of the target answer tokens."""
        self.engine.train()
        with self.compiled.active():
            return self._sft_step(items, target_ids)

    def _sft_step(self, items: list[PromptItem], target_ids: list[list[int]]) -> dict:
        engine = self.engine
        engine.train()
        (total_tokens,) = self._global_counts(sum(len(t) for t in target_ids))  # a token weighs the same anywhere
        plan = self._plan(len(items))
        steps_before = int(engine.global_steps)
        loss_sum = 0.0
        for sl, live in plan:
            batch = self._inputs(items[sl], target_ids[sl])
            mask = batch["completion_mask"].float()
            logp = completion_logprobs(engine, batch)
            loss = -(logp * mask).sum() / max(total_tokens, 1)
            engine.backward(loss * (self.world * self.accumulation if live else 0.0))
            engine.step()
            loss_sum += float(loss.detach()) * self.world if live else 0.0
        self._check_steps(steps_before, len(plan))
        return {"sft_loss": loss_sum, "grad_norm": float(engine.get_global_grad_norm() or 0.0)}

    def reset_optimizer(self) -> int:
        """A fresh optimizer state for the next phase (GRPO after the SFT warm-up); see reset_optimizer_moments."""
        return reset_optimizer_moments(self.engine)

    def set_learning_rate(self, lr: float) -> None:
        set_learning_rate(self.engine, lr)

    def export_weights(self, for_sync: bool = False) -> dict | None:
        """Collective under ZeRO-3; returns the state on rank 0 only, on the CPU, except that ``for_sync`` keeps
        an adapter on the GPU (the CUDA IPC and NCCL transports then copy it device to device) and packs full
        weights into the transports' buffer: on the GPU when two such buffers fit its free memory (the pool may
        still hold the previous one), else on the host."""
        if not for_sync:  # a checkpoint or the final export: full weights include the frozen vision tower
            return export_trainable_weights(self.engine, self.lora, self.config.zero_stage,
                                            include_frozen=not self.lora)
        on_gpu = self.device.type == "cuda"
        if self.lora:
            return export_trainable_weights(self.engine, True, self.config.zero_stage,
                                            device=self.device if on_gpu else "cpu")
        device = self.device if on_gpu and _fits_twice(self.engine.module, self.device) else "cpu"
        return export_trainable_weights(self.engine, False, self.config.zero_stage, device=device, packed=True)

    def adapter_config(self):
        return self.engine.module.peft_config["default"] if self.lora else None

    def model_config(self):
        """The HF config written beside full weights in a checkpoint (None under LoRA)."""
        return None if self.lora else self.engine.module.config


def _sharing(config: GRPOConfig) -> dict:
    """``completion_logprobs``' prompt-sharing arguments from the config."""
    return {"share_prompts": config.share_prompt_forward, "packed_attention": config.packed_attention}
