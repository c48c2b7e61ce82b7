"""Rewards: pure functions of (quality, quality_full, cost), and :class:`Reward` objects that the environments apply
to an evaluated :class:`~skipenv.envs.evaluator.Outcome` (in the spirit of CompilerGym's reward spaces).

The lexicographic reward follows the constrained formulation of Switchable Decision (Zhang et al., ICML 2024,
arXiv 2405.04513): a plan must first keep the quality of the full model within a tolerance ``tau``; among plans
that do, cheaper is better. As a scalar (BlockDrop-style "correct first, then cheaper")::

    q >= q_full - tau   →   reward = 1 + (1 - cost)                               > 0        (constraint met)
    otherwise           →   reward = clip((q - (q_full - tau)) / max(q_full, eps), -1, 0)   ∈ [-1, 0)

so every plan that keeps quality outranks every plan that does not. ``cost`` includes the observation (the first
layer over the full input, ~3 % of the FLOPs for SmolLM2 on XSum), so the empty plan scores ``1 - overhead``
(≈ 0.97) and a plan must save more than the overhead to score above 1; the maximum is just under 2.

A reward is *not* part of what the evaluator caches: one cached outcome can be rewarded under any ``tau`` or rule.
Adding a reward = one subclass of :class:`Reward` with ``__call__(outcome) -> float``.
"""

from __future__ import annotations

import math
import numbers
import warnings

__all__ = ["REWARD_MODES", "lexicographic_reward", "weighted_reward", "constraint_satisfied", "Reward",
           "LexicographicReward", "WeightedReward", "VectorReward", "make_reward", "check_tau"]

REWARD_MODES = ("lexicographic", "weighted", "vector")
EPS = 1e-6


def _finite(name: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise ValueError(f"{name} must be a real number, got {value!r} ({type(value).__name__})")
    value = float(value)
    if not math.isfinite(value):
        raise ValueError(f"{name} must be finite, got {value}")
    return value


def _cost_weight(value, name: str = "cost_weight") -> float:
    """``value`` as a float after checking it is a finite number ``>= 0`` (a negative weight would reward cost)."""
    value = _finite(name, value)
    if value < 0:
        raise ValueError(f"{name} must be >= 0 (quality units per unit of cost; a negative weight rewards spending "
                         f"FLOPs), got {value:g}")
    return value


def check_tau(tau, name: str = "tau") -> float:
    """``tau`` as a float after checking it is a finite number ``>= 0``.

    Raises:
        ValueError: not a real number, NaN / infinite, or negative (the message names ``name``).
    """
    tau = _finite(name, tau)
    if tau < 0:
        raise ValueError(f"{name} must be >= 0 (a quality tolerance), got {tau}")
    return tau


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


def weighted_reward(quality: float, cost: float, cost_weight: float | None = None, *, lam: float | None = None
                    ) -> float:
    """``quality - cost_weight * cost`` — the weighted-sum scalarisation, for ablations against the lexicographic
    rule.

    Args:
        quality: quality of the plan's output.
        cost: FLOPs fraction (observation included).
        cost_weight: the exchange rate between cost and quality (quality units per unit of cost).
        lam: deprecated name of ``cost_weight`` (``lam`` is reserved for Lagrange multipliers).

    Raises:
        ValueError: a non-finite input, a negative ``cost_weight`` (it would reward spending FLOPs), or both /
            neither of ``cost_weight`` and ``lam``.
    """
    if lam is not None:
        if cost_weight is not None:
            raise ValueError("pass cost_weight only (lam is its deprecated name)")
        warnings.warn("weighted_reward(lam=...) is deprecated; use cost_weight=...", DeprecationWarning, stacklevel=2)
        cost_weight = lam
    if cost_weight is None:
        raise ValueError("weighted_reward needs cost_weight")
    _cost_weight(cost_weight)
    for name, v in (("quality", quality), ("cost", cost), ("cost_weight", cost_weight)):
        if not math.isfinite(v):
            raise ValueError(f"{name} must be finite, got {v}")
    return float(quality - cost_weight * cost)


class Reward:
    """A reward rule applied to an evaluated outcome (anything with ``quality``, ``quality_full`` and ``cost``).

    Subclasses set :attr:`name` and implement :meth:`__call__`; :meth:`info` gives the ``info`` entries the env
    adds to every terminal step (``reward``, ``constraint_satisfied``, plus rule-specific ones).

    Attributes:
        tau: the quality tolerance of the constraint ``q >= q_full - tau`` reported in
            ``info["constraint_satisfied"]`` (every rule reports it, whether or not it optimises it).
    """

    name = "reward"

    def __init__(self, tau: float):
        self.tau = check_tau(tau)

    def __call__(self, outcome) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def info(self, outcome) -> dict:
        """Fresh ``info`` entries for ``outcome``: ``constraint_satisfied`` (bool) and ``reward`` (float)."""
        return {"constraint_satisfied": bool(constraint_satisfied(outcome.quality, outcome.quality_full, self.tau)),
                "reward": float(self(outcome))}

    def __repr__(self) -> str:
        return f"{type(self).__name__}(tau={self.tau:g})"


class LexicographicReward(Reward):
    """:func:`lexicographic_reward` with tolerance ``tau`` (quality first, then FLOPs)."""

    name = "lexicographic"

    def __call__(self, outcome) -> float:
        return lexicographic_reward(outcome.quality, outcome.quality_full, outcome.cost, self.tau)


class VectorReward(LexicographicReward):
    """The lexicographic scalar, plus ``info["reward_vector"] = (quality, cost)`` for multi-objective agents."""

    name = "vector"

    def info(self, outcome) -> dict:
        out = super().info(outcome)
        out["reward_vector"] = (float(outcome.quality), float(outcome.cost))
        return out


class WeightedReward(Reward):
    """:func:`weighted_reward`: ``quality - cost_weight * cost``.

    Args:
        cost_weight: quality units per unit of cost (finite, ``>= 0``).
        tau: tolerance reported in ``info["constraint_satisfied"]`` only (the reward ignores it).

    Raises:
        ValueError: a non-finite or negative ``cost_weight`` (a negative weight rewards spending FLOPs).
    """

    name = "weighted"

    def __init__(self, cost_weight: float = 0.5, tau: float = 0.1):
        super().__init__(tau)
        self.cost_weight = _cost_weight(cost_weight)

    def __call__(self, outcome) -> float:
        return weighted_reward(outcome.quality, outcome.cost, self.cost_weight)

    def __repr__(self) -> str:
        return f"WeightedReward(cost_weight={self.cost_weight:g}, tau={self.tau:g})"


def make_reward(mode: str, *, tau: float, cost_weight: float = 0.5) -> Reward:
    """The :class:`Reward` of a ``reward_mode`` string (one of :data:`REWARD_MODES`).

    Raises:
        ValueError: unknown mode, bad ``tau`` or ``cost_weight``.
    """
    if mode == "lexicographic":
        return LexicographicReward(tau)
    if mode == "vector":
        return VectorReward(tau)
    if mode == "weighted":
        return WeightedReward(cost_weight, tau)
    raise ValueError(f"unknown reward_mode {mode!r}; choose one of {REWARD_MODES} (or pass reward=<Reward>)")
