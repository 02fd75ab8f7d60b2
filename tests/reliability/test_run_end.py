"""A run whose last checkpoint or final summary cannot be written ends once, with a non-zero exit and the
reason, in bounded time (issue 23): no Ray Train restart re-training to the same failure, no rank or driver
left waiting. The fault is a real file in the way, in a tiny one-step colocated run on the session cluster.
(A failing summary or final export takes the same way out: tests/learner/test_checkpoint_safety.py.)"""

from __future__ import annotations

import time

import pytest

from tests.reliability.conftest import Background, grpo_config, logged_steps, record

pytestmark = pytest.mark.slow
#: One GRPO step of the tiny model on the learner itself (no rollout actor); max_failures stays 2, so a
#: failure Ray Train took for a lost worker would re-train twice before giving up.
TINY = dict(rollout_mode="colocated", num_steps=1, sft_warmup_steps=0, save_every_samples=0, beta=0.0,
            num_generations=2, max_new_tokens=8, max_failures=2)
BOUND_S = 240


def run_entry_point(config) -> tuple[int, float]:
    from ray_jobs.grpo import main

    args = [f"{k}={v}" for k, v in config.model_dump(mode="json").items()
            if v is not None and not isinstance(v, (list, dict))]
    t0 = time.time()
    code = Background(main, args).join(BOUND_S + 60)
    return code, time.time() - t0


def test_last_checkpoint_that_cannot_be_written_fails_the_run_once(ray_cluster, tmp_path, capsys):
    out = tmp_path / "run"
    out.mkdir()
    # the last (only) checkpoint's temporary folder cannot be made: an OSError on rank 0, as a full disk gives
    (out / "checkpoint-samples-2.tmp").write_text("a file where the checkpoint's temporary folder goes")
    code, seconds = run_entry_point(grpo_config(out, **TINY))
    err = capsys.readouterr().err
    assert code == 1, err[-2000:]
    assert "the run failed: checkpoint-samples-2 could not be written (FileExistsError" in err
    assert "GB are free at" in err
    assert logged_steps(out) == [1]  # trained once: Ray Train did not restart it
    assert seconds < BOUND_S
    record("last_checkpoint_fails", exit_code=code, seconds=seconds, steps_logged=logged_steps(out))

