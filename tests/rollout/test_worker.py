"""RolloutWorker in-process (the Ray actor runs this same class): sampling, scoring, weight updates."""

from __future__ import annotations

import pytest
import torch

from vlm_rl.data.schema import load_jsonl
from vlm_rl.models.prompts import answer_text
from vlm_rl.rollout.engine import prepare_prompt, trim_at_eos
from vlm_rl.rollout.pool import split_evenly
from vlm_rl.rollout.types import PromptItem
from vlm_rl.rollout.worker import RolloutWorker


@pytest.fixture(scope="module")
def items(synthetic_dataset):
    samples = load_jsonl(synthetic_dataset[0]).samples[:3]
    return [PromptItem.from_sample(s) for s in samples]


@pytest.mark.parametrize("family_fixture", ["tiny_model_dir", "tiny_qwen25_dir"])
def test_generates_groups_scored_in_model_coordinates(request, family_fixture, items):
    model_dir = request.getfixturevalue(family_fixture)
    worker = RolloutWorker(str(model_dir), labels=["stop_sign"], max_image_size=64, max_new_tokens=8,
                           batch_size=4, lora_rank=0, seed=1, return_logprobs=True)
    out = worker.generate(list(enumerate(items)), num_generations=3, step=1)
    completions = out["completions"]
    assert len(completions) == 9 and [c.prompt_index for c in completions] == [0, 0, 0, 1, 1, 1, 2, 2, 2]
    for c in completions:
        assert 1 <= len(c.completion_ids) <= 8 and len(c.sampling_logprobs) == len(c.completion_ids)
        assert all(lp <= 0 for lp in c.sampling_logprobs)
        assert 0.0 <= c.rewards["detection"] <= 1.0 and c.rewards["total"] >= 0
    # ground truth reaches the reward in the family's own coordinate system
    image, solution = prepare_prompt(items[0], 64, worker.family)
    assert completions[0].solution == solution
    if worker.family == "qwen2_5_vl":  # absolute pixels of the resized image
        assert all(0 <= v <= max(image.size) for o in solution for v in o["bbox_2d"])
    # same step and seed → same samples; another step → other samples
    again = worker.generate(list(enumerate(items)), num_generations=3, step=1)["completions"]
    assert [c.completion_ids for c in again] == [c.completion_ids for c in completions]


def test_perfect_answer_scores_full_reward(tiny_model_dir, items):
    worker = RolloutWorker(str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=4, lora_rank=0)
    _, solution = prepare_prompt(items[0], 64, worker.family)
    from vlm_rl.rewards.detection import combined_reward

    scores = combined_reward([answer_text(solution)], [solution], format_weight=0.5)[0]
    assert scores["detection"] == pytest.approx(1.0) and scores["format"] == pytest.approx(1.0)


def test_lora_adapter_update_roundtrip(tiny_model_dir):
    worker = RolloutWorker(str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=4,
                           lora_rank=4, lora_alpha=8)
    state = worker.get_weights()
    assert state and all("lora_" in k for k in state)
    new = {k: torch.full_like(v, 0.01) for k, v in state.items()}
    assert worker.update_weights(new, version=7) == 7
    assert all(torch.equal(worker.get_weights()[k], new[k]) for k in new)
    with pytest.raises(KeyError):
        worker.update_weights({"not.a.weight": torch.zeros(1)}, version=8)


def test_trim_and_split_helpers():
    assert trim_at_eos([5, 6, 151645, 9, 9], {151645}, pad_id=151643) == [5, 6, 151645]
    assert trim_at_eos([5, 151643, 151643], {151645}, pad_id=151643) == [5]
    assert split_evenly(list(range(5)), 2) == [[0, 1, 2], [3, 4]]
    assert split_evenly([1], 3) == [[1], [], []]


