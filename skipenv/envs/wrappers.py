"""Constraint formulations of the skip problem as named choices: Gymnasium wrappers and matching metrics.

Every SwitchDec episode reports ``quality``, ``quality_full`` and ``cost`` (FLOPs of the plan, observation included,
divided by the full model's FLOPs) in ``info``. Write the quality loss of an episode as ``loss = quality_full -
quality`` and the tolerance as ``tau``. The three formulations differ in *where* the quality constraint must hold:

``"per_input"`` — every input must keep ``loss <= tau`` (the environment's own lexicographic reward, see
    :mod:`skipenv.envs.rewards`; after Switchable Decision, Zhang et al., ICML 2024, arXiv 2405.04513). No wrapper is
    needed: :func:`make_formulation` returns the env unchanged.

``"expected"`` — a constrained MDP (Altman, *Constrained Markov Decision Processes*, 1999): minimise ``E[cost]``
    subject to ``E[loss] <= tau`` over the input distribution. :class:`ExpectedConstraint` optimises it with
    unmodified RL algorithms through the Lagrangian relaxation ``max_pi min_{lam >= 0} E[1 - cost] - lam (E[loss] -
    tau)``: the policy maximises the scalar reward ``(1 - cost) - lam * (loss - tau)`` while the multiplier follows
    projected dual (sub)gradient ascent on the running mean of the constraint violation (as in RCPO, Tessler et
    al., ICLR 2019, and the Lagrangian baselines of Ray et al., *Safety Gym*, 2019)::

        lam <- max(0, lam + lr * mean(loss_i - tau over the last ``update_every`` episodes))

``"budget"`` — budget-conditioned: :class:`BudgetConditioned` draws each episode's tolerance ``tau`` uniformly from
    a documented range and appends it to the observation; the reward is the lexicographic reward at that ``tau``.
    One policy then covers the whole quality-vs-FLOPs front (evaluate it at fixed ``tau`` with
    ``reset(options={"tau": x})``).

:func:`skipenv.evaluation.formulation_metrics.formulation_metrics` computes, over a table of episodes, what every
formulation is judged by (mean quality, per-input constraint-met rate, mean FLOPs saved, and for the expected
constraint whether the mean quality loss stays within ``tau``, with a bootstrap confidence interval).
"""

from __future__ import annotations

from typing import Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .rewards import (BudgetReward, EpisodeScores, LagrangeMultiplier, LagrangianReward, Reward, check_tau,
                           default_dual_lr)

__all__ = ["FORMULATIONS", "DEFAULT_TAU_RANGE", "default_dual_lr", "LagrangeMultiplier", "ExpectedConstraint",
           "BudgetConditioned", "make_formulation", "ThresholdActions", "action_for_bits"]

#: The named formulations (see the module docstring).
FORMULATIONS = ("per_input", "expected", "budget")

#: Default tolerance range of :class:`BudgetConditioned` (quality units). It spans "nothing may be lost" (0) to
#: three times the default agreement tolerance 0.1 of ``SwitchDec-XSum-v0``; pass ``tau_range`` for a quality
#: signal on another scale (e.g. ROUGE-L, whose default tau is 0.02).
DEFAULT_TAU_RANGE = (0.0, 0.3)


def _rewarded(rule: Reward, env_reward: float, info: dict) -> tuple[float, dict]:
    """The reward and ``info`` of a step under ``rule``: on a finished episode, ``rule`` computes the reward and
    writes ``info["reward"]`` (the same value), its formulation and state; the unwrapped env's own value is kept as
    ``info["env_reward"]``; then ``rule`` observes the episode (a stateful rule updates). Intermediate steps
    (layerwise env) keep the env's reward (0) and ``info``."""
    scores = EpisodeScores.from_info(info)
    if scores is None:
        return env_reward, info
    info = {**info, "env_reward": float(info.get("reward", env_reward)), **rule.info(scores)}
    rule.observe(scores)
    return info["reward"], info


