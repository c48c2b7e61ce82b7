"""A Lagrangian contextual bandit for the menu table env that learns each plan's *quality loss* from the
observation (issue 21, item 4: learners from scratch toward the oracle's headroom).

SB3's learners and mabwiser's LinUCB / LinTS regress the env's Lagrangian reward ``saved - lam (loss - tau)``,
a target that moves whenever the env's multiplier moves. :class:`LagrangianTS` instead separates the two parts:

- **FLOPs saved is not learned.** A plan's FLOPs on a document follow from the plan and the input length
  (FlopCounterMode counts them without running the quality evaluation), so the learner fits, per plan, a least-
  squares line of the table's FLOPs saved on the observation's length features over the train documents
  (:class:`CostModel`; its R^2 on the test documents: ``benchmarks/table_ceiling.py``; the rest of a plan's
  FLOPs depends on the number of generated tokens, unknown before acting).
- **The quality loss is learned from bandit feedback** (the played plan's ``quality_full - quality`` only), by one
  Bayesian ridge regression per plan on shared low-dimensional features (:class:`FeatureMap`: a whitened PCA of
  the pooled hidden state fitted on the *train* observations, plus the two length features and an intercept),
  with Thompson sampling on the loss posterior for exploration. Skip nothing has loss 0 by definition.
- **An explicit multiplier**: the action is ``argmax_p S_p(x) - lam L_p(x)``; during training ``lam`` follows
  multiplicative dual ascent on each batch's observed mean loss, ``lam <- clip(lam exp(clip(eta (mean_loss - tau)
  / tau, -1, 1)), lam_min, lam_max)``: at most a factor e per batch either way (an additive step, as the env's
  :class:`~skipenv.envs.wrappers.ExpectedConstraint`, climbs by up to ``lr (loss - tau)`` but falls by only
  ``lr tau``, so early exploration of very lossy plans pinned it near its cap and starved exploration); the final deterministic policy (posterior means) takes the ``(ridge penalty, lam)``
  pair that saves the most on the train documents subject to an *out-of-fold* mean loss ``<= tau``
  (K-fold over the documents the learner saw, its own observations only), as
  :class:`~skipenv.policies.menu.ProbePolicy` calibrates on its out-of-fold predictions.

Nothing is warm-started: no probe, no oracle, no outcome the learner did not play (the cost lines use FLOPs only).
"""

from __future__ import annotations

import numpy as np

__all__ = ["FeatureMap", "CostModel", "LagrangianTS"]


class FeatureMap:
    """Observation -> shared features ``[B, components + passthrough + 1]``: the first ``n - passthrough`` columns
    (the pooled hidden state) standardised with the fit set's mean / std and projected on its first ``components``
    principal components (``sklearn.decomposition.PCA``, whitened: unit variance on the fit set), then the last
    ``passthrough`` columns (the env's length features) standardised, then a constant 1.

    Args:
        observations: ``[D, n]`` observations to fit on (the train documents only).
        components: PCA components (capped at ``D - 1`` and ``n - passthrough``).
        passthrough: trailing columns kept as they are (standardised), not PCA-reduced.

    Raises:
        ValueError: fewer than 2 observations, or ``passthrough`` not in ``[0, n)``.
    """

    def __init__(self, observations: np.ndarray, components: int = 8, passthrough: int = 2, seed: int = 0):
        from sklearn.decomposition import PCA

        X = np.asarray(observations, dtype=np.float64)
        if X.ndim != 2 or len(X) < 2:
            raise ValueError(f"FeatureMap needs >= 2 observations as a [D, n] array, got shape {X.shape}")
        if not 0 <= passthrough < X.shape[1]:
            raise ValueError(f"passthrough must be in [0, {X.shape[1]}), got {passthrough}")
        self.passthrough = int(passthrough)
        H, T = X[:, :X.shape[1] - self.passthrough], X[:, X.shape[1] - self.passthrough:]
        self.h_mean, self.h_std = H.mean(0), H.std(0) + 1e-6
        self.t_mean, self.t_std = T.mean(0), T.std(0) + 1e-6
        k = max(1, int(min(components, len(X) - 1, H.shape[1])))
        self.pca = PCA(n_components=k, random_state=seed).fit((H - self.h_mean) / self.h_std)
        self.scale = np.sqrt(self.pca.explained_variance_) + 1e-9
        self.dim = k + self.passthrough + 1

    def lengths(self, obs) -> np.ndarray:
        """The standardised passthrough (length) columns plus a constant 1, ``[B, passthrough + 1]``."""
        X = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        T = (X[:, X.shape[1] - self.passthrough:] - self.t_mean) / self.t_std
        return np.hstack([T, np.ones((len(X), 1))])

    def __call__(self, obs) -> np.ndarray:
        X = np.atleast_2d(np.asarray(obs, dtype=np.float64))
        H = X[:, :X.shape[1] - self.passthrough]
        Z = self.pca.transform((H - self.h_mean) / self.h_std) / self.scale
        return np.hstack([Z, self.lengths(X)])


