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

**One reward truth.** Whatever constraint formulation an id registers, the reward the agent receives is computed by
one :class:`Reward` object, and the same object writes ``info["reward"]`` (so the two are equal by construction),
``info["formulation"]`` (``"per_input"``, ``"expected"`` or ``"budget"``), ``info["reward_rule"]`` (its
:attr:`Reward.name`) and its state:

- ``per_input`` (the env itself): :class:`LexicographicReward` (or :class:`WeightedReward` /
  :class:`VectorReward`), stateless;
- ``expected`` (:class:`~skipenv.envs.wrappers.ExpectedConstraint`): :class:`LagrangianReward`, the Lagrangian
  relaxation ``(1 - cost) - lam (loss - tau)`` of ``E[loss] <= tau`` with the multiplier ``lam`` of a
  :class:`LagrangeMultiplier` (state: ``info["lagrange_multiplier"]``, ``info["constraint_violation"]``,
  ``info["multiplier_updates"]``);
- ``budget`` (:class:`~skipenv.envs.wrappers.BudgetConditioned`): :class:`BudgetReward`, the lexicographic reward at
  the episode's tolerance (state: ``info["tau"]``).

A wrapper keeps the unwrapped env's own value as ``info["env_reward"]`` (what ``env.unwrapped`` would return, e.g.
for replaying a record).
"""

from __future__ import annotations

import math
import numbers
import warnings
from typing import NamedTuple

import numpy as np

__all__ = ["REWARD_MODES", "lexicographic_reward", "weighted_reward", "constraint_satisfied", "Reward",
           "LexicographicReward", "WeightedReward", "VectorReward", "make_reward", "check_tau", "EpisodeScores",
           "default_dual_lr", "LagrangeMultiplier", "LagrangianReward", "BudgetReward"]

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
        lam: deprecated name of ``cost_weight`` (``lam`` is reserved for Lagrange multipliers); removed in 0.3.

    Raises:
        ValueError: a non-finite input, a negative ``cost_weight`` (it would reward spending FLOPs), or both /
            neither of ``cost_weight`` and ``lam``.
    """
    if lam is not None:
        if cost_weight is not None:
            raise ValueError("pass cost_weight only (lam is its deprecated name)")
        warnings.warn("weighted_reward(lam=...) is deprecated and will be removed in skipenv 0.3; use cost_weight=...",
                      DeprecationWarning, stacklevel=2)
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
    #: the constraint formulation this rule optimises (``info["formulation"]``): ``"per_input"`` (every input keeps
    #: ``loss <= tau``), ``"expected"`` (the mean loss does) or ``"budget"`` (a per-episode tau)
    formulation = "per_input"

    def __init__(self, tau: float):
        self.tau = check_tau(tau)

    def __call__(self, outcome) -> float:  # pragma: no cover - interface
        raise NotImplementedError

    def info(self, outcome) -> dict:
        """Fresh ``info`` entries for ``outcome``: ``constraint_satisfied`` (bool, ``q >= q_full - tau``),
        ``reward`` (float, ``self(outcome)``), ``formulation`` and ``reward_rule`` (strings), plus the rule's state
        (:meth:`state`)."""
        return {"constraint_satisfied": bool(constraint_satisfied(outcome.quality, outcome.quality_full, self.tau)),
                "reward": float(self(outcome)), "formulation": self.formulation, "reward_rule": self.name,
                **self.state(outcome)}

    def state(self, outcome) -> dict:
        """The ``info`` entries of the rule's state that produced the reward of ``outcome`` (none: stateless)."""
        return {}

    def observe(self, outcome) -> None:
        """Called once per finished episode *after* it was rewarded; a stateful rule updates its state here
        (stateless rules: nothing)."""

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


# ---------------------------------------------------------------------------------------------- formulations
class EpisodeScores(NamedTuple):
    """What a :class:`Reward` reads of a finished episode: ``quality``, ``quality_full`` (quality units) and
    ``cost`` (FLOPs fraction, observation included); built from a terminal step's ``info`` by :meth:`from_info`."""

    quality: float
    quality_full: float
    cost: float

    @classmethod
    def from_info(cls, info: dict) -> "EpisodeScores | None":
        """The scores of a finished episode's ``info``, or ``None`` for an intermediate step (the layerwise env
        reports ``quality`` / ``cost`` only on its last step)."""
        if "quality" not in info or "cost" not in info:
            return None
        return cls(float(info["quality"]), float(info.get("quality_full", 1.0)), float(info["cost"]))


