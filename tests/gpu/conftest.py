"""GPU tests start Ray in-process (``ray.init``): the GPU machine has no `ray` console script or dashboard
assets, and these tests need neither; the CPU suite keeps its real `ray start` head (tests/conftest.py).

Runs here log to an MLflow ``file:`` store (allowed before Ray starts, so Train workers inherit it): the SQL
store needs SQLAlchemy and cryptography, which do not fit the 64 MiB carry beside Ray
(bench/device/make_pool_wheels.sh). The CPU suite tests the SQLite store."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session")
def ray_cluster():
    import ray
    import torch

    os.environ.setdefault("RAY_AUTH_MODE", "disabled")
    os.environ.setdefault("MLFLOW_ALLOW_FILE_STORE", "true")
    info = ray.init(address="local", num_cpus=8, num_gpus=torch.cuda.device_count(), include_dashboard=False,
                    logging_level="WARNING")
    try:
        yield {"address": info.address_info["address"], "dashboard_url": None}
    finally:
        ray.shutdown()


@pytest.fixture
def file_tracking_uri(tmp_path) -> str:
    return (tmp_path / "mlruns").as_uri()
