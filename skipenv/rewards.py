"""Rewards: lexicographic (quality first, then FLOPs), weighted sum, and the (quality, cost) vector.

The lexicographic reward follows the constrained formulation of Switchable Decision (Zhang et al., ICML 2024,
arXiv 2405.04513): a plan must first keep the quality of the full model within a tolerance ``tau``; among plans
that do, cheaper is better. As a scalar (BlockDrop-style "correct first, then cheaper")::

    q >= q_full - tau   →   reward = 1 + (1 - cost)                               > 0        (constraint met)
    otherwise           →   reward = clip((q - (q_full - tau)) / max(q_full, eps), -1, 0)   ∈ [-1, 0)

so every plan that keeps quality outranks every plan that does not. ``cost`` includes the observation (the first
layer over the full input, ~3 % of the FLOPs for SmolLM2 on XSum), so the empty plan scores ``1 - overhead``
(≈ 0.97) and a plan must save more than the overhead to score above 1; the maximum is just under 2.
"""

from __future__ import annotations

import math

__all__ = ["REWARD_MODES", "lexicographic_reward", "weighted_reward", "constraint_satisfied"]

REWARD_MODES = ("lexicographic", "weighted", "vector")
EPS = 1e-6


def constraint_satisfied(quality: float, quality_full: float, tau: float) -> bool:
    """``quality >= quality_full - tau`` (with a 1e-9 slack for float round-off)."""
    return quality >= quality_full - tau - 1e-9


def lexicographic_reward(quality: float, quality_full: float, cost: float, tau: float, eps: float = EPS) -> float:
    """Scalar lexicographic reward (see module docstring).

    Args:
        quality: quality of the plan's output (fraction in [0, 1]).
        quality_full: quality of the full model on the same input.
        cost: FLOPs(plan, observation included) / FLOPs(full model), usually in (0, 1].
        tau: quality tolerance (absolute, same unit as quality), ``>= 0``.
        eps: floor of the normaliser ``max(q_full, eps)``.

    Returns:
        ``1 + (1 - cost)`` when the constraint holds (positive for any ``cost < 2``; the empty plan gets
        ``1 - overhead``), else a value in [-1, 0).

    Raises:
        ValueError: negative ``tau`` or a non-finite input.
    """
    for name, v in (("quality", quality), ("quality_full", quality_full), ("cost", cost), ("tau", tau)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    if tau < 0:
        raise ValueError(f"tau must be >= 0, got {tau}")
    if constraint_satisfied(quality, quality_full, tau):
        return float(1.0 + (1.0 - cost))
    threshold = quality_full - tau
    r = (quality - threshold) / max(quality_full, eps)
    return float(min(max(r, -1.0), -EPS))


def weighted_reward(quality: float, cost: float, lam: float) -> float:
    """``quality - lam * cost`` — the weighted-sum scalarisation, for ablations against the lexicographic rule."""
    return float(quality - lam * cost)
