"""Rollouts from the learner's own model in the learner's process: the one-GPU path (no second copy, no sync).

Like verl's hybrid engine or OpenRLHF's colocation: the model being trained also samples, with its LoRA
adapter active, so a "weight sync" is free (the optimizer already updated the tensors generation reads).
It has RolloutPool's interface (``generate``, ``sync_weights``, ``evaluate``), so ``grpo_train`` runs it
unchanged. All completions of a step are sampled in one batch by ``StaticDecoder`` (CUDA-graphed decode)
on Qwen3-VL, by HF generate otherwise.
"""

from __future__ import annotations

import time

import torch

from vlm_rl.models.prompts import detection_instruction, encode_prompts
from vlm_rl.models.tokenizer import SPECIAL_IDS
from vlm_rl.rewards.detection import combined_reward
from vlm_rl.rollout.fast_decode import StaticDecoder, supports_fast_decode, unwrap_causal_lm
from vlm_rl.rollout.prefetch import Prefetcher
from vlm_rl.rollout.types import Completion, PromptItem
from vlm_rl.rollout.worker import eos_token_ids, prepare_prompt, trim_at_eos

#: Tokens a completion must never contain: a sampled image/video placeholder breaks the learner's forward.
SUPPRESSED_TOKENS = (SPECIAL_IDS["<|image_pad|>"], SPECIAL_IDS["<|video_pad|>"])


class ColocatedRollout:
    """Samples GRPO groups from ``model`` (a DeepSpeed engine, PEFT model or plain HF model) in-process."""

    #: generation uses the learner's own module, so there is nothing to export after a step
    shares_weights = True

    def __init__(self, model, processor, family: str, *, labels: list[str] | None, max_image_size: int,
                 max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, format_weight: float = 0.5,
                 seed: int = 0, min_new_tokens: int = 0, fast: bool = True, compile_decode: bool = False):
        self.model = model
        self.processor = processor
        self.family = family
        self.instruction = detection_instruction(labels)
        self.max_image_size = max_image_size
        self.max_new_tokens = max_new_tokens
        self.min_new_tokens = min_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.format_weight = format_weight
        self.seed = seed
        lm = unwrap_causal_lm(model)
        self.eos_ids = eos_token_ids(processor, lm)
        self.pad_id = processor.tokenizer.pad_token_id
        self.device = next(lm.parameters()).device
        self.decoder = (
            StaticDecoder(self._module(), eos_ids=self.eos_ids, pad_id=self.pad_id, suppress_ids=SUPPRESSED_TOKENS,
                          compile_step=compile_decode)
            if fast and supports_fast_decode(model) else None
        )
        self.weights_version = 0
        self.last_timings: dict[str, float] = {}
        self._prefetch = Prefetcher(self._prepare, "vlmrl-rollout-prefetch")  # prompts -> (prepared, encoding)

    def _module(self):
        return getattr(self.model, "module", self.model)  # the PEFT/HF model inside a DeepSpeed engine

    # -- RolloutPool interface ------------------------------------------------------------------
    def sync_weights(self, state_or_ref, version: int) -> float:
        """Nothing to copy: generation reads the learner's tensors. Records the version only."""
        self.weights_version = version
        return 0.0

    def versions(self) -> list[int]:
        return [self.weights_version]

    def generate(self, prompts: list[PromptItem], num_generations: int, step: int) -> dict:
        """All completions of a step, ordered by prompt then sample, scored; plus seconds and tokens."""
        t0 = time.perf_counter()
        prepared, enc = self._prefetch.take(tuple(prompts))
        enc = enc.to(self.device)
        t_prep = time.perf_counter()
        ids = self._sample(enc, num_generations, step)
        if self.device.type == "cuda":
            torch.cuda.synchronize(self.device)
        t_gen = time.perf_counter()
        eos = set(self.eos_ids)
        rows = [trim_at_eos(r, eos, self.pad_id) for r in ids.cpu().tolist()]
        texts = self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True)
        solutions = [prepared[i // num_generations][1] for i in range(len(rows))]
        scores = combined_reward(texts, solutions, format_weight=self.format_weight)
        completions = [
            Completion(prompt_index=i // num_generations, sample_id=prompts[i // num_generations].sample_id,
                       text=text, completion_ids=row, rewards=score, weights_version=self.weights_version,
                       solution=solutions[i])
            for i, (row, text, score) in enumerate(zip(rows, texts, scores))
        ]
        t_end = time.perf_counter()
        self.last_timings = {"prepare": t_prep - t0, "decode": t_gen - t_prep, "score": t_end - t_gen}
        if self.decoder is not None:  # its split of "decode": merge, prefill, capture, decode, restore
            self.last_timings.update({f"decode_{k}": v for k, v in self.decoder.last_timings.items()})
        return {"completions": completions, "seconds": t_end - t0, "tokens": sum(len(r) for r in rows)}

    def prefetch(self, prompts: list[PromptItem]) -> None:
        """Start loading and encoding the next step's prompts on a CPU thread (``generate`` uses the result if
        it gets the same prompts)."""
        self._prefetch.start(tuple(prompts))

    def _prepare(self, prompts: list[PromptItem]):
        prepared = [prepare_prompt(item, self.max_image_size, self.family) for item in prompts]
        return prepared, encode_prompts(self.processor, [p[0] for p in prepared], self.instruction)

    def _sample(self, enc, num_generations: int, step: int) -> torch.Tensor:
        generator = torch.Generator(device=self.device).manual_seed(self.seed * 1_000_003 + step * 1009)
        if self.decoder is not None:
            ids, _ = self.decoder.generate(
                enc, num_generations, self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                min_new_tokens=self.min_new_tokens, generator=generator,
            )
            return ids
        module = self._module()
        was_training = module.training
        module.eval()
        try:
            with torch.no_grad():
                out = module.generate(
                    **enc, do_sample=True, temperature=self.temperature, top_p=self.top_p,
                    max_new_tokens=self.max_new_tokens, min_new_tokens=self.min_new_tokens or None,
                    num_return_sequences=num_generations, eos_token_id=self.eos_ids, pad_token_id=self.pad_id,
                    suppress_tokens=list(SUPPRESSED_TOKENS), use_cache=True,
                )
        finally:
            if was_training:
                module.train()
        return out[:, enc["input_ids"].shape[1]:]

    def evaluate(self, val_data: str, limit: int | None = None) -> dict[str, float]:
        """Greedy detection metrics of the current weights (same runner as the rollout actors)."""
        from vlm_rl.data.schema import load_jsonl
        from vlm_rl.eval.metrics import mlflow_metrics
        from vlm_rl.eval.runner import evaluate_loaded

        module = self._module()
        was_training = module.training
        module.eval()
        try:
            result = evaluate_loaded(
                module, self.processor, self.family, load_jsonl(val_data, on_error="skip").samples[:limit],
                max_image_size=self.max_image_size, max_new_tokens=self.max_new_tokens, batch_size=64,
                instruction=self.instruction,
            )
        finally:
            if was_training:
                module.train()
        return mlflow_metrics(result.metrics, prefix="eval")

    def shutdown(self) -> None:
        if self.decoder is not None:
            self.decoder.release()
        self._prefetch.close()
