"""How much of the oracle's headroom is reachable from the observation at all (issue 21, item 4's ceiling;
``benchmarks/table_ceiling.py`` prints it).

The policies here are of the class every contextual learner of :mod:`skipenv.tables.learners` can represent on
the menu env: per-plan linear models of the quality loss on :class:`~skipenv.tables.bandits.FeatureMap` features
(PCA of the pooled hidden state + the two length features), FLOPs saved from
:class:`~skipenv.tables.bandits.CostModel`, and the rule ``argmax_p S^_p(x) - lam L^_p(x)``. Three views:

- :func:`loss_r2` — per-plan cross-validated R^2 of the loss from the observation (how predictable it is);
- :func:`rule_result` with loss models fitted on the *scored documents' own outcomes* and ``lam`` chosen on them:
  an in-sample bound for the class (ridge fits, so an estimate of the class's best, not its exact maximum);
- :func:`train_size_curve` — a fully informed learner (every train outcome seen, no exploration cost) trained on
  ``n`` documents and scored on the others, for growing ``n``: whether the gap is a learner problem (bandit
  learners far below this curve) or an information problem (this curve itself far below the oracle).
"""

from __future__ import annotations

import numpy as np

from .bandits import CostModel, FeatureMap
from .learners import headroom_share

__all__ = ["fit_loss_models", "loss_r2", "rule_result", "supervised_policy", "train_size_curve", "LAMS"]

#: multipliers tried by the rules (FLOPs fraction per unit of quality loss); inf = the lowest predicted loss
LAMS = np.concatenate([[0.0], np.logspace(-1, 4, 51), [np.inf]])


def fit_loss_models(X_fit: np.ndarray, L_fit: np.ndarray, *, components: int = 8, alpha: float | None = None,
                    empty: int | None = 0):
    """Per-plan ridge regressions of the quality loss ``L_fit`` ``[D, P]`` on :class:`FeatureMap` features of
    ``X_fit`` ``[D, n]`` (the map fitted on ``X_fit`` too). ``alpha=None``: the penalty of each plan chosen by
    efficient leave-one-out CV among 13 values in ``[1e-2, 1e4]`` (``sklearn.linear_model.RidgeCV``).

    Returns:
        callable ``X [B, n] -> predicted loss [B, P]`` (plan ``empty`` predicted 0: skip nothing loses nothing).
    """
    from sklearn.linear_model import Ridge, RidgeCV

    fm = FeatureMap(X_fit, components=components)
    F = fm(X_fit)[:, :-1]  # sklearn fits its own intercept
    m = (RidgeCV(alphas=np.logspace(-2, 4, 13), alpha_per_target=True) if alpha is None
         else Ridge(alpha=alpha)).fit(F, L_fit)

    def predict(X):
        out = m.predict(fm(X)[:, :-1])
        if empty is not None:
            out[:, empty] = 0.0
        return out

    return predict


def loss_r2(X: np.ndarray, L: np.ndarray, *, components: int = 8, folds: int = 10, seed: int = 0) -> np.ndarray:
    """Cross-validated R^2 of each plan's quality loss from the observation, ``[P]``: ``folds``-fold over the
    documents (features and ridge penalties fitted in-fold, :func:`fit_loss_models`), ``1 - SSE / SST`` with SST
    around the *in-fold* mean (so 0 = no better than predicting the train mean; negative = worse). NaN for a plan
    whose loss does not vary (skip nothing)."""
    from sklearn.model_selection import KFold

    D, P = L.shape
    pred, base = np.zeros_like(L, dtype=np.float64), np.zeros_like(L, dtype=np.float64)
    for tr, te in KFold(min(folds, D), shuffle=True, random_state=seed).split(X):
        pred[te] = fit_loss_models(X[tr], L[tr], components=components, empty=None)(X[te])
        base[te] = L[tr].mean(0)
    sst = ((L - base) ** 2).sum(0)
    with np.errstate(invalid="ignore", divide="ignore"):
        r2 = 1.0 - ((L - pred) ** 2).sum(0) / sst
    r2[L.std(0) < 1e-12] = np.nan
    return r2


