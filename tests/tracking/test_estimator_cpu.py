"""The estimator on CPU (issue 26 item 6): the cores, vector features, clock and RAM of the machine it runs on,
memory as RAM of all processes, and no GPU advice for a CPU run."""

from __future__ import annotations

import pytest

import vlm_rl.tracking.estimator as estimator
import vlm_rl.tracking.hardware as hardware
from vlm_rl.config import GRPOConfig, load_config
from vlm_rl.tracking.advice import advise
from vlm_rl.tracking.estimator import detect_cpu, estimate, get_hardware

RECIPE = "ray_jobs/configs/recipes/grpo-tiny-cpu.yaml"
CPUINFO = """processor\t: 0
vendor_id\t: GenuineIntel
model name\t: Test Xeon
cpu MHz\t\t: 2000.000
flags\t\t: fpu sse sse2 avx avx2 fma

processor\t: 1
"""


@pytest.fixture
def machine(monkeypatch):
    """A fake /proc and /sys: 8 cores in the affinity mask, no cgroup limits, 32 GB RAM, AVX2 at 2 GHz."""
    files = {"/proc/cpuinfo": CPUINFO, "/proc/meminfo": "MemTotal:       31250000 kB\n"}
    monkeypatch.setattr(hardware, "_read", lambda path: files.get(path, ""))
    monkeypatch.setattr("os.sched_getaffinity", lambda pid: set(range(8)))
    return files


def test_the_cpu_is_read_from_the_machine(machine):
    hw = detect_cpu()
    assert hw.is_cpu and hw.cores == 8 and hw.memory_gb == pytest.approx(32.0)
    assert hw.peak_tflops == pytest.approx(2.0 * 32 / 1e3)  # 2 GHz x 32 fp32 FLOP/cycle (AVX2 FMA) per core
    assert "Test Xeon" in hw.name and "8 cores" in hw.name and "AVX2" in hw.name
    machine["/sys/fs/cgroup/cpu.max"] = "200000 100000"  # a container's quota: 2 cores
    machine["/sys/fs/cgroup/memory.max"] = str(4 * 10**9)
    hw = detect_cpu()
    assert hw.cores == 2 and hw.memory_gb == pytest.approx(4.0)
    assert detect_cpu(cores=16, memory_gb=64).cores == 16  # --cores / --memory-gb: another machine


def test_auto_follows_the_config(machine):
    cpu_run = load_config(GRPOConfig, RECIPE, env={})
    assert not cpu_run.use_gpu and get_hardware("auto", cpu_run).is_cpu
    gpu_run = cpu_run.model_copy(update={"use_gpu": True})
    assert not get_hardware("auto", gpu_run).is_cpu  # this machine's GPU, or an H100 when it has none


def test_cpu_memory_is_the_ram_of_every_process(machine):
    config = load_config(GRPOConfig, RECIPE, env={})
    result = estimate(config, 12, get_hardware("cpu"))
    assert result.memory_scope == "RAM (all processes)"
    assert result.peak_memory_gb == pytest.approx(sum(result.memory.values()))
    assert result.memory["processes"] == pytest.approx(3 * estimator.CPU_PROCESS_GB)  # 2 learners + 1 actor
    assert estimate(config, 12, "h100").memory_scope == "per GPU"


def test_more_cores_train_two_learners_faster(machine):
    config = load_config(GRPOConfig, RECIPE, env={})
    one, two = (estimate(config, 12, detect_cpu(cores=c)).phases["training"] for c in (1, 2))
    assert one > two  # 2 learners share 1 core, or run side by side on 2


def test_no_gpu_advice_for_a_cpu_run(machine):
    config = load_config(GRPOConfig, RECIPE, env={})  # 2 learners x 0.5 CPU + 1 actor: 2 cores busy
    gpu_words = ("GPU", "compile", "colocated", "CUDA")
    for cores in (2, 8):
        titles = [a.title + " " + a.detail for a in advise(config, detect_cpu(cores=cores))]
        assert not [t for t in titles if any(w in t for w in gpu_words)], titles
    on_two = [a.title for a in advise(config, detect_cpu(cores=2))]
    assert not [t for t in on_two if t.startswith(("rollout workers", "learners"))]  # no idle core to add
    on_eight = [a.title for a in advise(config, detect_cpu(cores=8))]
    assert "rollout workers 1 → 2" in on_eight or "learners 2 → 4" in on_eight
    gpu = [a.title for a in advise(config.model_copy(update={"num_learners": 1, "prompts_per_step": 4}), "h100")]
    assert any("GPU" in t or "compile" in t for t in gpu)  # the same config on a GPU still gets them
