"""Plan menus and the policies that choose among a menu's plans (moved from :mod:`skipenv.evaluation.probe`,
issue 19: choosing a plan is the policy side; the probe's evaluation and report stay in ``evaluation/probe.py``).

- the menu: :func:`default_menu` (and :data:`DEFAULT_ATTENTION_LAYER`), :func:`parse_plan` for
  ``"NAME:KIND=I,J"`` texts;
- static and oracle choices over a (documents x plans) outcome table: :func:`mixture_lp` (the best static
  mixture), :func:`expected_oracle` and :func:`per_input_oracle`;
- :class:`ProbePolicy`, the supervised contextual policy over a menu (ridge regressions of every plan's quality loss
  and FLOPs saved from the observation, then a per-input or expected-constraint rule).

Losses are quality-loss fractions (full-model quality minus the plan's), savings and costs FLOPs fractions of the
full model; ``tau`` bounds the loss (per input or in expectation, :mod:`skipenv.envs.wrappers`).
"""

from __future__ import annotations

from typing import Sequence

import numpy as np

from ..envs.rewards import lexicographic_reward
from ..plan import SkipPlan

__all__ = ["DEFAULT_ATTENTION_LAYER", "default_menu", "parse_plan", "mixture_lp", "expected_oracle",
           "per_input_oracle", "ProbePolicy"]

#: Attention layer skipped by the default menu on models with >= 12 decoder layers: layer 6 of SmolLM2-135M's 30,
#: the most redundant attention sublayer measured on XSum (agreement ~0.9 when skipped alone).
DEFAULT_ATTENTION_LAYER = 6


def default_menu(spec) -> dict[str, SkipPlan]:
    """The default menu for a :class:`~skipenv.plan.PlanSpec`: skip nothing; drop the last 1, 2, 3, 4 of the
    ``K`` token segments; drop segment 3; drop segment 5 (0-based); skip the attention of one decoder layer
    (layer :data:`DEFAULT_ATTENTION_LAYER` on models with >= 12 decoder layers, else the middle layer).
    Token plans that do not fit ``K`` are left out.

    Returns:
        name → plan, in menu order.
    """
    k, layers = spec.token_segments, spec.num_decoder_layers
    menu = {"skip nothing": spec.empty_plan()}
    for n in range(1, 5):
        if n < k:
            menu[f"drop last {n}/{k} segments"] = SkipPlan.from_skips(spec, tokens=range(k - n, k))
    for s in (3, 5):
        if s < k:
            menu[f"drop segment {s}"] = SkipPlan.from_skips(spec, tokens=[s])
    if layers:
        layer = DEFAULT_ATTENTION_LAYER if layers >= 12 else layers // 2
        menu[f"skip attention {layer}"] = SkipPlan.from_skips(spec, attention=[layer])
    return menu


def parse_plan(text: str, spec) -> tuple[str, SkipPlan]:
    """Parse ``"NAME:KIND=I,J;KIND=I"`` (kinds: ``attention``, ``ffn``, ``tokens`` — decoder layers / token
    segments, 0-based; ``a-b`` ranges allowed) into ``(name, plan)``; e.g. ``"lead:tokens=6,7"``,
    ``"mid:attention=6;ffn=10-12"``. Without ``NAME:`` the text itself is the name.

    Raises:
        ValueError: an unknown kind, a malformed index or a reversed range (the message shows the expected form).
    """
    name, _, body = text.rpartition(":")
    name = name or body
    kinds: dict[str, list[int]] = {"attention": [], "ffn": [], "tokens": []}
    for part in filter(None, (p.strip() for p in body.split(";"))):
        kind, eq, idx = part.partition("=")
        if kind.strip() not in kinds or not eq:
            raise ValueError(f"cannot parse plan {text!r}: expected 'NAME:KIND=I,J;KIND=I' with KIND in "
                             f"{sorted(kinds)}, e.g. 'lead:tokens=6,7'")
        for tok in filter(None, (t.strip() for t in idx.split(","))):
            a, dash, b = tok.partition("-")
            try:
                lo, hi = int(a), int(b) if dash else int(a)
            except ValueError:
                raise ValueError(f"cannot parse index {tok!r} in plan {text!r}; use integers or ranges a-b") from None
            if hi < lo:
                raise ValueError(f"empty range {tok!r} in plan {text!r}: write it low-high, e.g. {hi}-{lo}")
            kinds[kind.strip()] += list(range(lo, hi + 1))
    return name, SkipPlan.from_skips(spec, **kinds)


