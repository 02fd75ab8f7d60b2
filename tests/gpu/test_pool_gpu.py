"""GPU checks of pool mode on one GPU (run on the lent GPU: ``pytest -m gpu tests/gpu``).

* the pool's rollout actors sample with the fast engine (CUDA-graphed static decode) and agree with HF
  generate on greedy tokens and on their log-probs, for both Qwen VL families;
* weights reach the actors bit for bit, through CUDA IPC (learner and actor on one GPU; state on the GPU or
  staged from the CPU, several syncs in a row), through the object store and through the broadcast group
  (gloo: one GPU cannot host two NCCL ranks), LoRA and full;
* a pool-mode GRPO run (Ray Train learner on 0.5 GPU with DeepSpeed, one rollout actor on the other 0.5),
  on-policy and asynchronous (max_staleness 1), completes its steps, syncs through CUDA IPC and leaves the
  actor holding the learner's weights.
"""

from __future__ import annotations

import json
import math

import pytest
import torch

from vlm_rl.data.schema import load_jsonl
from vlm_rl.models.loading import load_model
from vlm_rl.rollout.types import PromptItem
from vlm_rl.rollout.weight_sync import device_uuid

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU"),
]


def _prompts(synthetic_dataset, n: int) -> list[PromptItem]:
    return [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:n]]


def _pool(model_dir, *, gpus: float = 0.25, transport: str = "auto", **kwargs):
    from vlm_rl.rollout.pool import RolloutPool

    worker = dict(model_path=str(model_dir), labels=None, max_image_size=128, max_new_tokens=24, batch_size=16,
                  lora_rank=0, dtype="float32")
    return RolloutPool(1, {**worker, **kwargs}, num_cpus=1, num_gpus=gpus, transport=transport)


def _device_of(pool) -> torch.device:
    """This process's index of the GPU the pool's actor sits on (Ray numbers GPUs per process)."""
    import ray

    uuid = ray.get(pool.workers[0].device_uuid.remote())
    index = [i for i in range(torch.cuda.device_count()) if device_uuid(i) == uuid]
    assert index, f"the actor's GPU {uuid} is not visible to the test process"
    return torch.device("cuda", index[0])


def _tie_embeddings(state: dict[str, torch.Tensor]) -> None:
    """The tiny models tie lm_head to the input embedding: one tensor under two names, so a random state must
    give both names the same values (else whichever loads last wins and the other name differs)."""
    heads = [k for k in state if k.endswith("lm_head.weight")]
    embeds = [k for k in state if k.endswith("embed_tokens.weight")]
    for head in heads:
        for embed in embeds:
            if state[head].shape == state[embed].shape:
                state[head] = state[embed]


def _rough_state(model_dir, seed: int) -> dict[str, torch.Tensor]:
    """Full float32 weights with larger random text weights (varied greedy answers, not one repeated token)."""
    model = load_model(model_dir, dtype=torch.float32)
    gen = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "language_model" in name and p.ndim == 2 and "embed" not in name:
                p.copy_(torch.randn(p.shape, generator=gen) * 0.3)
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("family_fixture", ["tiny_model_dir", "tiny_qwen25_dir"])
def test_pool_fast_engine_matches_hf_generate_greedy(request, family_fixture, ray_cluster, synthetic_dataset):
    model_dir = request.getfixturevalue(family_fixture)
    fast, hf = _pool(model_dir, engine="fast", temperature=0.0), _pool(model_dir, engine="hf", temperature=0.0)
    try:
        state = _rough_state(model_dir, seed=1)
        items = _prompts(synthetic_dataset, 3)
        outs = {}
        for name, pool in (("fast", fast), ("hf", hf)):
            on_gpu = {k: v.to(_device_of(pool)) for k, v in state.items()}
            pool.sync_weights(on_gpu, version=1)
            assert pool.last_sync["weight_sync/actors_cuda_ipc"] == 1  # same GPU: no trip through the host
            outs[name] = pool.generate(items, 2, step=1)["completions"]
        assert fast.engine_info() == {"engine": "fast", "device": "cuda", "decode_mode": "graph",
                                      "merged_modules": 0}
        assert hf.engine_info()["decode_mode"] == "hf-generate"
        ids = [c.completion_ids for c in outs["fast"]]
        assert len({tuple(i) for i in ids}) > 1 and max(len(set(i)) for i in ids) > 3  # real, varied answers
        assert ids == [c.completion_ids for c in outs["hf"]]
        for a, b in zip(outs["fast"], outs["hf"]):
            assert torch.allclose(torch.tensor(a.sampling_logprobs), torch.tensor(b.sampling_logprobs), atol=1e-3)
    finally:
        fast.shutdown()
        hf.shutdown()


