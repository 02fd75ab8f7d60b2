"""torch.compile's caches under $VLM_RL_CACHE (models/compile_cache.py): a second compile of the same function,
with every in-memory cache dropped (as in a new process), finds the first one's graph on disk."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

SCRIPT = """
import json, torch
from torch._dynamo.utils import counters
from vlm_rl.models.compile_cache import use_compile_cache
root = use_compile_cache()
runs = []
for _ in range(2):
    f = torch.compile(lambda x: torch.nn.functional.silu(x) * 2.0 + 1.0, dynamic=False)
    f(torch.ones(8, 16))
    runs.append({"root": str(root), "hit": counters["inductor"]["fxgraph_cache_hit"],
                 "miss": counters["inductor"]["fxgraph_cache_miss"]})
    torch._dynamo.reset()  # drops dynamo's and Inductor's in-memory caches: only the disk is left
    counters.clear()
print(json.dumps(runs))
"""


def _compile_twice_in_a_new_process(env: dict) -> list[dict]:
    out = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True, text=True, timeout=600)
    assert out.returncode == 0, out.stderr[-2000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


@pytest.mark.slow
def test_the_second_run_reuses_the_first_runs_compiled_graph(tmp_path):
    env = {k: v for k, v in os.environ.items() if k not in ("TORCHINDUCTOR_CACHE_DIR", "TRITON_CACHE_DIR")}
    env["VLM_RL_CACHE"] = str(tmp_path)
    first, second = _compile_twice_in_a_new_process(env)
    assert first["root"] == str(tmp_path / "torch-compile")
    assert first["miss"] >= 1 and first["hit"] == 0
    assert second["hit"] >= 1 and second["miss"] == 0
    assert any((tmp_path / "torch-compile").rglob("*")), "nothing written under $VLM_RL_CACHE"
