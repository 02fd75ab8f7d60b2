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


def test_compare_training_logs_habits(tmp_path, capsys):
    """`--logs A B --output comparison/ --html`, as compare_training_logs.py users type it (issue 26 item 9)."""
    a, b = _run(tmp_path / "alpha", 0.1), _run(tmp_path / "beta", 0.2)
    folder = tmp_path / "comparison"
    assert main(["compare", "--logs", str(a), str(b), "--output", f"{folder}/", "--html"]) == 0
    report = folder / "comparison.html"
    assert report.is_file() and f"wrote {report}" in capsys.readouterr().out
    text = report.read_text()
    assert "alpha" in text and "beta" in text
    # an existing folder, and a name without .html, are folders too; a .html name is the file itself
    assert main(["compare", str(a), "--output", str(folder)]) == 0 and report.is_file()
    assert main(["compare", "--logs", str(a), "--output", str(tmp_path / "cmp")]) == 0
    assert (tmp_path / "cmp" / "comparison.html").is_file()
    assert main(["compare", str(a), "--output", str(tmp_path / "one.html")]) == 0
    assert (tmp_path / "one.html").is_file()


def test_a_run_given_twice_is_listed_once(tmp_path, capsys):
    a, b = _run(tmp_path / "alpha", 0.1), _run(tmp_path / "beta", 0.2)
    out = tmp_path / "r.html"
    # the folder, the folder again with a slash, its metrics.jsonl: one run
    assert main(["compare", str(a), f"{a}/", str(a / "metrics.jsonl"), "--logs", str(b), str(b),
                 "--output", str(out)]) == 0
    assert "listed once" in capsys.readouterr().out
    summary = out.read_text().split("<h2>Curves</h2>")[0]
    assert summary.count("<tr><td>alpha</td>") == 1 and summary.count("<tr><td>beta</td>") == 1


def test_no_runs_is_a_usage_error(tmp_path, capsys):
    assert main(["compare", "--html", "--output", str(tmp_path / "x/")]) == 2
    assert "no runs given" in capsys.readouterr().out


def test_the_table_fits_the_page(tmp_path):
    """Long names and many differing parameters wrap in their cells or scroll in the table's own box."""
    a, b = _run(tmp_path / ("alpha-" + "x" * 120), 0.1), _run(tmp_path / "beta", 0.2)
    for folder, lr in ((a, 1e-4), (b, 2e-4)):
        (folder / "params.json").write_text(json.dumps({f"knob_{i}": f"{lr}-{i}" for i in range(20)}))
    out = tmp_path / "r.html"
    assert main(["compare", str(a), str(b), "--output", str(out)]) == 0
    text = out.read_text()
    assert "<div class='table-wrap'><table>" in text
    css = text.split("<style>")[1].split("</style>")[0]
    assert ".table-wrap{max-width:100%;overflow-x:auto}" in css
    assert "overflow-wrap:anywhere" in css and "img{max-width:100%" in css
