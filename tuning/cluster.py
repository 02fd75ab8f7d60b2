"""Which Ray cluster a sweep runs on: the one the user is running on this machine (RAY_ADDRESS, the vlm-rl local
cluster's state folder with its token and MLflow server, or the last `ray start`), else a private Ray. Never a
guess between several: Ray Train's PlacementGroupCleaner guessing is where "Found multiple active Ray instances"
came from."""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from vlm_rl.config import ConfigError, GRPOConfig


@dataclass(frozen=True)
class FoundCluster:
    """A Ray cluster running on this machine: its GCS address, how it was found, and the environment that joins
    it (the vlm-rl local cluster's env.sh: token auth, its MLflow server)."""

    address: str
    source: str
    env: Mapping[str, str] = field(default_factory=dict)


def local_cluster_dir() -> Path:
    """Where cluster/local/start-local-cluster.sh keeps its state (VLMRL_LOCAL_DIR, as the script reads it)."""
    return Path(os.environ.get("VLMRL_LOCAL_DIR") or Path.home() / ".vlm-rl" / "local-cluster")


def read_env_file(path: Path) -> dict[str, str]:
    """The ``export KEY=VALUE`` lines of the local cluster's env.sh (quotes removed); {} when there is none."""
    found: dict[str, str] = {}
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return found
    for line in lines:
        key, sep, value = line.strip().removeprefix("export ").partition("=")
        if sep and key.isidentifier() and not line.lstrip().startswith("#"):
            found[key] = value.strip().strip("'\"")
    return found


def running_gcs_addresses() -> set[str]:
    """``host:port`` of every Ray GCS process on this machine (from their command lines, as Ray finds them)."""
    from ray._private import services

    services.find_gcs_addresses.cache_clear()
    return set(services.find_gcs_addresses())


def _port(address: str) -> str:
    return address.strip().rsplit(":", 1)[-1]


def find_cluster() -> FoundCluster | None:
    """The Ray cluster on this machine a sweep started without RAY_ADDRESS should join, or None.

    Candidates, first match wins, each only while its GCS process is running (a stopped cluster leaves its address
    file behind): VLMRL_GCS_ADDRESS (set by sourcing the local cluster's env.sh); the vlm-rl local cluster's state
    folder (its ``ray/ray_current_cluster``, joined with its env.sh: token auth, MLflow server); Ray's own record
    of the last `ray start` (``ray_current_cluster`` in the default temp dir, what ``ray.init("auto")`` reads).
    Other Ray instances (someone's test cluster) are not guessed at: the sweep then runs on a private Ray.
    """
    import ray._private.utils as ray_utils

    running = running_gcs_addresses()
    if not running:
        return None
    candidates: list[FoundCluster] = []
    if os.environ.get("VLMRL_GCS_ADDRESS"):
        candidates.append(FoundCluster(os.environ["VLMRL_GCS_ADDRESS"], "VLMRL_GCS_ADDRESS"))
    state = local_cluster_dir()
    env = read_env_file(state / "env.sh")
    try:
        recorded = (state / "ray" / "ray_current_cluster").read_text().strip()
    except OSError:
        recorded = env.get("VLMRL_GCS_ADDRESS", "")
    if recorded:
        join = {k: v for k, v in env.items() if k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH", "MLFLOW_TRACKING_URI")}
        candidates.append(FoundCluster(recorded, f"the vlm-rl local cluster ({state})", join))
    last_start = ray_utils.read_ray_address()
    if last_start:
        candidates.append(FoundCluster(last_start, "the last `ray start` on this machine"))
    ports = {_port(a) for a in running}
    return next((c for c in candidates if _port(c.address) in ports), None)


def refresh_ray_auth() -> None:
    """Ray caches its auth mode; refresh it after RAY_AUTH_MODE changed, as Ray itself does when it turns token
    auth on (``_enable_token_auth``)."""
    from ray._raylet import Config

    Config.initialize("")


def choose_cluster(address: str = "auto") -> FoundCluster | None:
    """Point RAY_ADDRESS at the cluster the sweep runs on, before Ray starts; returns the cluster found (auto).

    ``auto``: RAY_ADDRESS when set (`ray job submit`), else ``find_cluster()`` (its env.sh settings added where
    the shell has none), else unset: a private local Ray. ``local``: always a private Ray. ``HOST:PORT``: that
    cluster.
    """
    if address == "local":
        os.environ.pop("RAY_ADDRESS", None)
        return None
    if address != "auto":
        os.environ["RAY_ADDRESS"] = address
        return None
    if os.environ.get("RAY_ADDRESS"):
        return None
    found = find_cluster()
    if found is None:
        return None
    auth_before = (os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN_PATH"))
    for key, value in found.env.items():
        if key == "MLFLOW_TRACKING_URI":
            os.environ.setdefault(key, value)  # the shell's own choice of store wins
        else:
            os.environ[key] = value  # the cluster's auth is what joining it takes
    if (os.environ.get("RAY_AUTH_MODE"), os.environ.get("RAY_AUTH_TOKEN_PATH")) != auth_before:
        refresh_ray_auth()
    os.environ["RAY_ADDRESS"] = found.address
    print(f"[sweep] joining the Ray cluster running at {found.address} ({found.source}); "
          "--address local runs on a private Ray instead", file=sys.stderr)
    return found


def connect(base: GRPOConfig, trials: int, found: FoundCluster | None) -> None:
    """``connect_ray`` (join RAY_ADDRESS or start a private Ray, then check that the trials fit). A cluster that
    ``choose_cluster`` found but that refuses us (token auth without the token, a version mismatch) is left, with
    one line saying why, for a private Ray: never a traceback."""
    from vlm_rl.learner.job_common import connect_ray

    try:
        connect_ray(base, sweep_trials=trials)
    except ConfigError:
        raise
    except Exception as exc:
        if found is None:
            raise
        import ray

        ray.shutdown()
        os.environ.pop("RAY_ADDRESS", None)
        reason = (str(exc).strip().splitlines() or [type(exc).__name__])[0][:200]
        print(f"[sweep] could not join {found.address} ({found.source}): {reason}; running on a private Ray",
              file=sys.stderr)
        connect_ray(base, sweep_trials=trials)
