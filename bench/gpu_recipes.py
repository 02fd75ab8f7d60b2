"""Every shipped recipe, run the way cluster/README.md tells users to: `ray job submit` to a local cluster
started by `cluster/local/start-local-cluster.sh --num-gpus=1` (MLflow server included), with size overrides only.

Each recipe runs on a random-weight model of its family's real architecture (8B where one GPU holds it, a
2B-size one where an 8B/7B full fine-tune cannot), on fractional GPUs, for a few steps with evaluation, rollout
pictures and checkpoints on. A job must end by itself: the script waits up to ``--job-timeout`` seconds, then
records the job as hung (with the driver's stack when py-spy is there) and stops it.

    python bench/gpu_recipes.py --work /tmp/recipes --out bench/results/gpu_recipes_<date>.json [--recipes ...]
    python bench/gpu_recipes.py --cpu ...      # the same plumbing on the CPU with the tiny model (a dry run)

Writes one JSON entry per recipe file (``recipe, ok, exit, wall_s, s_per_step, learner_peak_gb, actor_peak_gb,
weight_sync_s, checkpoint_gb, checkpoint_s, error`` and details) after each job, so a call cut short keeps
what finished. Not a test: GPU time is measured here and recorded in docs/PERFORMANCE.md.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from bench.recipe_results import (  # noqa: E402  (after the repo is on sys.path)
    fault_result,
    logged_steps,
    markdown_table,
    measure,
    mlflow_check,
    sweep_result,
)

RECIPES = REPO / "ray_jobs" / "configs" / "recipes"
STARTED = time.time()


@dataclass
class Run:
    recipe: str  # file name in ray_jobs/configs/recipes/
    entry: str  # ray_jobs.<entry>
    arch: str  # random-weight architecture (see build_model)
    overrides: list[str] = field(default_factory=list)
    note: str = ""
    fault: str = ""  # "learner" / "actor": SIGKILL that process once ``fault_step`` is logged and checkpointed;
    fault_step: int = 3  # "actor@2,learner@4": one kill after another in the same run
    flags: list[str] = field(default_factory=list)  # entry-point flags before the overrides (the sweep's)
    label: str = ""
    min_seconds: int = 150  # left in the call below which the run is skipped rather than cut short

    @property
    def name(self) -> str:
        kills = "-then-".join(kind for kind, _ in self.kills)
        return self.recipe.removesuffix(".yaml") + (f"-kill-{kills}" if kills else "") + \
            (f"-{self.label}" if self.label else "")

    @property
    def kills(self) -> list[tuple[str, int]]:
        """(process kind, after which step) for each fault, in order."""
        out = []
        for part in filter(None, self.fault.split(",")):
            kind, _, step = part.partition("@")
            out.append((kind, int(step) if step else self.fault_step))
        return out


#: Every GRPO run: a few steps, evaluation every 2, pictures every 2, a checkpoint every 2 steps (16 samples).
GRPO_SIZE = ["num_steps=4", "prompts_per_step=8", "num_generations=4", "max_new_tokens=128", "eval_steps=2",
             "log_images_every=2", "save_every_samples=16", "synthetic_train_size=64", "synthetic_val_size=8",
             "rollout_batch_size=32", "cpus_per_learner=2"]
#: A learner and one rollout actor sharing the one GPU.
SHARED_GPU = ["num_learners=1", "gpus_per_learner=0.5", "rollout_gpus=0.5", "num_rollout_workers=1"]
SUPERVISED_SIZE = ["num_learners=1", "gpus_per_learner=1", "cpus_per_learner=2", "max_steps=4", "batch_size=8",
                   "save_every_samples=16", "synthetic_train_size=64", "synthetic_val_size=8"]

#: A 2B full-fine-tuning checkpoint with Adam state is ~34 GB: one, at the end, is what a 64 GB disk holds.
FULL_WEIGHTS_DISK = ["keep_checkpoints=1", "save_every_samples=0"]

MATRIX = [  # the failing cases first (ZeRO-3 hang + weight sync), then what DPO needs before DPO
    Run("grpo-qwen3vl-8b-1n8g-zero3.yaml", "grpo", "qwen3-vl-2b",
        GRPO_SIZE + SHARED_GPU + FULL_WEIGHTS_DISK,
        note="Qwen3-VL-2B architecture: an 8B full fine-tune with Adam needs ~140 GB, more than one GPU"),
    Run("grpo-qwen3vl-2b-1n1g-lora.yaml", "grpo", "qwen3-vl-2b", GRPO_SIZE + SHARED_GPU),
    Run("sft-qwen3vl-2b-lora.yaml", "sft", "qwen3-vl-2b", SUPERVISED_SIZE),
    Run("dpo-qwen3vl-2b-lora.yaml", "dpo", "qwen3-vl-2b", SUPERVISED_SIZE,
        note="model_path = the SFT run's final/ export, pairs from `vlm-rl dpo-data` on the GRPO run's rollouts"),
    Run("grpo-qwen25vl-7b-1n8g-zero3.yaml", "grpo", "qwen2.5-vl-2b",
        GRPO_SIZE + SHARED_GPU + FULL_WEIGHTS_DISK + ["max_image_size=448"],
        note="Qwen2.5-VL-3B architecture cut to 16 of its 36 decoder layers (2.2 B): a 7B full fine-tune "
             "with Adam does not fit one GPU"),
    Run("grpo-qwen3vl-8b-1n2g-lora-async.yaml", "grpo", "qwen3-vl-8b", GRPO_SIZE + SHARED_GPU, min_seconds=240),
    Run("grpo-qwen3vl-8b-1n1g-colocated.yaml", "grpo", "qwen3-vl-8b", GRPO_SIZE + ["gpus_per_learner=1"],
        min_seconds=240),
]
#: Faults, in the ZeRO-3 run (a 2B-family model cut to 8 decoder layers, so two full-weight checkpoints fit a
#: 64 GB disk) and in the asynchronous LoRA run, 6 steps with a checkpoint every 2: the rollout actor SIGKILLed
#: after step 2, then a learner worker after step 4, one run each (one cluster start and model load for both
#: faults: the two runs fit one 10-minute call). Each must resume by itself and finish with every step once.
FAULT_SIZE = ["num_steps=6", "save_every_samples=16", "keep_checkpoints=1", "eval_steps=0", "log_images_every=0"]
FAULTS = [
    Run("grpo-qwen3vl-8b-1n8g-zero3.yaml", "grpo", "qwen3-vl-2b-8l", GRPO_SIZE + SHARED_GPU + FAULT_SIZE,
        fault="actor@2,learner@4", min_seconds=240),
    Run("grpo-qwen3vl-8b-1n2g-lora-async.yaml", "grpo", "qwen3-vl-2b", GRPO_SIZE + SHARED_GPU + FAULT_SIZE,
        fault="actor@2,learner@4", min_seconds=200),
]
#: The same four faults one run each (learner or actor after step 3), as first planned.
FAULTS_EACH = [
    Run(recipe, "grpo", arch, GRPO_SIZE + SHARED_GPU + FAULT_SIZE, fault=kind, min_seconds=240)
    for recipe, arch in (("grpo-qwen3vl-8b-1n8g-zero3.yaml", "qwen3-vl-2b-8l"),
                         ("grpo-qwen3vl-8b-1n2g-lora-async.yaml", "qwen3-vl-2b"))
    for kind in ("learner", "actor")
]
#: The sweep as tuning/ documents it, as a job: 4 trials of the 2B LoRA recipe, two at a time on the one GPU
#: (each trial a quarter-GPU learner + a quarter-GPU actor), ASHA on val mAP; then one trial alone for trials/hour.
SWEEP_SIZE = ["num_steps=4", "prompts_per_step=8", "max_new_tokens=128", "eval_steps=1", "log_images_every=2",
              "save_every_samples=0", "synthetic_train_size=64", "synthetic_val_size=8", "rollout_batch_size=32",
              "cpus_per_learner=2", "num_learners=1", "num_rollout_workers=1"]
SWEEPS = [
    Run("grpo-qwen3vl-2b-1n1g-lora.yaml", "sweep", "qwen3-vl-2b",
        SWEEP_SIZE + ["gpus_per_learner=0.25", "rollout_gpus=0.25"], label="sweep-4x2", min_seconds=300,
        flags=["--space", "default", "--num-samples", "4", "--max-concurrent", "2", "--stop-on", "val_map50"]),
    Run("grpo-qwen3vl-2b-1n1g-lora.yaml", "sweep", "qwen3-vl-2b",
        SWEEP_SIZE + ["gpus_per_learner=0.5", "rollout_gpus=0.5"], label="sweep-1x1",
        flags=["--space", "default", "--num-samples", "1", "--max-concurrent", "1", "--stop-on", "val_map50"]),
]
CPU_SIZE = ["use_gpu=false", "bf16=false", "save_every_samples=4", "max_image_size=128", "synthetic_train_size=8",
            "synthetic_val_size=2", "cpus_per_learner=0.5", "compile_layers=false", "micro_batch_size=0"]
CPU_GRPO_SIZE = ["num_steps=2", "prompts_per_step=2", "num_generations=2", "max_new_tokens=16", "eval_steps=2",
                 "log_images_every=2", "rollout_batch_size=8", "rollout_engine=hf", "compile_decode=false"]


# -- models -------------------------------------------------------------------------------------------
def qwen25_vl_2b_config():
    """Qwen2.5-VL-3B-Instruct's published config with 16 of its 36 decoder layers (2.2 B parameters)."""
    from transformers import Qwen2_5_VLConfig

    from vlm_rl.models.tiny import _BOS, _EOS, _PAD, _TOKEN_IDS
    from vlm_rl.models.tokenizer import MODEL_VOCAB_SIZE

    text = dict(vocab_size=MODEL_VOCAB_SIZE, hidden_size=2048, intermediate_size=11008, num_hidden_layers=16,
                num_attention_heads=16, num_key_value_heads=2, max_position_embeddings=128000,
                rope_parameters={"rope_type": "default", "rope_theta": 1e6, "mrope_section": [16, 24, 24]},
                bos_token_id=_BOS, eos_token_id=_EOS, pad_token_id=_PAD)
    vision = dict(depth=32, hidden_size=1280, intermediate_size=3420, num_heads=16, out_hidden_size=2048,
                  patch_size=14, spatial_merge_size=2, temporal_patch_size=2, window_size=112,
                  fullatt_block_indexes=[7, 15, 23, 31])
    config = Qwen2_5_VLConfig(text_config=text, vision_config=vision, tie_word_embeddings=True, **_TOKEN_IDS)
    config.bos_token_id, config.eos_token_id, config.pad_token_id = _BOS, _EOS, _PAD
    return config


