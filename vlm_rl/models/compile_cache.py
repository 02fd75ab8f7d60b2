"""torch.compile's on-disk caches under ``$VLM_RL_CACHE/torch-compile``, kept across runs.

Why: a run's first step pays for compiling (the decode step, the learner's decoder layer, the LoRA fold) and
for autotuning. Inductor can skip all of that when it finds the same graph in its FX-graph and AOTAutograd
caches and Triton finds its kernels; by default those live in ``/tmp/torchinductor_<user>``, which a reboot or
a fresh container empties. Here they sit beside the other build-once artefacts (tokenizer, tiny models), so a
node keeps them between runs and a cluster may put ``VLM_RL_CACHE`` on a shared volume. Keys include the
torch version, device and every shape, so a stale entry is never used: it only misses.

Only the batch shapes a run uses are compiled and captured (the decode step per (rows, cache length), a layer
per micro-batch shape): nothing is compiled ahead for sizes that never come.

An explicitly set ``TORCHINDUCTOR_CACHE_DIR`` (or ``TRITON_CACHE_DIR`` for the kernels) wins.
"""

from __future__ import annotations

import os
from pathlib import Path

from vlm_rl.models.cache import cache_root


def compile_cache_dir() -> Path:
    return cache_root() / "torch-compile"


def use_compile_cache() -> Path:
    """Point Inductor's and Triton's caches at :func:`compile_cache_dir` (unless set) and turn the FX-graph and
    AOTAutograd caches on. Call before the first ``torch.compile`` of a process; cheap to call again."""
    import torch._functorch.config as functorch_config
    import torch._inductor.config as inductor_config
    from torch._inductor.runtime.cache_dir_utils import default_cache_dir

    current = os.environ.get("TORCHINDUCTOR_CACHE_DIR")
    # (torch writes its /tmp default into the environment the first time anything asks: that is not a choice)
    if current is None or os.path.abspath(current) == os.path.abspath(default_cache_dir()):
        os.environ["TORCHINDUCTOR_CACHE_DIR"] = str(compile_cache_dir())  # Triton's kernels go in its triton/
    root = Path(os.environ["TORCHINDUCTOR_CACHE_DIR"])
    root.mkdir(parents=True, exist_ok=True)

    inductor_config.fx_graph_cache = True
    functorch_config.enable_autograd_cache = True
    return root
