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


def _args(tmp_path, **kw):
    import argparse

    base = dict(model_path="tiny-qwen3-vl", val_data="val.jsonl", max_image_size=64, max_new_tokens=8, limit=None,
                output=str(tmp_path / "eval" / "metrics.json"), tracking_uri=None, experiment=None, run_name=None)
    return argparse.Namespace(**{**base, **kw})


def test_eval_logs_to_mlflow_tracking_uri_when_set(tmp_path, monkeypatch):
    """MLFLOW_TRACKING_URI (the local cluster's server) is where the eval run goes; --tracking_uri wins over it;
    a SQLite store beside the output only when neither is given (issue 26 item 7)."""
    from mlflow.tracking import MlflowClient

    from vlm_rl.commands.eval import log_to_mlflow, tracking_uri

    env_uri, flag_uri = f"sqlite:///{tmp_path / 'server.db'}", f"sqlite:///{tmp_path / 'flag.db'}"
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    output = tmp_path / "eval" / "metrics.json"
    assert tracking_uri(_args(tmp_path), output) == f"sqlite:///{output.parent.resolve() / 'mlflow.db'}"
    monkeypatch.setenv("MLFLOW_TRACKING_URI", env_uri)
    assert tracking_uri(_args(tmp_path), output) == env_uri
    assert tracking_uri(_args(tmp_path, tracking_uri=flag_uri), output) == flag_uri

    # a checkpoint inside a training run's folder: the eval run joins that run's experiment, tagged with its id
    run = tmp_path / "run"
    (run / "checkpoint-samples-8").mkdir(parents=True)
    (run / "params.json").write_text(json.dumps({"experiment_name": "vlm-rl-smoke"}))
    (run / "tags.json").write_text(json.dumps({"mlflow.runId": "abc123"}))
    output.parent.mkdir(parents=True)
    output.write_text("{}")
    run_id = log_to_mlflow(_args(tmp_path, model_path=str(run / "checkpoint-samples-8")), {"mAP@0.5": 0.5}, [output])
    client = MlflowClient(env_uri)
    logged = client.get_run(run_id)
    assert client.get_experiment(logged.info.experiment_id).name == "vlm-rl-smoke"
    assert logged.data.tags["vlm_rl.evaluated_run_id"] == "abc123"
    assert not (output.parent / "mlflow.db").exists()
