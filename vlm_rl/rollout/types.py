"""Plain records exchanged between the driver, the rollout pool and the learners (no Ray, no torch)."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class PromptItem:
    """One dataset row as sent to a rollout actor; boxes are in pixels of the original image."""

    sample_id: str
    image: str
    width: int
    height: int
    objects: tuple[tuple[str, tuple[float, float, float, float]], ...]

    @classmethod
    def from_sample(cls, sample) -> PromptItem:
        return cls(
            sample_id=sample.id,
            image=sample.image,
            width=sample.width,
            height=sample.height,
            objects=tuple((o.label, tuple(o.bbox_2d)) for o in sample.objects),
        )


@dataclass
class Completion:
    """One sampled answer with what the learner needs to train on it."""

    prompt_index: int  # index into the step's list of PromptItems
    sample_id: str
    text: str
    completion_ids: list[int]
    rewards: dict[str, float]  # "format", "detection", "total"
    sampling_logprobs: list[float] = field(default_factory=list)
    weights_version: int = 0
    solution: list[dict] = field(default_factory=list)  # ground truth in model coordinates

    @property
    def reward(self) -> float:
        return self.rewards["total"]
