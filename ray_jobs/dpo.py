"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.dpo --config RECIPE pairs=PATH [k=v ...]`"""

from __future__ import annotations

import sys

from ray_jobs._entry import run_entry
from vlm_rl.config import DPOConfig


def main(argv: list[str] | None = None) -> int:
    from vlm_rl.dpo.job import run_dpo

    return run_entry(
        "dpo", DPOConfig, run_dpo, argv, description=__doc__,
        add_arguments=lambda p: p.add_argument("--eval", action="store_true",
                                               help="evaluate <output_dir>/final on val_data at the end"),
        run_kwargs=lambda args: {"evaluate": args.eval},
    )


if __name__ == "__main__":
    sys.exit(main())
