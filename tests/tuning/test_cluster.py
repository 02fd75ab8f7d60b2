"""Which Ray a sweep runs on (issue 26 item 5): a cluster already running here is joined, with the settings of
the local cluster's env.sh; nothing is guessed; a cluster that refuses us leaves a private Ray, in one line.
No Ray is started: the GCS processes and ray.init are stand-ins."""

from __future__ import annotations

import os

import pytest

import tuning.cluster as cluster_module
from tuning.cluster import FoundCluster, choose_cluster, connect, find_cluster, read_env_file
from vlm_rl.config import GRPOConfig

KEYS = ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI", "VLMRL_GCS_ADDRESS",
        "VLMRL_LOCAL_DIR")


@pytest.fixture
def machine(tmp_path, monkeypatch):
    """A vlm-rl local cluster's state folder as start-local-cluster.sh leaves it; no GCS running yet."""
    for key in KEYS:  # set, then removed: monkeypatch restores each (absent or not) after the test
        monkeypatch.setenv(key, "")
        monkeypatch.delenv(key)
    state = tmp_path / "local-cluster"
    (state / "ray").mkdir(parents=True)
    (state / "ray" / "ray_current_cluster").write_text("192.0.2.2:46380")
    (state / "auth_token").write_text("t" * 64)
    (state / "env.sh").write_text(
        f"# Source me: . {state}/env.sh\nexport RAY_AUTH_MODE=token\nexport RAY_AUTH_TOKEN_PATH='{state}/auth_token'\n"
        "export VLMRL_RAY_ADDRESS=http://127.0.0.1:8265\nexport VLMRL_GCS_ADDRESS=127.0.0.1:46380\n"
        "export MLFLOW_TRACKING_URI=http://127.0.0.1:5000\n")
    monkeypatch.setenv("VLMRL_LOCAL_DIR", str(state))
    running: set[str] = set()
    refreshed = []
    monkeypatch.setattr(cluster_module, "running_gcs_addresses", lambda: set(running))
    monkeypatch.setattr(cluster_module, "refresh_ray_auth", lambda: refreshed.append(os.environ.get("RAY_AUTH_MODE")))
    import ray._private.utils as ray_utils

    last_start: list[str | None] = [None]
    monkeypatch.setattr(ray_utils, "read_ray_address", lambda temp_dir=None: last_start[0])
    return {"state": state, "running": running, "last_start": last_start, "refreshed": refreshed}


def test_the_local_cluster_is_joined_with_its_env_file(machine, capsys):
    machine["running"].update({"192.0.2.2:46380", "192.0.2.2:40021"})  # ours, and a private one of someone
    found = choose_cluster("auto")
    assert found.address == "192.0.2.2:46380" and "vlm-rl local cluster" in found.source
    assert os.environ["RAY_ADDRESS"] == "192.0.2.2:46380"
    assert os.environ["RAY_AUTH_MODE"] == "token" and machine["refreshed"] == ["token"]
    assert os.environ["RAY_AUTH_TOKEN_PATH"] == str(machine["state"] / "auth_token")
    assert os.environ["MLFLOW_TRACKING_URI"] == "http://127.0.0.1:5000"
    assert "joining the Ray cluster running at 192.0.2.2:46380" in capsys.readouterr().err


def test_the_shells_own_settings_win(machine, monkeypatch):
    machine["running"].add("127.0.0.1:46380")
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "sqlite:///mine.db")
    choose_cluster("auto")
    assert os.environ["MLFLOW_TRACKING_URI"] == "sqlite:///mine.db"
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # `ray job submit` sets it: used as is
    assert choose_cluster("auto") is None and os.environ["RAY_ADDRESS"] == "10.0.0.1:6379"
    assert choose_cluster("local") is None and "RAY_ADDRESS" not in os.environ
    assert choose_cluster("10.0.0.2:6379") is None and os.environ["RAY_ADDRESS"] == "10.0.0.2:6379"


def test_a_stopped_cluster_and_unrecorded_instances_are_not_joined(machine):
    assert find_cluster() is None  # the address file outlives the cluster: no GCS on that port
    machine["running"].add("192.0.2.2:40021")  # someone's Ray that no record names: not guessed at
    assert find_cluster() is None
    assert choose_cluster("auto") is None and "RAY_ADDRESS" not in os.environ


def test_the_last_ray_start_is_joined(machine, monkeypatch):
    monkeypatch.setenv("VLMRL_LOCAL_DIR", str(machine["state"] / "nothing-here"))
    machine["last_start"][0] = "10.1.1.1:6379"
    machine["running"].update({"10.1.1.1:6379", "10.1.1.1:50000"})
    found = find_cluster()
    assert found == FoundCluster("10.1.1.1:6379", "the last `ray start` on this machine")


def test_read_env_file(tmp_path):
    env = tmp_path / "env.sh"
    env.write_text("# export NOT=this\nexport A='x y'\nB=\"2\"\nnot a line\n")
    assert read_env_file(env) == {"A": "x y", "B": "2"} and read_env_file(tmp_path / "none") == {}


def test_a_cluster_that_refuses_us_leaves_a_private_ray(monkeypatch, capsys):
    import ray

    import vlm_rl.learner.job_common as job_common

    calls = []

    def connect_ray(config, sweep_trials=0):
        calls.append(os.environ.get("RAY_ADDRESS"))
        if len(calls) == 1:
            raise ConnectionError("Token authentication is enabled but no authentication token was found\nmore")

    monkeypatch.setattr(job_common, "connect_ray", connect_ray)
    monkeypatch.setattr(ray, "shutdown", lambda: None)
    monkeypatch.setenv("RAY_ADDRESS", "127.0.0.1:46380")
    connect(GRPOConfig(), 1, FoundCluster("127.0.0.1:46380", "the vlm-rl local cluster (x)"))
    assert calls == ["127.0.0.1:46380", None]
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["[sweep] could not join 127.0.0.1:46380 (the vlm-rl local cluster (x)): Token authentication "
                   "is enabled but no authentication token was found; running on a private Ray"]
    calls.clear()  # an address the user named is not second-guessed
    with pytest.raises(ConnectionError):
        connect(GRPOConfig(), 1, None)