def default_dual_lr(tau: float) -> float:
    """Default dual step size of :class:`LagrangeMultiplier` at tolerance ``tau``: ``0.005 / max(tau, 0.01)**2``
    (multiplier units per unit of mean violation; 0.5 at ``tau = 0.1``, 50 for ``tau <= 0.01``). See the class's
    ``lr`` argument for why it scales with ``1 / tau**2``.

    Raises:
        ValueError: ``tau`` not a finite number ``>= 0``.
    """
    return 0.005 / max(check_tau(tau, "tau"), 0.01) ** 2


class LagrangeMultiplier:
    """The dual variable of the expected-quality constraint, updated by projected dual ascent.

    Each finished episode adds its constraint violation ``v = loss - tau`` (``loss = quality_full - quality``) to a
    buffer; once the buffer holds ``update_every`` violations the multiplier becomes
    ``lam <- min(lam_max, max(0, lam + lr * mean(buffer)))`` and the buffer is emptied (RCPO, Tessler et al., ICLR
    2019; the Lagrangian baselines of Ray et al., *Safety Gym*, 2019). A violated constraint (positive mean) raises
    ``lam``; slack lowers it down to 0. One instance can be shared by the wrappers of a vector env so all copies see
    the same multiplier.

    Args:
        tau: tolerance on the mean quality loss (quality units, ``>= 0``).
        lr: dual step size ``eta`` (multiplier units per unit of mean violation). Default (None):
            :func:`default_dual_lr` ``= 0.005 / max(tau, 0.01)**2``, i.e. 0.5 at the agreement tolerance 0.1 and
            50 at the probability tolerance 0.01. The multiplier's natural scale is ``1 / tau`` (at ``lam = 1 /
            tau`` a loss of one ``tau`` above the constraint costs as much reward as running the whole model), so
            a step proportional to ``1 / tau**2`` makes the dual ascent move at the same pace in units of ``tau``
            whatever the quality signal's scale: a mean violation of one ``tau`` moves ``lam`` by ``0.005 / tau``
            (0.5 % of that scale) per update. Measured on SmolLM2/XSum: with the fixed step 0.5 at tau 0.01 the
            multiplier was still at 0.38 after 256 episodes, far below the ~11 the probe's expected-constraint
            rule uses (README, "Choosing the defaults").
        update_every: episodes per dual update (the running mean is over these episodes).
        lam_init: initial multiplier (``>= 0``).
        lam_max: upper bound of the multiplier (finite: it keeps the reward scale bounded; with no bound, absurd
            losses drove the multiplier and the reward to inf / NaN).

    Raises:
        ValueError: ``tau`` / ``lr`` / ``lam_init`` not a finite real number ``>= 0``, ``update_every`` not an
            integer ``>= 1``, or ``lam_max`` not a finite number ``>= lam_init``.
    """

    def __init__(self, tau: float, *, lr: float | None = None, update_every: int = 8, lam_init: float = 0.0,
                 lam_max: float = 100.0):
        check_tau(tau, "tau")
        if lr is None:
            lr = default_dual_lr(tau)
        for name, v in (("lr", lr), ("lam_init", lam_init)):
            if isinstance(v, bool) or not isinstance(v, (int, float, np.integer, np.floating)) or not np.isfinite(v) \
                    or v < 0:
                raise ValueError(f"{name} must be a finite number >= 0, got {v!r}")
        if isinstance(update_every, bool) or not isinstance(update_every, (int, np.integer)) or update_every < 1:
            raise ValueError(f"update_every must be an integer >= 1, got {update_every!r}")
        if isinstance(lam_max, bool) or not isinstance(lam_max, (int, float, np.number)) \
                or not np.isfinite(lam_max) or lam_max < lam_init:
            raise ValueError(f"lam_max must be a finite number >= lam_init ({lam_init}), got {lam_max!r} (an unbounded "
                             f"multiplier can turn the reward into inf / NaN; pick a large finite bound such as 1e6)")
        self.tau, self.lr, self.update_every = float(tau), float(lr), int(update_every)
        self.lam_max = float(lam_max)
        self.value = float(lam_init)
        self.buffer: list[float] = []
        self.num_updates = 0

    def observe(self, loss: float) -> bool:
        """Record one episode's quality loss; returns True when this call performed a dual update."""
        if not np.isfinite(loss):
            raise ValueError(f"quality loss must be finite, got {loss}")
        self.buffer.append(float(loss) - self.tau)
        if len(self.buffer) < self.update_every:
            return False
        self.value = float(min(self.lam_max, max(0.0, self.value + self.lr * float(np.mean(self.buffer)))))
        self.buffer.clear()
        self.num_updates += 1
        return True

    def __repr__(self) -> str:
        return f"LagrangeMultiplier(value={self.value:.4g}, tau={self.tau}, lr={self.lr}, updates={self.num_updates})"


