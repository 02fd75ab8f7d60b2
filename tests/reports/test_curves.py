"""Training-curve figures."""

from __future__ import annotations

import pytest

from vlm_rl.reports.curves import curve_names, overlay_figure, plot_training_curves


def test_plot_training_curves_one_panel_per_known_metric():
    history = {
        "loss": [(0, 1.0), (1, 0.8)],
        "reward/total": [(0, 0.1), (1, 0.3)],
        "kl": [(0, 0.0), (1, 0.02)],
        "lr": [(0, 1e-4), (1, 1e-4)],
    }
    fig = plot_training_curves(history, title="demo")
    visible = [ax for ax in fig.axes if ax.get_visible()]
    assert [ax.get_title() for ax in visible] == ["reward/total", "loss", "kl"]
    (line,) = visible[1].get_lines()
    assert list(line.get_xdata()) == [0, 1] and list(line.get_ydata()) == [1.0, 0.8]


def test_unknown_metrics_fall_back_and_empty_is_an_error():
    assert curve_names([{"b": [(0, 1.0)], "a": [(0, 2.0)]}]) == ["a", "b"]
    with pytest.raises(ValueError):
        overlay_figure({"run": {}})


def test_overlay_has_a_line_per_run():
    fig = overlay_figure({"a": {"kl": [(0, 0.1)]}, "b": {"kl": [(0, 0.2), (1, 0.3)]}})
    assert [line.get_label() for line in fig.axes[0].get_lines()] == ["a", "b"]
