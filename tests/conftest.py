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


def _kill_session(sid: int) -> None:
    """Stop every process of one `ray start --block` session, and only those (never `ray stop`,
    which would take down every Ray cluster on the machine)."""
    import signal
    import time

    def members() -> list[int]:
        out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
        return [int(p) for p, s in zip(out[::2], out[1::2]) if int(s) == sid]

    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in members():
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while members() and time.time() < deadline:
            time.sleep(0.2)


#: `ray ...` without the console script: Ray's CLI entry point, run by this interpreter.
RAY_CLI = "import sys; from ray.scripts.scripts import main; sys.argv[0] = 'ray'; sys.exit(main())"


@pytest.fixture(scope="session")
def ray_cluster():
    """A real head node started with `ray start --head --block`; yields {address, dashboard_url}.

    The test process is connected with ``ray.init(address=...)``; `ray job submit` tests use the dashboard.
    """
    import time

    import ray

    port, dash = free_port(), free_port()
    ray_bin = Path(sys.executable).parent / "ray"
    # Where Ray was installed with --target (the GPU machine's carried wheels) there is no `ray` script.
    launcher = [str(ray_bin)] if ray_bin.is_file() else [sys.executable, "-c", RAY_CLI]
    cmd = [
        *launcher, "start", "--head", "--block", f"--port={port}", "--num-cpus=8", "--dashboard-host=127.0.0.1",
        f"--dashboard-port={dash}", f"--temp-dir={os.environ['RAY_TMPDIR']}", "--disable-usage-stats",
        "--include-dashboard=true",
        # Ray's fixed default agent ports clash when another Ray instance runs on the machine.
        f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}",
    ]
    log = open(_TMP / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
                            env={**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")])),
                                 "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"})
    address = f"127.0.0.1:{port}"
    deadline = time.time() + 120
    while True:
        try:
            ray.init(address=address, logging_level="WARNING")
            break
        except Exception:
            if proc.poll() is not None or time.time() > deadline:
                raise RuntimeError(f"ray start failed: {(_TMP / 'ray-start.log').read_text()[-2000:]}") from None
            time.sleep(1.0)
    try:
        yield {"address": address, "dashboard_url": f"http://127.0.0.1:{dash}"}
    finally:
        ray.shutdown()
        _kill_session(proc.pid)
        log.close()


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


@pytest.fixture(scope="session")
def demo_run(session_dir) -> dict:
    """`vlm-rl demo` run once per session as a user runs it (its own private Ray, MLflow in SQLite), its console
    log captured: tests/commands/test_demo.py judges what the user sees, tests/grpo/test_e2e.py uses it as the
    on-policy arm that the asynchronous and control runs are compared with (same settings, data and seed)."""
    import json
    import re
    import time

    out = session_dir / "demo"
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_ADDRESS", "MLFLOW_TRACKING_URI")}
    started = time.monotonic()
    done = subprocess.run([str(Path(sys.executable).parent / "vlm-rl"), "demo", "--output-dir", str(out)],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=1200)
    seconds = time.monotonic() - started
    log = re.sub(r"\x1b\[[0-9;]*m", "", done.stdout + done.stderr)
    (out / "console.log").write_text(log)
    assert done.returncode == 0, log[-4000:]
    run_dir = next(out.glob("run-*"))
    rows = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line.strip()]
    summary = json.loads((run_dir / "summary.json").read_text())
    return {"log": log, "seconds": seconds, "rows": rows, "summary": summary, "run_dir": run_dir}
