"""Learners trained from scratch on replay tables, scored against the static front and the per-document oracle
(issue 21, item 4; ``benchmarks/compare_tables.py`` runs the comparison).

Every learner trains on a registered table env wrapped in :class:`~skipenv.envs.wrappers.ExpectedConstraint`
(the expected formulation of ``SwitchDec-XSum-v1``, tau 0.01 on the probability signal), through
:class:`EpisodeRecorder` (which logs each training episode and its instantaneous regret), and is then scored
deterministically on the held-out documents:

=================  ==========  ====================================================================================
name               env         learner
=================  ==========  ====================================================================================
``ppo``, ``a2c``   factorial   SB3 with :data:`skipenv.policies.sb3.ALGORITHMS` defaults, skip bits initialised at p = 0.02
``ppo-default``    factorial   ``PPO("MlpPolicy", env)``: SB3's own defaults (the snippet a new user writes)
``ppo-default-v1`` factorial   the same snippet on ``SwitchDec-XSum-Table-v1``'s encoding (skip scores, threshold 2)
``dqn``            menu        SB3 DQN (:data:`skipenv.policies.sb3.ALGORITHMS` defaults)
``rloo``           factorial   :class:`~skipenv.policies.pg.GroupPG` (leave-one-out baseline)
``pg-lagrangian``  factorial   :class:`~skipenv.policies.pg.ConstrainedPG` (its own Lagrangian handler)
``eps-greedy``     menu        mabwiser ``EpsilonGreedy(epsilon=0.1)`` (context-free)
``linucb``         menu        mabwiser ``LinUCB(alpha=1)`` on a PCA of the observation (:class:`ContextMap`)
``lints``          menu        mabwiser ``LinTS(alpha=1)`` on the same contexts
``lagrangian-ts``  menu        :class:`~skipenv.tables.bandits.LagrangianTS`: Thompson sampling on per-plan loss
                               models, FLOPs from the table's cost lines, an explicit multiplier schedule
=================  ==========  ====================================================================================

The reference points come from :mod:`skipenv.evaluation.probe` (not reimplemented): the static front at mean quality loss
``l`` is :func:`~skipenv.policies.menu.mixture_lp` fitted on the test documents (favours the static side), the oracle at
``l`` is :func:`~skipenv.policies.menu.expected_oracle`. A policy's *headroom share* is
``(saved - static(l)) / (oracle(l) - static(l))`` at its own test loss ``l`` (:func:`headroom_share`).
"""

from __future__ import annotations

import copy
import time
from dataclasses import dataclass, field

import gymnasium as gym
import numpy as np

from ..policies.menu import expected_oracle, mixture_lp
from .store import Table, TableError

__all__ = ["LEARNERS", "ENV_OF", "ContextMap", "MabwiserBandit", "EpisodeRecorder", "Fold", "make_folds",
           "front_saved", "headroom_share", "evaluate_plans", "train_learner_on_table"]

#: learner -> one-line description (module docstring)
LEARNERS = {
    "ppo": "SB3 PPO, repository defaults (skipenv.policies.sb3.ALGORITHMS, init skip prob 0.02), factorial env",
    "a2c": "SB3 A2C, repository defaults, factorial env",
    "dqn": "SB3 DQN, repository defaults, menu env",
    "rloo": "GroupPG (leave-one-out baseline), factorial env",
    "pg-lagrangian": "ConstrainedPG with its Lagrangian handler, factorial env",
    "eps-greedy": "mabwiser EpsilonGreedy(0.1), context-free, menu env",
    "linucb": "mabwiser LinUCB(alpha=1) on PCA contexts, menu env",
    "lints": "mabwiser LinTS(alpha=1) on PCA contexts, menu env",
    "lagrangian-ts": "LagrangianTS: Thompson sampling on per-plan quality-loss models, known FLOPs, explicit multiplier",
    "ppo-default": "PPO('MlpPolicy', env) with SB3's own defaults, factorial env",
    "ppo-default-v1": "PPO('MlpPolicy', env) with SB3's own defaults on the v1 encoding (skip scores, threshold 2)",
}
#: learner -> "factorial" (MultiBinary, SwitchDec-XSum-Table-v0) or "menu" (Discrete, SwitchDec-XSum-MenuTable-v0)
ENV_OF = {n: ("menu" if n in ("dqn", "eps-greedy", "linucb", "lints", "lagrangian-ts") else "factorial")
          for n in LEARNERS}
