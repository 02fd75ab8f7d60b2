"""Helpers shared by the rollout tests."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.models.loading import load_model


@pytest.fixture
def rough_model():
    """``rough_model(path)``: the model with larger random text weights than the tiny model's 0.02 std, so greedy
    answers are varied token sequences rather than one repeated token."""

    def load(path):
        model = load_model(path)
        gen = torch.Generator().manual_seed(1)
        with torch.no_grad():
            for name, p in model.named_parameters():
                if "language_model" in name and p.ndim == 2 and "embed" not in name:
                    p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
        return model

    return load