# ---------------------------------------------------------------------------------------------- static / oracle
def mixture_lp(mean_loss: Sequence[float], mean_saved: Sequence[float], tau: float) -> np.ndarray:
    """Best static mixture: plan probabilities ``pi`` ``[P]`` maximising ``pi · mean_saved`` subject to
    ``pi · mean_loss <= tau``, ``sum(pi) = 1``, ``pi >= 0`` (``scipy.optimize.linprog``, HiGHS).

    Raises:
        ValueError: no distribution satisfies the constraint (every plan loses more than ``tau`` on average).
    """
    from scipy.optimize import linprog

    L, S = np.asarray(mean_loss, float), np.asarray(mean_saved, float)
    res = linprog(-S, A_ub=L[None, :], b_ub=[tau], A_eq=np.ones((1, len(S))), b_eq=[1.0], bounds=(0, None),
                  method="highs")
    if res.status != 0:
        raise ValueError(f"no mixture of the menu keeps the mean quality loss within tau={tau} "
                         f"(smallest mean loss {L.min():.4f}); add a safer plan (e.g. skip nothing) to the menu")
    pi = np.clip(res.x, 0.0, None)
    return pi / pi.sum()


def expected_oracle(loss: np.ndarray, saved: np.ndarray, tau: float) -> np.ndarray:
    """Expected-constraint oracle: per-document plan distributions ``x`` ``[D, P]`` maximising the mean FLOPs
    saved subject to the mean quality loss ``<= tau`` (an LP; at most one document gets a split distribution).

    Args:
        loss, saved: ``[D, P]`` per-document quality loss and FLOPs saved.

    Raises:
        ValueError: infeasible (no plan choice meets the mean constraint).
    """
    from scipy.optimize import linprog

    D, P = loss.shape
    a_eq = np.kron(np.eye(D), np.ones((1, P)))
    res = linprog(-saved.ravel() / D, A_ub=loss.ravel()[None, :] / D, b_ub=[tau], A_eq=a_eq, b_eq=np.ones(D),
                  bounds=(0, None), method="highs")
    if res.status != 0:
        raise ValueError(f"no choice of menu plans keeps the mean quality loss within tau={tau}")
    x = np.clip(res.x.reshape(D, P), 0.0, None)
    return x / x.sum(1, keepdims=True)


def per_input_oracle(quality: np.ndarray, quality_full: np.ndarray, cost: np.ndarray, tau: float) -> np.ndarray:
    """Per-input oracle: for each document the index of the menu plan with the highest lexicographic reward
    (the cheapest plan within tau when one exists), shape ``[D]``; ties go to the first plan in menu order."""
    r = _rewards(quality, quality_full, cost, tau)
    return r.argmax(1)


def _rewards(quality, quality_full, cost, tau) -> np.ndarray:
    return np.vectorize(lambda q, f, c: lexicographic_reward(q, f, c, tau))(quality, quality_full, cost)


