"""Links into the MLflow UI, which is a single-page React app: pages live after ``#/``."""

from __future__ import annotations


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


def experiment_page_url(tracking_uri: str, experiment_id: str) -> str | None:
    """The experiment's run list (parent sweep runs expand to their trials there)."""
    if not tracking_uri.startswith(("http://", "https://")):
        return None
    return f"{tracking_uri.rstrip('/')}/#/experiments/{experiment_id}"
