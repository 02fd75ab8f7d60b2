"""`vlm-rl eval` writes metrics + predictions and records an MLflow run with MLflow-safe metric names."""

from __future__ import annotations

import json

from vlm_rl.cli import main

RATE_KEYS = ("mAP@0.5", "mAP@[.5:.95]", "precision", "recall", "f1", "format_valid_rate")


def test_eval_command_writes_files_and_mlflow_run(tiny_model_dir, synthetic_dataset, tmp_path, capsys):
    from mlflow.tracking import MlflowClient

    _, val = synthetic_dataset
    output = tmp_path / "eval" / "metrics.json"
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    code = main([
        "eval", "--model_path", str(tiny_model_dir), "--val_data", str(val), "--limit", "4",
        "--max_image_size", "128", "--max_new_tokens", "16", "--batch_size", "4", "--output", str(output),
        "--tracking_uri", uri, "--experiment", "eval-test", "--run_name", "tiny-eval", "--no_progress",
    ])
    assert code == 0
    metrics = json.loads(output.read_text())
    for key in RATE_KEYS:
        assert 0.0 <= metrics[key] <= 1.0, key
    assert metrics["n_images"] == 4 and isinstance(metrics["per_class"], dict)
    predictions = (output.parent / "predictions.jsonl").read_text().splitlines()
    assert len(predictions) == 4 and {"id", "answer", "parsed", "gt"} <= set(json.loads(predictions[0]))
    assert "AP50" in capsys.readouterr().out  # the table was printed

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("eval-test")
    (run,) = client.search_runs([experiment.experiment_id])
    assert run.info.run_name == "tiny-eval" and run.info.status == "FINISHED"
    logged = run.data.metrics
    assert logged["eval/mAP_50"] == metrics["mAP@0.5"]
    assert logged["eval/mAP_50_95"] == metrics["mAP@[.5:.95]"]
    assert logged["eval/f1"] == metrics["f1"]
    assert logged["eval/format_valid_rate"] == metrics["format_valid_rate"]
    assert run.data.params["val_data"] == str(val)
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "eval")}
    assert {"eval/metrics.json", "eval/predictions.jsonl"} <= artifacts


def test_eval_command_reports_missing_data(tmp_path, capsys):
    code = main(["eval", "--model_path", "tiny-qwen3-vl", "--val_data", str(tmp_path / "nope.jsonl"),
                 "--output", str(tmp_path / "m.json"), "--no_mlflow"])
    assert code == 2
    assert "nope.jsonl" in capsys.readouterr().out
