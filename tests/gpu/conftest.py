"""GPU tests start Ray in-process (``ray.init``): the GPU machine has no `ray` console script or dashboard
assets, and these tests need neither; the CPU suite keeps its real `ray start` head (tests/conftest.py)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    import torch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    info = ray.init(address="local", num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                    logging_level="WARNING")
    try:
        yield {"address": info.address_info["address"], "dashboard_url": None}
    finally:
        ray.shutdown()
