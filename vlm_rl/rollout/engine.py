"""The one rollout engine: prompts → GRPO groups sampled with their log-probs → scored completions.

Both rollout sources drive this class: the colocated rollout (the learner's own model samples,
``rollout/colocated.py``) and every actor of the rollout pool (its own copy of the policy,
``rollout/worker.py``). So the pool gets the same fast sampler as the one-GPU path: ``StaticDecoder``
(static KV cache, one CUDA graph per decode step on GPU, plain eager loop on CPU, LoRA folded into the base
weights while sampling) and the same prompt prefetch; ``engine="hf"`` (or a model family the static decoder
does not drive) samples with transformers ``generate`` instead, with the adapter folded the same way.

Every completion carries ``sampling_logprobs``: the log-prob of each of its tokens under the sampler's model at
the sampling temperature (before top-p and token bans), which is what the learner recomputes, so the
learner/sampler ratio measures staleness and numerical mismatch only.
"""

from __future__ import annotations

import logging
import time

import torch

from vlm_rl.data.resize import load_resized
from vlm_rl.data.schema import DetObject, Sample
from vlm_rl.models.coords import to_model_coords
from vlm_rl.models.families import image_factor
from vlm_rl.models.lora_merge import merged_lora
from vlm_rl.models.prompts import NEVER_GENERATE, detection_instruction, encode_prompts, end_token_ids
from vlm_rl.rewards.detection import combined_reward
from vlm_rl.rollout.fast_decode import StaticDecoder, supports_fast_decode, unwrap_causal_lm
from vlm_rl.rollout.prefetch import Prefetcher
from vlm_rl.rollout.types import Completion, PromptItem

log = logging.getLogger(__name__)

ENGINES = ("fast", "hf")


def sample_of(item: PromptItem) -> Sample:
    objects = tuple(DetObject(label, tuple(box)) for label, box in item.objects)
    return Sample(id=item.sample_id, image=item.image, width=item.width, height=item.height, objects=objects)


def prepare_prompt(item: PromptItem, max_image_size: int, family: str):
    """Resize the image for the model and express ground truth in the model's answer coordinates."""
    image, objects = load_resized(sample_of(item), max_image_size, image_factor(family))
    solution = [
        {"label": o.label, "bbox_2d": to_model_coords(o.bbox_2d, image.width, image.height, family)}
        for o in objects
    ]
    return image, solution


def eos_token_ids(processor, model) -> list[int]:
    return end_token_ids(model, processor.tokenizer)


def trim_at_eos(ids: list[int], eos_ids: set[int], pad_id: int) -> list[int]:
    """Cut a generated row after its first end token (kept: the policy must learn to stop)."""
    out = []
    for t in ids:
        out.append(t)
        if t in eos_ids:
            break
    while out and out[-1] == pad_id and pad_id not in eos_ids:
        out.pop()
    return out


