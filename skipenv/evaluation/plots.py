"""Plots of evaluation results: the quality-vs-FLOPs Pareto figure of a summary (:func:`pareto_figure`, with its
non-dominated front :func:`pareto_front`) and smoothed learning curves (:func:`learning_curves_figure`); the
``plot_*`` functions save them. matplotlib is imported when a figure is drawn.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:
    import pandas as pd

__all__ = ["QUALITY_LABELS", "pareto_front", "pareto_figure", "plot_pareto", "learning_curves_figure",
           "plot_learning_curves"]

#: axis / table label of each quality signal (``quality=`` of the env)
QUALITY_LABELS = {
    "agreement": "agreement with the full model's greedy tokens",
    "reference": "task metric vs the gold target (ROUGE-L / F1 / accuracy)",
    "rouge": "task metric vs the gold target (ROUGE-L / F1 / accuracy)",
    "fidelity": "task metric vs the full model's output",
    "likelihood": "likelihood of the reference relative to the full model",
}


def pareto_front(points) -> list[int]:
    """Indices of the non-dominated points when both coordinates are maximised, sorted by the first coordinate.

    Point ``q`` dominates ``p`` when ``q >= p`` in both coordinates and ``q > p`` in at least one; equal points do
    not dominate each other (both are on the front). Rows with a NaN are never on the front.

    Args:
        points: array-like of shape ``(n, 2)``, e.g. ``(flops_saved, quality)`` per policy.
    """
    pts = np.asarray(points, dtype=float).reshape(-1, 2)
    ok = ~np.isnan(pts).any(axis=1)
    front = []
    for i, p in enumerate(pts):
        if not ok[i]:
            continue
        dominated = ok & (pts >= p).all(axis=1) & (pts > p).any(axis=1)
        if not dominated.any():
            front.append(i)
    return sorted(front, key=lambda i: (pts[i, 0], -pts[i, 1]))


def _coincident_groups(xy: np.ndarray, rel_tol: float = 0.012) -> list[list[int]]:
    """Groups of points closer than ``rel_tol`` of the axis span in both coordinates (their markers would overlap)."""
    span = np.nanmax(xy, axis=0) - np.nanmin(xy, axis=0) if len(xy) else np.ones(2)
    tol = np.maximum(span * rel_tol, 1e-3)
    groups: list[list[int]] = []
    for i in range(len(xy)):
        for g in groups:
            if (np.abs(xy[g[0]] - xy[i]) <= tol).all():
                g.append(i)
                break
        else:
            groups.append([i])
    return groups


def plot_pareto(summary: pd.DataFrame, path: str | Path, *, quality_col: str = "quality",
                episodes: pd.DataFrame | None = None, title: str | None = None, tau: float | None = None,
                quality_name: str | None = None) -> Path:
    """Save :func:`pareto_figure` (same arguments) as a PNG at ``path`` (folders created) and return the path."""
    fig = pareto_figure(summary, quality_col=quality_col, episodes=episodes, title=title, tau=tau,
                        quality_name=quality_name)
    return _save(fig, path)


def _save(fig, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120, bbox_inches="tight")
    return path


def pareto_figure(summary: pd.DataFrame, *, quality_col: str = "quality", episodes: pd.DataFrame | None = None,
                  title: str | None = None, tau: float | None = None, quality_name: str | None = None):
    """Scatter of mean ``quality_col`` against mean FLOPs saved per policy, with the Pareto front and the constraint.

    * Each policy is one marker (colour + shape, named in the legend); policies whose points coincide are drawn
      side by side on a small circle around the shared point and marked "(same point as a)" in the legend, so
      none is hidden.
    * With ``episodes``, every episode is a faint small marker of its policy's style ("one episode" in the legend).
    * The Pareto front (:func:`pareto_front`) is drawn as the attainment staircase (for each FLOPs saving, the best
      quality reached by a policy saving at least as much); its policies get a thick black outline.
    * With ``tau``, a dashed line at the mean full-model quality minus ``tau``: points below it miss the constraint
      ``q ≥ q_full − tau`` on average (exact for agreement, where ``q_full = 1``).
    * The y-axis and the default title name the quality signal (``quality_name``, e.g. ``"agreement"``; inferred
      from ``quality_col="quality_<signal>"``).

    Args:
        summary: rows of :func:`summarize` (``policy, flops_saved, <quality_col>``, optionally ``quality_full``).

    Returns:
        A :class:`matplotlib.figure.Figure` built with matplotlib's object API (the user's backend, e.g. a
        notebook's, is left alone).
    """
    from matplotlib import colormaps
    from matplotlib.figure import Figure
    from matplotlib.lines import Line2D
    from matplotlib.transforms import offset_copy

    if quality_name is None and quality_col.startswith("quality_"):
        quality_name = quality_col[len("quality_"):]
    metric = QUALITY_LABELS.get(quality_name or "", quality_name or "quality")
    fig = Figure(figsize=(8.8, 4.8))
    ax = fig.subplots()
    colors = colormaps["tab20"].colors
    markers = ["o", "s", "^", "D", "v", "P", "X", "*"]
    style = {name: (colors[(2 * i) % 20 + (2 * i // 20) % 2], markers[i % len(markers)])
             for i, name in enumerate(summary["policy"])}
    handles: list = []
    if episodes is not None:
        for name, g in episodes.groupby("policy", sort=False):
            c, m = style.get(name, ("grey", "o"))
            ax.scatter(g["flops_saved"], g[quality_col], s=12, alpha=0.25, color=c, marker=m, linewidths=0)
    names = list(summary["policy"])
    xy = summary[["flops_saved", quality_col]].to_numpy(dtype=float)
    front = pareto_front(xy)
    offsets = {i: (0.0, 0.0) for i in range(len(xy))}
    labels = list(names)
    for g in _coincident_groups(xy):
        if len(g) < 2:
            continue
        radius = max(6.0, 2.2 * len(g))  # points: markers (~9 pt wide) around the circle do not overlap
        for k, i in enumerate(g):  # spread the markers on a small circle around the shared point
            angle = np.pi / 2 + 2 * np.pi * k / len(g)
            offsets[i] = (radius * np.cos(angle), radius * np.sin(angle))
            if k:
                labels[i] = f"{names[i]} (same point as {names[g[0]]})"
    for i, name in enumerate(names):
        c, m = style[name]
        tr = (offset_copy(ax.transData, fig=fig, x=offsets[i][0], y=offsets[i][1], units="points")
              if offsets[i] != (0.0, 0.0) else ax.transData)
        ax.scatter([xy[i, 0]], [xy[i, 1]], s=70, color=c, marker=m, edgecolor="k", zorder=3, transform=tr,
                   linewidths=1.8 if i in front else 0.6)
        handles.append(Line2D([], [], ls="", marker=m, markersize=8, markerfacecolor=c, markeredgecolor="k",
                              label=labels[i]))
    finite = xy[~np.isnan(xy).any(axis=1)]
    if len(finite):  # offset markers do not enter matplotlib's automatic limits: add every point explicitly
        ax.update_datalim(finite)
        ax.autoscale_view()
    if front:
        f = xy[front]
        ax.step(f[:, 0], f[:, 1], where="pre", color="k", lw=1, alpha=0.6, zorder=2)
        handles.append(Line2D([], [], color="k", lw=1, alpha=0.6, label="Pareto front (its policies: thick outline)"))
    if tau is not None:
        full_col = quality_col.replace("quality", "quality_full", 1)
        q_full = float(summary[full_col].mean()) if full_col in summary else 1.0
        ax.axhline(q_full - tau, color="tab:red", ls="--", lw=1, zorder=1)
        what = "constraint q ≥ q_full − τ" if quality_name == "agreement" else "mean q_full − τ (constraint per input)"
        handles.append(Line2D([], [], color="tab:red", ls="--", lw=1, label=f"{what}, τ = {tau:g}"))
    if episodes is not None:
        handles.append(Line2D([], [], ls="", marker="o", markersize=4, color="grey", alpha=0.4,
                              label="faint small markers: one episode each"))
    ax.set_xlabel("FLOPs saved (fraction of the full model's FLOPs)")
    ax.set_ylabel(f"quality: {metric}")
    ax.set_title(title or f"{quality_name or 'quality'} vs FLOPs saved")
    ax.grid(alpha=0.3)
    ax.legend(handles=handles, fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig


def plot_learning_curves(curves: dict[str, pd.DataFrame], path: str | Path, *, window: int = 32,
                         title: str = "training: episode reward") -> Path:
    """Save :func:`learning_curves_figure` (same arguments) as a PNG at ``path`` and return the path."""
    return _save(learning_curves_figure(curves, window=window, title=title), path)


def learning_curves_figure(curves: dict[str, pd.DataFrame], *, window: int = 32,
                           title: str = "training: episode reward"):
    """Episode reward (moving average over ``window`` episodes) against timesteps, one labelled line per run.

    A run whose curve equals an earlier one's is drawn with hollow markers on top and labelled "(same curve as
    ...)", so it is not hidden.

    Args:
        curves: run name → DataFrame with columns ``timestep`` and ``reward``.
        title: the figure's title.

    Returns:
        A :class:`matplotlib.figure.Figure` (object API; no pyplot state).
    """
    from matplotlib.figure import Figure

    from matplotlib import colormaps

    fig = Figure(figsize=(7.4, 4.0))
    ax = fig.subplots()
    # one colour per algorithm (the part of the run name before the first space), one line style per run of it
    algos = list(dict.fromkeys(name.split(" ")[0] for name in curves))
    colors = {a: colormaps["tab10"].colors[i % 10] for i, a in enumerate(algos)}
    seen: dict[str, int] = {}
    drawn: list[tuple[str, np.ndarray, np.ndarray]] = []
    for name, c in curves.items():
        if len(c) == 0:
            continue
        algo = name.split(" ")[0]
        k = seen[algo] = seen.get(algo, -1) + 1
        x, y = c["timestep"].to_numpy(float), c["reward"].rolling(window, min_periods=1).mean().to_numpy(float)
        same = next((n for n, x0, y0 in drawn if len(x0) == len(x) and np.allclose(x0, x) and np.allclose(y0, y)),
                    None)
        style = dict(color=colors[algo], ls=["-", "--", ":", "-."][k % 4], lw=1.3)
        if same is not None:  # a curve equal to an earlier one: hollow markers on top keep both visible
            style.update(marker="o", markersize=5, markerfacecolor="none", markevery=max(len(x) // 12, 1))
        ax.plot(x, y, label=name if same is None else f"{name} (same curve as {same})", **style)
        drawn.append((name, x, y))
    ax.set_xlabel("timestep")
    ax.set_ylabel(f"episode reward (moving average over {window} episodes)")
    ax.set_title(title)
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.01, 1.0), frameon=False)
    return fig
