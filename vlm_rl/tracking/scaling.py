"""Scaling model: prompts/hour against the number of GPUs, for a rollout pool plus (ZeRO-3) learners.

Built from per-phase times measured on one GPU (bench/grpo_throughput.py), the bytes a weight sync moves
and link bandwidths, so a user can size a cluster before renting it. Pure arithmetic, no torch.

Decode is bound by reading the weights once per token, not by the batch: splitting a fixed batch over
more rollout GPUs barely shortens it. So the model scales the batch with the GPUs (``prompts_per_gpu``) and
picks, for each GPU count, the rollout/learner split that maximises throughput.

>>> m = PhaseModel()
>>> round(m.step(rollout_gpus=1, learner_gpus=1, prompts=8, staleness=0).total, 2) > 0
True
"""

from __future__ import annotations

from dataclasses import dataclass, field

GB = 1e9


@dataclass(frozen=True)
class Links:
    """Bytes per second of the paths a weight sync can take (nominal, derated to what collectives reach)."""

    nvlink: float = 360 * GB  # H100/H200 SXM NVLink 4: 450 GB/s per direction, ~80% in NCCL collectives
    infiniband: float = 45 * GB  # one 400 Gb/s NIC per GPU
    #: GPU -> host -> Ray object store -> host -> GPU (a flat numpy buffer, no unpickling); an assumption: a
    #: pickled torch tensor measured 0.27 GB/s on the H200 (bench/ray_ipc_probe.py), memcpy-bound paths reach ~5 GB/s
    object_store: float = 2 * GB


@dataclass(frozen=True)
class PhaseModel:
    """Per-phase costs of Qwen3-VL-8B (LoRA r=64, 512 px, 256 new tokens), measured on one H200.

    Defaults come from bench/results/h200_8b_merged_compiled.json (8 prompts x 4 completions per step):
    decode 1.809 s for 256 tokens at 32 sequences, 0.47 s of per-rollout overhead (prefill, LoRA fold and
    restore, graph capture), learner 1.771 s for 32 sequences; the decode floor of that run (weights
    15.14 GB + 2.14 GB of KV per token, 4.26 TB/s copy bandwidth) gives the 1.74x efficiency factor.
    """

    new_tokens: int = 256
    generations: int = 4
    weight_bytes: float = 15.14 * GB  # bf16 text weights read per decode step
    kv_bytes_per_seq: float = 2.14 * GB / 32  # average KV read per sequence per decode step
    hbm_bandwidth: float = 4.26e12
    decode_efficiency: float = 1.809 / 1.038  # measured decode time / its memory-bandwidth floor
    rollout_fixed_s: float = 0.47  # prefill + LoRA fold/restore + graph capture per rollout call
    train_s_per_seq: float = 1.771 / 32  # learner forward+backward+step per sequence on one GPU
    train_multiplier: float = 1.0  # 1.5 for full fine-tuning (6N instead of ~4N FLOPs per token)
    zero3_gathers: int = 3  # weight all-gathers per micro-batch under ZeRO-3 (fwd, recompute, bwd)
    zero3_param_bytes: float = 16.4 * GB  # bf16 weights of the whole 8B model
    sync_bytes: float = 0.349 * GB  # LoRA r=64 adapter of the 8B text model (bf16, measured); full: 16.4 GB
    #: measured weight_sync phase, learner and actor on one H200 (export to host, CUDA IPC hand-off, load)
    same_gpu_sync_s: float = 0.21
    links: Links = field(default_factory=Links)

    def decode_s_per_token(self, sequences: float) -> float:
        floor = (self.weight_bytes + sequences * self.kv_bytes_per_seq) / self.hbm_bandwidth
        return self.decode_efficiency * floor

    def generation_s(self, prompts: int, rollout_gpus: int) -> float:
        """One rollout of the step's prompts, split evenly over ``rollout_gpus`` actors (one copy each)."""
        sequences = prompts * self.generations / rollout_gpus
        return self.rollout_fixed_s + self.new_tokens * self.decode_s_per_token(sequences)

    def training_s(self, prompts: int, learner_gpus: int) -> float:
        """One optimizer step; ZeRO-3 adds the weight all-gathers when there is more than one learner."""
        compute = prompts * self.generations * self.train_s_per_seq * self.train_multiplier / learner_gpus
        if learner_gpus == 1:
            return compute
        gather = self.zero3_gathers * self.zero3_param_bytes * (learner_gpus - 1) / learner_gpus
        return compute + gather / self.links.nvlink

    def sync_s(self, same_gpu: bool, transport: str = "object_store", cross_node: bool = False) -> float:
        """Seconds to move the trainable weights to the actors. ``object_store`` is what vlm-rl does between
        GPUs today; ``nccl`` (a broadcast group between learner rank 0 and the actors) is not built yet."""
        if same_gpu:
            return self.same_gpu_sync_s
        if transport == "nccl":
            return self.sync_bytes / (self.links.infiniband if cross_node else self.links.nvlink)
        if transport != "object_store":
            raise ValueError(f"transport: expected 'object_store' or 'nccl', got {transport!r}")
        return self.sync_bytes / min(self.links.object_store, self.links.infiniband)

    def step(self, *, rollout_gpus: int, learner_gpus: int, prompts: int, staleness: int,
             transport: str = "object_store", cross_node: bool = False) -> StepEstimate:
        """Seconds per step. Synchronous: sample, train, sync in turn. Asynchronous (staleness >= 1): the pool
        samples step k+1 while the learners train step k; the sync waits for both."""
        gen = self.generation_s(prompts, rollout_gpus)
        train = self.training_s(prompts, learner_gpus)
        sync = self.sync_s(same_gpu=False, transport=transport, cross_node=cross_node)
        total = max(gen, train) + sync if staleness else gen + train + sync
        return StepEstimate(rollout_gpus, learner_gpus, prompts, staleness, gen, train, sync, total)

    def colocated(self, prompts: int) -> StepEstimate:
        """The one-GPU colocated path: the learner's model samples, no sync, no overlap."""
        gen = self.generation_s(prompts, 1)
        train = self.training_s(prompts, 1)
        return StepEstimate(1, 1, prompts, 0, gen, train, 0.0, gen + train, colocated=True)


