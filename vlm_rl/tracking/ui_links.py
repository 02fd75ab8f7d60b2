"""Links into the MLflow UI, which is a single-page React app: pages live after ``#/``.

MLflow 3.x's UI opens in its GenAI mode (Traces, an assistant panel) unless told otherwise. Two things
tell it: the experiment tag ``mlflow.experimentKind = custom_model_development`` (set when vlm-rl creates
an experiment) and, in MLflow 3.17, whose UI takes the mode from a global switch rather than from that
tag, the ``workflowType=machine_learning`` query parameter. Every link here carries the parameter, so
the classic runs table, charts and artifacts open first.
"""

from __future__ import annotations

#: Experiment tag read by MLflow's UI to pick the classic (non-GenAI) experiment page.
EXPERIMENT_KIND_TAG = "mlflow.experimentKind"
EXPERIMENT_KIND = "custom_model_development"
#: What `mlflow ui` serves a local store on (its default host and port).
LOCAL_UI = "http://127.0.0.1:5000"
CLASSIC = "?workflowType=machine_learning"


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


def browse_lines(tracking_uri: str, run_id: str | None) -> list[str]:
    """What to print at the end of a run: how to open the UI and the run's direct links."""
    if not run_id:
        return []
    lines = []
    if tracking_uri.startswith("sqlite:///"):
        lines.append(f"Browse it:  mlflow ui --backend-store-uri {tracking_uri}")
    try:
        from mlflow.tracking import MlflowClient

        experiment_id = MlflowClient(tracking_uri).get_run(run_id).info.experiment_id
    except Exception:  # noqa: BLE001 - links are a convenience; the run is recorded either way
        return lines
    lines += [f"  {name + ':':<18} {url}" for name, url in run_links(tracking_uri, experiment_id, run_id).items()]
    return lines


def experiment_page_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's run list (parent sweep runs expand to their trials there)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}{CLASSIC}"