_IDS = {"factorial": "SwitchDec-XSum-Table-v0", "menu": "SwitchDec-XSum-MenuTable-v0"}


# ---------------------------------------------------------------------------------------------- folds
@dataclass
class Fold:
    """One train / test division of a table's covered documents: ``table`` is the table with its rows relabelled
    ``"train"`` / ``"test"`` (a copy of the metadata; the columns are shared, nothing is written)."""

    name: str
    table: Table
    train_ids: list = field(default_factory=list)
    test_ids: list = field(default_factory=list)


def _relabel(table: Table, splits: list[str]) -> Table:
    meta = copy.deepcopy(table.meta)
    meta["documents"]["splits"] = list(splits)
    return Table(table.folder, meta, table.columns)


def make_folds(table: Table, *, min_train: int = 40, folds: int = 3, seed: int = 0) -> tuple[list[Fold], str]:
    """The documents to train and test on, and a sentence saying which rule was used.

    - The table's own split when it covers ``>= min_train`` train documents and ``>= 1`` test document: one fold,
      train = its train documents, test = its test documents (the full shipped table).
    - Otherwise (a table still being built) a documented fallback: ``folds``-fold cross-validation over *all*
      covered documents (a seeded permutation, ``seed``), every document scored once out of fold; the per-document
      scores of the folds are concatenated, so every learner is scored on the same documents.

    Raises:
        TableError: fewer covered documents than ``2 * folds`` (each fold needs >= 2 train and 1 test document).
    """
    splits = table.document_splits
    ids = table.document_ids
    n_train = sum(s == "train" for s in splits)
    n_test = sum(s == "test" for s in splits)
    if n_train >= min_train and n_test >= 1:
        return ([Fold("split", table, [i for i, s in zip(ids, splits) if s == "train"],
                      [i for i, s in zip(ids, splits) if s == "test"])],
                f"the table's split: {n_train} train / {n_test} test documents")
    n = len(ids)
    if n < 2 * folds:
        raise TableError(f"the table at {table.folder} covers {n} documents; a {folds}-fold comparison needs at "
                         f"least {2 * folds} (extend the build: `skipenv table build`)")
    order = np.random.default_rng(seed).permutation(n)
    out = []
    for k, part in enumerate(np.array_split(order, folds)):
        test = set(part.tolist())
        lab = ["test" if r in test else "train" for r in range(n)]
        out.append(Fold(f"fold{k}", _relabel(table, lab), [ids[r] for r in range(n) if r not in test],
                        [ids[r] for r in sorted(test)]))
    return out, (f"fallback: only {n_train} train documents covered (< {min_train}), so {folds}-fold "
                 f"cross-validation over all {n} covered documents (train + test), each scored out of fold")


# ---------------------------------------------------------------------------------------------- reference points
def front_saved(loss: np.ndarray, saved: np.ndarray, level: float) -> tuple[float, float]:
    """``(static, oracle)``: mean FLOPs saved (fraction of the full forward) of the best static mixture
    (:func:`skipenv.policies.menu.mixture_lp`) and of the per-document expected oracle
    (:func:`skipenv.policies.menu.expected_oracle`) at mean quality loss ``<= level`` on these documents.

    Args:
        loss, saved: ``[D, P]`` quality loss (``quality_full - quality``) and FLOPs saved (``1 - cost``).
        level: the mean quality loss allowed (quality units); values below 0 are treated as 0.

    Raises:
        ValueError: from the LPs (no plan of loss <= level on average, i.e. no loss-free plan in the menu).
    """
    level = max(float(level), 0.0)
    pi = mixture_lp(loss.mean(0), saved.mean(0), level)
    x = expected_oracle(loss, saved, level)
    return float(pi @ saved.mean(0)), float((x * saved).sum(1).mean())