@dataclass(frozen=True)
class StepEstimate:
    rollout_gpus: int
    learner_gpus: int
    prompts: int
    staleness: int
    generation: float
    training: float
    sync: float
    total: float
    colocated: bool = False

    @property
    def gpus(self) -> int:
        return 1 if self.colocated else self.rollout_gpus + self.learner_gpus

    @property
    def prompts_per_hour(self) -> float:
        return 3600.0 * self.prompts / self.total


def best_split(model: PhaseModel, gpus: int, prompts: int, staleness: int,
               transport: str = "object_store") -> StepEstimate:
    """The rollout/learner split of ``gpus`` (at least one of each) with the most prompts/hour."""
    if gpus < 2:
        raise ValueError(f"gpus: a pool needs at least 2 GPUs (one rollout, one learner), got {gpus}")
    options = [model.step(rollout_gpus=r, learner_gpus=gpus - r, prompts=prompts, staleness=staleness,
                          transport=transport) for r in range(1, gpus)]
    return max(options, key=lambda e: e.prompts_per_hour)


def scaling_table(model: PhaseModel, gpu_counts=(2, 4, 8), prompts_per_gpu: int = 8,
                  transport: str = "object_store") -> list[dict]:
    """Rows of prompts/hour for the colocated one-GPU baseline and each GPU count, sync and async."""
    base = model.colocated(prompts_per_gpu)
    rows = [{"gpus": 1, "mode": "colocated", "split": "1 (shared)", "prompts": prompts_per_gpu,
             "step_s": base.total, "prompts_per_hour": base.prompts_per_hour, "per_gpu_efficiency": 1.0}]
    for gpus in gpu_counts:
        for staleness in (0, 1):
            best = best_split(model, gpus, prompts_per_gpu * gpus, staleness, transport)
            rows.append({
                "gpus": gpus, "mode": "async (staleness 1)" if staleness else "sync",
                "split": f"{best.rollout_gpus} rollout + {best.learner_gpus} learner", "prompts": best.prompts,
                "step_s": best.total, "prompts_per_hour": best.prompts_per_hour,
                "per_gpu_efficiency": best.prompts_per_hour / (gpus * base.prompts_per_hour),
            })
    return rows


def markdown(rows: list[dict]) -> str:
    lines = ["| GPUs | mode | split | prompts/step | s/step | prompts/hour | per-GPU efficiency |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for r in rows:
        lines.append(f"| {r['gpus']} | {r['mode']} | {r['split']} | {r['prompts']} | {r['step_s']:.2f} | "
                     f"{r['prompts_per_hour']:,.0f} | {r['per_gpu_efficiency']:.0%} |")
    return "\n".join(lines)