def build_model(arch: str, root: Path) -> str:
    """A saved random-weight model folder of ``arch`` (built once, on the GPU, in bf16)."""
    if arch == "tiny":
        return "tiny-qwen3-vl"
    out = root / arch
    if (out / "config.json").is_file():
        return str(out)
    if arch == "qwen3-vl-2b-8l":
        return str(_build(out, "qwen3_vl", _qwen3_vl_2b_8l_config()))
    if arch.startswith("qwen3-vl"):
        from bench.throughput_common import build_model_dir

        key = {"qwen3-vl-2b": "2b", "qwen3-vl-8b": "8b"}[arch]
        return str(build_model_dir(key, root, "cuda"))
    return str(_build(out, "qwen2_5_vl", qwen25_vl_2b_config()))


def _qwen3_vl_2b_8l_config():
    """Qwen3-VL-2B's published config with 8 of its 28 decoder layers (deepstack kept on the vision side)."""
    from vlm_rl.models.tiny import real_architecture_config

    config = real_architecture_config("qwen3-vl-2b")
    config.text_config.num_hidden_layers = 8
    return config


def _build(out: Path, family: str, config) -> Path:
    import torch
    from transformers import GenerationConfig

    from vlm_rl.models.families import model_class
    from vlm_rl.models.processor import make_processor
    from vlm_rl.models.tiny import _BOS, _EOS, _PAD
    from vlm_rl.models.tokenizer import load_qwen_tokenizer

    t0 = time.perf_counter()
    torch.manual_seed(0)
    with torch.device("cuda"):
        model = model_class(family)(config).to(torch.bfloat16)
    model.generation_config = GenerationConfig(bos_token_id=_BOS, eos_token_id=[_EOS, _PAD], pad_token_id=_PAD)
    model.save_pretrained(out, safe_serialization=True)
    make_processor(load_qwen_tokenizer(family), family).save_pretrained(out)
    del model
    torch.cuda.empty_cache()
    print(f"built {out.name} in {time.perf_counter() - t0:.1f}s -> {out}", flush=True)
    return out


