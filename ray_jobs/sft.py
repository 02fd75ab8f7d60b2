"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.sft --config RECIPE [k=v ...]`"""

from __future__ import annotations

import sys

from ray_jobs._entry import run_entry
from vlm_rl.config import SFTConfig


def main(argv: list[str] | None = None) -> int:
    from vlm_rl.sft.job import run_sft

    return run_entry(
        "sft", SFTConfig, run_sft, argv, description=__doc__,
        add_arguments=lambda p: p.add_argument("--no-eval", action="store_true",
                                               help="skip evaluating <output_dir>/final on val_data"),
        run_kwargs=lambda args: {"evaluate": not args.no_eval},
    )


if __name__ == "__main__":
    sys.exit(main())
