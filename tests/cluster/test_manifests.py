"""Schema-level checks of everything a user deploys: KubeRay manifests, the cluster-launcher YAML,
the runtime env, the recipes and the local-cluster scripts.

No Kubernetes or cloud here, so these tests hold the files to the parts of the KubeRay ray.io/v1 API
and Ray's launcher schema that a typo would break, and to the secure defaults (token auth,
loopback-only dashboard) that a later edit could silently drop.
"""

from __future__ import annotations

import ast
import re
import shlex
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from vlm_rl.config import DPOConfig, GRPOConfig, SFTConfig, load_config

REPO = Path(__file__).resolve().parents[2]
CLUSTER = REPO / "cluster"
RECIPES = REPO / "ray_jobs" / "configs" / "recipes"
KUBERAY = CLUSTER / "kuberay"
LAUNCHER = CLUSTER / "launcher" / "gpu-cluster.yaml"
RUNTIME_ENV = REPO / "ray_jobs" / "runtime_env.yaml"
IMAGE_REPO_DIR = "/home/ray/vlm-rl/"  # where cluster/Dockerfile puts the repository
CONFIG_CLASSES = {"grpo": GRPOConfig, "sft": SFTConfig, "dpo": DPOConfig}
LOOPBACK = {"127.0.0.1", "localhost", "::1"}

ALL_YAML = sorted([*CLUSTER.rglob("*.yaml"), *(REPO / "ray_jobs").rglob("*.yaml")])
SCRIPTS = sorted(CLUSTER.rglob("*.sh"))


def _docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def _kuberay_objects(kind: str) -> list[tuple[Path, dict]]:
    return [(p, d) for p in sorted(KUBERAY.glob("*.yaml")) for d in _docs(p) if d.get("kind") == kind]


def _cluster_specs() -> list[tuple[str, dict]]:
    """Every RayClusterSpec: RayCluster.spec and RayJob.spec.rayClusterSpec."""
    specs = [(f"{p.name}:RayCluster", d["spec"]) for p, d in _kuberay_objects("RayCluster")]
    specs += [(f"{p.name}:RayJob", d["spec"]["rayClusterSpec"]) for p, d in _kuberay_objects("RayJob")]
    return specs


def _containers(group: dict) -> list[dict]:
    return group["template"]["spec"]["containers"]


# ---------------------------------------------------------------- every YAML parses


@pytest.mark.parametrize("path", ALL_YAML, ids=lambda p: str(p.relative_to(REPO)))
def test_yaml_parses(path: Path) -> None:
    docs = _docs(path)
    assert docs, f"{path}: empty"
    assert all(isinstance(d, dict) for d in docs), f"{path}: every document must be a mapping"


def test_expected_files_exist() -> None:
    for rel in ("kuberay/raycluster-grpo.yaml", "kuberay/rayjob-grpo.yaml", "kuberay/mlflow.yaml",
                "launcher/gpu-cluster.yaml", "local/start-local-cluster.sh", "local/stop-local-cluster.sh",
                "README.md", "Dockerfile"):
        assert (CLUSTER / rel).is_file(), rel


# ---------------------------------------------------------------- KubeRay