# -- the cluster ----------------------------------------------------------------------------------------
def free_port() -> int:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def start_cluster(state_dir: Path, gpus: int, cpus: int, own_ports: bool = False) -> dict:
    """`start-local-cluster.sh` as cluster/README.md §1 runs it; returns the client env its env.sh sets.
    ``own_ports``: free ports for Ray's agents too (a machine where another Ray runs, e.g. the CPU dry run)."""
    env = {**os.environ, "VLMRL_LOCAL_DIR": str(state_dir)}
    flags = [f"--num-cpus={cpus}"] + ([f"--num-gpus={gpus}"] if gpus else [])
    if own_ports:
        env.update(RAY_PORT=str(free_port()), DASHBOARD_PORT=str(free_port()), MLFLOW_PORT=str(free_port()),
                   RAY_CLIENT_PORT=str(free_port()))
        flags += [f"--dashboard-agent-listen-port={free_port()}", f"--dashboard-agent-grpc-port={free_port()}",
                  f"--runtime-env-agent-port={free_port()}", f"--metrics-export-port={free_port()}"]
    subprocess.run(["bash", str(REPO / "cluster/local/start-local-cluster.sh"), *flags], env=env, check=True,
                   cwd=REPO)
    for line in (state_dir / "env.sh").read_text().splitlines():
        if m := re.match(r"export (\w+)='?([^']*)'?$", line):
            env[m.group(1)] = m.group(2)
    return env


