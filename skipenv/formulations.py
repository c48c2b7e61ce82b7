"""Constraint formulations of the skip problem as named choices: Gymnasium wrappers and matching metrics.

Every SwitchDec episode reports ``quality``, ``quality_full`` and ``cost`` (FLOPs of the plan, observation included,
divided by the full model's FLOPs) in ``info``. Write the quality loss of an episode as ``loss = quality_full -
quality`` and the tolerance as ``tau``. The three formulations differ in *where* the quality constraint must hold:

``"per_input"`` — every input must keep ``loss <= tau`` (the environment's own lexicographic reward, see
    :mod:`skipenv.rewards`; after Switchable Decision, Zhang et al., ICML 2024, arXiv 2405.04513). No wrapper is
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

:func:`formulation_metrics` computes, over a table of episodes, what every formulation is judged by: mean quality,
per-input constraint-met rate, mean FLOPs saved, mean lexicographic reward, and (for the expected constraint)
whether the mean quality loss stays within ``tau``, with a bootstrap confidence interval.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from .rewards import check_tau, constraint_satisfied, lexicographic_reward

__all__ = ["FORMULATIONS", "default_dual_lr", "LagrangeMultiplier", "ExpectedConstraint", "BudgetConditioned", "make_formulation",
           "formulation_metrics", "metrics_by_tau", "bootstrap_ci"]

#: The named formulations (see the module docstring).
FORMULATIONS = ("per_input", "expected", "budget")

#: Default tolerance range of :class:`BudgetConditioned` (quality units). It spans "nothing may be lost" (0) to
#: three times the default agreement tolerance 0.1 of ``SwitchDec-XSum-v0``; pass ``tau_range`` for a quality
#: signal on another scale (e.g. ROUGE-L, whose default tau is 0.02).
DEFAULT_TAU_RANGE = (0.0, 0.3)


def _episode_outcome(info: dict) -> tuple[float, float, float] | None:
    """``(quality, quality_full, cost)`` of a finished episode, or ``None`` for an intermediate step (the layerwise
    env reports them only on its last step)."""
    if "quality" not in info or "cost" not in info:
        return None
    return float(info["quality"]), float(info.get("quality_full", 1.0)), float(info["cost"])


# ---------------------------------------------------------------------------------------------- expected
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
    ``lam <- min(lam_max, max(0, lam + lr * mean(buffer)))`` and the buffer is emptied. A violated constraint
    (positive mean) raises ``lam``; slack lowers it down to 0. One instance can be shared by the wrappers of a
    vector env so all copies see the same multiplier.

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


class ExpectedConstraint(gym.Wrapper):
    """Expected-quality constraint as a scalar reward with an online Lagrange multiplier (see module docstring).

    On each finished episode the reward becomes ``(1 - cost) - lam * (loss - tau)`` with the multiplier ``lam``
    *before* this episode's dual update; then the episode's loss is given to the multiplier. Intermediate steps
    (layerwise env) keep the env's reward (0). ``info`` gains ``lagrange_multiplier`` (the value used),
    ``constraint_violation`` (``loss - tau``) and ``lagrangian_reward`` (the returned reward); ``info["reward"]``
    stays the env's own lexicographic reward.

    Args:
        env: a SwitchDec env (one-shot or layerwise).
        tau: tolerance on the mean quality loss.
        multiplier: a shared :class:`LagrangeMultiplier` (its ``tau`` must equal ``tau``); default a new one
            built from ``tau`` and ``multiplier_kwargs``.
        update: False freezes the multiplier (evaluation).
        **multiplier_kwargs: ``lr``, ``update_every``, ``lam_init``, ``lam_max`` of a new multiplier.

    Raises:
        ValueError: a shared multiplier with another ``tau``, invalid multiplier arguments, or an ``update`` that is
            not a bool (a string such as ``"false"`` would read as True); at a step, a Lagrangian reward that is not
            finite (a multiplier times a loss beyond float range).
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
        if not isinstance(update, (bool, np.bool_)):
            raise ValueError(f"update must be True (learn the multiplier) or False (freeze it), got {update!r}")
        self.multiplier, self.update = multiplier, bool(update)
        self.tau = float(tau)

    @property
    def lam(self) -> float:
        """The current Lagrange multiplier."""
        return self.multiplier.value

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        outcome = _episode_outcome(info)
        if outcome is None:
            return obs, reward, terminated, truncated, info
        q, q_full, cost = outcome
        loss = q_full - q
        lam = self.multiplier.value
        reward = float((1.0 - cost) - lam * (loss - self.tau))
        if not np.isfinite(reward):
            raise ValueError(f"the Lagrangian reward is not finite (multiplier {lam:g}, quality loss {loss:g}, cost "
                             f"{cost:g}): lower lam_max or check the quality signal's scale")
        info = dict(info, lagrange_multiplier=lam, constraint_violation=loss - self.tau, lagrangian_reward=reward)
        if self.update:
            self.multiplier.observe(loss)
        return obs, reward, terminated, truncated, info