def test_kuberay_objects_use_ray_io_v1() -> None:
    kinds = set()
    for path in KUBERAY.glob("*.yaml"):
        for doc in _docs(path):
            assert {"apiVersion", "kind", "metadata"} <= doc.keys(), f"{path.name}: {doc.get('kind')}"
            assert doc["metadata"].get("name"), f"{path.name}: {doc['kind']} without metadata.name"
            if doc["kind"] in {"RayCluster", "RayJob", "RayService"}:
                assert doc["apiVersion"] == "ray.io/v1", f"{path.name}: {doc['apiVersion']}"
            kinds.add(doc["kind"])
    assert {"RayCluster", "RayJob", "Deployment", "Service", "PersistentVolumeClaim"} <= kinds


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_ray_cluster_spec_shape(name: str, spec: dict) -> None:
    assert spec["rayVersion"] == "2.60.0", name
    head = spec["headGroupSpec"]
    assert head["template"]["spec"]["containers"], name
    groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}
    assert set(groups) == {"learners", "rollouts"}, name
    for gname, group in groups.items():
        for key in ("replicas", "minReplicas", "maxReplicas"):
            assert isinstance(group[key], int), f"{name}/{gname}: {key}"
        assert group["minReplicas"] <= group["replicas"] <= group["maxReplicas"], f"{name}/{gname}"
        assert "rayStartParams" in group, f"{name}/{gname}"
        for container in _containers(group):
            limits = container["resources"]["limits"]
            assert int(limits["nvidia.com/gpu"]) >= 1, f"{name}/{gname}: GPU group without nvidia.com/gpu"
            assert container["resources"]["requests"]["nvidia.com/gpu"] == limits["nvidia.com/gpu"]
    for gname, group in [("head", head), *groups.items()]:
        for container in _containers(group):
            assert container["image"], f"{name}/{gname}: container without image"
            env = {e["name"]: e.get("value") for e in container.get("env", [])}
            assert env.get("NCCL_NVLS_ENABLE") == "0", f"{name}/{gname}"
        _assert_dev_shm(f"{name}/{gname}", group["template"]["spec"])


def _assert_dev_shm(where: str, pod: dict) -> None:
    shm = [v for v in pod["volumes"] if v.get("emptyDir", {}).get("medium") == "Memory"]
    assert shm, f"{where}: no memory-backed emptyDir volume"
    names = {v["name"] for v in shm}
    for container in pod["containers"]:
        mounts = {m["mountPath"]: m["name"] for m in container.get("volumeMounts", [])}
        assert mounts.get("/dev/shm") in names, f"{where}: /dev/shm not mounted from a Memory emptyDir"


def test_recipe_shape_fits_the_worker_groups() -> None:
    """The 8B recipe asks for 6 learner GPUs and 2 rollout GPUs: exactly what the groups offer."""
    recipe = load_config(GRPOConfig, RECIPES / "grpo-qwen3vl-8b-1n8g-zero3.yaml", env={})
    for name, spec in _cluster_specs():
        groups = {g["groupName"]: g for g in spec["workerGroupSpecs"]}

        def gpus(group: dict) -> int:
            return group["replicas"] * sum(int(c["resources"]["limits"]["nvidia.com/gpu"]) for c in _containers(group))

        assert gpus(groups["learners"]) == recipe.num_learners, name
        assert gpus(groups["rollouts"]) == recipe.num_rollout_workers * recipe.rollout_gpus, name


@pytest.mark.parametrize("name,spec", _cluster_specs(), ids=lambda x: x if isinstance(x, str) else "")
def test_secure_defaults(name: str, spec: dict) -> None:
    assert spec.get("authOptions", {}).get("mode") == "token", f"{name}: token auth off"
    head = spec["headGroupSpec"]
    assert head["rayStartParams"].get("dashboard-host") in LOOPBACK, f"{name}: dashboard not on loopback"
    assert head.get("serviceType", "ClusterIP") == "ClusterIP", name
    assert not head.get("enableIngress", False), name
    for group in [head, *spec["workerGroupSpecs"]]:
        assert group["rayStartParams"].get("dashboard-host") != "0.0.0.0", name


def test_no_manifest_binds_ray_dashboard_to_all_interfaces() -> None:
    """Raw-text guard, comments excluded: no `dashboard-host` 0.0.0.0 anywhere we ship."""
    for path in [*CLUSTER.rglob("*.yaml"), *SCRIPTS]:
        for n, line in enumerate(path.read_text().splitlines(), 1):
            code = line.split("#", 1)[0]
            assert not re.search(r"dashboard[-_]host\W+0\.0\.0\.0", code), f"{path}:{n}: {line.strip()}"


