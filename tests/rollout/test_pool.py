"""RolloutPool over real Ray actors (CPU): weight sync through the object store is bit-exact and measured,
prefetch feeds the actors' next generate, and a sync sent during a generate waits for it."""

from __future__ import annotations

import time

import pytest
import ray
import torch

from vlm_rl.data.schema import load_jsonl
from vlm_rl.rollout.pool import RolloutPool
from vlm_rl.rollout.types import PromptItem
from vlm_rl.rollout.weight_sync import layout


@pytest.fixture(scope="module")
def pool(ray_cluster, tiny_model_dir):
    pool = RolloutPool(1, dict(model_path=str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=40,
                               min_new_tokens=40, batch_size=8, lora_rank=4, lora_alpha=8), num_cpus=1)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def items(synthetic_dataset):
    return [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]


def _adapter(pool, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.05).to(v.dtype) for k, v in pool.get_weights().items()}


def test_sync_is_bit_exact_and_recorded(pool):
    state = _adapter(pool, 1)
    seconds = pool.sync_weights(state, version=3)
    actor = pool.get_weights()
    assert set(actor) == set(state) and all("lora_" in k for k in actor)  # under LoRA only the adapter moves
    assert all(torch.equal(actor[k], state[k]) for k in state)
    assert pool.versions() == [3]
    sync = pool.last_sync
    assert sync["weight_sync/seconds"] == pytest.approx(seconds)
    assert sync["weight_sync/bytes"] == layout(state)[1] > 0
    assert sync["weight_sync/actors_object_store"] == 1 and sync["weight_sync/actors_cuda_ipc"] == 0


def test_prefetched_generate_samples_the_same_with_logprobs(pool, items):
    pool.sync_weights(_adapter(pool, 2), version=4)
    plain = pool.generate(items, 2, step=5)["completions"]
    pool.prefetch(items)
    prefetched = pool.generate(items, 2, step=5)["completions"]
    assert [c.completion_ids for c in prefetched] == [c.completion_ids for c in plain]
    assert [c.prompt_index for c in plain] == [0, 0, 1, 1] and {c.weights_version for c in plain} == {4}
    assert all(len(c.sampling_logprobs) == len(c.completion_ids) and max(c.sampling_logprobs) < 0 for c in plain)


def test_sync_during_generate_waits_for_it(pool, items):
    pool.sync_weights(_adapter(pool, 3), version=6)
    worker = pool.workers[0]
    running = worker.generate.remote(list(enumerate(items * 2)), 4, 7)
    deadline = time.time() + 60
    while not ray.get(worker.generating.remote()):  # answers mid-generate: the actor runs two calls at once
        assert time.time() < deadline, "generate never started"
        time.sleep(0.005)
    new = _adapter(pool, 4)
    pool.sync_weights(new, version=8)
    ready, _ = ray.wait([running], timeout=0)
    assert ready, "the weight update finished before the generate it interrupted"
    assert {c.weights_version for c in ray.get(running)["completions"]} == {6}
    assert all(torch.equal(pool.get_weights()[k], new[k]) for k in new) and pool.versions() == [8]
