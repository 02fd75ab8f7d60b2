"""What a step runs on, for `vlm-rl estimate` / `advise`: the known GPUs' datasheet figures, this machine's CPU
(usable cores, vector width, clock, RAM, each capped by the container's limits) and its GPU when it has one.

Split from the estimator (tracking/estimator.py) so that the model of a step and the reading of a machine
change apart; the estimator re-exports these names.
"""

from __future__ import annotations

import math
import os
import re
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from vlm_rl.config import GRPOConfig


@dataclass(frozen=True)
class Hardware:
    name: str
    peak_tflops: float  # GPU: dense bf16 per GPU; CPU: fp32 FMA peak of ONE core (processes are single-threaded)
    hbm_tbps: float  # GPU: HBM per GPU; CPU: DRAM bandwidth of one core
    memory_gb: float  # GPU: per GPU; CPU: the machine's RAM, shared by every process of the run
    kind: str = "gpu"
    cores: int = 0  # CPU: the cores this run may use (affinity and cgroup quota)

    @property
    def is_cpu(self) -> bool:
        return self.kind == "cpu"

    @property
    def memory_label(self) -> str:
        return "RAM (all processes)" if self.is_cpu else "per GPU"


HARDWARE: dict[str, Hardware] = {
    "h100": Hardware("NVIDIA H100 80GB SXM", 989.0, 3.35, 80.0),
    "h200": Hardware("NVIDIA H200 141GB SXM", 989.0, 4.8, 141.0),
    "a100": Hardware("NVIDIA A100 80GB SXM", 312.0, 2.04, 80.0),
    "l4": Hardware("NVIDIA L4 24GB", 121.0, 0.3, 24.0),
}
#: Names --hardware takes besides HARDWARE: ``cpu`` = this machine's CPU (read at run time, see detect_cpu);
#: ``auto`` = what the config runs on: this machine's CPU for use_gpu=false, else this machine's GPU (or H100).
HARDWARE_CHOICES = (*HARDWARE, "cpu", "auto")
_HW_ALIASES = {"h100-80gb": "h100", "h100-sxm": "h100", "h200-141gb": "h200", "a100-80gb": "a100"}

# ----------------------------------------------------------------------------- this machine's CPU
#: fp32 FLOPs per cycle per core with FMA: 2 FMA pipes x vector lanes x 2. AMD Zen 4 runs AVX-512 on 256-bit pipes.
FLOPS_PER_CYCLE = {"avx512-intel": 64, "avx512-amd": 32, "avx2": 32, "avx": 16, "sse": 8}
CPU_DRAM_GBPS_PER_CORE = 10.0  # what one single-threaded process streams from DRAM
DEFAULT_CPU_GHZ = 2.5


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def cpu_cores() -> int:
    """Cores this process may run on: its affinity mask (taskset, a container's cpuset), lowered by a cgroup v2
    CPU quota (``cpu.max``); os.cpu_count() where neither exists."""

    try:
        cores = len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        cores = os.cpu_count() or 1
    quota, _, period = _read("/sys/fs/cgroup/cpu.max").strip().partition(" ")
    if quota.isdigit() and period.strip().isdigit() and int(period) > 0:
        cores = min(cores, max(1, math.ceil(int(quota) / int(period))))
    return max(1, cores)


def ram_gb() -> float:
    """The machine's RAM (MemTotal), lowered by a cgroup memory limit (v2 ``memory.max``, v1 limit_in_bytes)."""
    total = 0.0
    match = re.search(r"^MemTotal:\s+(\d+) kB", _read("/proc/meminfo"), re.MULTILINE)
    if match:
        total = int(match.group(1)) * 1024 / 1e9
    else:
        import os

        try:
            total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE") / 1e9
        except (ValueError, OSError, AttributeError):
            total = 16.0
    for limit_file in ("/sys/fs/cgroup/memory.max", "/sys/fs/cgroup/memory/memory.limit_in_bytes"):
        limit = _read(limit_file).strip()
        if limit.isdigit() and int(limit) < total * 1e9:
            total = int(limit) / 1e9
    return total


def cpu_info() -> dict[str, Any]:
    """Model name, vendor, vector features and clock from /proc/cpuinfo (and cpufreq's maximum when there)."""
    text = _read("/proc/cpuinfo")
    first = text.split("\n\n", 1)[0]
    fields = dict((k.strip(), v.strip()) for k, _, v in (line.partition(":") for line in first.splitlines()) if k)
    flags = set(fields.get("flags", "").split())
    max_khz = _read("/sys/devices/system/cpu/cpu0/cpufreq/cpuinfo_max_freq").strip()
    if max_khz.isdigit():
        ghz = int(max_khz) / 1e6
    else:
        try:
            ghz = float(fields.get("cpu MHz", "")) / 1e3
        except ValueError:
            ghz = DEFAULT_CPU_GHZ
    vendor = fields.get("vendor_id", "")
    if "avx512f" in flags:
        isa = "avx512-amd" if "AMD" in vendor else "avx512-intel"
    else:
        isa = "avx2" if {"avx2", "fma"} <= flags else "avx" if "avx" in flags else "sse"
    return {"model": fields.get("model name", "unknown CPU"), "vendor": vendor, "isa": isa, "ghz": ghz or DEFAULT_CPU_GHZ}


def detect_cpu(cores: int | None = None, memory_gb: float | None = None) -> Hardware:
    """This machine's CPU as the estimate's hardware (``cores`` / ``memory_gb`` override what is read here, to
    estimate for another machine)."""
    info = cpu_info()
    cores = cores or cpu_cores()
    memory = memory_gb or ram_gb()
    per_core = info["ghz"] * FLOPS_PER_CYCLE[info["isa"]] / 1e3  # TFLOPs
    isa = info["isa"].split("-")[0].upper()
    name = f"CPU {info['model']} ({cores} core{'s' * (cores != 1)}, {isa}, {info['ghz']:.2f} GHz, {memory:.0f} GB RAM)"
    return Hardware(name, per_core, CPU_DRAM_GBPS_PER_CORE / 1e3, memory, kind="cpu", cores=cores)


def detect_gpu() -> Hardware | None:
    """This machine's first CUDA GPU, matched to HARDWARE by name (its own memory), else None."""
    try:
        import torch

        if not torch.cuda.is_available():
            return None
        props = torch.cuda.get_device_properties(0)
    except Exception:
        return None
    name = props.name.lower()
    key = next((k for k in ("h200", "h100", "a100", "l4") if k in name), "h100")
    known = HARDWARE[key]
    return Hardware(props.name, known.peak_tflops, known.hbm_tbps, props.total_memory / 1e9)


def get_hardware(name: str, config: GRPOConfig | None = None, *, cores: int | None = None,
                 memory_gb: float | None = None) -> Hardware:
    """A HARDWARE entry; ``cpu``: this machine's CPU; ``auto``: what ``config`` runs on (use_gpu=false: this
    machine's CPU; else its GPU, or an H100 when it has none)."""
    key = _HW_ALIASES.get(name.lower(), name.lower())
    if key == "auto":
        if config is not None and not config.use_gpu:
            key = "cpu"
        else:
            found = detect_gpu()
            if found is None:  # a GPU config estimated on a machine without one
                return replace(HARDWARE["h100"], name=f"{HARDWARE['h100'].name} (no GPU here: pass --hardware)")
            return found
    if key == "cpu":
        return detect_cpu(cores, memory_gb)
    if key not in HARDWARE:
        raise ValueError(f"hardware: unknown {name!r}; known: {', '.join(HARDWARE_CHOICES)}")
    return HARDWARE[key]