def test_rayjob_runs_an_existing_module_and_recipe() -> None:
    (path, job), = _kuberay_objects("RayJob")
    spec = job["spec"]
    argv = shlex.split(spec["entrypoint"])
    assert argv[:3] == ["python", "-m", "ray_jobs.grpo"], argv
    assert (REPO / (argv[2].replace(".", "/") + ".py")).is_file(), f"{path.name}: module {argv[2]} missing"
    config = argv[argv.index("--config") + 1]
    assert config.startswith(IMAGE_REPO_DIR), f"{path.name}: recipe must be read from the image: {config}"
    recipe = REPO / config.removeprefix(IMAGE_REPO_DIR)
    assert recipe.is_file(), f"{path.name}: recipe {recipe} missing"
    load_config(GRPOConfig, recipe, argv[argv.index("--config") + 2:], env={})
    assert "/home/ray/vlm-rl" in (CLUSTER / "Dockerfile").read_text()


def test_rayjob_lifecycle_and_runtime_env() -> None:
    (_, job), = _kuberay_objects("RayJob")
    spec = job["spec"]
    assert spec["shutdownAfterJobFinishes"] is True
    assert isinstance(spec["ttlSecondsAfterFinished"], int) and spec["ttlSecondsAfterFinished"] > 0
    # SidecarMode reaches the Jobs API over the head pod's loopback: the only mode that works with it.
    assert spec["submissionMode"] == "SidecarMode"
    head_pod = spec["rayClusterSpec"]["headGroupSpec"]["template"]["spec"]
    assert head_pod.get("restartPolicy") == "Never"
    job_env = yaml.safe_load(spec["runtimeEnvYAML"])
    assert "working_dir" not in job_env, "RayJob code comes from the image; nothing to upload"
    assert job_env["env_vars"] == yaml.safe_load(RUNTIME_ENV.read_text())["env_vars"]


def test_mlflow_stays_inside_the_cluster() -> None:
    services = [d for _, d in _kuberay_objects("Service")]
    assert services and all(s["spec"].get("type", "ClusterIP") == "ClusterIP" for s in services)
    assert not _kuberay_objects("Ingress")
    (_, deploy), = _kuberay_objects("Deployment")
    pod = deploy["spec"]["template"]["spec"]
    command = pod["containers"][0]["command"]
    assert command[:2] == ["mlflow", "server"]
    assert any(a.startswith("--allowed-hosts=") and "*" != a.split("=", 1)[1] for a in command)
    assert any(v.get("persistentVolumeClaim") for v in pod["volumes"])
    assert _kuberay_objects("NetworkPolicy"), "MLflow must only admit Ray pods"
    uri = {e["name"]: e.get("value") for e in _containers(_cluster_specs()[0][1]["headGroupSpec"])[0]["env"]}
    assert uri["MLFLOW_TRACKING_URI"] == f"http://{services[0]['metadata']['name']}:5000"


# ---------------------------------------------------------------- cluster launcher


def test_launcher_required_keys_and_ray_schema() -> None:
    from ray.autoscaler._private.util import prepare_config, validate_config

    config = yaml.safe_load(LAUNCHER.read_text())
    for key in ("cluster_name", "provider", "available_node_types", "head_node_type", "max_workers"):
        assert key in config, key
    assert config["head_node_type"] in config["available_node_types"]
    validate_config(prepare_config(config))  # Ray's own JSON schema: unknown or mistyped keys fail here


def test_launcher_secure_start_commands() -> None:
    config = yaml.safe_load(LAUNCHER.read_text())
    head = " ".join(config["head_start_ray_commands"])
    assert "--dashboard-host=127.0.0.1" in head
    for cmds in (config["head_start_ray_commands"], config["worker_start_ray_commands"]):
        start = [c for c in cmds if "ray start" in c]
        assert start and all("RAY_AUTH_MODE=token" in c for c in start)
    assert "/home/ubuntu/.ray/auth_token" in config["file_mounts"]
    assert any("pip install" in c and "vlm-rl" in c for c in config["setup_commands"])


def undocumented_keys(text: str) -> list[str]:
    """Lines with a YAML mapping key that has no `#` comment on the line or in the comment block above.

    >>> undocumented_keys("# name\\na: 1\\nb: 2  # inline\\nc: 3\\n")
    ['c: 3']
    """
    bad, prev_comment = [], False
    for line in text.splitlines():
        stripped = line.strip()
        if not stripped:
            prev_comment = False
            continue
        if stripped.startswith("#"):
            prev_comment = True
            continue
        if re.match(r"^(- )?[\"']?[A-Za-z_/][\w./-]*[\"']?\s*:(\s|$)", stripped) and not prev_comment and "#" not in line:
            bad.append(stripped)
        prev_comment = False
    return bad