# ---------------------------------------------------------------------------------------------- probe policy
class ProbePolicy:
    """Supervised contextual policy over a menu: predicts every plan's quality loss and FLOPs saved from the
    observation, then applies a per-input or expected-constraint rule calibrated on the training documents.

    Args:
        passthrough: trailing observation columns not PCA-reduced (the env's 2 length features).
        empty: index of the skip-nothing plan (its loss is known to be 0 and is not predicted), or None.
        components: PCA components of the pooled hidden state (capped by documents - 1); the ridge penalty of
            each target is chosen among 13 values in [1e-2, 1e4] by efficient leave-one-out CV (``RidgeCV``).
        folds: K of the K-fold splits (capped by the number of documents).
        seed: shuffling of the folds.
    """

    def __init__(self, *, passthrough: int = 2, empty: int | None = 0, components: int = 8,
                 folds: int = 5, seed: int = 0):
        self.passthrough, self.empty, self.components = int(passthrough), empty, int(components)
        self.folds, self.seed = int(folds), int(seed)
        self.threshold: float | None = None
        self.lams: np.ndarray | None = None
        self.lam_weights: np.ndarray | None = None
        self.lam_deterministic: float | None = None

    # -- regression
    def _model(self, n_docs: int, n_features: int):
        from sklearn.compose import ColumnTransformer
        from sklearn.decomposition import PCA
        from sklearn.linear_model import RidgeCV
        from sklearn.pipeline import Pipeline
        from sklearn.preprocessing import StandardScaler

        pooled = max(n_features - self.passthrough, 0)
        parts = []
        if pooled:
            ncomp = max(1, min(self.components, pooled, n_docs - 1))
            parts.append(("pca", Pipeline([("scale", StandardScaler()),
                                           ("pca", PCA(ncomp, random_state=self.seed))]), list(range(pooled))))
        if self.passthrough:
            parts.append(("lengths", StandardScaler(), list(range(pooled, n_features))))
        return Pipeline([("features", ColumnTransformer(parts)),
                         ("ridge", RidgeCV(alphas=np.logspace(-2, 4, 13), alpha_per_target=True))])

    def _targets(self, loss, saved):
        return np.hstack([loss, saved])

    def _split(self, pred, P):
        loss, saved = pred[:, :P].copy(), pred[:, P:]
        if self.empty is not None:
            loss[:, self.empty] = 0.0
        return loss, saved

    def fit(self, X: np.ndarray, loss: np.ndarray, saved: np.ndarray, quality_full: np.ndarray, tau: float):
        """Fit the regressions on ``X`` ``[D, n]`` → ``loss``/``saved`` ``[D, P]``, and calibrate the per-input
        threshold and the expected-constraint multiplier on out-of-fold predictions (K-fold over documents).

        Raises:
            ValueError: fewer than 4 documents.
        """
        from sklearn.model_selection import KFold, cross_val_predict

        D, P = loss.shape
        if D < 4:
            raise ValueError(f"the probe policy needs >= 4 training documents, got {D}")
        self.P, self.tau = P, float(tau)
        Y = self._targets(loss, saved)
        k = max(2, min(self.folds, D))
        oof = cross_val_predict(self._model(D - int(np.ceil(D / k)), X.shape[1]), X, Y,
                                cv=KFold(k, shuffle=True, random_state=self.seed))
        self.model_ = self._model(D, X.shape[1]).fit(X, Y)
        l_hat, s_hat = self._split(oof, P)
        # per-input: the threshold t maximising the mean train reward (smallest t among ties)
        quality = quality_full - loss
        r = _rewards(quality, quality_full, 1.0 - saved, tau)
        cands = np.unique(np.concatenate([[-np.inf, tau], np.quantile(l_hat, np.linspace(0, 1, 41))]))
        scores = [r[np.arange(D), self._per_input_choice(l_hat, s_hat, t)].mean() for t in cands]
        self.threshold = float(cands[int(np.argmax(scores))])
        # expected: rules argmax S^ - lam L^ over a grid of lam, randomised like the static mixture — the LP over
        # the rules' train (out-of-fold) mean loss / savings picks the best distribution within tau
        self.lams = np.concatenate([[0.0], np.logspace(-2, 3, 61), [np.inf]])
        m_loss, m_saved = [], []
        for lam in self.lams:
            c = self._expected_choice(l_hat, s_hat, lam)
            m_loss.append(loss[np.arange(D), c].mean())
            m_saved.append(saved[np.arange(D), c].mean())
        try:
            self.lam_weights = mixture_lp(m_loss, m_saved, tau)
        except ValueError:  # no rule meets tau on the train documents: the most cautious one
            self.lam_weights = np.eye(len(self.lams))[int(np.argmin(m_loss))]
        # the best single rule (no randomisation) whose out-of-fold train mean loss is within tau
        m_loss, m_saved = np.asarray(m_loss), np.asarray(m_saved)
        feasible = np.where(m_loss <= tau + 1e-12)[0]
        self.lam_deterministic = float(self.lams[feasible[m_saved[feasible].argmax()]] if len(feasible)
                                       else self.lams[int(np.argmin(m_loss))])
        return self

    def predict_outcomes(self, X: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Predicted quality loss and FLOPs saved, each ``[D, P]``."""
        return self._split(self.model_.predict(X), self.P)

    def _per_input_choice(self, l_hat, s_hat, t):
        safe = l_hat <= t
        masked = np.where(safe, s_hat, -np.inf)
        choice = masked.argmax(1)
        none = ~safe.any(1)
        choice[none] = l_hat[none].argmin(1)
        return choice

    def _expected_choice(self, l_hat, s_hat, lam):
        if np.isinf(lam):
            return l_hat.argmin(1)
        return (s_hat - lam * l_hat).argmax(1)

    def expected_multiplier(self) -> float:
        """The Lagrange multiplier ``lam`` of the deterministic expected-constraint rule (``argmax_p S^_p - lam
        L^_p``, the best single ``lam`` of the grid whose out-of-fold train mean loss is within tau), in
        FLOPs-fraction per unit of quality loss: the scale :class:`~skipenv.envs.wrappers.ExpectedConstraint`'s
        multiplier needs to keep this rule's trade-off (e.g. its ``lam_init`` after a warm start). When only the most
        cautious rule (``lam = inf``) qualifies, the largest finite ``lam`` of the grid (1000).

        Raises:
            RuntimeError: the policy is not fitted.
        """
        if self.lam_weights is None:
            raise RuntimeError("fit the probe policy first")
        lam = self.lam_deterministic
        return float(lam if np.isfinite(lam) else self.lams[np.isfinite(self.lams)].max())

    def plan_probabilities(self, X: np.ndarray, formulation: str, *, deterministic: bool = False) -> np.ndarray:
        """The policy's plan distribution per document, ``[D, P]`` (rows sum to 1): one-hot under
        ``"per_input"``; under ``"expected"`` a mixture of at most two ``lam`` rules (as the static mixture), or with
        ``deterministic=True`` one-hot: the best single rule within tau on the train documents (``lam`` =
        :meth:`expected_multiplier`) — what a policy that acts deterministically can imitate (cloning the mixture's
        weights into such a policy keeps only the more probable rule).

        Raises:
            ValueError: an unknown formulation.
        """
        l_hat, s_hat = self.predict_outcomes(X)
        D = len(l_hat)
        if formulation == "per_input":
            return _one_hot(self._per_input_choice(l_hat, s_hat, self.threshold), self.P)
        if formulation == "expected" and deterministic:
            return _one_hot(self._expected_choice(l_hat, s_hat, self.lam_deterministic), self.P)
        if formulation == "expected":
            w = np.zeros((D, self.P))
            for lam, p in zip(self.lams, self.lam_weights):
                if p > 1e-9:
                    w += p * _one_hot(self._expected_choice(l_hat, s_hat, lam), self.P)
            return w / w.sum(1, keepdims=True)
        raise ValueError(f"unknown formulation {formulation!r}; the probe has 'per_input' and 'expected'")


def _one_hot(choice: np.ndarray, P: int) -> np.ndarray:
    w = np.zeros((len(choice), P))
    w[np.arange(len(choice)), choice] = 1.0
    return w
