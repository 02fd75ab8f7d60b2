"""Weight sync by torch.distributed broadcast (``transport="broadcast"``) over real Ray actors on CPU (gloo):
bit-exact on every actor, received while a generate runs (the sender does not wait for it), and a pool whose
actor was killed still delivers the weights and forms a new group."""

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
    pool = RolloutPool(2, dict(model_path=str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=40,
                               min_new_tokens=40, batch_size=8, lora_rank=4, lora_alpha=8), num_cpus=1,
                       transport="broadcast", broadcast_timeout_s=30)
    yield pool
    pool.shutdown()


@pytest.fixture(scope="module")
def items(synthetic_dataset):
    return [PromptItem.from_sample(s) for s in load_jsonl(synthetic_dataset[0]).samples[:2]]


def _adapter(pool, seed: int) -> dict[str, torch.Tensor]:
    gen = torch.Generator().manual_seed(seed)
    return {k: (torch.randn(v.shape, generator=gen) * 0.05).to(v.dtype) for k, v in pool.get_weights().items()}


def _assert_every_actor_holds(pool, state: dict[str, torch.Tensor]) -> None:
    for index in range(len(pool.workers)):
        actor = pool.get_weights(index)
        assert set(actor) == set(state), index
        assert all(torch.equal(actor[k], state[k]) for k in state), f"actor {index} differs"


def test_broadcast_sync_is_bit_exact_on_every_actor(pool):
    for version, seed in ((1, 10), (2, 11), (3, 12)):  # one group, three broadcasts in a row
        state = _adapter(pool, seed)
        pool.sync_weights(state, version)
        _assert_every_actor_holds(pool, state)
    assert pool.versions() == [3, 3]
    sync = pool.last_sync
    assert sync["weight_sync/actors_broadcast"] == 2
    assert sync["weight_sync/actors_object_store"] == 0 and sync["weight_sync/actors_cuda_ipc"] == 0
    assert sync["weight_sync/bytes"] == layout(state)[1] > 0
    assert pool._group.backend == "gloo" and pool._group.world_size == 3


def test_broadcast_lands_after_the_running_generate_without_blocking_the_sender(pool, items):
    new = _adapter(pool, 13)  # (reads an actor's weights: not while it generates)
    worker = pool.workers[0]
    running = worker.generate.remote(list(enumerate(items * 4)), 4, 7)
    deadline = time.time() + 60
    while not ray.get(worker.generating.remote()):
        assert time.time() < deadline, "generate never started"
        time.sleep(0.005)
    pool.sync_weights(new, version=9, wait=False)  # asynchronous GRPO's sync
    assert not ray.wait([running], timeout=0)[0], "the sender waited for the actor's generate"
    assert {c.weights_version for c in ray.get(running)["completions"]} == {3}  # sampled before the update
    pool.wait_for_sync()
    _assert_every_actor_holds(pool, new)
    assert pool.versions() == [9, 9]


def test_a_killed_actor_still_gets_the_weights_and_a_new_group_forms(pool):
    first_group = pool._group
    ray.kill(pool.workers[1], no_restart=False)  # Ray restarts it with the base weights
    state = _adapter(pool, 14)
    pool.sync_weights(state, version=10)
    _assert_every_actor_holds(pool, state)
    again = _adapter(pool, 15)
    pool.sync_weights(again, version=11)  # through a group of the restarted actors
    _assert_every_actor_holds(pool, again)
    assert pool._group is not first_group and pool.last_sync["weight_sync/actors_broadcast"] == 2
    assert pool.versions() == [11, 11]


def test_a_broadcast_that_cannot_finish_is_aborted_in_bounded_time():
    """The sender never blocks on a member that does not take part (a dead or stuck actor): it aborts the
    group after ``timeout_s``, or as soon as ``lost()`` says a member is gone, and raises. (The same code path
    guards NCCL, whose plain ``wait()`` would block until its watchdog ends the learner process.)"""
    import threading

    from vlm_rl.rollout import broadcast

    store = broadcast.open_store("127.0.0.1", 2, 30)
    receiver: dict = {}
    joiner = threading.Thread(target=lambda: receiver.setdefault(
        "group", broadcast.BroadcastGroup.join("127.0.0.1", store.port, 1, 2, "gloo", timeout_s=30)))
    joiner.start()
    sender = broadcast.BroadcastGroup(store, 0, 2, "gloo", timeout_s=30)
    joiner.join(30)
    buffer = torch.arange(1 << 20, dtype=torch.uint8)
    t0 = time.monotonic()
    with pytest.raises(broadcast.BroadcastTimeout, match="not done after 1 s"):
        sender.broadcast(buffer, timeout_s=1.0)  # the receiver never calls broadcast
    assert time.monotonic() - t0 < 5 and sender._pg is None  # aborted, not left to the backend's 30 s

    store2 = broadcast.open_store("127.0.0.1", 2, 30)
    joiner = threading.Thread(target=lambda: receiver.__setitem__(
        "group", broadcast.BroadcastGroup.join("127.0.0.1", store2.port, 1, 2, "gloo", generation=1, timeout_s=30)))
    joiner.start()
    sender = broadcast.BroadcastGroup(store2, 0, 2, "gloo", generation=1, timeout_s=30)
    joiner.join(30)
    t0 = time.monotonic()
    with pytest.raises(broadcast.BroadcastTimeout, match="lost mid-broadcast"):
        sender.broadcast(buffer, lost=lambda: True)  # e.g. the receiver's Ray call ended in ActorDiedError
    assert time.monotonic() - t0 < 2