def test_evaluate_reports_mlflow_safe_detection_metrics(tiny_model_dir, synthetic_dataset):
    worker = RolloutWorker(str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=6, lora_rank=0)
    metrics = worker.evaluate(str(synthetic_dataset[1]), limit=3)
    for key in ("eval/mAP_50", "eval/mAP_50_95", "eval/f1", "eval/format_valid_rate"):
        assert 0.0 <= metrics[key] <= 1.0, key
    assert all("@" not in k and "[" not in k for k in metrics)


def test_weight_update_waits_for_a_running_generate(tiny_model_dir, items):
    """The actor runs two calls at once; an update arriving mid-generate (LoRA folded into the base weights)
    must wait: the generate samples with one version throughout and the base weights come back bit-exact."""
    import threading
    import time

    worker = RolloutWorker(str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=48,
                           min_new_tokens=48, batch_size=4, lora_rank=4, lora_alpha=8)
    adapter = worker.get_weights()
    gen = torch.Generator().manual_seed(0)
    first = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in adapter.items()}
    second = {k: torch.randn(v.shape, generator=gen) * 0.05 for k, v in adapter.items()}
    worker.update_weights(first, version=1)
    base = {k: v for k, v in worker.get_weights(include_base=True).items() if "lora_" not in k}

    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(worker.generate(list(enumerate(items)), 4, step=1)))
    thread.start()
    deadline = time.time() + 30
    while not worker.generating():
        assert thread.is_alive() and time.time() < deadline, "generate never started"
        time.sleep(0.001)
    assert worker.update_weights(second, version=2) == 2
    assert not worker.generating()  # the update ran only after the generate released the weights
    thread.join(timeout=60)
    assert {c.weights_version for c in result["completions"]} == {1}
    after = worker.get_weights(include_base=True)
    assert all(torch.equal(after[k], base[k]) for k in base)  # the fold was undone with the adapter it used
    assert all(torch.equal(worker.get_weights()[k], second[k]) for k in second)


def test_generate_that_overtakes_its_update_waits_for_it(tiny_model_dir, items):
    """Ray may start a threaded actor's generate before the update sent ahead of it: the generate waits for
    the version the caller sent (``min_version``) instead of sampling stale weights; a restarted actor
    (version 0) does not wait."""
    import threading
    import time

    worker = RolloutWorker(str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=8,
                           batch_size=4, lora_rank=4, lora_alpha=8)
    adapter = worker.get_weights()
    worker.update_weights(adapter, version=1)
    result: dict = {}
    thread = threading.Thread(target=lambda: result.update(
        worker.generate(list(enumerate(items[:1])), 2, step=2, min_version=2)))
    thread.start()
    time.sleep(0.3)
    assert not worker.generating() and thread.is_alive()  # waiting for version 2, outside the lock
    worker.update_weights({k: v + 0.01 for k, v in adapter.items()}, version=2)
    thread.join(timeout=60)
    assert {c.weights_version for c in result["completions"]} == {2}
    fresh = RolloutWorker(str(tiny_model_dir), labels=None, max_image_size=64, max_new_tokens=8, batch_size=4)
    started = time.monotonic()
    out = fresh.generate(list(enumerate(items[:1])), 2, step=1, min_version=5, wait_s=30)
    assert time.monotonic() - started < 20 and {c.weights_version for c in out["completions"]} == {0}


def test_fifo_lock_admits_callers_in_arrival_order():
    import threading
    import time

    from vlm_rl.rollout.worker import FifoLock

    lock, order, started = FifoLock(), [], []

    def call(name):
        started.append(name)
        with lock:
            order.append(name)

    with lock:  # held while eight callers queue up one after another
        threads = []
        for i in range(8):
            threads.append(threading.Thread(target=call, args=(i,)))
            threads[-1].start()
            while len(started) <= i:
                time.sleep(0.001)
            time.sleep(0.01)  # let it reach the wait
    for t in threads:
        t.join(timeout=10)
    assert order == list(range(8))
