"""A rollout worker: one copy of the policy that samples NUM_GENERATIONS answers per prompt and scores them.

It is a plain class; ``vlm_rl.rollout.pool`` turns it into a Ray actor. Keeping Ray out of it lets the
learner tests and benchmarks drive the same code in-process.
"""

from __future__ import annotations

import time

import torch

from vlm_rl.data.resize import load_resized
from vlm_rl.data.schema import DetObject, Sample
from vlm_rl.models.coords import to_model_coords
from vlm_rl.models.families import image_factor, model_family
from vlm_rl.models.loading import load_model, load_processor
from vlm_rl.models.lora_merge import merged_lora
from vlm_rl.models.prompts import NEVER_GENERATE, detection_instruction, encode_prompts, end_token_ids
from vlm_rl.rewards.detection import combined_reward
from vlm_rl.rollout.types import Completion, PromptItem


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


class RolloutWorker:
    """Holds a policy copy; generates, scores, and accepts new weights from the learners."""

    def __init__(
        self,
        model_path: str,
        *,
        labels: list[str] | None,
        max_image_size: int,
        max_new_tokens: int,
        temperature: float = 1.0,
        top_p: float = 1.0,
        batch_size: int = 64,
        format_weight: float = 0.5,
        lora_rank: int = 0,
        lora_alpha: int = 16,
        seed: int = 0,
        worker_index: int = 0,
        device: str | None = None,
        dtype: str = "float32",
        return_logprobs: bool = False,
    ):
        torch.set_num_threads(max(1, torch.get_num_threads()))
        self.device = device or ("cuda" if torch.cuda.is_available() else "cpu")
        self.processor = load_processor(model_path)
        model = load_model(model_path, dtype=getattr(torch, dtype), device=self.device)
        self.family = model_family(model.config)
        self.lora = lora_rank > 0
        if self.lora:
            from peft import get_peft_model

            from vlm_rl.models.lora import lora_config

            model = get_peft_model(model, lora_config(lora_rank, lora_alpha))
        self.model = model.eval()
        self.instruction = detection_instruction(labels)
        self.max_image_size = max_image_size
        self.max_new_tokens = max_new_tokens
        self.temperature = temperature
        self.top_p = top_p
        self.batch_size = batch_size
        self.format_weight = format_weight
        self.seed = seed
        self.worker_index = worker_index
        self.return_logprobs = return_logprobs
        self.eos_ids = eos_token_ids(self.processor, self.model)
        self.pad_id = self.processor.tokenizer.pad_token_id
        self.weights_version = 0

    # -- weights -------------------------------------------------------------------------------
    def update_weights(self, state: dict[str, torch.Tensor], version: int) -> int:
        """Load the learners' trainable weights (the LoRA adapter alone under LoRA)."""
        if self.lora:
            from peft import set_peft_model_state_dict

            result = set_peft_model_state_dict(self.model, state)
            unexpected = getattr(result, "unexpected_keys", [])
            if unexpected:
                raise KeyError(f"adapter keys not in the rollout model: {unexpected[:3]}")
        else:
            missing, unexpected = self.model.load_state_dict(state, strict=False)
            if unexpected:
                raise KeyError(f"weights not in the rollout model: {unexpected[:3]}")
        self.weights_version = version
        return version

    def get_weights(self) -> dict[str, torch.Tensor]:
        if self.lora:
            from peft import get_peft_model_state_dict

            return {k: v.detach().cpu().clone() for k, v in get_peft_model_state_dict(self.model).items()}
        return {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}

    def version(self) -> int:
        return self.weights_version

    # -- evaluation ----------------------------------------------------------------------------
    def evaluate(self, val_data: str, limit: int | None = None) -> dict[str, float]:
        """Greedy detection metrics of the weights this actor holds (mAP, P/R/F1, format-valid rate)."""
        from vlm_rl.data.schema import load_jsonl
        from vlm_rl.eval.metrics import mlflow_metrics
        from vlm_rl.eval.runner import evaluate_loaded

        samples = load_jsonl(val_data, on_error="skip").samples[:limit]
        result = evaluate_loaded(
            self.model, self.processor, self.family, samples, max_image_size=self.max_image_size,
            max_new_tokens=self.max_new_tokens, batch_size=self.batch_size, instruction=self.instruction,
        )
        return mlflow_metrics(result.metrics, prefix="eval")

    # -- generation ----------------------------------------------------------------------------
    @torch.no_grad()
    def generate(self, prompts: list[tuple[int, PromptItem]], num_generations: int, step: int) -> dict:
        """Sample ``num_generations`` answers for each (index, prompt); return completions and timings."""
        torch.manual_seed(self.seed * 1_000_003 + step * 1009 + self.worker_index)
        t0 = time.perf_counter()
        prepared = [prepare_prompt(item, self.max_image_size, self.family) for _, item in prompts]
        per_batch = max(1, self.batch_size // num_generations)
        completions: list[Completion] = []
        n_tokens = 0
        for start in range(0, len(prompts), per_batch):
            chunk = prompts[start : start + per_batch]
            images = [prepared[start + i][0] for i in range(len(chunk))]
            rows = self._sample(images, num_generations)
            texts = self.processor.tokenizer.batch_decode([r[0] for r in rows], skip_special_tokens=True)
            for j, ((ids, logps), text) in enumerate(zip(rows, texts)):
                k = start + j // num_generations
                index, item = prompts[k]
                solution = prepared[k][1]
                scores = combined_reward([text], [solution], format_weight=self.format_weight)[0]
                n_tokens += len(ids)
                completions.append(
                    Completion(
                        prompt_index=index,
                        sample_id=item.sample_id,
                        text=text,
                        completion_ids=ids,
                        rewards=scores,
                        sampling_logprobs=logps,
                        weights_version=self.weights_version,
                        solution=solution,
                    )
                )
        return {"completions": completions, "seconds": time.perf_counter() - t0, "tokens": n_tokens}

    def _sample(self, images, num_generations: int) -> list[tuple[list[int], list[float]]]:
        enc = encode_prompts(self.processor, images, self.instruction).to(self.device)
        with merged_lora(self.model):  # the adapter folded in: no extra LoRA kernels per token
            out = self.model.generate(
                **enc,
                do_sample=True,
                temperature=self.temperature,
                top_p=self.top_p,
                max_new_tokens=self.max_new_tokens,
                num_return_sequences=num_generations,
                eos_token_id=self.eos_ids,
                pad_token_id=self.pad_id,
                suppress_tokens=list(NEVER_GENERATE),
                return_dict_in_generate=True,
                output_logits=self.return_logprobs,
            )
        generated = out.sequences[:, enc["input_ids"].shape[1] :].cpu()
        logps = None
        if self.return_logprobs:
            steps = torch.stack(out.logits, dim=1).float() / self.temperature  # [N, T, V]
            logps = torch.log_softmax(steps, dim=-1).gather(-1, generated.unsqueeze(-1)).squeeze(-1).cpu()
        rows = []
        eos = set(self.eos_ids)
        for i in range(generated.shape[0]):
            ids = trim_at_eos(generated[i].tolist(), eos, self.pad_id)
            rows.append((ids, logps[i, : len(ids)].tolist() if logps is not None else []))
        return rows
