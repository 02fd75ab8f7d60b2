"""`ray job submit --runtime-env ray_jobs/runtime_env.yaml -- python -m ray_jobs.sweep --config RECIPE --space NAME
--num-samples N [k=v ...]`: the GRPO sweep of ``tuning.sweep_grpo`` as a cluster job."""

from __future__ import annotations

import sys

from tuning.sweep_grpo import main

if __name__ == "__main__":
    sys.exit(main())
