"""``mlflow server --app-name vlm-rl``: MLflow's own tracking server, whose UI opens on the classic runs table.

Why a server app: MLflow 3.17's UI picks its GenAI pages (Overview, Traces, "Detect Issues") or its classic
ones (runs table, charts) from a single browser-wide setting, not from the experiment. In the built UI
(``mlflow/server/js/build/static/js/main.*.js``):

* module 7975, the workflow provider: ``workflowType`` is the URL's ``?workflowType=`` if given, else the
  localStorage entry ``mlflow.workflowType`` (stored as ``mlflow.workflowType_v1``, module 51653), whose
  initial value is ``genai``;
* module 31080: the experiment kind is derived from that ``workflowType`` while the feature flag
  ``Z0`` (module 89511) is on, which the build hard-codes (``R=()=>!0``); the experiment's
  ``mlflow.experimentKind`` tag is read only when that flag is off, so in 3.17 the tag changes nothing;
* the experiment page's redirect (``experimentPage.*.chunk.js``) then opens Overview/Traces for a GenAI
  kind and the runs table otherwise.

Nothing on the server side (no setting, environment variable or tag) reaches that choice, and the server
never sees the ``#/...`` route. So this app serves MLflow's ``index.html`` with a few lines that store the
classic default in the browser before the UI starts, **only where the user has not chosen** (MLflow's
sidebar switch "GenAI / Model training" still works and is remembered). The same way, the assistant
panel is not opened by itself on the first visit (its button stays). Everything else is MLflow's server,
unchanged; the wiring mirrors MLflow's own ``basic-auth`` app (``mlflow/server/auth/__init__.py``,
``create_app``): the FastAPI app under uvicorn (MLflow's default), the Flask app under gunicorn/waitress.
"""

from __future__ import annotations

import json
from pathlib import Path

from vlm_rl.tracking.ui_links import UI_DEFAULTS

_PATCHED = "_vlm_rl_classic_index"


def seed_script(defaults: dict[str, object] = UI_DEFAULTS) -> str:
    """An inline <script> that writes each default into localStorage unless the browser already has a value.

    >>> "mlflow.workflowType_v1" in seed_script() and "getItem(k)===null" in seed_script()
    True
    """
    entries = json.dumps({key: json.dumps(value) for key, value in defaults.items()}).replace("</", "<\\/")
    return (
        "<script>try{var d=" + entries + ";"
        "for(var k in d){if(window.localStorage.getItem(k)===null){window.localStorage.setItem(k,d[k])}}"
        "}catch(e){}</script>"
    )


def classic_index(html: str) -> str:
    """MLflow's index.html with the seed script first in <head>, before the UI's (deferred) bundle loads.

    >>> classic_index("<html><head><title>MLflow</title></head></html>").startswith("<html><head><script>")
    True
    """
    if "<head>" not in html:
        return seed_script() + html
    return html.replace("<head>", "<head>" + seed_script(), 1)


def _install(flask_app) -> None:
    """Replace the view that serves index.html (endpoint ``serve``, every non-API path of the UI)."""
    original = flask_app.view_functions["serve"]
    if getattr(original, _PATCHED, False):
        return
    index = Path(flask_app.static_folder) / "index.html"

    def serve():
        if not index.is_file():  # a source checkout of MLflow without the built UI: MLflow's own message
            return original()
        from flask import Response

        response = Response(classic_index(index.read_text()), mimetype="text/html")
        response.headers["Cache-Control"] = "no-cache"
        return response

    setattr(serve, _PATCHED, True)
    flask_app.view_functions["serve"] = serve


def create_app():
    """The ``mlflow.app`` entry point (see pyproject.toml): MLflow's app with the classic-first index page."""
    from mlflow.environment_variables import _MLFLOW_SGI_NAME
    from mlflow.server import app as flask_app

    _install(flask_app)
    if _MLFLOW_SGI_NAME.get() == "uvicorn":
        from mlflow.server.fastapi_app import create_fastapi_app

        return create_fastapi_app(flask_app)
    return flask_app
