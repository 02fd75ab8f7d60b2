"""Driver-side pieces shared by the GRPO, SFT and DPO jobs: output folder, data, model, Ray Train trainer.

Everything before ``trainer.fit()`` that does not depend on the algorithm lives here, so each job module
only says what is particular to it (its worker function and its own checks).
"""

from __future__ import annotations

import os
from pathlib import Path

from vlm_rl.config import BaseConfig, C, ConfigError
from vlm_rl.learner.checkpoint import list_checkpoints, resolve_resume
from vlm_rl.models.loading import resolve_model_path

#: Ray Train controller retries (worker group could not start, e.g. waiting for nodes): a bound,
#: not Ray's default of forever. With a 60 s start timeout this waits ~10 min for an autoscaler.
CONTROLLER_FAILURE_LIMIT = 10


def prepare_output_and_data(config: C, *, synthetic: bool = True) -> C:
    """Absolute, writable output_dir (refusing to overwrite another run's checkpoints), a model_path that exists
    when it is a local path, the synthetic dataset when
    ``train_data`` is None (and ``synthetic``), a resolved local model path (tiny models built here), and
    room on the disk for the run's checkpoints (vlm_rl.learner.disk)."""
    check_model_path(config.model_path)
    output_dir = ensure_writable_dir(config.output_dir, "output_dir")
    if not config.resume and list_checkpoints(output_dir):
        raise ConfigError(
            f"output_dir: {output_dir} already holds checkpoints; pass --resume auto to continue that run "
            "or choose a new output_dir"
        )
    try:
        resolve_resume(config.resume, output_dir)  # an explicit checkpoint path must be a complete checkpoint
    except FileNotFoundError as exc:
        raise ConfigError(str(exc)) from exc
    updates: dict = {"output_dir": str(output_dir)}
    if synthetic and config.train_data is None:
        from vlm_rl.data.synthetic import make_synthetic_dataset

        train, val = make_synthetic_dataset(
            output_dir / "data", n_train=config.synthetic_train_size, n_val=config.synthetic_val_size,
            seed=config.seed, max_objects=2,
        )
        updates["train_data"] = str(train)
        if config.val_data is None:
            updates["val_data"] = str(val)
    try:
        updates["model_path"] = str(resolve_model_path(config.model_path))
    except (OSError, ValueError) as exc:  # a checkpoint whose base is gone, a broken adapter
        raise ConfigError(f"model_path: {config.model_path}: {exc}") from exc
    config = config.model_copy(update=updates)
    from vlm_rl.learner.disk import ensure_disk_space

    ensure_disk_space(config)  # checkpoints x keep_checkpoints (+ exports) vs free space: exit 2 before Ray
    return config


def ensure_writable_dir(path: str | Path, key: str) -> Path:
    """``path`` made (parents too) and proven writable by a probe file; a ConfigError naming ``key`` if not."""
    import tempfile

    folder = Path(path).expanduser().resolve()
    try:
        folder.mkdir(parents=True, exist_ok=True)
        with tempfile.NamedTemporaryFile(dir=folder, prefix=".vlm-rl-write-check-"):
            pass
    except OSError as exc:
        raise ConfigError(f"{key}: {folder} is not a writable folder ({exc.strerror or exc})") from exc
    return folder


def check_model_path(model_path: str) -> None:
    """A local model_path (absolute, ./ or ~, or of more than two parts: no hub id looks so) must exist and
    hold a model: config.json, a LoRA adapter, or a vlm-rl checkpoint. Hub ids and TINY_MODELS names pass."""
    from vlm_rl.config import TINY_MODELS

    name = str(model_path)
    if name in TINY_MODELS:
        return
    path = Path(name).expanduser()
    looks_local = path.is_absolute() or name.startswith((".", "~")) or len(path.parts) > 2
    if not path.exists():
        if looks_local:
            raise ConfigError(f"model_path: {name} does not exist")
        return
    if not path.is_dir():
        raise ConfigError(f"model_path: {name} is a file; give the model folder")
    if not any((path / f).is_file() for f in ("config.json", "adapter_config.json", "trainer_state.json")):
        raise ConfigError(f"model_path: {name} holds no model (no config.json, adapter_config.json or "
                          "trainer_state.json)")


