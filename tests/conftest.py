"""Session fixtures: one real local Ray cluster (`ray start --head`), one tiny model, one dataset.

The cluster is started the way a user starts one, so the same cluster serves `ray.init` tests and
`ray job submit` tests. Everything lives under a temporary directory removed at the end.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

# Before anything imports ray/torch: no token auth prompt, short socket paths, cached JIT builds.
_TMP = Path(tempfile.mkdtemp(prefix="vlmrl-tests-"))
os.environ.setdefault("RAY_AUTH_MODE", "disabled")
os.environ.setdefault("RAY_TMPDIR", str(_TMP / "ray"))
os.environ.setdefault("TORCH_EXTENSIONS_DIR", str(Path.home() / ".cache" / "vlm-rl-torch-extensions"))
os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
os.environ.setdefault("OMP_NUM_THREADS", "1")
os.environ.setdefault("MLFLOW_ENABLE_ASYNC_LOGGING", "false")

REPO = Path(__file__).resolve().parents[1]
ARTIFACTS = REPO / "test-artifacts"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="session")
def ray_cluster():
    """A real head node started with `ray start`; yields {address, dashboard_url}. Connected via ray.init."""
    import ray

    port, dash = free_port(), free_port()
    ray_bin = str(Path(sys.executable).parent / "ray")
    temp_dir = os.environ["RAY_TMPDIR"]
    cmd = [
        ray_bin, "start", "--head", f"--port={port}", "--num-cpus=8", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--temp-dir={temp_dir}", "--disable-usage-stats",
        "--include-dashboard=true",
    ]
    subprocess.run(cmd, check=True, capture_output=True, env={**os.environ, "PYTHONPATH": str(REPO)})
    address = f"127.0.0.1:{port}"
    ray.init(address=address, logging_level="WARNING")
    try:
        yield {"address": address, "dashboard_url": f"http://127.0.0.1:{dash}"}
    finally:
        ray.shutdown()
        subprocess.run([ray_bin, "stop", "--force"], capture_output=True)


@pytest.fixture(scope="session")
def session_dir() -> Path:
    return _TMP


@pytest.fixture(scope="session")
def tiny_model_dir(session_dir) -> Path:
    """A tiny random-weight Qwen3-VL with Qwen's real vocabulary, saved like a hub checkpoint."""
    from vlm_rl.models.tiny import build_tiny_model

    return build_tiny_model(session_dir / "tiny-qwen3-vl", family="qwen3_vl", seed=0)


@pytest.fixture(scope="session")
def tiny_qwen25_dir(session_dir) -> Path:
    from vlm_rl.models.tiny import build_tiny_model

    return build_tiny_model(session_dir / "tiny-qwen2.5-vl", family="qwen2_5_vl", seed=0)


@pytest.fixture(scope="session")
def synthetic_dataset(session_dir):
    """(train_jsonl, val_jsonl) of synthetic traffic signs, fixed seed."""
    from vlm_rl.data.synthetic import make_synthetic_dataset

    return make_synthetic_dataset(session_dir / "synthetic", n_train=48, n_val=16, seed=0)


@pytest.fixture(scope="session")
def artifacts_dir() -> Path:
    ARTIFACTS.mkdir(exist_ok=True)
    return ARTIFACTS