# ---------------------------------------------------------------------------------------------- expected
class ExpectedConstraint(gym.Wrapper):
    """Expected-quality constraint as a scalar reward with an online Lagrange multiplier (see module docstring).

    The reward of each finished episode is computed by :attr:`reward`, a
    :class:`~skipenv.envs.rewards.LagrangianReward`: ``(1 - cost) - lam * (loss - tau)`` with the multiplier
    ``lam`` *before* this episode's dual update; then the episode's loss is given to the multiplier. The same object
    writes ``info["reward"]`` (equal to the returned reward), ``info["formulation"] = "expected"``,
    ``lagrange_multiplier`` (the value used), ``constraint_violation`` (``loss - tau``) and ``multiplier_updates``;
    ``info["env_reward"]`` keeps the unwrapped env's lexicographic value. Intermediate steps (layerwise env) keep
    the env's reward (0).

    Args:
        env: a SwitchDec env (one-shot or layerwise).
        tau: tolerance on the mean quality loss.
        multiplier: a shared :class:`LagrangeMultiplier` (its ``tau`` must equal ``tau``); default a new one
            built from ``tau`` and ``multiplier_kwargs``.
        update: False freezes the multiplier (evaluation).
        **multiplier_kwargs: ``lr``, ``update_every``, ``lam_init``, ``lam_max`` of a new multiplier.

    Raises:
        ValueError: a shared multiplier with another ``tau``, invalid multiplier arguments, or an ``update`` that is
            not a bool (a string such as ``"false"`` would read as True).
    """

    def __init__(self, env: gym.Env, tau: float = 0.1, *, multiplier: LagrangeMultiplier | None = None,
                 update: bool = True, **multiplier_kwargs):
        super().__init__(env)
        if multiplier is None:
            multiplier = LagrangeMultiplier(tau, **multiplier_kwargs)
        elif not isinstance(multiplier, LagrangeMultiplier):
            raise ValueError(f"multiplier must be a LagrangeMultiplier (shared between wrappers), got "
                             f"{type(multiplier).__name__}")
        elif multiplier_kwargs or abs(multiplier.tau - float(tau)) > 1e-12:
            raise ValueError("pass either a shared multiplier (with the same tau) or multiplier kwargs, not both; "
                             f"multiplier.tau={multiplier.tau}, tau={tau}, kwargs={sorted(multiplier_kwargs)}")
        #: the one reward rule of this formulation (what the agent receives and ``info["reward"]`` reports)
        self.reward = LagrangianReward(multiplier, update=update)
        self.tau = float(tau)

    @property
    def multiplier(self) -> LagrangeMultiplier:
        """The Lagrange multiplier of :attr:`reward`."""
        return self.reward.multiplier

    @property
    def update(self) -> bool:
        """Whether finished episodes update the multiplier (False: frozen, for evaluation)."""
        return self.reward.update

    @property
    def lam(self) -> float:
        """The current Lagrange multiplier."""
        return self.multiplier.value

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward, info = _rewarded(self.reward, reward, info)
        return obs, reward, terminated, truncated, info