def _choice(L_hat, S_hat, lam):
    return L_hat.argmin(1) if np.isinf(lam) else (S_hat - lam * L_hat).argmax(1)


def best_lam(L_hat, S_hat, loss, saved, tau, lams=LAMS) -> float:
    """The ``lam`` of :data:`LAMS` whose rule saves the most (true ``saved``) with true mean ``loss <= tau`` on these
    documents (the most cautious, ``inf``, when none qualifies)."""
    D, best = len(loss), (-np.inf, np.inf)
    for lam in lams:
        c = _choice(L_hat, S_hat, lam)
        if loss[np.arange(D), c].mean() <= tau + 1e-12 and saved[np.arange(D), c].mean() > best[0]:
            best = (saved[np.arange(D), c].mean(), lam)
    return float(best[1])


def rule_result(L_hat, S_hat, loss, saved, tau, lam: float | None = None) -> dict:
    """Score the rule ``argmax S^ - lam L^`` on documents with true ``loss`` / ``saved`` ``[D, P]``
    (:func:`~skipenv.tables.learners.headroom_share`'s dict plus ``lam``); ``lam=None``: :func:`best_lam` on these
    documents (in-sample, optimistic)."""
    lam = best_lam(L_hat, S_hat, loss, saved, tau) if lam is None else lam
    return {**headroom_share(loss, saved, _choice(L_hat, S_hat, lam)), "lam": lam}


def supervised_policy(X_tr, L_tr, S_tr, tau, *, components: int = 8, folds: int = 5, seed: int = 0):
    """A fully informed contextual policy: loss models fitted on every outcome of the train documents
    (:func:`fit_loss_models`), FLOPs from :class:`CostModel`, ``lam`` = :func:`best_lam` on the train documents'
    *out-of-fold* predictions (K-fold). Returns ``X -> plan indices [B]``."""
    from sklearn.model_selection import KFold

    oof = np.zeros_like(L_tr, dtype=np.float64)
    for a, b in KFold(min(folds, len(X_tr)), shuffle=True, random_state=seed).split(X_tr):
        oof[b] = fit_loss_models(X_tr[a], L_tr[a], components=components)(X_tr[b])
    cost = CostModel(FeatureMap(X_tr, components=components), X_tr, S_tr)
    lam = best_lam(oof, cost(X_tr), L_tr, S_tr, tau)
    model = fit_loss_models(X_tr, L_tr, components=components)
    return lambda X: _choice(model(X), cost(X), lam)


def train_size_curve(X, L, S, sizes, *, tau: float = 0.01, repeats: int = 10, components: int = 8,
                     seed: int = 0) -> list[dict]:
    """For each train size ``n`` in ``sizes`` and ``repeats`` random splits of all documents: :func:`supervised_policy`
    fitted on ``n`` documents, scored on the others (:func:`~skipenv.tables.learners.headroom_share`), and the same
    loss models with ``lam`` chosen on the scored documents (``share_lam_in_sample``: what better calibration alone
    could add). Returns one dict per (n, repeat).

    Raises:
        ValueError: a size that leaves fewer than 4 documents to score or under 4 to train on.
    """
    D = len(X)
    rng = np.random.default_rng(seed)
    out = []
    for n in sizes:
        if not 4 <= n <= D - 4:
            raise ValueError(f"train size {n} must be in [4, {D - 4}] for {D} documents")
        for r in range(repeats):
            perm = rng.permutation(D)
            tr, te = perm[:n], perm[n:]
            pol = supervised_policy(X[tr], L[tr], S[tr], tau, components=components, seed=seed + r)
            h = headroom_share(L[te], S[te], pol(X[te]))
            model = fit_loss_models(X[tr], L[tr], components=components)
            cost = CostModel(FeatureMap(X[tr], components=components), X[tr], S[tr])
            hin = rule_result(model(X[te]), cost(X[te]), L[te], S[te], tau)
            out.append({"train_docs": int(n), "repeat": r, "share": h["share"], "gain": h["gain"],
                        "headroom": h["headroom"], "gain_lam_in_sample": hin["gain"],
                        "flops_saved": h["flops_saved"], "mean_loss": h["mean_loss"],
                        "share_lam_in_sample": hin["share"]})
    return out