class RolloutEngine:
    """Samples and scores GRPO groups from ``model`` (a DeepSpeed engine, PEFT model or plain HF model).

    ``batch_size``: completions per sampling batch (0 = a whole ``generate`` call in one batch); whole
    groups stay together. ``worker_index`` makes each pool actor's random stream its own.
    ``temperature`` 0 samples greedily (tests, ablations); its log-probs are then at temperature 1.
    """

    def __init__(self, model, processor, family: str, *, labels: list[str] | None, max_image_size: int,
                 max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, format_weight: float = 0.5,
                 seed: int = 0, min_new_tokens: int = 0, engine: str = "fast", compile_decode: bool = False,
                 batch_size: int = 0, worker_index: int = 0, logprobs: bool = True, fp8: bool = False):
        if engine not in ENGINES:
            raise ValueError(f"rollout_engine: expected one of {ENGINES}, got {engine!r}")
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
        self.batch_size = batch_size
        self.worker_index = worker_index
        self.logprobs = logprobs
        lm = unwrap_causal_lm(model)
        self.eos_ids = eos_token_ids(processor, lm)
        self.pad_id = processor.tokenizer.pad_token_id
        self.device = next(lm.parameters()).device
        self.decoder: StaticDecoder | None = None
        if engine == "fast" and supports_fast_decode(model):
            self.decoder = StaticDecoder(self._module(), eos_ids=self.eos_ids, pad_id=self.pad_id,
                                         suppress_ids=NEVER_GENERATE, compile_step=compile_decode, fp8=fp8)
        if fp8 and self.decoder is None:
            log.warning("rollout_dtype=fp8 needs the fast engine; sampling in the model's dtype")
        elif engine == "fast" and self.decoder is None:
            log.warning("rollout_engine=fast: no static decoder for model_type %r; sampling with HF generate",
                        getattr(lm.config, "model_type", None))
        self.engine = "fast" if self.decoder is not None else "hf"
        self.weights_version = 0
        self.last_timings: dict[str, float] = {}
        self._num_generations: int | None = None
        # (prompts, prompts per batch) -> (prepared prompts, one encoding per batch), computed ahead on a thread
        self._prefetch = Prefetcher(self._prepare, "vlmrl-rollout-prefetch")

    def _module(self):
        return getattr(self.model, "module", self.model)  # the PEFT/HF model inside a DeepSpeed engine

    # -- sampling ------------------------------------------------------------------------------
    def generate(self, prompts: list[PromptItem], num_generations: int, step: int,
                 indices: list[int] | None = None) -> dict:
        """All completions of ``prompts``, ordered by prompt then sample, scored; plus seconds and tokens.

        ``indices[k]`` is prompt k's ``prompt_index`` in its completions (default k): a pool actor gets a
        shard of the step's prompts and answers in the step's numbering.
        """
        t0 = time.perf_counter()
        self._num_generations = num_generations
        per_batch = self._prompts_per_batch(num_generations, len(prompts))
        prepared, encodings = self._prefetch.take((tuple(prompts), per_batch))
        t_prep = time.perf_counter()
        ids, logps, laps = [], [], {}
        for chunk, enc in enumerate(encodings):
            chunk_ids, chunk_logps = self._sample(enc.to(self.device), num_generations, step, chunk)
            ids.append(chunk_ids.cpu())
            logps.append(chunk_logps.cpu() if chunk_logps is not None else None)
            if self.decoder is not None:  # its split of "decode": merge, prefill, capture, decode, restore
                for k, v in self.decoder.last_timings.items():
                    laps[f"decode_{k}"] = laps.get(f"decode_{k}", 0.0) + v
        t_gen = time.perf_counter()
        eos = set(self.eos_ids)
        rows, row_logps = [], []
        for chunk_ids, chunk_logps in zip(ids, logps):
            for i, row in enumerate(chunk_ids.tolist()):
                trimmed = trim_at_eos(row, eos, self.pad_id)
                rows.append(trimmed)
                row_logps.append(chunk_logps[i, : len(trimmed)].tolist() if chunk_logps is not None else [])
        texts = self.processor.tokenizer.batch_decode(rows, skip_special_tokens=True)
        solutions = [prepared[i // num_generations][1] for i in range(len(rows))]
        scores = combined_reward(texts, solutions, format_weight=self.format_weight)
        completions = []
        for i, (row, text, score) in enumerate(zip(rows, texts, scores)):
            k = i // num_generations
            completions.append(Completion(
                prompt_index=indices[k] if indices is not None else k, sample_id=prompts[k].sample_id,
                text=text, completion_ids=row, rewards=score, sampling_logprobs=row_logps[i],
                weights_version=self.weights_version, solution=solutions[i]))
        t_end = time.perf_counter()
        self.last_timings = {"prepare": t_prep - t0, "decode": t_gen - t_prep, "score": t_end - t_gen, **laps}
        return {"completions": completions, "seconds": t_end - t0, "tokens": sum(len(r) for r in rows)}

    def prefetch(self, prompts: list[PromptItem]) -> None:
        """Start loading and encoding these prompts on a CPU thread (``generate`` uses the result if it gets
        the same prompts)."""
        per_batch = self._prompts_per_batch(self._num_generations, len(prompts))
        self._prefetch.start((tuple(prompts), per_batch))

    def _prompts_per_batch(self, num_generations: int | None, n: int) -> int:
        if not self.batch_size or not num_generations:
            return max(n, 1)
        return max(1, self.batch_size // num_generations)

    def _prepare(self, key: tuple[tuple[PromptItem, ...], int]):
        prompts, per_batch = key
        prepared = [prepare_prompt(item, self.max_image_size, self.family) for item in prompts]
        images = [p[0] for p in prepared]
        encodings = [encode_prompts(self.processor, images[s : s + per_batch], self.instruction)
                     for s in range(0, len(images), per_batch)]
        return prepared, encodings

    def _sample(self, enc, num_generations: int, step: int, chunk: int):
        """``[n * G, max_new_tokens]`` token ids (pad after the first end token) and their log-probs."""
        seed = self.seed * 1_000_003 + step * 1009 + self.worker_index * 7919 + chunk
        if self.decoder is not None:
            generator = torch.Generator(device=self.device).manual_seed(seed)
            ids, _ = self.decoder.generate(
                enc, num_generations, self.max_new_tokens, temperature=self.temperature, top_p=self.top_p,
                min_new_tokens=self.min_new_tokens, generator=generator, logprobs=self.logprobs,
            )
            if self.device.type == "cuda":
                torch.cuda.synchronize(self.device)
            return ids, self.decoder.last_logprobs
        return self._hf_generate(enc, num_generations, seed)

    def _hf_generate(self, enc, num_generations: int, seed: int):
        module = self._module()
        greedy = self.temperature <= 0
        sampling = {} if greedy else {"temperature": self.temperature, "top_p": self.top_p}
        was_training = module.training
        module.eval()
        cuda = [self.device.index if self.device.index is not None else torch.cuda.current_device()] \
            if self.device.type == "cuda" else []
        try:  # a private RNG stream: the learner's (colocated) random state is left as it was
            with torch.random.fork_rng(devices=cuda), torch.no_grad(), merged_lora(module):
                torch.manual_seed(seed)
                out = module.generate(
                    **enc, do_sample=not greedy, max_new_tokens=self.max_new_tokens,
                    min_new_tokens=self.min_new_tokens or None,
                    # greedy answers of one prompt are identical, and HF refuses several greedy returns:
                    num_return_sequences=1 if greedy else num_generations,
                    eos_token_id=self.eos_ids, pad_token_id=self.pad_id, suppress_tokens=list(NEVER_GENERATE),
                    use_cache=True, return_dict_in_generate=True, output_logits=self.logprobs, **sampling,
                )
        finally:
            if was_training:
                module.train()
        generated = out.sequences[:, enc["input_ids"].shape[1]:]
        repeat = num_generations if greedy else 1
        if not self.logprobs:
            return generated.repeat_interleave(repeat, dim=0), None
        # out.logits: the raw (unprocessed) logits of each step; one step at a time keeps memory to [N, V]
        scale = self.temperature if not greedy else 1.0
        logps = torch.zeros(generated.shape, dtype=torch.float32, device=generated.device)
        for t, logits in enumerate(out.logits):
            scores = logits.float() / scale if scale != 1.0 else logits.float()
            logps[:, t] = scores.gather(-1, generated[:, t : t + 1]).squeeze(-1) - scores.logsumexp(dim=-1)
        return generated.repeat_interleave(repeat, dim=0), logps.repeat_interleave(repeat, dim=0)

    # -- evaluation / lifetime -----------------------------------------------------------------
    def evaluate(self, val_data: str, limit: int | None = None) -> dict[str, float]:
        """Greedy detection metrics of the weights this engine samples with (mAP, P/R/F1, format rate)."""
        from vlm_rl.data.schema import load_jsonl
        from vlm_rl.eval.metrics import mlflow_metrics
        from vlm_rl.eval.runner import evaluate_loaded

        module = self._module()
        was_training = module.training
        module.eval()
        try:
            result = evaluate_loaded(
                module, self.processor, self.family, load_jsonl(val_data, on_error="skip").samples[:limit],
                max_image_size=self.max_image_size, max_new_tokens=self.max_new_tokens,
                batch_size=self.batch_size or 64, instruction=self.instruction,
            )
        finally:
            if was_training:
                module.train()
        return mlflow_metrics(result.metrics, prefix="eval")

    def shutdown(self) -> None:
        if self.decoder is not None:
            self.decoder.release()
        self._prefetch.close()
