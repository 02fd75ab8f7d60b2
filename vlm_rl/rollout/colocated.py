"""Rollouts from the learner's own model in the learner's process: the one-GPU path (no second copy, no sync).

Like verl's hybrid engine or OpenRLHF's colocation: the model being trained also samples, with its LoRA
adapter active, so a "weight sync" is free (the optimizer already updated the tensors generation reads).
It has RolloutPool's interface (``generate``, ``sync_weights``, ``evaluate``), so ``grpo_train`` runs it
unchanged. Sampling is the rollout engine the pool's actors use too (``rollout/engine.py``): all completions
of a step in one batch, by ``StaticDecoder`` (CUDA-graphed decode) or HF generate for other model families.
"""

from __future__ import annotations

from vlm_rl.rollout.engine import RolloutEngine


class ColocatedRollout(RolloutEngine):
    """Samples GRPO groups from ``model`` (a DeepSpeed engine, PEFT model or plain HF model) in-process."""

    #: generation uses the learner's own module, so there is nothing to export after a step
    shares_weights = True

    def __init__(self, model, processor, family: str, *, labels: list[str] | None, max_image_size: int,
                 max_new_tokens: int, temperature: float = 1.0, top_p: float = 1.0, format_weight: float = 0.5,
                 seed: int = 0, min_new_tokens: int = 0, fast: bool = True, compile_decode: bool = False,
                 fp8: bool = False):
        super().__init__(model, processor, family, labels=labels, max_image_size=max_image_size,
                         max_new_tokens=max_new_tokens, temperature=temperature, top_p=top_p,
                         format_weight=format_weight, seed=seed, min_new_tokens=min_new_tokens,
                         engine="fast" if fast else "hf", compile_decode=compile_decode, fp8=fp8)

    # -- RolloutPool interface ------------------------------------------------------------------
    def sync_weights(self, state_or_ref, version: int) -> float:
        """Nothing to copy: generation reads the learner's tensors. Records the version only."""
        self.weights_version = version
        return 0.0

    def versions(self) -> list[int]:
        return [self.weights_version]