class CostModel:
    """Per-plan FLOPs saved (fraction of the full forward) as a least-squares line of the length features:
    ``S_p(x) = lengths(x) . w_p`` (:meth:`FeatureMap.lengths`), fitted on the train documents' tabulated FLOPs.

    Args:
        features: the :class:`FeatureMap` (its ``lengths``).
        observations: ``[D, n]``; saved: ``[D, P]`` (``1 - cost`` of every plan on those documents).
    """

    def __init__(self, features: FeatureMap, observations: np.ndarray, saved: np.ndarray):
        self.features = features
        T = features.lengths(observations)
        self.w, *_ = np.linalg.lstsq(T, np.asarray(saved, dtype=np.float64), rcond=None)

    def __call__(self, obs) -> np.ndarray:
        """Predicted FLOPs saved ``[B, P]``."""
        return self.features.lengths(obs) @ self.w


#: ridge penalty of the intercept (the last feature): almost free, so a plan's mean loss is not shrunk toward 0
#: (shrinking it made rarely played plans look nearly free out of fold and broke the calibration)
INTERCEPT_PENALTY = 1e-2


def _penalty(d: int, alpha: float) -> np.ndarray:
    pen = np.full(d, float(alpha))
    pen[-1] = INTERCEPT_PENALTY
    return pen


def _ridge(Phi: np.ndarray, y: np.ndarray, alpha: float):
    """Ridge solution and inverse Gram matrix: ``(Phi^T Phi + diag(pen))^-1 Phi^T y`` and the inverse, ``pen`` =
    ``alpha`` on every feature but the intercept (:data:`INTERCEPT_PENALTY`)."""
    A = Phi.T @ Phi + np.diag(_penalty(Phi.shape[1], alpha))
    Ainv = np.linalg.inv(A)
    return Ainv @ (Phi.T @ y), Ainv


