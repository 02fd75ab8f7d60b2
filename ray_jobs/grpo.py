"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.grpo --config RECIPE [k=v ...]`"""

from __future__ import annotations

import sys

from ray_jobs._entry import run_entry
from vlm_rl.config import GRPOConfig


def main(argv: list[str] | None = None) -> int:
    from vlm_rl.grpo.job import run_grpo

    return run_entry("grpo", GRPOConfig, run_grpo, argv, description=__doc__)


if __name__ == "__main__":
    sys.exit(main())