def headroom_share(loss: np.ndarray, saved: np.ndarray, plans: np.ndarray) -> dict:
    """Score deterministic plan choices ``plans`` ``[D]`` (plan indices) against the fronts at equal quality.

    Returns:
        dict: ``flops_saved`` (mean fraction), ``mean_loss`` (mean quality loss), ``static_at_loss`` /
        ``oracle_at_loss`` (:func:`front_saved` at that loss), ``gain`` (``flops_saved - static_at_loss``),
        ``headroom`` (``oracle_at_loss - static_at_loss``) and ``share`` (``gain / headroom``; NaN without
        headroom).
    """
    D = len(plans)
    s = saved[np.arange(D), plans]
    l_ = loss[np.arange(D), plans]
    st, orc = front_saved(loss, saved, float(l_.mean()))
    head = orc - st
    return {"flops_saved": float(s.mean()), "mean_loss": float(l_.mean()), "static_at_loss": st,
            "oracle_at_loss": orc, "gain": float(s.mean() - st), "headroom": head,
            "share": float((s.mean() - st) / head) if head > 1e-12 else float("nan")}


# ---------------------------------------------------------------------------------------------- recording
class EpisodeRecorder(gym.Wrapper):
    """Logs every training episode (outermost wrapper, so it sees the Lagrangian reward the learner gets):
    ``example_id``, ``plan``, ``reward``, ``loss``, ``saved``, ``lam`` and ``regret`` — the per-document oracle's
    reward under the same multiplier, ``max_p [saved_p - lam (loss_p - tau)]`` over the table's plans reachable
    from this env's action space, minus the reward obtained (>= 0 up to round-off)."""

    def __init__(self, env: gym.Env, reachable: int):
        super().__init__(env)
        u = env.unwrapped
        a = u.outcome_arrays()
        self._loss = (a["quality_full"] - a["quality"])[:, :reachable]
        self._saved = (1.0 - a["cost"])[:, :reachable]
        self._row = {e: i for i, e in enumerate(a["example_ids"])}
        self.tau = u.tau
        self.log: list[tuple] = []

    def step(self, action):
        obs, reward, terminated, truncated, info = self.env.step(action)
        lam = float(info.get("lagrange_multiplier", 0.0))
        r = self._row[info["example_id"]]
        best = float(np.max(self._saved[r] - lam * (self._loss[r] - self.tau)))
        self.log.append((info["plan_index"], float(reward), info["quality_full"] - info["quality"],
                         info["flops_saved"], lam, best - float(reward)))
        return obs, reward, terminated, truncated, info


# ---------------------------------------------------------------------------------------------- bandits
class ContextMap:
    """Observation -> bandit context: standardise with the train documents' mean / std, then project on their
    first ``components`` principal components (``sklearn.decomposition.PCA``, whitened), as the probe reduces the
    578-feature observation before its regressions, plus a constant 1 (the intercept of the per-arm ridge
    regressions). Shapes: ``[n]`` or ``[B, n]`` -> ``[B, components + 1]``."""

    def __init__(self, observations: np.ndarray, components: int = 8, seed: int = 0):
        from sklearn.decomposition import PCA

        X = np.asarray(observations, dtype=np.float64)
        self.mean, self.std = X.mean(0), X.std(0) + 1e-6
        k = int(min(components, X.shape[0] - 1, X.shape[1]))
        self.pca = PCA(n_components=max(k, 1), random_state=seed).fit((X - self.mean) / self.std)
        self.scale = np.sqrt(self.pca.explained_variance_) + 1e-9

    def __call__(self, obs) -> np.ndarray:
        X = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        Z = self.pca.transform((X - self.mean) / self.std) / self.scale
        return np.hstack([Z, np.ones((len(Z), 1))])  # a constant feature: mabwiser's ridge has no intercept


