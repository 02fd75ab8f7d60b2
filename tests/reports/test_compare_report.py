"""The comparison report from a real MLflow run and a local metrics.jsonl."""

from __future__ import annotations

import json
import re

from vlm_rl.reports.compare import build_report, differing_params, summarize, write_report
from vlm_rl.tracking.history import load_local_run
from vlm_rl.tracking.mlflow_logger import RunTracker


def _local_run(folder, kl=0.02, params=None):
    folder.mkdir(parents=True)
    with (folder / "metrics.jsonl").open("w") as f:
        for step in range(6):
            for name, value in {"reward/total": 0.1 * step, "kl": kl, "loss": 1.0 / (step + 1)}.items():
                f.write(json.dumps({"step": step, "name": name, "value": value, "timestamp": step}) + "\n")
    (folder / "params.json").write_text(json.dumps(params or {"beta": "0.04", "lr": "1e-4"}))
    return folder


def test_report_from_mlflow_id_and_local_files(tmp_path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    tracker = RunTracker(uri, "cmp", run_name="beta-0.1", local_dir=tmp_path / "tracked")
    tracker.log_params({"beta": 0.1, "lr": "1e-4"})
    for step in range(4):
        tracker.log_metrics({"reward/total": 0.2 * step, "kl": 0.03, "samples_per_hour": 1400.0}, step=step)
    tracker.set_tags({"health.status": "warning"})
    tracker.finish()
    local = _local_run(tmp_path / "run-b")
    jsonl = _local_run(tmp_path / "run-c", kl=0.3, params={"beta": "0.02", "lr": "1e-4"}) / "metrics.jsonl"

    out = write_report([tracker.run_id, str(local), str(jsonl)], tmp_path / "out" / "report.html", uri)
    text = out.read_text()
    assert tracker.run_id in text and "beta-0.1" in text and "run-b" in text and "run-c" in text
    body = text.split("<tbody>")[1].split("</tbody>")[0]
    assert body.count("<tr>") == 3
    images = re.findall(r'src="data:image/png;base64,([A-Za-z0-9+/=]+)"', text)
    assert images and all(len(i) > 1000 for i in images)
    assert "<th>beta</th>" in text and "<th>lr</th>" not in text  # only differing params
    # the MLflow run keeps its tag; the jsonl run with KL 0.3 is re-checked by the health monitor
    assert '<span class="warning">warning</span>' in body
    assert '<span class="alarm">alarm</span>' in body


def test_summary_values(tmp_path):
    run = load_local_run(_local_run(tmp_path / "r", params={"a": "1"}))
    summary = summarize(run)
    assert summary["final reward"] == 0.5 and summary["best reward"] == 0.5
    assert abs(summary["mean KL"] - 0.02) < 1e-12 and summary["steps"] == 6 and summary["samples/hour"] is None
    assert summary["health"] == "ok"
    other = load_local_run(_local_run(tmp_path / "s", params={"a": "2", "b": "x"}))
    assert differing_params([run, other]) == ["a", "b"]
    assert "No metrics" not in build_report([run])


def test_steps_count_grpo_steps_not_the_sft_warmup(tmp_path):
    """The demo logs 50 warm-up steps (warmup/*) before 14 GRPO steps: the table says 14 (issue 12)."""
    folder = tmp_path / "demo"
    folder.mkdir()
    with (folder / "metrics.jsonl").open("w") as f:
        for step in range(1, 51):
            f.write(json.dumps({"step": step, "name": "warmup/loss", "value": 1.0, "timestamp": step}) + "\n")
        for step in range(1, 15):
            for name in ("reward/total", "loss", "kl", "health/alarms"):
                f.write(json.dumps({"step": step, "name": name, "value": 0.1, "timestamp": step}) + "\n")
        f.write(json.dumps({"step": 7, "name": "eval/map50", "value": 0.1, "timestamp": 7}) + "\n")
    assert summarize(load_local_run(folder))["steps"] == 14


def test_replayed_health_knows_beta_zero_has_no_kl_to_judge(tmp_path):
    no_ref = load_local_run(_local_run(tmp_path / "r0", kl=0.0, params={"beta": "0.0"}))
    with_ref = load_local_run(_local_run(tmp_path / "r1", kl=0.3, params={"beta": "0.04"}))
    assert summarize(no_ref)["health"] == "ok"
    assert summarize(with_ref)["health"] == "alarm"
