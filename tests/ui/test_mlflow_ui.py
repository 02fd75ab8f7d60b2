"""The MLflow UI shows a GRPO run: a real `mlflow server --app-name vlm-rl` (SQLite + proxied local artifacts,
loopback), a tiny GRPO run logging to it over HTTP (vlm-rl creates the experiment), the REST API, and the pages
rendered by headless Chromium: the run page; the home page -> experiment click a new user makes, which must
open the classic runs table, not MLflow 3's GenAI overview; and the links a run prints (runs table, charts
led by the "Key metrics" section).

The screenshots are kept as test-artifacts/mlflow_run_page.png, mlflow_home_to_runs.png and mlflow_runs_table.png.
"""

from __future__ import annotations

import base64
import fcntl
import json
import os
import select
import signal
import subprocess
import sys
import time
import urllib.parse
import urllib.request
from pathlib import Path

import pytest

from tests.conftest import free_port
from vlm_rl.config import GRPOConfig
from vlm_rl.tracking.ui_links import (
    APP_NAME,
    EXPERIMENT_KIND,
    EXPERIMENT_KIND_TAG,
    HEADLINE_SECTION,
    run_links,
    run_page_url,
)

pytestmark = pytest.mark.slow

CHROMIUM = "/usr/bin/chromium"
EXPERIMENT = "ui-test"
SETTINGS = dict(
    model_path="tiny-qwen3-vl", lora_r=0, num_learners=1, rollout_mode="colocated", prompts_per_step=2,
    num_generations=2, num_steps=2, sft_warmup_steps=0, max_new_tokens=16, max_image_size=64, zero_stage=2,
    log_images_every=1, synthetic_train_size=8, synthetic_val_size=2, synthetic_max_objects=1, beta=0.0,
    disable_gradient_checkpointing=True, experiment_name=EXPERIMENT, run_name="grpo-tiny-ui-check", seed=0,
)


def api(base: str, endpoint: str, **params) -> dict:
    url = f"{base}/api/2.0/mlflow/{endpoint}?{urllib.parse.urlencode(params)}"
    with urllib.request.urlopen(url, timeout=10) as response:
        return json.loads(response.read())


@pytest.fixture(scope="module")
def mlflow_server(tmp_path_factory):
    folder = tmp_path_factory.mktemp("mlflow-server")
    port = free_port()
    mlflow_bin = str(Path(sys.executable).parent / "mlflow")
    log = open(folder / "server.log", "w")
    proc = subprocess.Popen(
        [mlflow_bin, "server", "--app-name", APP_NAME, "--backend-store-uri", f"sqlite:///{folder / 'mlflow.db'}",
         "--artifacts-destination", str(folder / "artifacts"), "--serve-artifacts",
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
    )
    base = f"http://127.0.0.1:{port}"
    deadline = time.time() + 90
    while True:
        try:
            with urllib.request.urlopen(f"{base}/health", timeout=2) as response:
                if response.status == 200:
                    break
        except OSError:
            pass
        if proc.poll() is not None or time.time() > deadline:
            proc.kill()
            raise RuntimeError(f"mlflow server did not answer: {(folder / 'server.log').read_text()[-2000:]}")
        time.sleep(0.5)
    try:
        yield base
    finally:
        os.killpg(proc.pid, signal.SIGTERM)  # the server's own session: gunicorn/uvicorn workers too
        try:  # (its workers finish in-flight requests; SQLite has every write already: no long grace)
            proc.wait(timeout=5)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(timeout=15)
        log.close()


@pytest.fixture(scope="module")
def grpo_run(ray_cluster, mlflow_server, tmp_path_factory):
    """A 2-step tiny GRPO run that creates its experiment on the server."""
    from vlm_rl.grpo.job import run_grpo

    out = tmp_path_factory.mktemp("grpo-ui")
    summary = run_grpo(GRPOConfig(**SETTINGS, output_dir=str(out), tracking_uri=mlflow_server))
    run = api(mlflow_server, "runs/get", run_id=summary["run_id"])["run"]
    return {"summary": summary, "run": run, "base": mlflow_server}


def test_rest_api_has_params_metrics_with_steps_and_pictures(grpo_run):
    base, run = grpo_run["base"], grpo_run["run"]
    assert run["info"]["status"] == "FINISHED"
    assert run["info"]["run_name"] == SETTINGS["run_name"]
    params = {p["key"]: p["value"] for p in run["data"]["params"]}
    assert params["num_generations"] == "2" and params["learning_rate"] == "0.0001"
    metric_names = {m["key"] for m in run["data"]["metrics"]}
    assert {"loss", "kl", "reward/total", "reward/format", "samples_per_hour", "time/generation"} <= metric_names
    assert {f"{HEADLINE_SECTION}/{name}" for name in ("reward", "loss", "kl")} <= metric_names  # charts page leads
    history = api(base, "metrics/get-history", run_id=run["info"]["run_id"], metric_key="reward/total")["metrics"]
    assert sorted(m["step"] for m in history) == [1, 2]
    rollouts = {f["path"] for f in api(base, "artifacts/list", run_id=run["info"]["run_id"], path="rollouts")["files"]}
    assert {"rollouts/step_00001.png", "rollouts/step_00002.png"} <= rollouts
    plots = {f["path"] for f in api(base, "artifacts/list", run_id=run["info"]["run_id"], path="plots")["files"]}
    assert "plots/training_curves.png" in plots
    top = {f["path"] for f in api(base, "artifacts/list", run_id=run["info"]["run_id"])["files"]}
    assert "summary.json" in top


def test_experiment_is_a_training_one_with_server_side_artifacts(grpo_run):
    experiment = api(grpo_run["base"], "experiments/get", experiment_id=grpo_run["run"]["info"]["experiment_id"])
    experiment = experiment["experiment"]
    assert {t["key"]: t["value"] for t in experiment["tags"]}[EXPERIMENT_KIND_TAG] == EXPERIMENT_KIND
    # the server stores the pictures (proxied), not a path on the training worker's disk
    assert experiment["artifact_location"].startswith("mlflow-artifacts:"), experiment["artifact_location"]


def chromium(args: list[str], profile: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
         "--disable-background-networking", "--disable-component-update", "--disable-sync",
         f"--user-data-dir={profile}", "--virtual-time-budget=30000", "--window-size=1400,1600", *args],
        capture_output=True, text=True, timeout=90,
    )