# ---------------------------------------------------------------------------------------------- budget
class BudgetConditioned(gym.Wrapper):
    """Budget-conditioned formulation: a per-episode quality tolerance, observed by the policy.

    ``reset`` draws ``tau ~ Uniform(tau_range)`` from the wrapper's own generator (seeded by ``reset(seed=...)``,
    so the env's example order is the same as without the wrapper), or takes ``options["tau"]`` (evaluation at a
    fixed tolerance; the other options go to the env). The observation is the env's with ``tau`` appended:
    ``Box`` of shape ``[n + 1]`` whose last bound is ``tau_range``. The reward of a finished episode is computed by
    :attr:`reward`, a :class:`~skipenv.envs.rewards.BudgetReward`: :func:`~skipenv.envs.rewards.lexicographic_reward`
    at that tau. It writes ``info["reward"]`` (equal to the returned reward), ``info["constraint_satisfied"]`` (at
    the episode's tau), ``info["formulation"] = "budget"``; ``info["env_reward"]`` keeps the unwrapped env's value
    (at the env's tau). ``info`` gains ``tau`` on every step; intermediate steps keep the env's reward.

    Args:
        env: a SwitchDec env whose observation space is a 1-D float ``Box``.
        tau_range: ``(low, high)`` with ``0 <= low <= high`` (default :data:`DEFAULT_TAU_RANGE`).

    Raises:
        ValueError: a bad range, a non-Box / non-1-D observation space, or ``options["tau"]`` outside the range.
    """

    def __init__(self, env: gym.Env, tau_range: Sequence[float] = DEFAULT_TAU_RANGE):
        super().__init__(env)
        try:
            low, high = (check_tau(v, "tau_range") for v in tau_range)
            ok = low <= high
        except (TypeError, ValueError):  # not two finite numbers >= 0
            ok = False
        if not ok:
            raise ValueError(f"tau_range must be (low, high) with 0 <= low <= high finite numbers, got {tau_range!r}")
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"BudgetConditioned needs a 1-D Box observation space, got {space}")
        with np.errstate(over="ignore"):
            representable = np.isfinite(np.asarray([low, high], dtype=space.dtype)).all()
        if not representable:
            raise ValueError(f"tau_range {tau_range!r} does not fit the observation's dtype {space.dtype} (tau is "
                             f"appended to the observation and would be inf); use a range within quality units, "
                             f"e.g. (0, 0.3)")
        self.tau_range = (low, high)
        self.observation_space = spaces.Box(np.append(space.low, low).astype(space.dtype),
                                            np.append(space.high, high).astype(space.dtype), dtype=space.dtype)
        self._rng = np.random.default_rng()
        #: the one reward rule of this formulation; its ``tau`` is the episode's
        self.reward = BudgetReward(low)

    @property
    def tau(self) -> float:
        """The current episode's tolerance (quality units)."""
        return self.reward.tau

    def _augment(self, obs) -> np.ndarray:
        return np.append(np.asarray(obs), self.tau).astype(self.observation_space.dtype)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        if options is not None and not isinstance(options, dict):
            raise ValueError(f"reset options must be a dict such as {{'tau': 0.1}} or None, got {options!r}")
        options = dict(options or {})
        tau = options.pop("tau", None)
        if tau is not None:  # checked before the env resets: a refused reset leaves the episode as it was
            tau = check_tau(tau, "options['tau']")
            if not self.tau_range[0] <= tau <= self.tau_range[1]:
                raise ValueError(f"options['tau']={tau} lies outside tau_range {self.tau_range}; widen tau_range")
        if seed is not None:
            self._rng = np.random.default_rng(seed)
        obs, info = self.env.reset(seed=seed, options=options or None)
        self.reward.tau = float(self._rng.uniform(*self.tau_range)) if tau is None else tau
        return self._augment(obs), dict(info, tau=self.tau)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        reward, info = _rewarded(self.reward, reward, dict(info, tau=self.tau))
        return self._augment(obs), float(reward), terminated, truncated, info


def make_formulation(env: gym.Env, formulation: str = "per_input", **kwargs) -> gym.Env:
    """Wrap ``env`` for a named formulation: ``"per_input"`` (returned unchanged; no kwargs), ``"expected"``
    (:class:`ExpectedConstraint`) or ``"budget"`` (:class:`BudgetConditioned`).

    Raises:
        ValueError: an unknown formulation, or kwargs given for ``"per_input"``.
    """
    if formulation == "per_input":
        if kwargs:
            raise ValueError("the per_input formulation takes no arguments (its tau is the env's), "
                             f"got {sorted(kwargs)}")
        return env
    if formulation == "expected":
        return ExpectedConstraint(env, **kwargs)
    if formulation == "budget":
        return BudgetConditioned(env, **kwargs)
    raise ValueError(f"unknown formulation {formulation!r}; choose one of {FORMULATIONS}")