def test_every_launcher_key_is_commented() -> None:
    assert undocumented_keys(LAUNCHER.read_text()) == []


def test_comment_check_catches_a_missing_comment() -> None:
    text = LAUNCHER.read_text().replace("\n# Which of available_node_types", "\nextra_key: 1\n\n# Which of", 1)
    assert undocumented_keys(text) == ["extra_key: 1"]
    assert undocumented_keys("# doc\n- name: a\n  value: b\n") == ["value: b"]


# ---------------------------------------------------------------- runtime env and recipes


def test_runtime_env() -> None:
    env = yaml.safe_load(RUNTIME_ENV.read_text())
    assert env["working_dir"] == "."
    for pattern in ("outputs/", ".venv/", ".whl/", "mlruns/", "*.db", "test-artifacts/"):
        assert pattern in env["excludes"], pattern
    assert all(isinstance(v, str) for v in env["env_vars"].values()), "runtime_env env_vars must be strings"
    assert env["env_vars"]["NCCL_NVLS_ENABLE"] == "0"
    assert env["env_vars"]["TOKENIZERS_PARALLELISM"] == "false"
    assert env["env_vars"]["TORCH_CUDA_ARCH_LIST"] == "9.0"


RECIPE_FILES = sorted(RECIPES.glob("*.yaml"))


def test_required_recipes_exist() -> None:
    names = {p.name for p in RECIPE_FILES}
    assert {"grpo-tiny-cpu.yaml", "grpo-qwen3vl-2b-1n1g-lora.yaml", "grpo-qwen3vl-8b-1n8g-zero3.yaml",
            "grpo-qwen25vl-7b-1n8g-zero3.yaml", "sft-qwen3vl-2b-lora.yaml", "dpo-qwen3vl-2b-lora.yaml"} <= names


@pytest.mark.parametrize("path", RECIPE_FILES, ids=lambda p: p.name)
def test_recipe_loads_into_its_config_class(path: Path) -> None:
    cls = CONFIG_CLASSES[path.name.split("-", 1)[0]]
    raw = yaml.safe_load(path.read_text())
    unknown = set(raw) - set(cls.model_fields)
    assert not unknown, f"{path.name}: keys not in {cls.__name__}: {sorted(unknown)}"
    for key in ("train_data", "val_data", "pairs"):
        # data files exist only on the cluster; they must be passed as overrides, not baked in
        assert raw.get(key) is None, f"{path.name}: {key} set in a recipe"
    config = load_config(cls, path, env={})
    assert isinstance(config, cls)
    text = path.read_text()
    header = text.split("\n\n", 1)[0]
    assert header.startswith("#") and path.name in header, f"{path.name}: header must show its launch command"


def test_tiny_recipe_is_cpu_and_small() -> None:
    c = load_config(GRPOConfig, RECIPES / "grpo-tiny-cpu.yaml", env={})
    assert c.model_path == "tiny-qwen3-vl" and not c.use_gpu and not c.bf16
    assert (c.num_learners, c.num_rollout_workers, c.rollout_gpus) == (2, 1, 0.0)
    assert c.num_steps <= 5
    # the documented local cluster of a 2-core machine has 2 CPUs: the recipe must fit it (issue 12)
    from vlm_rl.learner.resources import run_demand

    assert run_demand(c).total("CPU") <= 2


def test_big_grpo_recipes() -> None:
    for name, model in (("grpo-qwen3vl-8b-1n8g-zero3.yaml", "Qwen/Qwen3-VL-8B-Instruct"),
                        ("grpo-qwen25vl-7b-1n8g-zero3.yaml", "Qwen/Qwen2.5-VL-7B-Instruct")):
        c = load_config(GRPOConfig, RECIPES / name, env={})
        assert c.model_path == model
        assert (c.zero_stage, c.num_learners, c.num_rollout_workers, c.rollout_gpus) == (3, 6, 2, 1)
        assert c.use_gpu and c.bf16
        assert c.num_learners + c.num_rollout_workers * c.rollout_gpus == 8  # 1n8g


