"""One learner rank's DPO step: sequence log-probs of chosen and rejected answers, policy vs reference.

The reference is the same network with the LoRA adapter switched off (``reference_context``): no second
copy of the model. Chosen and rejected answers of a pair share the image and prompt, so they go through
one forward as neighbouring rows (``build_policy_inputs(..., repeats=2)``).
"""

from __future__ import annotations

import torch
from PIL import Image

from vlm_rl.algos.dpo_loss import dpo_loss, sequence_logps
from vlm_rl.config import DPOConfig
from vlm_rl.data.resize import model_image_size, open_rgb
from vlm_rl.dpo.pairs import PairItem
from vlm_rl.learner.policy import completion_logprobs, reference_context
from vlm_rl.learner.policy_learner import PolicyLearner, micro_batches
from vlm_rl.models.families import image_factor
from vlm_rl.models.prompts import build_policy_inputs

METRIC_KEYS = ("rewards/chosen", "rewards/rejected", "rewards/accuracy", "rewards/margin")


class DPOLearner(PolicyLearner):
    """PolicyLearner (engine, export, adapter config) plus the DPO step."""

    def answer_ids(self, text: str) -> list[int]:
        """The answer as the model would emit it: its tokens then ``<|im_end|>``."""
        tok = self.processor.tokenizer
        return tok(text, add_special_tokens=False)["input_ids"] + [tok.convert_tokens_to_ids("<|im_end|>")]

    def image(self, path: str) -> Image.Image:
        image = open_rgb(path)
        size = model_image_size(image.width, image.height, self.config.max_image_size, image_factor(self.family))
        return image if image.size == size else image.resize(size, Image.Resampling.BICUBIC)

    def pair_inputs(self, pairs: list[PairItem]) -> dict:
        """Rows chosen₀, rejected₀, chosen₁, ... each after its pair's image + prompt."""
        ids = [i for p in pairs for i in (self.answer_ids(p.chosen), self.answer_ids(p.rejected))]
        batch = build_policy_inputs(self.processor, [self.image(p.image) for p in pairs], [p.prompt for p in pairs],
                                    ids, repeats=2)
        return {k: (v.to(self.device) if torch.is_tensor(v) else v) for k, v in batch.items()}

    def dpo_step(self, pairs: list[PairItem]) -> dict:
        """One optimizer step over this rank's pairs (accumulated over micro-batches of pairs)."""
        if not self.lora:
            raise ValueError("lora_r: DPO needs LoRA (the reference is the model with its adapter disabled)")
        config: DPOConfig = self.config  # type: ignore[assignment]
        engine = self.engine
        engine.train()
        slices = micro_batches(len(pairs), self.micro_batch_size)
        sums = dict.fromkeys(("loss", *METRIC_KEYS, "logps/chosen", "logps/rejected"), 0.0)
        for sl in slices:
            chunk = pairs[sl]
            batch = self.pair_inputs(chunk)
            mask = batch["completion_mask"]
            logps = sequence_logps(completion_logprobs(engine, batch), mask)
            with torch.no_grad(), reference_context(engine.module, True):
                ref = sequence_logps(completion_logprobs(engine, batch), mask)
            loss, metrics = dpo_loss(logps[0::2], logps[1::2], ref[0::2], ref[1::2], beta=config.beta)
            weight = len(chunk) / len(pairs)
            # DeepSpeed divides by the accumulation steps; the weights already make the chunks sum to the mean.
            engine.backward(loss * weight * len(slices))
            engine.step()
            sums["loss"] += float(loss.detach()) * weight
            for key in METRIC_KEYS:
                sums[key] += float(metrics[key]) * weight
            sums["logps/chosen"] += float(logps[0::2].detach().mean()) * weight
            sums["logps/rejected"] += float(logps[1::2].detach().mean()) * weight
        sums["grad_norm"] = float(engine.get_global_grad_norm() or 0.0)
        return sums
