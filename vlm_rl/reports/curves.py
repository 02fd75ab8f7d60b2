"""Training curves as a matplotlib Figure (no pyplot: safe in Ray workers and without a display)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from matplotlib.axes import Axes
from matplotlib.figure import Figure

#: Panels in this order when present; anything else is left out of the overview.
PREFERRED = (
    "reward/total", "reward/detection", "reward/format", "loss", "kl", "reward/std",
    "clip_ratio", "samples_per_hour", "completion_length", "eval/map50",
)
History = Mapping[str, Sequence[tuple[int, float]]]


def curve_names(histories: Sequence[History], max_panels: int = 8) -> list[str]:
    """Preferred metrics present in any history; falls back to the first names seen."""
    present = {name for h in histories for name, points in h.items() if points}
    names = [n for n in PREFERRED if n in present]
    if not names:
        names = sorted(present)
    return names[:max_panels]


def plot_metric(ax: Axes, series: Mapping[str, Sequence[tuple[int, float]]], name: str) -> None:
    """One panel: ``{label: [(step, value)]}`` overlaid."""
    for label, points in series.items():
        if points:
            steps, values = zip(*points)
            ax.plot(steps, values, label=label, linewidth=1.4)
    ax.set_title(name, fontsize=10)
    ax.set_xlabel("step", fontsize=8)
    ax.tick_params(labelsize=8)
    ax.grid(alpha=0.3)


def overlay_figure(runs: Mapping[str, History], names: Sequence[str] | None = None, columns: int = 2) -> Figure:
    """One panel per metric, one line per run (the comparison report's picture)."""
    names = list(names) if names is not None else curve_names(list(runs.values()))
    if not names:
        raise ValueError("no metrics to plot")
    rows = -(-len(names) // columns)
    cols = min(columns, len(names))
    fig = Figure(figsize=(5.5 * cols, 3.2 * rows), layout="constrained")
    axes = fig.subplots(rows, cols, squeeze=False)
    for index, name in enumerate(names):
        ax = axes[index // cols][index % cols]
        plot_metric(ax, {label: h.get(name, ()) for label, h in runs.items()}, name)
        if len(runs) > 1:
            ax.legend(fontsize=7)
    for index in range(len(names), rows * cols):
        axes[index // cols][index % cols].set_visible(False)
    return fig


def plot_training_curves(history: History, title: str | None = None) -> Figure:
    """The overview of one run: ``{metric: [(step, value)]}`` → a grid of panels."""
    fig = overlay_figure({"run": history})
    if title:
        fig.suptitle(title)
    return fig
