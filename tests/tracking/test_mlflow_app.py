"""`mlflow server --app-name vlm-rl`: registered, and its index page stores the classic default before the UI runs
(the page in a browser: tests/ui/test_mlflow_ui.py)."""

from __future__ import annotations

from vlm_rl.tracking.mlflow_app import classic_index
from vlm_rl.tracking.ui_links import UI_DEFAULTS, app_registered


def test_the_vlm_rl_app_is_registered_and_seeds_the_classic_default():
    assert app_registered(), "reinstall vlm-rl (pip install -e .) to register `mlflow server --app-name vlm-rl`"
    page = classic_index('<!doctype html><html><head><script defer src="main.js"></script></head></html>')
    seed = page.index("localStorage")
    assert seed < page.index("main.js")  # before the UI's bundle runs
    assert '"mlflow.workflowType_v1": "\\"machine_learning\\""' in page and UI_DEFAULTS
    assert "getItem(k)===null" in page  # a choice the user made in the UI's switch is kept
