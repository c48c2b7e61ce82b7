"""Every figure the package draws (skipenv.evaluation.plots), rendered with matplotlib's Agg canvas: axis labels name the
metric, the legend names every policy, the front and the constraint, coincident policies stay visible."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from skipenv.evaluation.plots import learning_curves_figure, pareto_figure, plot_learning_curves, plot_pareto

matplotlib = pytest.importorskip("matplotlib")


def _summary() -> pd.DataFrame:
    # ppo and skip-nothing coincide (the learned policy's deterministic action is "skip nothing")
    rows = [("ppo", -0.030, 1.000), ("skip-nothing", -0.030, 1.000), ("lead:4", 0.381, 0.809),
            ("calibrated:4", 0.013, 0.799), ("random:0.5", 0.659, 0.010)]
    return pd.DataFrame({"policy": [r[0] for r in rows], "flops_saved": [r[1] for r in rows],
                         "quality": [r[2] for r in rows], "quality_full": 1.0})


def _episodes(summary: pd.DataFrame) -> pd.DataFrame:
    rng = np.random.default_rng(0)
    return pd.DataFrame([{"policy": r.policy, "flops_saved": r.flops_saved + rng.normal(0, 0.01),
                          "quality": r.quality + rng.normal(0, 0.02)} for r in summary.itertuples() for _ in range(4)])


def _legend_texts(ax) -> list[str]:
    return [t.get_text() for t in ax.get_legend().get_texts()]


def test_pareto_figure_names_metric_front_constraint_and_every_policy(tmp_path):
    from matplotlib.backends.backend_agg import FigureCanvasAgg

    s = _summary()
    fig = pareto_figure(s, tau=0.1, quality_name="agreement")  # no episodes: limits must come from the policies
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert ax.get_ylim()[0] < 0.010 < 0.809 < ax.get_ylim()[1]
    fig = pareto_figure(s, episodes=_episodes(s), tau=0.1, quality_name="agreement")
    FigureCanvasAgg(fig).draw()
    ax = fig.axes[0]
    assert "agreement" in ax.get_ylabel() and "agreement" in ax.get_title()
    assert "FLOPs saved" in ax.get_xlabel()
    legend = _legend_texts(ax)
    for name in s["policy"]:
        assert any(t.split(" (")[0] == name for t in legend), name
    assert "skip-nothing (same point as ppo)" in legend
    assert any(t.startswith("Pareto front") for t in legend)
    assert any("τ = 0.1" in t for t in legend) and any("one episode" in t for t in legend)
    (x0, x1), (y0, y1) = ax.get_xlim(), ax.get_ylim()
    assert x0 < s["flops_saved"].min() and s["flops_saved"].max() < x1  # every policy inside the axes
    assert y0 < s["quality"].min() and s["quality"].max() < y1
    # the tau line: a horizontal line at q_full - tau = 0.9
    hlines = [ln for ln in ax.get_lines() if len(set(ln.get_ydata())) == 1 and ln.get_ydata()[0] == pytest.approx(0.9)]
    assert hlines
    # the coincident policies are drawn at different places on the canvas and named together
    big = [c for c in ax.collections if c.get_sizes()[0] >= 50]  # one per policy, in summary order
    assert len(big) == 5
    centres = [c.get_offset_transform().transform(c.get_offsets()[0]) for c in big[:2]]  # ppo, skip-nothing
    assert np.hypot(*(centres[0] - centres[1])) > 5  # pixels apart
    # front members (thick outline): ppo, skip-nothing, lead:4, random:0.5 -- not calibrated:4 (lead:4 dominates it)
    thick = [name for name, c in zip(s["policy"], big) if c.get_linewidths()[0] > 1]
    assert thick == ["ppo", "skip-nothing", "lead:4", "random:0.5"]
    png = plot_pareto(s, tmp_path / "sub" / "p.png", tau=0.1, quality_name="agreement")
    assert png.stat().st_size > 5000


def test_pareto_figure_infers_the_metric_from_the_column():
    s = _summary().assign(quality_rouge=[0.15, 0.15, 0.12, 0.11, 0.0], quality_full_rouge=0.151)
    ax = pareto_figure(s, quality_col="quality_rouge", tau=0.02).axes[0]
    assert "ROUGE-L" in ax.get_ylabel() and "rouge" in ax.get_title()
    assert any("constraint per input" in t for t in _legend_texts(ax))


def test_learning_curves_figure_labels_every_run(tmp_path):
    t = np.arange(1, 65)
    curves = {"ppo seed 0": pd.DataFrame({"timestep": t, "reward": np.sin(t / 9)}),
              "ppo seed 1": pd.DataFrame({"timestep": t, "reward": np.cos(t / 9)}),
              "a2c seed 0": pd.DataFrame({"timestep": t, "reward": t / 64})}
    fig = learning_curves_figure(curves, window=8)
    ax = fig.axes[0]
    assert _legend_texts(ax) == list(curves)
    twin = {**curves, "a2c seed 1": curves["a2c seed 0"].copy()}  # identical runs: the second stays visible
    ax2 = learning_curves_figure(twin, window=8).axes[0]
    assert _legend_texts(ax2)[-1] == "a2c seed 1 (same curve as a2c seed 0)"
    assert ax2.get_lines()[-1].get_marker() == "o" and ax2.get_lines()[-2].get_marker() in ("None", "", None)
    assert "moving average over 8" in ax.get_ylabel() and ax.get_xlabel() == "timestep" and ax.get_title()
    styles = {(ln.get_color(), ln.get_linestyle()) for ln in ax.get_lines()}
    assert len(styles) == 3  # every run distinguishable
    assert plot_learning_curves(curves, tmp_path / "lc.png").stat().st_size > 5000