# ---------------------------------------------------------------------------------------------- budget
class BudgetConditioned(gym.Wrapper):
    """Budget-conditioned formulation: a per-episode quality tolerance, observed by the policy.

    ``reset`` draws ``tau ~ Uniform(tau_range)`` from the wrapper's own generator (seeded by ``reset(seed=...)``,
    so the env's example order is the same as without the wrapper), or takes ``options["tau"]`` (evaluation at a
    fixed tolerance; the other options go to the env). The observation is the env's with ``tau`` appended:
    ``Box`` of shape ``[n + 1]`` whose last bound is ``tau_range``. The reward of a finished episode is
    :func:`skipenv.rewards.lexicographic_reward` at that tau; intermediate steps keep the env's reward.
    ``info`` gains ``tau``, and on finished episodes ``budget_reward`` and ``budget_constraint_satisfied``.

    Args:
        env: a SwitchDec env whose observation space is a 1-D float ``Box``.
        tau_range: ``(low, high)`` with ``0 <= low <= high`` (default :data:`DEFAULT_TAU_RANGE`).

    Raises:
        ValueError: a bad range (or one whose values are not finite in the observation's dtype), a non-Box / non-1-D
            observation space, or ``options["tau"]`` outside the range (raised before the env is reset).
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
        self.tau = low

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
        self.tau = float(self._rng.uniform(*self.tau_range)) if tau is None else tau
        return self._augment(obs), dict(info, tau=self.tau)

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        info = dict(info, tau=self.tau)
        outcome = _episode_outcome(info)
        if outcome is not None:
            q, q_full, cost = outcome
            reward = lexicographic_reward(q, q_full, cost, self.tau)
            info.update(budget_reward=reward, budget_constraint_satisfied=constraint_satisfied(q, q_full, self.tau))
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


# ---------------------------------------------------------------------------------------------- metrics
def bootstrap_ci(values, *, n_resamples: int = 2000, confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap confidence interval of the mean of ``values`` (shape ``[n]``), via
    ``scipy.stats.bootstrap`` (resampling the n entries with replacement). Returns ``(nan, nan)`` for fewer than 2
    values; ``(x, x)`` when all values equal ``x``."""
    from scipy.stats import bootstrap

    v = np.asarray(values, dtype=float)
    if v.size < 2:
        return float("nan"), float("nan")
    if np.all(v == v[0]):
        return float(v[0]), float(v[0])
    res = bootstrap((v,), np.mean, n_resamples=n_resamples, confidence_level=confidence, method="percentile",
                    rng=np.random.default_rng(seed))
    return float(res.confidence_interval.low), float(res.confidence_interval.high)


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
        n_resamples, seed: bootstrap of the mean quality loss over documents (see :func:`bootstrap_ci`).

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
    lo, hi = bootstrap_ci(per_doc["loss"], n_resamples=n_resamples, seed=seed)
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