def test_one_gpu_colocated_recipe_uses_the_measured_fast_path() -> None:
    c = load_config(GRPOConfig, RECIPES / "grpo-qwen3vl-8b-1n1g-colocated.yaml", env={})
    assert (c.rollout_mode, c.num_learners, c.use_gpu, c.bf16) == ("colocated", 1, True, True)
    assert c.compile_decode and c.compile_layers and c.micro_batch_size == 8 and c.lora_r == 64
    assert (c.prompts_per_step, c.num_generations, c.max_new_tokens) == (8, 4, 256)  # the bench's settings


# ---------------------------------------------------------------- scripts and checkpoints


@pytest.mark.parametrize("path", SCRIPTS, ids=lambda p: p.name)
def test_shell_scripts_parse(path: Path) -> None:
    subprocess.run(["bash", "-n", str(path)], check=True)
    text = path.read_text()
    assert text.startswith("#!/usr/bin/env bash") and "set -" in text
    if shutil.which("shellcheck"):
        subprocess.run(["shellcheck", "-S", "warning", str(path)], check=True)


def test_local_script_secure_defaults() -> None:
    text = (CLUSTER / "local" / "start-local-cluster.sh").read_text()
    assert "export RAY_AUTH_MODE=token" in text
    assert "--dashboard-host=127.0.0.1" in text
    assert "--node-ip-address=127.0.0.1" in text
    assert re.search(r"mlflow server --host 127\.0\.0\.1", text)
    assert "umask 077" in text and 'chmod 600 "$TOKEN_FILE"' in text
    stop = (CLUSTER / "local" / "stop-local-cluster.sh").read_text()
    code = "\n".join(line.split("#", 1)[0] for line in stop.splitlines())
    assert "ray stop" not in code, "`ray stop` would kill every Ray cluster of the machine"


def torch_load_calls(source: str) -> list[tuple[int, bool]]:
    """(line, passes weights_only=True) for every `torch.load(...)` call in Python source.

    >>> torch_load_calls("import torch\\ntorch.load('a')\\ntorch.load('b', weights_only=True)\\n")
    [(2, False), (3, True)]
    """
    calls = []
    for node in ast.walk(ast.parse(source)):
        if (isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "load"
                and isinstance(node.func.value, ast.Name) and node.func.value.id == "torch"):
            safe = any(k.arg == "weights_only" and isinstance(k.value, ast.Constant) and k.value.value is True
                       for k in node.keywords)
            calls.append((node.lineno, safe))
    return sorted(calls)


def test_torch_load_detector() -> None:
    src = "import torch\ntorch.load('a')\ntorch.load('b', weights_only=True)\ntorch.load('c', weights_only=False)\n"
    assert torch_load_calls(src) == [(2, False), (3, True), (4, False)]


def test_torch_load_calls_are_weights_only() -> None:
    """No pickle is executed on load: every torch.load in shipped code passes weights_only=True."""
    unsafe = []
    for pkg in ("vlm_rl", "ray_jobs", "tuning"):
        for path in (REPO / pkg).rglob("*.py"):
            calls = torch_load_calls(path.read_text())
            unsafe += [f"{path.relative_to(REPO)}:{n}" for n, safe in calls if not safe]
    assert unsafe == []


def test_local_cluster_processes_know_their_own_dashboard() -> None:
    """Issue 26 item 5: the local cluster runs under its own --temp-dir, so its processes cannot autodetect it
    when another Ray runs on the machine (Ray Train's placement-group cleaner died with "Found multiple active
    Ray instances"); `ray start` is given RAY_API_SERVER_ADDRESS, which every process of the cluster inherits."""
    text = (CLUSTER / "local" / "start-local-cluster.sh").read_text()
    export = 'export RAY_API_SERVER_ADDRESS="http://127.0.0.1:$DASHBOARD_PORT"'
    assert export in text and text.index(export) < text.index("ray start --head")
    assert "--dashboard-port=\"$DASHBOARD_PORT\"" in text