def stop_cluster(env: dict) -> None:
    subprocess.run(["bash", str(REPO / "cluster/local/stop-local-cluster.sh")], env=env, cwd=REPO)


# -- one job --------------------------------------------------------------------------------------------
def submit(env: dict, entry: str, args: list[str]) -> str:
    """`ray job submit --no-wait`; returns the submission id."""
    cmd = ["ray", "job", "submit", "--address", env["VLMRL_RAY_ADDRESS"], "--runtime-env",
           "ray_jobs/runtime_env.yaml", "--no-wait", "--", "python", "-m", f"ray_jobs.{entry}", *args]
    print("$", " ".join(cmd), flush=True)
    for _ in range(30):  # the job agent answers some seconds after `ray start` returns
        done = subprocess.run(cmd, env=env, cwd=REPO, capture_output=True, text=True)
        if "No available agent" not in done.stdout + done.stderr:
            break
        time.sleep(4.0)
    if done.returncode:
        raise RuntimeError(f"ray job submit exited {done.returncode}: {(done.stdout + done.stderr)[-2000:]}")
    out = done.stdout
    match = re.search(r"(raysubmit_\w+)", out)
    if not match:
        raise RuntimeError(f"no submission id in: {out[-1000:]}")
    return match.group(1)


def job_client(env: dict):
    os.environ.update({k: env[k] for k in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH") if k in env})
    from ray.job_submission import JobSubmissionClient

    return JobSubmissionClient(env["VLMRL_RAY_ADDRESS"])


def wait_job(client, job_id: str, timeout_s: float, log_path: Path, on_poll=None) -> tuple[str, float]:
    """Poll until the job is terminal or ``timeout_s`` passes (calling ``on_poll()`` each time); mirrors its
    log to ``log_path``."""
    t0 = time.time()
    status = "PENDING"
    while time.time() - t0 < timeout_s:
        status = str(client.get_job_status(job_id)).split(".")[-1]
        if status in ("SUCCEEDED", "FAILED", "STOPPED"):
            break
        if on_poll:
            on_poll()
        time.sleep(2.0)
    log_path.write_text(client.get_job_logs(job_id))
    return status, time.time() - t0


def driver_stack(client, job_id: str) -> str:
    """The hung driver's Python stack (py-spy), for the record."""
    pid = (client.get_job_info(job_id).driver_info or {}) if hasattr(client.get_job_info(job_id), "driver_info") else {}
    pid = getattr(pid, "pid", None) or (pid.get("pid") if isinstance(pid, dict) else None)
    if not pid or not shutil.which("py-spy"):
        return ""
    return subprocess.run(["py-spy", "dump", "--pid", str(pid)], capture_output=True, text=True).stdout[-6000:]


class Fault:
    """SIGKILL the run's learner worker(s) or rollout actor once step ``at_step`` is logged and a checkpoint
    exists (found through Ray's state API, as an operator would with `ray list actors`)."""

    CLASSES = {"learner": "RayTrainWorker", "actor": "RolloutWorker"}

    def __init__(self, kind: str, at_step: int, output_dir: Path, dashboard: str):
        self.kind, self.at_step, self.output_dir, self.dashboard = kind, at_step, output_dir, dashboard
        self.record: dict = {}

    def __call__(self) -> None:
        if self.record:
            return
        steps = logged_steps(self.output_dir)
        if not steps or max(steps) < self.at_step or not list(self.output_dir.glob("checkpoint-samples-*[0-9]")):
            return
        from ray.util.state import list_actors

        alive = list_actors(address=self.dashboard, filters=[("class_name", "=", self.CLASSES[self.kind]),
                                                             ("state", "=", "ALIVE")])
        pids = [a.pid for a in alive if a.pid]
        for pid in pids:
            os.kill(pid, 9)
        self.record = {"fault": f"{self.kind} ({self.CLASSES[self.kind]}) SIGKILLed after step {max(steps)}",
                       "killed_pids": pids, "steps_before": steps, "killed_at": time.time(),
                       "checkpoints_then": sorted(p.name for p in self.output_dir.glob("checkpoint-samples-*"))}
        print(f"[fault] {self.record['fault']}: pids {pids}", flush=True)


class Faults:
    """Faults in order: each is tried only once the one before it has fired."""

    def __init__(self, faults: list[Fault]):
        self.faults = faults

    def __call__(self) -> None:
        for fault in self.faults:
            if not fault.record:
                fault()
                return

    @property
    def record(self) -> dict:
        fired = [f.record for f in self.faults if f.record]
        missing = [f"{f.kind}: not injected (step {f.at_step} never logged)" for f in self.faults if not f.record]
        if not fired:
            return {}
        return {"fault": "; then ".join([r["fault"] for r in fired] + missing), "kills": fired,
                "all_injected": not missing, "killed_at": fired[-1]["killed_at"],
                "killed_pids": [pid for r in fired for pid in r["killed_pids"]]}

    @property
    def kind(self) -> str:
        return ",".join(f.kind for f in self.faults)

    @property
    def at_step(self) -> str:
        return ",".join(str(f.at_step) for f in self.faults)


# -- the matrix -----------------------------------------------------------------------------------------
def run_matrix(args) -> list[dict]:
    work = Path(args.work).resolve()
    work.mkdir(parents=True, exist_ok=True)
    out_path = Path(args.out)
    results = json.loads(out_path.read_text()) if out_path.is_file() and args.append else []
    env = start_cluster(work / "cluster", gpus=0 if args.cpu else 1, cpus=args.cpus, own_ports=args.cpu)
    try:
        client = job_client(env)
        sets = {"matrix": MATRIX, "faults": FAULTS, "faults-each": FAULTS_EACH, "sweeps": SWEEPS}
        runs = [run for name in args.sets for run in sets[name]]
        chosen = [r for r in runs if not args.recipes or any(n in r.recipe for n in args.recipes)]
        done = {r.get("name", r["recipe"]) for r in results if r.get("ok")} if args.skip_ok else set()
        for index, run in enumerate(chosen):
            if run.name in done:
                print(f"skipping {run.name}: already SUCCEEDED in {out_path}", flush=True)
                continue
            left = args.deadline - (time.time() - STARTED)
            if left < run.min_seconds:
                print(f"skipping {run.name}: {left:.0f} s left in this call, it needs ~{run.min_seconds} s",
                      flush=True)
                continue
            args.cut_at = time.time() + left - 30  # the call's own end, not a hang
            results = [r for r in results if r.get("name", r["recipe"]) != run.name] + [one_job(run, args, work, env, client)]
            out_path.parent.mkdir(parents=True, exist_ok=True)
            out_path.write_text(json.dumps(results, indent=2, default=str))
            if args.cleanup:
                cleanup(run, work, later=chosen[index + 1:])
    finally:
        stop_cluster(env)
    return results


def one_job(run: Run, args, work: Path, env: dict, client) -> dict:
    name = run.name
    output_dir = work / "runs" / name
    shutil.rmtree(output_dir, ignore_errors=True)
    t_model = time.perf_counter()
    model = build_model("tiny" if args.cpu else run.arch, work / "models")
    model_s = time.perf_counter() - t_model
    grpo = run.entry in ("grpo", "sweep")
    cpu = (CPU_SIZE + (CPU_GRPO_SIZE if grpo else ["max_steps=2"])) if args.cpu else []
    overrides = list(run.overrides) + cpu + (["num_steps=6", "save_every_samples=4"] if cpu and run.fault else [])
    overrides += [f"output_dir={output_dir}"]
    extra: dict = {"arch": "tiny-qwen3-vl" if args.cpu else run.arch, "note": run.note, "model_build_s": model_s}
    if run.entry == "dpo":
        sft_final = work / "runs" / "sft-qwen3vl-2b-lora" / "final"
        model = str(sft_final) if (sft_final / "config.json").is_file() else model
        pairs = dpo_pairs(work, env)
        extra.update(dpo_pairs=pairs, dpo_model=model)
        if pairs:
            overrides.append(f"pairs={pairs}")
    if args.cpu and grpo:
        overrides = [o for o in overrides if not o.startswith(("gpus_per_learner", "rollout_gpus"))]
        overrides += ["rollout_gpus=0"]
    overrides.append(f"model_path={model}")
    if run.entry == "grpo" and "colocated" not in run.recipe and not args.cpu:
        overrides.append("eval_on_start=true")
    config = str(RECIPES.relative_to(REPO) / run.recipe)
    flags = list(run.flags) + ([f"--sweep-dir={output_dir}"] if run.entry == "sweep" else [])
    entry = {"recipe": run.recipe, "name": run.name, "entry": f"ray_jobs.{run.entry}", "ok": False, "exit": None,
             "error": None}
    started = time.time()
    try:
        job_id = submit(env, run.entry, ["--config", config, *flags, *overrides])
        memory = GpuMemory() if not args.cpu else None
        fault = Faults([Fault(kind, step, output_dir, env["VLMRL_RAY_ADDRESS"]) for kind, step in run.kills]) \
            if run.fault else None
        timeout = min(args.job_timeout, args.cut_at - time.time()) if getattr(args, "cut_at", None) else \
            args.job_timeout
        status, waited = wait_job(client, job_id, timeout, work / f"{name}.log", on_poll=fault)
        if fault:
            entry.update(fault_result(fault, output_dir))
        if memory:
            entry["gpu_used_peak_gb"] = memory.stop()
        if run.entry == "sweep":
            entry.update(sweep_result(output_dir, (work / f"{name}.log").read_text(), env, waited))
        log = (work / f"{name}.log").read_text()
        entry.update(job_id=job_id, status=status)
        if status not in ("SUCCEEDED", "FAILED", "STOPPED") and timeout < args.job_timeout:
            entry["error"] = f"cut short: still {status} when this call's deadline came ({waited:.0f} s, not a hang)"
            entry["cut_short"] = True
            client.stop_job(job_id)
        elif status not in ("SUCCEEDED", "FAILED", "STOPPED"):
            entry["error"] = f"hung: still {status} after {args.job_timeout:.0f} s"
            entry["driver_stack"] = driver_stack(client, job_id)
            client.stop_job(job_id)
        else:
            info = client.get_job_info(job_id)
            entry["exit"] = getattr(info, "driver_exit_code", None)
            entry["ok"] = status == "SUCCEEDED"
            if not entry["ok"]:
                entry["error"] = (getattr(info, "message", "") or "") + "\n" + log[-3000:]
        entry["log_tail"] = log[-1500:]
    except Exception as exc:  # the matrix goes on with the next recipe
        entry["error"] = f"{type(exc).__name__}: {exc}"
    entry["wall_s"] = time.time() - started
    entry.update(measure(output_dir))
    entry["overrides"] = overrides
    entry.update(extra)
    try:
        entry.update(mlflow_check(env.get("MLFLOW_TRACKING_URI", ""), entry.get("run_id")))
    except Exception as exc:
        entry["mlflow_error"] = str(exc)
    entry["disk_free_gb"] = shutil.disk_usage(work).free / 1e9
    print(json.dumps({k: v for k, v in entry.items() if k not in ("log_tail", "driver_stack")}, default=str),
          flush=True)
    return entry


class GpuMemory:
    """The card's used memory, sampled by nvidia-smi every 2 s (all processes: learners + actors + trials)."""

    def __init__(self):
        import threading

        self.peak_mib, self._stop = 0.0, threading.Event()
        self._thread = threading.Thread(target=self._poll, daemon=True)
        self._thread.start()

    def _poll(self) -> None:
        while not self._stop.wait(2.0):
            try:
                out = subprocess.run(["nvidia-smi", "--query-gpu=memory.used", "--format=csv,noheader,nounits"],
                                     capture_output=True, text=True, timeout=10).stdout
                self.peak_mib = max([self.peak_mib] + [float(x) for x in out.split()])
            except (OSError, ValueError, subprocess.SubprocessError):
                pass

    def stop(self) -> float:
        self._stop.set()
        self._thread.join(5)
        return self.peak_mib / 1024


def dpo_pairs(work: Path, env: dict) -> str | None:
    """`vlm-rl dpo-data` on the GRPO 2B run's rollouts; None when they rank no pair (random weights mostly
    score 0 everywhere), and the DPO job then makes its documented synthetic pairs."""
    rollouts = work / "runs" / "grpo-qwen3vl-2b-1n1g-lora" / "rollouts.jsonl"
    if not rollouts.is_file():
        return None
    out = work / "dpo-pairs.jsonl"
    subprocess.run([sys.executable, "-m", "vlm_rl.cli", "dpo-data", "--rollouts", str(rollouts), "--output", str(out)],
                   cwd=REPO, env={**env, "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), env.get("PYTHONPATH")]))},
                   check=False)
    if out.is_file() and out.read_text().strip():
        return str(out)
    return None


def cleanup(run: Run, work: Path, later: list[Run]) -> None:
    """Full-weight checkpoints are tens of GB and the disk 64 GB: once measured, drop the run's checkpoints, its
    merged ``final/`` export unless a later run starts from it (SFT's feeds DPO), and its model folder unless a
    later run uses the same architecture (on 2026-12-07 the exports and the 2B model left too little for the next
    ZeRO-3 run, which the disk check refused)."""
    output_dir = work / "runs" / run.name
    for ckpt in output_dir.glob("checkpoint-samples-*"):
        shutil.rmtree(ckpt, ignore_errors=True)
    if not (run.entry == "sft" and any(r.entry == "dpo" for r in later)):
        shutil.rmtree(output_dir / "final", ignore_errors=True)
    if run.entry == "dpo":
        shutil.rmtree(work / "runs" / "sft-qwen3vl-2b-lora" / "final", ignore_errors=True)
    if run.arch != "tiny" and not any(r.arch == run.arch for r in later):
        shutil.rmtree(work / "models" / run.arch, ignore_errors=True)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--recipes", nargs="*", help="substrings of recipe file names (default: all)")
    parser.add_argument("--work", default="/tmp/vlmrl-recipes")
    parser.add_argument("--out", default=str(REPO / "bench/results/gpu_recipes.json"))
    parser.add_argument("--append", action="store_true", help="keep other recipes' entries already in --out")
    parser.add_argument("--job-timeout", type=float, default=420.0, help="seconds before a job counts as hung")
    parser.add_argument("--cpus", type=int, default=16)
    parser.add_argument("--deadline", type=float, default=1e9, help="seconds this call may take: later recipes "
                        "are skipped rather than cut off (the lent GPU machine runs 10-minute commands)")
    parser.add_argument("--cpu", action="store_true", help="dry run: tiny model, CPU only")
    parser.add_argument("--sets", nargs="+", choices=["matrix", "faults", "faults-each", "sweeps"],
                        default=["matrix"], help="which runs, in this order: the recipe matrix, the fault runs "
                        "(both kills in one run per recipe; faults-each: one kill per run), the Tune sweeps")
    parser.add_argument("--faults", dest="sets", action="store_const", const=["faults"], help="= --sets faults")
    parser.add_argument("--sweeps", dest="sets", action="store_const", const=["sweeps"], help="= --sets sweeps")
    parser.add_argument("--skip-ok", action="store_true", help="with --append: skip runs already SUCCEEDED in "
                        "--out (a later call of the lent machine goes on where the last stopped)")
    parser.add_argument("--no-cleanup", dest="cleanup", action="store_false")
    parser.add_argument("--table", action="store_true", help="print --out as the docs' markdown table and exit")
    args = parser.parse_args()
    if args.table:
        print(markdown_table(json.loads(Path(args.out).read_text())))
        return 0
    results = run_matrix(args)
    bad = [r["recipe"] for r in results if not r["ok"]]
    print(f"{len(results) - len(bad)}/{len(results)} recipes SUCCEEDED" + (f"; not: {bad}" if bad else ""))
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
