"""What each constraint formulation (:mod:`skipenv.envs.wrappers`) is judged by, over a table of finished
episodes: :func:`formulation_metrics` (mean quality, per-input constraint-met rate, mean FLOPs saved, mean
lexicographic reward, and whether the mean quality loss stays within ``tau``, with a bootstrap CI) and
:func:`metrics_by_tau` (the same per tolerance, for budget-conditioned evaluations).
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..envs.rewards import constraint_satisfied, lexicographic_reward
from .stats import bootstrap_ci

__all__ = ["formulation_metrics", "metrics_by_tau"]


def formulation_metrics(episodes, tau: float | None = None, *, n_resamples: int = 2000,
                        seed: int = 0) -> dict[str, Any]:
    """Metrics of a table of finished episodes under every formulation.

    Args:
        episodes: a pandas DataFrame (or a mapping of equal-length columns) with ``quality``, ``quality_full`` and
            ``cost``; optional ``weight`` (probability of each row, e.g. a randomised policy's plan
            probabilities; rows of one document must sum to 1 — default 1 per row) and ``document`` (groups rows
            of one input; default each row is its own input) and ``tau`` (per-row tolerance, budget-conditioned
            episodes; overrides the ``tau`` argument).
        tau: the tolerance (quality units) when the table has no ``tau`` column.
        n_resamples, seed: bootstrap of the mean quality loss over documents
            (:func:`skipenv.evaluation.stats.bootstrap_ci`; one document gives no interval: NaN bounds).

    Returns:
        dict with ``num_documents``, ``mean_quality``, ``mean_quality_loss`` (``quality_full - quality``),
        ``constraint_met_rate`` (fraction of inputs within their tau — the per-input criterion),
        ``mean_flops_saved`` (``1 - cost``, fraction), ``mean_reward`` (lexicographic, per-input formulation),
        ``quality_loss_ci_low/high`` (95 % bootstrap CI of the mean loss), ``mean_constraint_holds``
        (``mean_quality_loss <= tau`` — the expected criterion) and ``mean_constraint_holds_ci`` (the upper CI
        bound is within tau as well).

    Raises:
        ValueError: missing columns, no rows, or no tau.
    """
    import pandas as pd

    df = pd.DataFrame(episodes)
    missing = [c for c in ("quality", "quality_full", "cost") if c not in df]
    if missing:
        raise ValueError(f"episodes lack the column(s) {missing}; they need quality, quality_full and cost")
    if len(df) == 0:
        raise ValueError("episodes is empty")
    if "tau" not in df:
        if tau is None:
            raise ValueError("give tau (or a per-row 'tau' column)")
        df = df.assign(tau=float(tau))
    w = df["weight"].to_numpy(float) if "weight" in df else np.ones(len(df))
    doc = df["document"].to_numpy() if "document" in df else np.arange(len(df))
    loss = (df["quality_full"] - df["quality"]).to_numpy(float)
    met = np.array([constraint_satisfied(q, f, t) for q, f, t in zip(df["quality"], df["quality_full"], df["tau"])])
    reward = np.array([lexicographic_reward(q, f, c, t) for q, f, c, t in
                       zip(df["quality"], df["quality_full"], df["cost"], df["tau"])])
    per_doc = pd.DataFrame({"doc": doc, "q": w * df["quality"].to_numpy(float), "loss": w * loss,
                            "met": w * met, "saved": w * (1.0 - df["cost"].to_numpy(float)), "reward": w * reward,
                            "w": w, "tau": w * df["tau"].to_numpy(float)}).groupby("doc", sort=False).sum()
    if not np.allclose(per_doc["w"], 1.0):
        raise ValueError("the weights of each document's rows must sum to 1")
    lo, hi = bootstrap_ci(per_doc["loss"], resamples=n_resamples, seed=seed, one_value="nan")
    mean_tau = float(per_doc["tau"].mean())
    mean_loss = float(per_doc["loss"].mean())
    upper = hi if np.isfinite(hi) else mean_loss  # a single document has no CI: its mean decides
    return {
        "num_documents": int(len(per_doc)),
        "mean_quality": float(per_doc["q"].mean()),
        "mean_quality_loss": mean_loss,
        "constraint_met_rate": float(per_doc["met"].mean()),
        "mean_flops_saved": float(per_doc["saved"].mean()),
        "mean_reward": float(per_doc["reward"].mean()),
        "quality_loss_ci_low": lo,
        "quality_loss_ci_high": hi,
        "mean_constraint_holds": bool(mean_loss <= mean_tau + 1e-9),
        "mean_constraint_holds_ci": bool(upper <= mean_tau + 1e-9),
    }


def metrics_by_tau(episodes, **kwargs):
    """:func:`formulation_metrics` per tolerance of a budget-conditioned evaluation (one row per distinct
    ``tau`` column value, sorted by tau): the quality-vs-FLOPs front one policy traces.

    Raises:
        ValueError: the table has no ``tau`` column.
    """
    import pandas as pd

    df = pd.DataFrame(episodes)
    if "tau" not in df:
        raise ValueError("metrics_by_tau needs a 'tau' column (the tolerance of each episode)")
    return pd.DataFrame([{"tau": float(t), **formulation_metrics(g, **kwargs)}
                         for t, g in df.groupby("tau", sort=True)])
