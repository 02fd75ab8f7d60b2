"""A self-contained HTML report comparing runs: overlaid curves and a summary table.

Inputs are :class:`vlm_rl.tracking.history.RunHistory` (from MLflow or a run's metrics.jsonl); the
pictures are PNGs embedded as base64 so the file can be mailed or attached to a ticket as is.
"""

from __future__ import annotations

import base64
import html
import io
import os
from collections.abc import Sequence
from pathlib import Path

from matplotlib.figure import Figure

from vlm_rl.reports.curves import curve_names, overlay_figure
from vlm_rl.tracking.health import HealthMonitor, alerts_to_tags
from vlm_rl.tracking.history import RunHistory, load_run

#: Parameters that always differ between runs and say nothing about the setup.
_VOLATILE_PARAMS = ("output_dir", "run_name", "seed_dir")


def figure_to_base64(fig: Figure) -> str:
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=90)
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def health_status(run: RunHistory) -> str:
    """The run's ``health.status`` tag, else replay its metrics through the health monitor."""
    if "health.status" in run.tags:
        return run.tags["health.status"]
    steps: dict[int, dict[str, float]] = {}
    for name, points in run.metrics.items():
        for step, value in points:
            steps.setdefault(step, {})[name] = value
    try:  # judged like the run was: without a reference (beta 0) there is no KL to judge
        beta = float(run.params.get("beta", "nan"))
    except ValueError:
        beta = float("nan")
    monitor = HealthMonitor(echo=False, judge_kl=not beta == 0.0)
    for step in sorted(steps):
        monitor.update(step, steps[step])
    return alerts_to_tags(monitor.alerts)[0]["health.status"]


def _last(points: Sequence[tuple[int, float]]) -> float | None:
    return points[-1][1] if points else None


def _mean(points: Sequence[tuple[int, float]]) -> float | None:
    return sum(v for _, v in points) / len(points) if points else None


def training_steps(run: RunHistory) -> int:
    """Optimizer steps of the run itself: the steps of its loss/reward curve, not the SFT warm-up's
    (``warmup/*``, logged on their own step axis) nor eval-only points."""
    for key in ("reward/total", "loss"):
        if run.metrics.get(key):
            return len({s for s, _ in run.metrics[key]})
    return len({s for name, points in run.metrics.items() if not name.startswith("warmup/") for s, _ in points})


def summarize(run: RunHistory) -> dict[str, float | int | str | None]:
    reward = run.metrics.get("reward/total", [])
    return {
        "final reward": _last(reward),
        "best reward": max((v for _, v in reward), default=None),
        "mean KL": _mean(run.metrics.get("kl", [])),
        "samples/hour": _last(run.metrics.get("samples_per_hour", [])),
        "steps": training_steps(run),
        "health": health_status(run),
    }


def differing_params(runs: Sequence[RunHistory]) -> list[str]:
    keys = sorted({k for r in runs for k in r.params if k not in _VOLATILE_PARAMS})
    return [k for k in keys if len({r.params.get(k) for r in runs}) > 1]


def _cell(value: object) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.4g}"
    return html.escape(str(value))


_CSS = """
body{font-family:system-ui,sans-serif;margin:24px;color:#222;max-width:100%}
.table-wrap{max-width:100%;overflow-x:auto}
table{border-collapse:collapse;margin:12px 0;table-layout:auto;max-width:100%}
th,td{border:1px solid #ccc;padding:4px 8px;font-size:13px;text-align:left;vertical-align:top;
      overflow-wrap:anywhere;word-break:break-word;max-width:28em}
th{background:#f2f2f2} .ok{color:#1a7f37} .warning{color:#b58100} .alarm{color:#c62828;font-weight:bold}
code{font-size:12px;overflow-wrap:anywhere;word-break:break-all}
img{max-width:100%;height:auto}
li{overflow-wrap:anywhere}
"""
# The table fits the page: long run names, ids and parameter values wrap inside their cells
# (overflow-wrap), and a table with many differing parameters scrolls sideways in its own box
# instead of pushing the page wider than the window.


def build_report(runs: Sequence[RunHistory], title: str = "vlm-rl run comparison") -> str:
    """The HTML text of the report."""
    if not runs:
        raise ValueError("compare: no runs given")
    labels = [f"{r.name}" if [x.name for x in runs].count(r.name) == 1 else f"{r.name} ({r.run_id[:8]})" for r in runs]
    diff = differing_params(runs)
    head = ["run", "run id", "final reward", "best reward", "mean KL", "samples/hour", "steps", "health", *diff]
    rows = []
    for label, run in zip(labels, runs):
        summary = summarize(run)
        cells = [_cell(label), f"<code>{_cell(run.run_id)}</code>"]
        cells += [_cell(summary[k]) for k in ("final reward", "best reward", "mean KL", "samples/hour", "steps")]
        cells.append(f'<span class="{summary["health"]}">{_cell(summary["health"])}</span>')
        cells += [_cell(run.params.get(k)) for k in diff]
        rows.append("<tr>" + "".join(f"<td>{c}</td>" for c in cells) + "</tr>")
    names = curve_names([r.metrics for r in runs])
    picture = ""
    if names:
        fig = overlay_figure(dict(zip(labels, (r.metrics for r in runs))), names)
        picture = f'<img alt="training curves" src="data:image/png;base64,{figure_to_base64(fig)}">'
    sources = "".join(f"<li>{_cell(label)}: <code>{_cell(r.source)}</code></li>" for label, r in zip(labels, runs))
    return (
        f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
        f"<style>{_CSS}</style></head><body><h1>{html.escape(title)}</h1>"
        f"<h2>Summary</h2><div class='table-wrap'><table><thead><tr>{''.join(f'<th>{html.escape(h)}</th>' for h in head)}</tr></thead>"
        f"<tbody>{''.join(rows)}</tbody></table></div>"
        f"<h2>Curves</h2>{picture or '<p>No metrics recorded.</p>'}"
        f"<h2>Sources</h2><ul>{sources}</ul></body></html>"
    )


def write_report(
    refs: Sequence[str], output: str | os.PathLike, tracking_uri: str | None = None
) -> Path:
    """Load each RUN (MLflow id, metrics.jsonl or run directory) and write the HTML report."""
    runs: list[RunHistory] = []
    for ref in refs:
        run = load_run(ref, tracking_uri)
        # one run given twice (its folder and its MLflow id, say) is listed once
        if all(run.run_id != seen.run_id for seen in runs):
            runs.append(run)
    path = Path(output)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(build_report(runs))
    return path
