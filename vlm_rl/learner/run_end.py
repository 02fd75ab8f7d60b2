"""How a run ends when it cannot finish: one non-zero exit, in bounded time, with the reason (issue 23).

Ray Train restarts a worker group whose worker raised, up to ``max_failures`` times, each time from the last
checkpoint. That is right for a lost node and wrong for a full disk or a failed final export: each restart
trains again to the same failure. So a :class:`~vlm_rl.learner.checkpoint.FatalRunError` (raised on every
rank alike, or on rank 0 after training, where no collective follows) does not leave the worker: rank 0
records it in ``<output_dir>/failure.json`` and MLflow marks the run FAILED, every rank reports and returns,
and the driver (``raise_if_failed``) raises it after ``trainer.fit()``. No restart, no rank left waiting.
"""

from __future__ import annotations

import json
import os
from pathlib import Path

FAILURE_FILE = "failure.json"
SUMMARY_FILE = "summary.json"


class FatalRunError(RuntimeError):
    """An error that a restart cannot fix (the disk is full, the final export failed). Learner ranks that hit
    it end without raising, so Ray Train does not re-run the training ``max_failures`` times; the driver
    raises it (exit code 1) with this message."""


class FinalExportError(FatalRunError):
    """Training finished, but the summary or the final export could not be written."""


def write_json(path: Path, payload: dict) -> None:
    """Through a temporary file: a reader never sees half a summary."""
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(json.dumps(payload, indent=2, default=str))
    os.replace(tmp, path)


def clear_run_end(output_dir: str | Path) -> None:
    """Driver, before ``fit``: an earlier attempt's failure or summary must not be taken for this one's."""
    for name in (FAILURE_FILE, SUMMARY_FILE):
        path = Path(output_dir) / name
        if path.is_file():
            path.unlink()


def end_fatal(exc: FatalRunError, output_dir: str | Path, rank: int, on_rank0=None) -> None:
    """A learner rank's end after a fatal error: rank 0 prints and records it (best effort: on a full disk
    even failure.json may not fit; the driver then says so) and runs ``on_rank0`` (mark MLflow FAILED)."""
    import ray.train

    if rank == 0:
        print(f"[vlm-rl] the run failed and will not be restarted: {exc}", flush=True)
        try:
            write_json(Path(output_dir) / FAILURE_FILE, {"error": type(exc).__name__, "message": str(exc)})
        except OSError as write_error:
            print(f"[vlm-rl] could not record the failure in {output_dir}: {write_error}", flush=True)
        if on_rank0 is not None:
            try:
                on_rank0()
            except Exception as sink_error:  # noqa: BLE001 - the failure itself is what must come through
                print(f"[vlm-rl] could not mark the run failed: {sink_error!r}", flush=True)
    ray.train.report({})


def raise_if_failed(output_dir: str | Path) -> dict:
    """Driver, after ``fit``: the run's summary, or the learner's fatal error raised here."""
    output_dir = Path(output_dir)
    failure = output_dir / FAILURE_FILE
    if failure.is_file():
        record = json.loads(failure.read_text())
        raise FatalRunError(record["message"])
    summary = output_dir / SUMMARY_FILE
    if not summary.is_file():
        raise FatalRunError(f"the learners ended without writing {summary} (is the disk at {output_dir} full? "
                            "the learner log above says why)")
    return json.loads(summary.read_text())