def test_run_page_renders_metrics_in_chromium(grpo_run, artifacts_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium); the REST checks still ran")
    run = grpo_run["run"]
    url = run_page_url(grpo_run["base"], run["info"]["experiment_id"], run["info"]["run_id"])
    assert url is not None
    dom = chromium(["--dump-dom", url], tmp_path / "profile-dom")
    assert dom.returncode == 0, dom.stderr[-2000:]
    for text in (SETTINGS["run_name"], "reward/total", "loss", "samples_per_hour"):
        assert text in dom.stdout, f"{text!r} not in the rendered run page"
    shot = artifacts_dir / "mlflow_run_page.png"
    shot.unlink(missing_ok=True)
    result = chromium([f"--screenshot={shot}", url], tmp_path / "profile-shot")
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]


class Browser:
    """Headless Chromium driven over the DevTools protocol on a pipe (``--remote-debugging-pipe``: commands on
    fd 3, replies on fd 4, NUL-terminated JSON), so a test can click like a user; standard library only."""

    def __init__(self, profile: Path):
        command_r, self._command_w = os.pipe()
        self._reply_r, reply_w = os.pipe()
        # the child's ends at fds >= 10, so that the shell can put them on 3 and 4 without a clash
        child = [fcntl.fcntl(fd, fcntl.F_DUPFD_CLOEXEC, 10) for fd in (command_r, reply_w)]
        os.close(command_r)
        os.close(reply_w)
        args = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                "--disable-background-networking", "--disable-component-update", "--disable-sync",
                f"--user-data-dir={profile}", "--window-size=1400,1000", "--remote-debugging-pipe", "about:blank"]
        self.proc = subprocess.Popen(
            ["bash", "-c", f'exec "$0" "$@" 3<&{child[0]} 4>&{child[1]} {child[0]}<&- {child[1]}>&-', *args],
            pass_fds=child, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, start_new_session=True,
        )
        for fd in child:
            os.close(fd)
        self._buffer, self._id = b"", 0
        page = next(t for t in self.send("Target.getTargets")["targetInfos"] if t["type"] == "page")
        self._session = self.send("Target.attachToTarget", targetId=page["targetId"], flatten=True)["sessionId"]

    def send(self, method: str, timeout: float = 30, page: bool = False, **params) -> dict:
        self._id += 1
        message = {"id": self._id, "method": method, "params": params}
        if page:
            message["sessionId"] = self._session
        os.write(self._command_w, json.dumps(message).encode() + b"\0")
        deadline = time.monotonic() + timeout
        while True:
            while b"\0" in self._buffer:
                raw, self._buffer = self._buffer.split(b"\0", 1)
                reply = json.loads(raw)
                if reply.get("id") == self._id:  # anything else is an event
                    if "error" in reply:
                        raise RuntimeError(f"{method}: {reply['error']}")
                    return reply["result"]
            left = deadline - time.monotonic()
            if left <= 0 or not select.select([self._reply_r], [], [], left)[0]:
                raise TimeoutError(f"chromium did not answer {method} in {timeout} s")
            chunk = os.read(self._reply_r, 1 << 20)
            if not chunk:
                raise RuntimeError("chromium exited")
            self._buffer += chunk

    def js(self, expression: str):
        result = self.send("Runtime.evaluate", page=True, expression=expression, returnByValue=True)
        return result["result"].get("value")

    def wait_for(self, expression: str, timeout: float = 45):
        """The expression's value once truthy (polled), else None."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = self.js(expression)
            if value:
                return value
            time.sleep(0.25)
        return None

    def click(self, x: float, y: float) -> None:
        for kind in ("mousePressed", "mouseReleased"):
            self.send("Input.dispatchMouseEvent", page=True, type=kind, x=x, y=y, button="left", clickCount=1)

    def screenshot(self, path: Path) -> None:
        path.write_bytes(base64.b64decode(self.send("Page.captureScreenshot", page=True)["data"]))

    def close(self) -> None:
        try:
            self.send("Browser.close", timeout=10)
            self.proc.wait(timeout=15)
        except (OSError, RuntimeError, TimeoutError, subprocess.TimeoutExpired):
            os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait(timeout=15)
        finally:
            os.close(self._command_w)
            os.close(self._reply_r)


def test_home_page_then_experiment_opens_the_runs_table(grpo_run, artifacts_dir, tmp_path):
    """A new user: the server's home page in a fresh browser (no link of ours, no query), a click on the
    experiment's name -> the classic runs table with the run, not the GenAI overview."""
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    experiment_id = grpo_run["run"]["info"]["experiment_id"]
    browser = Browser(tmp_path / "profile-home")
    try:
        browser.send("Page.navigate", page=True, url=f"{grpo_run['base']}/")
        link = browser.wait_for(  # the experiment in the home page's "Recent Experiments"
            f"(() => {{ const a = [...document.querySelectorAll('a')].find(a => a.innerText.trim() === "
            f"{json.dumps(EXPERIMENT)}); if (!a) return null; a.scrollIntoView({{block: 'center'}}); "
            f"const r = a.getBoundingClientRect(); return [r.x + r.width / 2, r.y + r.height / 2]; }})()")
        assert link, browser.js("document.body.innerText")[:1500]
        browser.click(*link)
        run_name = json.dumps(SETTINGS["run_name"])
        shown = browser.wait_for(f"document.body.innerText.includes({run_name}) && "
                                 "document.body.innerText.includes('Run Name') && location.hash")
        text = browser.js("document.body.innerText")
        assert shown and shown.startswith(f"#/experiments/{experiment_id}/runs"), (shown, text[:1500])
        assert "Detect Issues" not in text and "Token Usage" not in text, text[:1500]  # not the GenAI overview
        shot = artifacts_dir / "mlflow_home_to_runs.png"
        shot.unlink(missing_ok=True)
        browser.screenshot(shot)
        assert shot.stat().st_size > 10_000
    finally:
        browser.close()