# ---------------------------------------------------------------------------------------------- action encoding
class ThresholdActions(gym.ActionWrapper):
    """Skip decisions as real-valued scores: action ``a`` in ``Box(-B, B, [n], float32)`` with ``B = |threshold| +
    1``, factor ``i`` is skipped where ``a[i] > threshold`` (the env's ``MultiBinary(n)`` bit ``i`` = 1).

    Why (issue 21): with ``MultiBinary`` actions, SB3's initial policy (and ``action_space.sample()``) skips each
    bit with probability 0.5, so the first rollout loses far more than ``tau`` on nearly every input and the
    expected constraint's multiplier climbs to its cap before the learner's first update. With this encoding a unit
    Gaussian policy of mean 0 — SB3's initial ``MlpPolicy`` for ``Box`` actions (action head initialised with
    gain 0.01, ``log_std_init=0``; samples clipped to the bounds) — skips each factor with probability
    ``1 - Phi(threshold)`` (0.023 at 2.0, 0.0047 at 2.6; Phi is the standard normal CDF), and its deterministic
    action (the mean, about 0) is "skip nothing". The policy learns to skip a factor by raising its mean above
    ``threshold``. (``action_space.sample()`` is uniform on the box: it skips with probability
    ``1 / (2 |threshold| + 2)`` for a positive threshold.)

    Args:
        env: an env with a ``MultiBinary(n)`` action space (the one-shot SwitchDec envs, the factorial table env).
        threshold: the score above which a factor is skipped, in ``[0, 1e6]``.

    Raises:
        ValueError: a non-``MultiBinary`` action space, or a threshold that is not a number in ``[0, 1e6]``; in
            :meth:`action`, an action of another shape, a non-finite score, or an integer / bool array (0 / 1 bits:
            pass them through :meth:`action_of` — read as scores they would silently mean "skip nothing").
    """

    def __init__(self, env: gym.Env, threshold: float = 2.0):
        super().__init__(env)
        if not isinstance(env.action_space, spaces.MultiBinary) or len(env.action_space.shape) != 1:
            raise ValueError(f"ThresholdActions needs a 1-D MultiBinary action space (skip bits), got "
                             f"{env.action_space}; the layerwise and menu envs have no skip bits to threshold")
        self.threshold = self.check_threshold(threshold)
        self.n = int(env.action_space.shape[0])
        #: finite bounds (SB3 requires them; it clips its Gaussian's samples to them): ``|threshold| + 1``
        self.bound = abs(self.threshold) + 1.0
        self.action_space = spaces.Box(-self.bound, self.bound, shape=(self.n,), dtype=np.float32)

    @staticmethod
    def check_threshold(threshold) -> float:
        """``threshold`` as a float; ValueError unless it is a real number in ``[0, 1e6]``.

        A negative threshold would make the mean-0 initial policy skip every factor (the opposite of why the
        encoding exists), and above 1e6 the box's float32 bounds lose the precision a score needs; 0 gives the
        ``MultiBinary`` behaviour (each factor skipped with probability 0.5 by a unit Gaussian)."""
        if isinstance(threshold, bool) or not isinstance(threshold, (int, float, np.integer, np.floating)) \
                or not np.isfinite(threshold):
            raise ValueError(f"skip_threshold must be a finite number such as 2.0, got {threshold!r}")
        if not 0.0 <= float(threshold) <= 1e6:
            raise ValueError(f"skip_threshold must be in [0, 1e6] (2.0 makes a mean-0 Gaussian policy skip each factor "
                             f"with probability 0.023), got {threshold!r}; a negative threshold skips every factor "
                             f"at the mean-0 action")
        return float(threshold)

    def action(self, action) -> np.ndarray:
        """``[n]`` scores -> ``[n]`` int8 skip bits of the wrapped env (``score > threshold``)."""
        a = np.asarray(action)
        if a.dtype.kind in "biu":
            raise ValueError(f"this env's actions are real-valued scores (skip where score > {self.threshold:g}), "
                             f"got a {a.dtype} array; convert 0 / 1 skip bits with "
                             f"env.get_wrapper_attr('action_of')(bits) or "
                             f"skipenv.envs.wrappers.action_for_bits(env, bits)")
        if a.shape != (self.n,) or a.dtype.kind != "f" or not np.isfinite(a).all():
            raise ValueError(f"action must be {self.n} finite scores (float), got {a.tolist()!r}")
        return (a > self.threshold).astype(np.int8)

    def action_of(self, bits) -> np.ndarray:
        """The scores of 0 / 1 skip bits ``[n]``: ``threshold + 1`` where a bit is 1, ``threshold - 1`` where it
        is 0 (float32), so ``env.step(env.get_wrapper_attr("action_of")(env.unwrapped.plan_to_action(plan)))``
        runs ``plan`` (``env.action_of`` itself works only on this wrapper, not through ``gym.make``'s outer ones)."""
        b = np.asarray(bits)
        if b.shape != (self.n,) or not ((b == 0) | (b == 1)).all():
            raise ValueError(f"bits must be {self.n} values of 0 / 1, got {b.tolist()!r}")
        return np.where(b == 1, self.threshold + 1.0, self.threshold - 1.0).astype(np.float32)


def action_for_bits(env: gym.Env, bits) -> np.ndarray:
    """The action of ``env`` that runs the 0 / 1 skip bits ``bits`` (``[n]``, e.g. from
    ``env.unwrapped.plan_to_action(plan)``): ``bits`` themselves on a ``MultiBinary`` env, their scores
    (:meth:`ThresholdActions.action_of`) on an env built with ``skip_threshold=`` (``SwitchDec-XSum-v2`` and the
    unversioned ``SwitchDec-XSum``), so a tool that steps plans works on either.

    Raises:
        ValueError: bits of the wrong length or not 0 / 1 (on a thresholded env; a ``MultiBinary`` env checks them
            in ``step``).
    """
    try:
        convert = env.get_wrapper_attr("action_of")
    except AttributeError:
        return bits
    return convert(bits)
