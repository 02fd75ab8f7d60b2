"""`vlm-rl compare` through the CLI on local run directories."""

from __future__ import annotations

import json

from vlm_rl.cli import main


def _run(folder, reward):
    folder.mkdir()
    lines = [json.dumps({"step": s, "name": "reward/total", "value": reward * s, "timestamp": s}) for s in range(5)]
    (folder / "metrics.jsonl").write_text("\n".join(lines) + "\n")
    return folder


def test_compare_writes_html(tmp_path, capsys):
    a, b = _run(tmp_path / "alpha", 0.1), _run(tmp_path / "beta", 0.2)
    out = tmp_path / "report.html"
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 0
    assert f"wrote {out}" in capsys.readouterr().out
    text = out.read_text()
    assert "alpha" in text and "beta" in text and "data:image/png;base64," in text


def test_compare_unknown_run(tmp_path, capsys):
    uri = f"sqlite:///{tmp_path / 'm.db'}"
    assert main(["compare", "0123456789abcdef", "--tracking-uri", uri, "--output", str(tmp_path / "r.html")]) == 2
    assert "0123456789abcdef: not a file, directory, or run" in capsys.readouterr().out


def test_run_id_without_a_store_says_so_and_creates_no_database(tmp_path, capsys, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("MLFLOW_TRACKING_URI", raising=False)
    assert main(["compare", "0123456789abcdef"]) == 2
    out = capsys.readouterr().out
    assert "--tracking-uri" in out and "MLFLOW_TRACKING_URI" in out
    assert not (tmp_path / "mlflow.db").exists() and not (tmp_path / "report.html").exists()
    # a sqlite store that does not exist is not created either
    assert main(["compare", "0123456789abcdef", "--tracking-uri", f"sqlite:///{tmp_path / 'nope.db'}"]) == 2
    assert "no MLflow store at" in capsys.readouterr().out and not (tmp_path / "nope.db").exists()
