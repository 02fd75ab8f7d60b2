"""The docstring examples of vlm_rl.algos run and hold."""

from __future__ import annotations

import doctest
import importlib

import pytest


@pytest.mark.parametrize("name", ["advantages", "kl", "logprobs", "dpo_loss"])
def test_docstring_examples(name):
    result = doctest.testmod(importlib.import_module(f"vlm_rl.algos.{name}"))
    assert result.attempted > 0 and result.failed == 0


def test_no_heavy_imports():
    import subprocess
    import sys

    code = "import sys, vlm_rl.algos, vlm_rl.rewards; print(sorted({m.split('.')[0] for m in sys.modules} & {'ray', 'transformers', 'mlflow', 'deepspeed'}))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"