class MabwiserBandit:
    """A mabwiser contextual bandit over the menu env's ``N`` plans, trained on the env's (Lagrangian) reward in
    batches: ``batch`` episodes are played with the current model's choices, then ``partial_fit``.

    Args:
        env: the menu table env (``Discrete(N)``), wrapped.
        kind: ``"eps-greedy"`` (``LearningPolicy.EpsilonGreedy(epsilon)``), ``"linucb"`` (``LinUCB(alpha)``),
            ``"lints"`` (``LinTS(alpha)``).
        seed: mabwiser's seed and the env's first reset.
        contexts: a :class:`ContextMap` (required for the linear kinds).
        batch: episodes per ``partial_fit``.

    Raises:
        ValueError: an unknown kind, a linear kind without ``contexts``, or an env without ``Discrete`` actions.
    """

    def __init__(self, env, kind: str, *, seed: int = 0, contexts: ContextMap | None = None, batch: int = 32,
                 epsilon: float = 0.1, alpha: float = 1.0):
        from mabwiser.mab import MAB, LearningPolicy

        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(f"a bandit needs the menu env (Discrete actions), got {env.action_space}")
        pol = {"eps-greedy": lambda: LearningPolicy.EpsilonGreedy(epsilon=epsilon),
               "linucb": lambda: LearningPolicy.LinUCB(alpha=alpha),
               "lints": lambda: LearningPolicy.LinTS(alpha=alpha)}
        if kind not in pol:
            raise ValueError(f"unknown bandit {kind!r}; choose one of {sorted(pol)}")
        if kind != "eps-greedy" and contexts is None:
            raise ValueError(f"{kind} needs contexts= (a ContextMap of the train observations)")
        self.env, self.kind, self.seed, self.batch = env, kind, int(seed), int(batch)
        self.contexts = contexts
        self.arms = list(range(int(env.action_space.n)))
        self.mab = MAB(self.arms, pol[kind](), seed=int(seed))
        self._fitted, self._started = False, False
        self.rng = np.random.default_rng(seed)
        self.name = kind

    def _ctx(self, obs):
        return None if self.kind == "eps-greedy" else self.contexts(obs)

    def _choose(self, obs_batch) -> list[int]:
        if not self._fitted:  # nothing observed yet: uniform over the arms
            return self.rng.integers(len(self.arms), size=len(obs_batch)).tolist()
        if self.kind == "eps-greedy":
            out = self.mab.predict() if len(obs_batch) == 1 else [self.mab.predict() for _ in obs_batch]
            return [int(a) for a in np.atleast_1d(out)]
        return [int(a) for a in np.atleast_1d(self.mab.predict(self._ctx(np.asarray(obs_batch))))]

    def learn(self, total_timesteps: int, progress_bar: bool = False) -> "MabwiserBandit":
        """Play ``total_timesteps`` episodes (one step each), updating every ``batch`` episodes."""
        env = self.env
        if not self._started:
            obs, _ = env.reset(seed=self.seed)
            self._started = True
        else:
            obs, _ = env.reset()
        done = 0
        while done < total_timesteps:
            n = min(self.batch, total_timesteps - done)
            obs_b, act_b, rew_b = [], [], []
            for _ in range(n):
                a = self._choose([obs])[0]
                _, r, *_ = env.step(a)
                obs_b.append(obs)
                act_b.append(a)
                rew_b.append(float(r))
                obs, _ = env.reset()
            ctx = self._ctx(np.asarray(obs_b))
            if self._fitted:
                self.mab.partial_fit(act_b, rew_b, ctx)
            else:
                self.mab.fit(act_b, rew_b, ctx)
                self._fitted = True
            done += n
        return self

    def __call__(self, observation) -> int:
        """Deterministic choice (the arm of highest expected reward; exploration off)."""
        if not self._fitted:
            return 0
        # exploitation: mabwiser's predict_expectations explores (epsilon-greedy returns random values with
        # probability epsilon, LinTS samples, LinUCB adds its bonus), so read the fitted means instead
        imp = self.mab._imp
        if self.kind == "eps-greedy":
            exp = [imp.arm_to_expectation[a] for a in self.arms]
        else:
            x = self._ctx(observation)[0]
            exp = [float(x @ imp.arm_to_model[a].beta) for a in self.arms]
        return int(np.argmax(exp))


# ---------------------------------------------------------------------------------------------- training
def _plan_of(env_kind: str, action, num_factors: int) -> int:
    if env_kind == "menu":
        return int(np.asarray(action).reshape(-1)[0])
    a = np.asarray(action).reshape(-1).astype(np.int64)
    return int(a @ (1 << np.arange(num_factors, dtype=np.int64)))


