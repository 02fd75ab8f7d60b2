"""Token weighting across ranks: 2 gloo ranks x 2 micro-batches (a short last one, unequal answer lengths per
rank) give the single-batch loss and gradient, in float64, when each micro-batch's loss uses the step's
global normalisers (one all-reduce of two ints) and the engine's division is undone (``engine_loss_scale``).

The ranks do what DeepSpeed does around the loss: divide each backward by the accumulation steps, then
average the gradients over ranks. The test also checks that the old arithmetic (this rank's token count) is
caught, so it can fail.
"""

from __future__ import annotations

import os
import subprocess
import sys

import pytest
import torch
import torch.distributed as dist

from vlm_rl.algos.grpo_loss import engine_loss_scale, grpo_loss

WORLD, ACCUMULATION, VOCAB, DIM = 2, 2, 11, 5
LOSS_TYPES = ("grpo", "dapo", "dr_grpo")
KW = dict(beta=0.04, eps_low=0.2, eps_high=0.28, max_completion_length=7)


def _data():
    """8 sequences; rank 0 holds 0-3 (long answers), rank 1 holds 4-7 (short ones)."""
    gen = torch.Generator().manual_seed(0)
    n, t = 8, 7
    feats = torch.randn(n, t, DIM, generator=gen, dtype=torch.float64)
    ids = torch.randint(0, VOCAB, (n, t), generator=gen)
    lengths = torch.tensor([7, 6, 5, 7, 2, 1, 3, 2])
    mask = (torch.arange(t)[None, :] < lengths[:, None]).to(torch.float64)
    old = torch.randn(n, t, generator=gen, dtype=torch.float64) * 0.3 - 2.5
    ref = torch.randn(n, t, generator=gen, dtype=torch.float64) * 0.3 - 2.5
    adv = torch.randn(n, generator=gen, dtype=torch.float64)
    weight = torch.randn(DIM, VOCAB, generator=gen, dtype=torch.float64)
    return feats, ids, mask, old, ref, adv, weight


def _logp(weight, feats, ids):
    return torch.log_softmax(feats @ weight, dim=-1).gather(-1, ids[..., None]).squeeze(-1)


def _single_batch(loss_type: str):
    feats, ids, mask, old, ref, adv, weight = _data()
    weight.requires_grad_(True)
    loss, _ = grpo_loss(_logp(weight, feats, ids), old, ref, adv, mask, loss_type=loss_type, **KW)
    loss.backward()
    return loss.detach(), weight.grad


def _rank_step(rank: int, loss_type: str, global_normalisers: bool):
    """This rank's step, as PolicyLearner + DeepSpeed take it: returns (step loss, averaged gradient)."""
    feats, ids, mask, old, ref, adv, weight = _data()
    mine = slice(4 * rank, 4 * rank + 4)
    feats, ids, mask, old, ref, adv = (x[mine] for x in (feats, ids, mask, old, ref, adv))
    weight.requires_grad_(True)
    counts = torch.tensor([int(mask.sum()), mask.shape[0]], dtype=torch.int64)
    if global_normalisers:
        dist.all_reduce(counts)  # the one all-reduce the caller makes
    tokens, sequences = int(counts[0]), int(counts[1])
    scale = engine_loss_scale(loss_type, WORLD, ACCUMULATION) if global_normalisers else (
        ACCUMULATION if loss_type == "dapo" else 1.0)  # the arithmetic before issue 15
    step_loss = torch.zeros((), dtype=torch.float64)
    for sl in (slice(0, 3), slice(3, 4)):  # a short last micro-batch
        loss, _ = grpo_loss(_logp(weight, feats[sl], ids[sl]), old[sl], ref[sl], adv[sl], mask[sl],
                            loss_type=loss_type, num_items_in_batch=tokens,
                            num_sequences_in_batch=sequences if global_normalisers else None, **KW)
        (loss * scale / ACCUMULATION).backward()  # the engine divides by the accumulation steps
        step_loss += loss.detach() * scale / (ACCUMULATION * WORLD)
    grad = weight.grad.clone()
    dist.all_reduce(grad)
    grad /= WORLD  # the engine averages gradients over data-parallel ranks
    dist.all_reduce(step_loss)
    return step_loss, grad


def _worker(rank: int, init_file: str, out_dir: str) -> None:
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=WORLD)
    results = {}
    for loss_type in LOSS_TYPES:
        for global_normalisers in (True, False):
            results[(loss_type, global_normalisers)] = _rank_step(rank, loss_type, global_normalisers)
    dist.destroy_process_group()
    torch.save(results, os.path.join(out_dir, f"rank{rank}.pt"))


@pytest.fixture(scope="module")
def two_rank_results(tmp_path_factory):
    out = tmp_path_factory.mktemp("ranks")
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    procs = [subprocess.Popen([sys.executable, __file__, str(rank), str(out / "init"), str(out)], env=env)
             for rank in range(WORLD)]
    assert [p.wait(timeout=120) for p in procs] == [0] * WORLD
    return [torch.load(out / f"rank{r}.pt", weights_only=False) for r in range(WORLD)]


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_two_ranks_two_micro_batches_equal_one_batch(two_rank_results, loss_type):
    want_loss, want_grad = _single_batch(loss_type)
    for results in two_rank_results:
        loss, grad = results[(loss_type, True)]
        torch.testing.assert_close(loss, want_loss, rtol=1e-12, atol=1e-14)
        torch.testing.assert_close(grad, want_grad, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("loss_type", LOSS_TYPES)
def test_per_rank_normalisers_are_caught(two_rank_results, loss_type):
    """This rank's counts (the arithmetic before issue 15) weigh short-answer ranks / short micro-batches
    wrongly; dr_grpo's constant then differs by the micro-batch sizes."""
    _, want_grad = _single_batch(loss_type)
    _, grad = two_rank_results[0][(loss_type, False)]
    assert not torch.allclose(grad, want_grad, rtol=1e-6, atol=1e-9)


def test_engine_loss_scale():
    assert engine_loss_scale("dapo", 4, 3) == 12.0 and engine_loss_scale("bnpo", 4, 3) == 1.0
    with pytest.raises(ValueError, match="loss_type"):
        engine_loss_scale("ppo", 1, 1)


if __name__ == "__main__":  # one rank, started by the fixture above
    _worker(int(sys.argv[1]), sys.argv[2], sys.argv[3])
