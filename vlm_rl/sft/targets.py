"""Supervised targets: the ideal answer for a prompt, as token ids ending with <|im_end|>."""

from __future__ import annotations

from vlm_rl.models.prompts import answer_text
from vlm_rl.rollout.engine import prepare_prompt
from vlm_rl.rollout.types import PromptItem


class SFTTargets:
    """Callable: prompts → target completion ids (ground truth in the model's coordinates)."""

    def __init__(self, processor, family: str, max_image_size: int):
        self.tokenizer = processor.tokenizer
        self.family = family
        self.max_image_size = max_image_size
        self.end_id = self.tokenizer.convert_tokens_to_ids("<|im_end|>")

    def text(self, item: PromptItem) -> str:
        _, solution = prepare_prompt(item, self.max_image_size, self.family)
        return answer_text(solution)

    def __call__(self, items: list[PromptItem]) -> list[list[int]]:
        return [self.tokenizer(self.text(item), add_special_tokens=False)["input_ids"] + [self.end_id]
                for item in items]
