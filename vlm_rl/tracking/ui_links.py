"""Links into the MLflow UI, which is a single-page React app: pages live after ``#/``.

MLflow 3.x's UI opens in its GenAI mode (Overview, Traces, an assistant panel) unless told otherwise. In
MLflow 3.17 the mode is one browser-wide setting (localStorage ``mlflow.workflowType_v1``, ``genai`` until
the user flips the sidebar switch); the experiment tag ``mlflow.experimentKind`` is no longer read while
that switch exists (details and evidence in tracking/mlflow_app.py). Two things make our pages classic:

* the server: ``mlflow server --app-name vlm-rl`` (tracking/mlflow_app.py) stores ``machine_learning`` as
  the browser's default where none is set, so the home page -> experiment opens the runs table;
* every link here carries ``?workflowType=machine_learning``, which wins over the stored setting, so the
  links open the runs table, charts and artifacts on any MLflow server.

vlm-rl still tags the experiments it creates ``mlflow.experimentKind = custom_model_development`` (what
MLflow's experiment-kind selector stores and UIs without the switch read).
"""

from __future__ import annotations

#: Experiment tag read by MLflow's UI to pick the classic (non-GenAI) experiment page.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: What `mlflow ui` serves a local store on (its default host and port).
LOCAL_UI = "http://127.0.0.1:5000"
CLASSIC = "?workflowType=machine_learning"
#: The `mlflow.app` entry point (pyproject.toml) serving MLflow with these browser defaults.
APP_NAME = "vlm-rl"
#: localStorage defaults the vlm-rl server app stores where the browser has none (JSON values): the classic
#: runs/charts pages instead of the GenAI ones, and no assistant panel opening by itself on the first visit.
UI_DEFAULTS: dict[str, object] = {
    "mlflow.workflowType_v1": "machine_learning",
    "mlflow.assistant.fab.autoOpenedOnFirstLoad_v1": True,
}

#: The curves a run's charts page leads with. MLflow 3.17 draws one section per metric-name prefix (the
#: part before the last "/"), sections sorted by name (JavaScript's code-unit order), the unprefixed
#: metrics ("Model metrics": loss, kl, samples_per_hour) last, and the charts of a section by name
#: (`getBaseChartAndSectionConfigs` and `extractChartSectionName` in mlflow/server/js/build/static/js/main.*.js).
#: So RunTracker also sends these metrics to MLflow under ``Key metrics/<name>``: the capital K sorts
#: before every lowercase prefix (async, completion_length, health, ...), and the original names stay.
HEADLINE_SECTION = "Key metrics"
HEADLINE_METRICS = {"reward/total": "reward", "loss": "loss", "kl": "kl", "eval/mAP_50": "val_mAP_50"}


def is_headline_copy(key: str) -> bool:
    """A ``Key metrics/...`` copy made for the charts page (readers of a run skip it: the original is there)."""
    return key.startswith(HEADLINE_SECTION + "/")


def app_registered() -> bool:
    """Whether ``--app-name vlm-rl`` is known to `mlflow server`/`mlflow ui` (vlm-rl installed from this tree).

    Every installed copy of the metadata is looked at: a stale ``vlm_rl.egg-info`` in the working directory
    would otherwise hide the installed one from ``entry_points()`` (it keeps one distribution per name).
    """
    from importlib.metadata import distributions

    return any(e.group == "mlflow.app" and e.name == APP_NAME for d in distributions() for e in d.entry_points)


def ui_command(tracking_uri: str) -> str:
    """The command that serves a local store's UI, classic pages first when the vlm-rl app is installed."""
    app = f" --app-name {APP_NAME}" if app_registered() else ""
    return f"mlflow ui{app} --backend-store-uri {tracking_uri}"


def run_page_url(tracking_uri: str, experiment_id: str, run_id: str) -> str | None:
    """The run's page on an http(s) tracking server; None for a local store (no UI is serving it).

    >>> run_page_url("http://127.0.0.1:5000/", "1", "abc")
    'http://127.0.0.1:5000/#/experiments/1/runs/abc'
    >>> run_page_url("sqlite:///tmp/mlflow.db", "1", "abc") is None
    True
    """
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}/runs/{run_id}"


def ui_base(tracking_uri: str) -> str:
    """The UI serving ``tracking_uri``: the server itself, or `mlflow ui`'s default for a local store."""
    return tracking_uri.rstrip("/") if tracking_uri.startswith(("http://", "https://")) else LOCAL_UI


def run_links(tracking_uri: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """Direct links to a run's charts, its rollout pictures and its experiment's runs table (classic UI).

    >>> run_links("sqlite:///x/mlflow.db", "1", "abc")["charts"]
    'http://127.0.0.1:5000/#/experiments/1/runs/abc/model-metrics?workflowType=machine_learning'
    """
    base = f"{ui_base(tracking_uri)}/#/experiments/{experiment_id}"
    return {
        "runs": f"{base}{CLASSIC}",
        "charts": f"{base}/runs/{run_id}/model-metrics{CLASSIC}",
        "rollout pictures": f"{base}/runs/{run_id}/artifacts/rollouts{CLASSIC}",
    }


def sweep_links(tracking_uri: str, experiment_id: str, run_id: str) -> dict[str, str]:
    """Direct links for a sweep's parent run: the runs table (the parent expands to its trials), the parent's
    charts (the objective per trial) and its ``sweep/`` artifacts (trials table, plots, recommended config).

    >>> sweep_links("http://h:5000", "2", "p")["sweep results"]
    'http://h:5000/#/experiments/2/runs/p/artifacts/sweep?workflowType=machine_learning'
    """
    links = run_links(tracking_uri, experiment_id, run_id)
    sweep = links["rollout pictures"].replace("/artifacts/rollouts", "/artifacts/sweep")
    return {"runs (trials)": links["runs"], "sweep charts": links["charts"], "sweep results": sweep}


def browse_lines(tracking_uri: str, run_id: str | None, links=run_links) -> list[str]:
    """What to print at the end of a run: how to open the UI and the run's direct links (``links``:
    :func:`run_links` for a training run, :func:`sweep_links` for a sweep's parent run)."""
    if not run_id:
        return []
    lines = []
    if tracking_uri.startswith("sqlite:///"):
        lines.append(f"Browse it:  {ui_command(tracking_uri)}")
    try:
        from mlflow.tracking import MlflowClient

        experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - links are a convenience; the run is recorded either way
        return lines
    lines += [f"  {name + ':':<18} {url}" for name, url in links(tracking_uri, experiment_id, run_id).items()]
    return lines


def experiment_page_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's run list (parent sweep runs expand to their trials there)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}{CLASSIC}"