class LagrangianReward(Reward):
    """The expected-constraint formulation's reward: ``(1 - cost) - lam * (loss - tau)``, ``loss = q_full - q``.

    This is the Lagrangian relaxation ``max_pi min_{lam >= 0} E[1 - cost] - lam (E[loss] - tau)`` of "minimise
    ``E[cost]`` subject to ``E[loss] <= tau``" (Altman, *Constrained Markov Decision Processes*, 1999), evaluated
    with the multiplier's value *before* this episode's dual update; :meth:`observe` then gives the episode's loss
    to the multiplier (unless frozen). ``info`` gains ``lagrange_multiplier`` (the value used),
    ``constraint_violation`` (``loss - tau``) and ``multiplier_updates`` (dual updates done before this episode).

    Args:
        multiplier: the :class:`LagrangeMultiplier` (its ``tau`` is the reward's; may be shared by several envs).
        update: False freezes the multiplier (evaluation).

    Raises:
        ValueError: ``multiplier`` not a :class:`LagrangeMultiplier`, or ``update`` not a bool.
    """

    name = "lagrangian"
    formulation = "expected"

    def __init__(self, multiplier: LagrangeMultiplier, *, update: bool = True):
        if not isinstance(multiplier, LagrangeMultiplier):
            raise ValueError(f"multiplier must be a LagrangeMultiplier (shared between wrappers), got "
                             f"{type(multiplier).__name__}")
        if not isinstance(update, (bool, np.bool_)):
            raise ValueError(f"update must be True (learn the multiplier) or False (freeze it), got {update!r}")
        super().__init__(multiplier.tau)
        self.multiplier, self.update = multiplier, bool(update)

    def __call__(self, outcome) -> float:
        loss = outcome.quality_full - outcome.quality
        lam = self.multiplier.value
        reward = float((1.0 - outcome.cost) - lam * (loss - self.tau))
        if not np.isfinite(reward):
            raise ValueError(f"the Lagrangian reward is not finite (multiplier {lam:g}, quality loss {loss:g}, cost "
                             f"{outcome.cost:g}): lower lam_max or check the quality signal's scale")
        return reward

    def state(self, outcome) -> dict:
        return {"lagrange_multiplier": self.multiplier.value,
                "constraint_violation": float(outcome.quality_full - outcome.quality) - self.tau,
                "multiplier_updates": self.multiplier.num_updates}

    def observe(self, outcome) -> None:
        if self.update:
            self.multiplier.observe(outcome.quality_full - outcome.quality)

    def __repr__(self) -> str:
        return f"LagrangianReward({self.multiplier!r}, update={self.update})"


class BudgetReward(LexicographicReward):
    """The budget-conditioned formulation's reward: :func:`lexicographic_reward` at the episode's tolerance, which
    :class:`~skipenv.envs.wrappers.BudgetConditioned` sets on :attr:`tau` at every reset (``info["tau"]``;
    ``info["constraint_satisfied"]`` is judged at that tau too)."""

    name = "lexicographic"
    formulation = "budget"

    def state(self, outcome) -> dict:
        return {"tau": self.tau}