def evaluate_plans(policy, env_kind: str, table: Table, split: str = "test") -> tuple[list[str], np.ndarray]:
    """``(example_ids, plan indices [D])``: the deterministic choice of ``policy`` (``observation -> action``) on
    each covered document of ``split`` (observations read from the table, clipped as the env returns them)."""
    from .envs import OBS_BOUND

    rows = table.rows(split)
    X = np.clip(np.asarray(table.columns["observations"][rows], dtype=np.float32), -OBS_BOUND, OBS_BOUND)
    F = table.grammar.num_factors
    return [table.document_ids[r] for r in rows], np.array([_plan_of(env_kind, policy(x), F) for x in X])


def _make_env(env_kind: str, table: Table, split: str = "train", **kwargs):
    return gym.make(_IDS[env_kind], table=table, split=split, expect=None, **kwargs)


def train_learner_on_table(name: str, table: Table, *, episodes: int, seed: int = 0, checkpoints: int = 4,
                           env_kwargs: dict | None = None) -> dict:
    """Train learner ``name`` from scratch on ``table``'s train documents for ``episodes`` episodes, scoring the
    deterministic policy on its test documents after each of ``checkpoints`` equal chunks of training.

    Returns:
        dict: ``test_ids`` (list), ``plans`` (``[D]`` plan indices on the test documents after training),
        ``curve`` (list of ``(episodes_so_far, test plan indices)``), ``log`` (``[episodes, 6]`` array of
        :class:`EpisodeRecorder` rows: plan, reward, loss, saved, lam, regret), ``seconds`` (wall time).

    Raises:
        ValueError: an unknown learner.
    """
    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose one of {sorted(LEARNERS)}")
    kind = ENV_OF[name]
    env_kwargs = dict(env_kwargs or {})
    threshold = None
    if name == "ppo-default-v1":
        from .envs import TABLE_SPECS

        threshold = env_kwargs.setdefault("skip_threshold", TABLE_SPECS["SwitchDec-XSum-Table-v1"][1]["skip_threshold"])
    base = _make_env(kind, table, **env_kwargs)
    reach = table.grammar.num_factorial if kind == "factorial" else table.num_plans
    env = EpisodeRecorder(base, reach)
    t0 = time.perf_counter()
    chunk = [episodes // checkpoints + (1 if k < episodes % checkpoints else 0) for k in range(checkpoints)]
    curve, done = [], 0
    if name in ("eps-greedy", "linucb", "lints"):
        obs = base.unwrapped.outcome_arrays()["observations"]
        agent = MabwiserBandit(env, name, seed=seed, contexts=ContextMap(obs, seed=seed))
        learn, policy = (lambda n: agent.learn(n)), agent
    elif name == "lagrangian-ts":
        from .bandits import LagrangianTS

        agent = LagrangianTS(env, seed=seed)
        learn, policy = (lambda n: agent.learn(n)), agent
    elif name in ("ppo", "a2c", "dqn", "ppo-default", "ppo-default-v1"):
        import torch

        from ..policies.sb3 import make_sb3

        torch.set_num_threads(1)
        if name in ("ppo-default", "ppo-default-v1"):
            from stable_baselines3 import PPO

            model = PPO("MlpPolicy", env, seed=seed, device="cpu", verbose=0)
        else:
            model = make_sb3(name, env, seed=seed, device="cpu", total_timesteps=episodes)
        state = {"first": True}

        def learn(n):
            model.learn(n, reset_num_timesteps=state["first"])
            state["first"] = False

        def policy(x):
            a = model.predict(x, deterministic=True)[0]
            return a if threshold is None else (a > threshold).astype(np.int8)  # scores -> the table's skip bits
    else:
        from ..policies.pg import ConstrainedPG, GroupPG, GroupPGConfig, PGConfig

        agent = (GroupPG(env, GroupPGConfig(), seed=seed) if name == "rloo"
                 else ConstrainedPG(env, PGConfig(handler="lagrangian"), seed=seed))

        def learn(n):
            agent.learn(n, progress_bar=False)

        policy = agent
    for n in chunk:
        if n:
            learn(n)
        done += n
        curve.append((done, evaluate_plans(policy, kind, table)[1]))
    test_ids, plans = evaluate_plans(policy, kind, table)
    return {"test_ids": test_ids, "plans": plans, "curve": curve, "log": np.asarray(env.log, dtype=np.float64),
            "seconds": time.perf_counter() - t0}