@pytest.mark.parametrize("lora_rank", [8, 0], ids=["lora", "full"])
def test_weights_equal_after_sync_ipc_and_object_store(lora_rank, tiny_model_dir, ray_cluster):
    ipc = _pool(tiny_model_dir, lora_rank=lora_rank, lora_alpha=16, dtype="bfloat16")
    store = _pool(tiny_model_dir, lora_rank=lora_rank, lora_alpha=16, dtype="bfloat16", transport="object_store")
    bcast = _pool(tiny_model_dir, lora_rank=lora_rank, lora_alpha=16, dtype="bfloat16", transport="broadcast")
    try:
        template = ipc.get_weights()
        assert (all("lora_" in k for k in template)) == (lora_rank > 0)  # under LoRA only the adapter moves
        device = _device_of(ipc)
        torch.cuda.set_device(device)  # a CPU state is staged on the current GPU: make it the actors'
        for round_, where in enumerate(["gpu", "cpu", "gpu"]):  # several syncs: handles reopened each time
            gen = torch.Generator().manual_seed(round_)
            state = {k: (torch.randn(v.shape, generator=gen) * 0.1).to(v.dtype) for k, v in template.items()}
            _tie_embeddings(state)
            sent = {k: v.to(device) for k, v in state.items()} if where == "gpu" else state
            ipc.sync_weights(sent, version=round_ + 1)
            store.sync_weights(sent, version=round_ + 1)
            bcast.sync_weights(sent, version=round_ + 1)
            assert ipc.last_sync["weight_sync/actors_cuda_ipc"] == 1, where
            assert store.last_sync["weight_sync/actors_object_store"] == 1, where
            assert bcast.last_sync["weight_sync/actors_broadcast"] == 1 and bcast._group.backend == "gloo", where
            assert ipc.last_sync["weight_sync/bytes"] >= sum(v.numel() * v.element_size() for v in state.values())
            for pool in (ipc, store, bcast):
                got = pool.get_weights()
                assert all(torch.equal(got[k], state[k]) for k in state), (where, pool.transport)
            assert ipc.versions() == store.versions() == bcast.versions() == [round_ + 1]
    finally:
        ipc.shutdown()
        store.shutdown()
        bcast.shutdown()


@pytest.mark.parametrize("max_staleness", [0, 1], ids=["sync", "async"])
def test_pool_grpo_run_with_learner_and_actor_sharing_the_gpu(max_staleness, tiny_model_dir, synthetic_dataset,
                                                              ray_cluster, tmp_path, file_tracking_uri):
    from vlm_rl.config import GRPOConfig
    from vlm_rl.grpo.job import make_rollout_pool, prepare_run, run_grpo
    from vlm_rl.learner.checkpoint import load_weights

    config = GRPOConfig(
        model_path=str(tiny_model_dir), train_data=str(synthetic_dataset[0]), output_dir=str(tmp_path / "run"),
        rollout_mode="pool", use_gpu=True, bf16=True, num_learners=1, gpus_per_learner=0.5,
        num_rollout_workers=1, rollout_gpus=0.5, lora_r=8, num_steps=2, prompts_per_step=2, num_generations=4,
        max_new_tokens=32, max_image_size=128, zero_stage=2, log_images_every=0, max_staleness=max_staleness,
        tracking_uri=file_tracking_uri,
    )
    prepared, labels = prepare_run(config)
    pool = make_rollout_pool(prepared, labels)
    try:
        summary = run_grpo(config, pool=pool)
        assert summary["steps"] == 2
        assert all(math.isfinite(row["loss"]) for row in summary["history"])
        assert pool.engine_info()["decode_mode"] == "graph"  # the actor samples with the fast engine
        learner = load_weights(summary["checkpoint"])  # exported after the last step's sync
        actor = pool.get_weights()
        assert set(actor) == set(learner) and all(torch.equal(actor[k], learner[k]) for k in learner)
        assert pool.versions() == [3]
        rows = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").read_text().splitlines()]
        sync = {r["name"]: r["value"] for r in rows if r["name"].startswith("weight_sync/") and r["step"] == 2}
        assert sync["weight_sync/bytes"] > 0 and sync["weight_sync/seconds"] > 0
        if torch.cuda.device_count() == 1:  # one GPU: learner and actor are on it together
            assert sync["weight_sync/actors_cuda_ipc"] == 1
        import mlflow

        client = mlflow.MlflowClient(file_tracking_uri)
        runs = client.search_runs([e.experiment_id for e in client.search_experiments()])
        logged = [r for r in runs if "weight_sync/seconds" in r.data.metrics]
        assert logged and logged[0].data.metrics["weight_sync/bytes"] == sync["weight_sync/bytes"]
    finally:
        pool.shutdown()