def make_torch_trainer(worker, loop_config: dict, config: BaseConfig, name: str, storage_path: str | None = None):
    """A TorchTrainer of ``config.num_learners`` ranks (gloo on CPU, NCCL on GPU) restarting on failure."""
    from ray.train import FailureConfig, RunConfig, ScalingConfig
    from ray.train.torch import TorchConfig, TorchTrainer

    resources = {"CPU": config.cpus_per_learner}
    if config.use_gpu:
        # A fraction lets a learner share its GPU with rollout actors (rollout_gpus); two NCCL ranks can
        # never share one, and Ray would pack fractional learners onto the same GPU.
        if config.gpus_per_learner < 1 and config.num_learners > 1:
            raise ConfigError(f"gpus_per_learner: {config.gpus_per_learner} < 1 needs num_learners=1 "
                              f"(got {config.num_learners}): NCCL ranks cannot share a GPU")
        resources["GPU"] = config.gpus_per_learner
    return TorchTrainer(
        worker,
        train_loop_config=loop_config,
        scaling_config=ScalingConfig(num_workers=config.num_learners, use_gpu=config.use_gpu,
                                     resources_per_worker=resources),
        torch_config=TorchConfig(backend="nccl" if config.use_gpu else "gloo"),
        run_config=RunConfig(
            name=name, storage_path=storage_path or str(Path(config.output_dir) / "ray_train"),
            # Bounded: Ray's default retries a worker group that cannot be placed forever (issue 12).
            failure_config=FailureConfig(max_failures=config.max_failures,
                                         controller_failure_limit=CONTROLLER_FAILURE_LIMIT),
        ),
    )


def worker_device() -> str:
    """This Ray Train rank's device ("cpu" without CUDA)."""
    import torch

    if torch.cuda.is_available():
        import ray.train.torch

        return str(ray.train.torch.get_device())
    return "cpu"


def pin_state_api_to_private_cluster() -> int:
    """A free port for the private cluster's dashboard, named in RAY_API_SERVER_ADDRESS before Ray starts.

    Ray Train's PlacementGroupCleaner (and any State API call made without an address) finds "its" cluster by
    autodetection: the last `ray start` on this machine, else the GCS processes it sees. With another Ray running
    here (a local cluster started with its own --temp-dir, someone else's) that is two instances, and the cleaner
    died with a ``ConnectionError: Found multiple active Ray instances`` traceback (issue 26). The raylet and every
    worker of a cluster that ``ray.init`` starts inherit this process's environment, so they ask their own
    dashboard instead.
    """
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    return port


def pin_state_api_to_joined_cluster(address: str) -> dict:
    """``ray.init`` arguments that give a joined cluster's workers for this run its address (RAY_ADDRESS in the
    job's runtime env), so Ray Train's PlacementGroupCleaner finds it without autodetection (see
    ``pin_state_api_to_private_cluster``). Not for a `ray job submit` driver, whose runtime env the job brings,
    nor for an address that is not a GCS ``host:port`` (``auto``, ``ray://``)."""
    host, sep, port = address.rpartition(":")
    if os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR") or "://" in address or not sep or not host or not port.isdigit():
        return {}
    return {"runtime_env": {"env_vars": {"RAY_ADDRESS": address}}}


def connect_ray(need: float | BaseConfig = 1, *, sweep_trials: int = 0) -> None:
    """Join the cluster named by RAY_ADDRESS (set by `ray job submit`), else start a private local one;
    then, given the run's config, stop in seconds if the run cannot fit (vlm_rl.learner.resources).

    A laptop has fewer cores than a run has actors; the private local cluster advertises enough logical
    CPUs (they time-share the cores, which is fine for the tiny model). A cluster someone started has
    the CPUs it was started with, and a run that asks for more would wait forever.
    """
    import ray

    from vlm_rl.learner.resources import cluster_capacity, ensure_fits, run_demand

    config = need if isinstance(need, BaseConfig) else None
    if config is not None:
        cpus_needed = run_demand(config, sweep_trials=sweep_trials).total("CPU") + 1
    else:
        cpus_needed = float(need)
    if not ray.is_initialized():
        if os.environ.get("RAY_ADDRESS"):
            address = os.environ["RAY_ADDRESS"]
            ray.init(address=address, logging_level="WARNING", **pin_state_api_to_joined_cluster(address))
        else:
            os.environ.setdefault("RAY_AUTH_MODE", "disabled")
            num_cpus = max(os.cpu_count() or 1, int(cpus_needed + 0.999))
            port = pin_state_api_to_private_cluster()
            ray.init(address="local", num_cpus=num_cpus, logging_level="WARNING", dashboard_host="127.0.0.1",
                     dashboard_port=port)
    # Ray Train's print patch sends a worker's print() to its logger AND (when anything wrapped stdout)
    # to stdout too: every progress line reached the console twice. Plain prints, once (issue 12).
    os.environ.setdefault("RAY_TRAIN_ENABLE_PRINT_PATCH", "0")
    capacity = cluster_capacity()
    if not capacity.autoscaling and len([n for n in ray.nodes() if n.get("Alive")]) == 1:
        # One fixed node: a preemption ends the whole run anyway, so Ray Train's preemption watcher
        # only adds an error-level log line at start (its actor has max_restarts and object-store args).
        os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
    if config is not None:
        ensure_fits(config, sweep_trials=sweep_trials)