def _text(html: str) -> str:
    import re

    html = re.sub(r"<script.*?</script>|<style.*?</style>", " ", html, flags=re.S)
    return re.sub(r"\s+", " ", re.sub(r"<[^>]+>", " ", html))


def test_printed_links_open_the_classic_runs_table_and_charts(grpo_run, artifacts_dir, tmp_path):
    if not Path(CHROMIUM).exists():
        pytest.skip(f"{CHROMIUM} not installed (apt-get install chromium)")
    run = grpo_run["run"]
    links = run_links(grpo_run["base"], run["info"]["experiment_id"], run["info"]["run_id"])
    runs_page = chromium(["--dump-dom", links["runs"]], tmp_path / "profile-runs")
    assert runs_page.returncode == 0, runs_page.stderr[-2000:]
    text = _text(runs_page.stdout)
    assert "Run Name" in text and SETTINGS["run_name"] in text, text[:1500]  # the classic runs table
    assert "Detect Issues" not in text and "Token Usage" not in text, text[:1500]  # not the GenAI overview
    # the charts page in a browser we can poll: a loaded machine draws the first chart seconds after the
    # sections appear, so a one-shot DOM dump can miss it (seen once in a clean-clone run)
    browser = Browser(tmp_path / "profile-charts")
    try:
        browser.send("Page.navigate", page=True, url=links["charts"])
        axis, deadline = f"Step {SETTINGS['run_name']} (", time.monotonic() + 60
        while True:  # the axis title is split over SVG elements: judged on the text as _text() joins it
            charts = _text(browser.js("document.documentElement.outerHTML") or "")
            if axis in charts or time.monotonic() > deadline:
                break
            time.sleep(0.5)
    finally:
        browser.close()
    # the run's model-metrics charts: one section per metric prefix (collapsed past the first few), drawn charts
    assert "Model metrics" in charts and "reward (" in charts and "Detect Issues" not in charts, charts[:1500]
    sections = charts.split("Auto-refresh", 1)[-1]
    assert sections.split("(", 1)[0].strip() == HEADLINE_SECTION, sections[:500]  # the first section: key metrics
    assert f"Step {SETTINGS['run_name']} (" in charts, charts[:1500]  # a chart's axis + legend rendered
    shot = artifacts_dir / "mlflow_runs_table.png"
    shot.unlink(missing_ok=True)
    result = chromium([f"--screenshot={shot}", links["runs"]], tmp_path / "profile-runs-shot")
    assert result.returncode == 0 and shot.is_file() and shot.stat().st_size > 10_000, result.stderr[-2000:]
