"""A second real Ray head with exactly the documented 2 CPUs (a 2-core machine's `ray start --head`).

The session cluster of tests/conftest.py advertises 8 logical CPUs, which hid issue 12 (a recipe that
needs 3 CPUs hanging forever on a 2-CPU cluster); tests of what fits a 2-core machine run here.
The test process does not connect to it: only subprocesses (`ray job submit`, the sweep) do.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _kill_session(sid: int) -> None:
    """Stop the processes of this one `ray start --block` session only (never `ray stop`)."""
    for sig, wait in ((signal.SIGTERM, 10.0), (signal.SIGKILL, 5.0)):
        for pid in _members(sid):
            try:
                os.kill(pid, sig)
            except ProcessLookupError:
                pass
        deadline = time.time() + wait
        while _members(sid) and time.time() < deadline:
            time.sleep(0.2)


def _members(sid: int) -> list[int]:
    out = subprocess.run(["ps", "-eo", "pid=,sid="], capture_output=True, text=True).stdout.split()
    return [int(p) for p, s in zip(out[::2], out[1::2]) if int(s) == sid]


@pytest.fixture(scope="module")
def two_cpu_cluster(tmp_path_factory):
    """`ray start --head --num-cpus=2 --block` on free ports; yields {address, dashboard_url, env}."""
    tmp = tmp_path_factory.mktemp("ray2")
    port, dash = free_port(), free_port()
    bin_dir = str(Path(sys.executable).parent)
    env = {**os.environ, "PYTHONPATH": str(REPO), "RAY_AUTH_MODE": "disabled",
           "PATH": f"{bin_dir}{os.pathsep}{os.environ.get('PATH', '')}"}
    cmd = [
        str(Path(bin_dir) / "ray"), "start", "--head", "--block", f"--port={port}", "--num-cpus=2", "--num-gpus=0",
        "--dashboard-host=127.0.0.1", f"--dashboard-port={dash}", f"--temp-dir={tmp}", "--disable-usage-stats",
        "--include-dashboard=true", f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}", f"--runtime-env-agent-port={free_port()}",
        f"--metrics-export-port={free_port()}", f"--ray-client-server-port={free_port()}",
    ]
    log = open(tmp / "ray-start.log", "w")
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, start_new_session=True, env=env)
    address = f"127.0.0.1:{port}"
    probe = [sys.executable, "-c", f"import ray; ray.init(address='{address}', logging_level='ERROR'); "
             "print(ray.cluster_resources().get('CPU'))"]
    deadline = time.time() + 120
    while True:
        done = subprocess.run(probe, env=env, capture_output=True, text=True, timeout=120)
        if done.returncode == 0 and done.stdout.strip().endswith("2.0"):
            break
        if proc.poll() is not None or time.time() > deadline:
            raise RuntimeError(f"ray start failed: {(tmp / 'ray-start.log').read_text()[-2000:]}")
        time.sleep(1.0)
    try:
        yield {"address": address, "dashboard_url": f"http://127.0.0.1:{dash}", "env": env}
    finally:
        _kill_session(proc.pid)
        log.close()