class LagrangianTS:
    """Thompson sampling on per-plan quality-loss models with known FLOPs and an explicit Lagrange multiplier, for
    the menu table env (``Discrete(P)``; the env's own reward and multiplier are not used: the learner reads the
    played plan's loss ``quality_full - quality`` and FLOPs saved from ``info``). Module docstring: the method.

    The loss data are kept per (document, plan) pair (the mean of its observations; a table replays the same
    outcome, so repeats carry no new information and do not shrink the posterior): plan ``p``'s model is a ridge
    regression of those pair means on :class:`FeatureMap` features (penalty ``alpha``, the intercept
    almost unpenalised: :data:`INTERCEPT_PENALTY`), posterior ``N(mean, (nu sigma)^2 A^-1)`` with
    ``sigma`` the pooled residual standard deviation (0.05 before any residual).

    Args:
        env: the menu table env (wrapped); ``env.unwrapped.outcome_arrays()`` gives the train observations (for the
            PCA) and FLOPs (for :class:`CostModel`); its ``tau`` is the constraint's.
        seed: the sampling generator's seed and the env's first reset.
        components: PCA components of :class:`FeatureMap`.
        alpha: ridge penalty while training (whitened features: unit variance per feature).
        nu: Thompson-sampling scale of the posterior.
        lam_init, eta, lam_min, lam_max: the multiplier schedule (module docstring; FLOPs fraction per unit of
            quality loss; ``lam_init`` ~ (0.3 saved) / (0.03 loss), the scale of the table's plans, not a fitted
            value).
        batch: episodes between refits and multiplier steps.
        empty: the skip-nothing plan (loss 0 by definition), or None.
        alphas: ridge penalties tried by the final calibration; folds: its K.
        min_docs: the deterministic policy chooses only plans played on at least this many documents.

    Raises:
        ValueError: an env without ``Discrete`` actions.
    """

    name = "lagrangian-ts"

    def __init__(self, env, *, seed: int = 0, components: int = 8, alpha: float = 3.0, nu: float = 1.0,
                 lam_init: float = 10.0, eta: float = 0.3, lam_min: float = 0.1, lam_max: float = 1000.0,
                 batch: int = 32,
                 empty: int | None = 0, alphas=(0.3, 3.0, 30.0, 300.0), folds: int = 4, min_docs: int = 3):
        import gymnasium as gym

        if not isinstance(env.action_space, gym.spaces.Discrete):
            raise ValueError(f"LagrangianTS needs the menu env (Discrete actions), got {env.action_space}")
        self.env, self.seed, self.batch = env, int(seed), int(batch)
        u = env.unwrapped
        arr = u.outcome_arrays()
        self.tau = float(u.tau)
        self.P = int(env.action_space.n)
        self.features = FeatureMap(arr["observations"], components=components, seed=seed)
        self.costs = CostModel(self.features, arr["observations"], 1.0 - arr["cost"])
        self.alpha, self.nu, self.empty = float(alpha), float(nu), empty
        self.lam, self.eta, self.steps = float(lam_init), float(eta), 0
        self.lam_min, self.lam_max = float(lam_min), float(lam_max)
        self.alphas, self.folds, self.min_docs = tuple(alphas), int(folds), int(min_docs)
        self.rng = np.random.default_rng(seed)
        self._sum: dict = {}  # (document, plan) -> [sum of losses, count]
        self._phi: dict = {}  # document -> features [d]
        self._post = None
        self._final = None  # (lam, per-plan mean coefficients [d, P]) after calibrate()
        self._started = False
        self.lam_trace: list[float] = []

    # -------------------------------------------------------------- models
    def _pairs(self, docs=None):
        """Per plan: (features [n, d], pair-mean losses [n], documents) over the observed pairs of ``docs``."""
        out = [([], [], []) for _ in range(self.P)]
        for (e, p), (s, n) in self._sum.items():
            if docs is None or e in docs:
                out[p][0].append(self._phi[e])
                out[p][1].append(s / n)
                out[p][2].append(e)
        return out

    def _fit(self, alpha: float, docs=None):
        """Mean coefficients ``[d, P]``, inverse Gram matrices and the pooled residual sd."""
        d = self.features.dim
        W, Ainv, res = np.zeros((d, self.P)), np.zeros((self.P, d, d)), []
        for p, (F, y, _) in enumerate(self._pairs(docs)):
            if p == self.empty:
                Ainv[p] = 0.0
                continue
            if not F:  # the prior: loss 0, wide on the intercept (Thompson sampling will try the plan)
                Ainv[p] = np.diag(1.0 / _penalty(d, alpha))
                continue
            F, y = np.asarray(F), np.asarray(y)
            W[:, p], Ainv[p] = _ridge(F, y, alpha)
            res.append(y - F @ W[:, p])
        r = np.concatenate(res) if res else np.zeros(0)
        sigma = float(np.sqrt(np.mean(r ** 2))) if len(r) > 3 else 0.05
        return W, Ainv, max(sigma, 1e-3)

    def _eligible(self, docs=None) -> np.ndarray:
        """``[P]`` bool: plans played on at least ``min_docs`` distinct documents of ``docs`` (and skip nothing).
        The deterministic policy chooses among these only: a plan with (almost) no data has only the prior's
        loss 0 to go on, which would make it look free."""
        n = np.zeros(self.P, dtype=int)
        for (e, p) in self._sum:
            if docs is None or e in docs:
                n[p] += 1
        ok = n >= self.min_docs
        if self.empty is not None:
            ok[self.empty] = True
        return ok

    def _sample_loss(self, phi: np.ndarray) -> np.ndarray:
        W, Ainv, sigma = self._post
        mean = phi @ W
        sd = self.nu * sigma * np.sqrt(np.maximum(np.einsum("i,pij,j->p", phi, Ainv, phi), 0.0))
        out = mean + sd * self.rng.standard_normal(self.P)
        if self.empty is not None:
            out[self.empty] = 0.0
        return out

    # -------------------------------------------------------------- training
    def learn(self, total_timesteps: int, progress_bar: bool = False) -> "LagrangianTS":
        """Play ``total_timesteps`` episodes (one step each): Thompson sampling under the current ``lam``, a refit
        and a multiplier step every ``batch`` episodes; then :meth:`calibrate` the deterministic policy."""
        env = self.env
        obs, info = env.reset(seed=self.seed) if not self._started else env.reset()
        self._started = True
        if self._post is None:
            self._post = self._fit(self.alpha)
        done = 0
        while done < total_timesteps:
            n = min(self.batch, total_timesteps - done)
            losses = []
            for _ in range(n):
                e = info["example_id"]
                phi = self.features(obs)[0]
                self._phi[e] = phi
                s_hat = self.costs(obs)[0]
                a = int(np.argmax(s_hat - self.lam * self._sample_loss(phi)))
                _, _, _, _, step_info = env.step(a)
                loss = float(step_info["quality_full"] - step_info["quality"])
                acc = self._sum.setdefault((e, a), [0.0, 0])
                acc[0] += loss
                acc[1] += 1
                losses.append(loss)
                obs, info = env.reset()
            self.steps += 1
            z = float(np.clip(self.eta * (float(np.mean(losses)) - self.tau) / self.tau, -1.0, 1.0))
            self.lam = float(np.clip(self.lam * np.exp(z), self.lam_min, self.lam_max))
            self.lam_trace.append(self.lam)
            self._post = self._fit(self.alpha)
            done += n
        self.calibrate()
        return self

    def calibrate(self, lams=None) -> tuple[float, float]:
        """Choose the deterministic policy's ``(ridge penalty, lam)``: for each penalty, K-fold over the documents
        seen, fit on the other folds' pairs, choose ``argmax S^ - lam L^`` on the held-out documents and score the
        choice by the *observed* loss of that (document, plan) pair (its out-of-fold prediction where the pair was
        never played) and the cost model's saving; keep the pair with the highest mean saving among the lams whose
        rule *and every larger lam's* are within ``tau`` on average (none: ``lam = lam_max``). Returns
        ``(alpha, lam)``."""
        lams = np.concatenate([[0.0], np.logspace(-1, 4, 51)]) if lams is None else np.sort(np.asarray(lams, float))
        docs = sorted(self._phi)
        if len(docs) < 2 * self.folds:
            self._final = (self.lam, np.where(self._eligible(), self._fit(self.alpha)[0], np.nan))
            return self.alpha, self.lam
        Phi = np.asarray([self._phi[e] for e in docs])
        S = Phi[:, self.features.dim - self.features.passthrough - 1:] @ self.costs.w  # the lengths part of phi
        pos = {e: i for i, e in enumerate(docs)}
        order = np.random.default_rng(self.seed).permutation(len(docs))
        best = (-np.inf, self.alpha, self.lam_max, np.inf)
        for alpha in self.alphas:
            Lh = np.zeros((len(docs), self.P))
            for part in np.array_split(order, self.folds):
                held = {docs[i] for i in part}
                W, _, _ = self._fit(alpha, docs=set(docs) - held)
                Lh[part] = np.where(self._eligible(set(docs) - held), Phi[part] @ W, np.inf)
            if self.empty is not None:
                Lh[:, self.empty] = 0.0
            Lobs = Lh.copy()  # observed pair means where played, else the out-of-fold prediction
            for (e, p), (s, n) in self._sum.items():
                Lobs[pos[e], p] = s / n
            # scan from the most cautious rule down: keep lam only while every larger lam is also within tau, so
            # one lucky lam between infeasible ones (noise on a few documents) is not chosen
            for lam in lams[::-1]:
                c = np.where(np.isinf(Lh), -np.inf, S - lam * np.where(np.isinf(Lh), 0.0, Lh)).argmax(1)
                loss = Lobs[np.arange(len(docs)), c].mean()
                saved = S[np.arange(len(docs)), c].mean()
                if loss > self.tau + 1e-12:
                    break
                if saved > best[0]:
                    best = (saved, alpha, lam, loss)
        alpha, lam = best[1], best[2]
        self._final = (float(lam), np.where(self._eligible(), self._fit(alpha)[0], np.nan))
        return float(alpha), float(lam)

    def __call__(self, observation) -> int:
        """Deterministic choice: ``argmax_p S^_p(x) - lam L^_p(x)`` with the calibrated ``lam`` and posterior means
        (before any training: skip nothing, the plan ``empty``, or plan 0)."""
        if self._final is None:
            return int(self.empty or 0)
        lam, W = self._final
        phi = self.features(observation)
        L = phi @ np.nan_to_num(W)
        if self.empty is not None:
            L[:, self.empty] = 0.0
        score = np.where(np.isnan(W).any(0), -np.inf, self.costs(observation)[0] - lam * L[0])
        return int(np.argmax(score))
