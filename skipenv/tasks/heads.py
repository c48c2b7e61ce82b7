"""Label heads: a logistic classifier on a frozen model's final hidden state, tied to that model's identity.

A :class:`LabelHead` maps the final (normed) hidden state ``h`` ``[d]`` at the last prompt position — the LM head's
input where the answer would be predicted — to the logit ``z = w · h + b`` (nats) of ``"positive"`` against
``"negative"``; ``p("positive") = sigmoid(z)``. It replaces the LM head in
``ClassificationTask(scoring="head")`` (``SwitchDec-RottenTomatoes-v2``): one forward pass under the plan, then
``2 · d`` FLOPs for the head instead of ``2 · d · V`` for the LM head's row.

A head is only meaningful on the features of the model it was fitted on, so it records that model's
:func:`skipenv.envs.cache.model_fingerprint`; :meth:`LabelHead.check_model` refuses any other model
(:class:`LabelHeadError`). Fitting (:func:`fit_logistic_head`) is scikit-learn's L2-regularised logistic
regression on standardised features, folded back into one ``(w, b)``, so the stored head needs no scaler.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

__all__ = ["LabelHead", "LabelHeadError", "fit_logistic_head", "embedded_head", "EMBEDDED_HEADS"]

#: name → file of the heads shipped in the package (``skipenv/tasks/data/``)
EMBEDDED_HEADS = {"rotten_tomatoes": "rt_head_smollm2.json"}


class LabelHeadError(ValueError):
    """A label head used with a model it was not fitted on, or a malformed head file."""


@dataclass(frozen=True, eq=False)
class LabelHead:
    """A logistic head ``z = w · h + b`` on a ``d``-dimensional hidden state.

    Attributes:
        weight: float64 ``[d]``.
        bias: the intercept (nats).
        fingerprint: :func:`skipenv.envs.cache.model_fingerprint` of the model whose features it was fitted on.
        info: how it was fitted (plain JSON values: data, plans, C, accuracy measured); informational only.
    """

    weight: np.ndarray
    bias: float
    fingerprint: str
    info: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        w = np.asarray(self.weight, dtype=np.float64)
        if w.ndim != 1 or w.size == 0 or not np.isfinite(w).all():
            raise LabelHeadError(f"a label head's weight must be a finite non-empty vector [d], got shape {w.shape}")
        if isinstance(self.bias, bool) or not isinstance(self.bias, (int, float, np.floating)) \
                or not math.isfinite(float(self.bias)):
            raise LabelHeadError(f"a label head's bias must be a finite number, got {self.bias!r}")
        if not isinstance(self.fingerprint, str) or not self.fingerprint:
            raise LabelHeadError("a label head must record the fingerprint of the model it was fitted on")
        w.setflags(write=False)
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", float(self.bias))

    def __eq__(self, other) -> bool:
        return isinstance(other, LabelHead) and other.digest == self.digest

    def __hash__(self) -> int:
        return hash(self.digest)

    @property
    def hidden_size(self) -> int:
        """``d``, the hidden size of the model it was fitted on."""
        return int(self.weight.size)

    @property
    def flops(self) -> int:
        """FLOPs of one application: ``2 · d`` (``d`` multiply-adds of the ``[1, d] x [d, 1]`` matmul, counted
        as 2 FLOPs each like :class:`torch.utils.flop_counter.FlopCounterMode`; the bias add is not counted, as
        FlopCounterMode does not count it in ``addmm``)."""
        return 2 * self.hidden_size

    @property
    def digest(self) -> str:
        """16 hex chars of SHA-256 over the weight bytes, the bias and the fingerprint (part of cache keys)."""
        h = hashlib.sha256(self.weight.astype("<f8").tobytes())
        h.update(repr(self.bias).encode())
        h.update(self.fingerprint.encode())
        return h.hexdigest()[:16]

    def logit(self, hidden) -> float | np.ndarray:
        """``w · h + b`` (nats) of ``hidden`` ``[d]`` (a float) or ``[B, d]`` (float64 ``[B]``).

        Raises:
            LabelHeadError: a last dimension other than ``d``.
        """
        h = np.asarray(hidden, dtype=np.float64)
        if h.shape[-1:] != (self.hidden_size,):
            raise LabelHeadError(f"label head of hidden size {self.hidden_size} got features of shape {h.shape}: "
                                 f"it was fitted on another model")
        z = h @ self.weight + self.bias
        return float(z) if z.ndim == 0 else z

    def check_model(self, fingerprint: str, what: str = "this model") -> None:
        """Raise unless ``fingerprint`` (:func:`skipenv.envs.cache.model_fingerprint` of the model in use) is the
        one the head was fitted on.

        Raises:
            LabelHeadError: naming both fingerprints and the fix.
        """
        if fingerprint != self.fingerprint:
            raise LabelHeadError(
                f"the label head was fitted on the features of model {self.fingerprint}, but {what} is "
                f"{fingerprint} (other weights, dtype or config): its labels would be meaningless. Fit a head for "
                f"this model with skipenv.envs.label_head.fit_label_head(evaluator, examples, plans) and pass it "
                f"as make_task(..., head=head)")

    # ------------------------------------------------------------------ files
    def to_dict(self) -> dict:
        return {"format": "skipenv-label-head", "version": 1, "fingerprint": self.fingerprint,
                "bias": self.bias, "weight": [float(x) for x in self.weight], "info": self.info}

    def save(self, path: str | os.PathLike) -> None:
        """Write the head as JSON (floats written with ``repr``, so loading gives the same bits)."""
        Path(path).write_text(json.dumps(self.to_dict(), indent=1) + "\n")

    @classmethod
    def from_dict(cls, d: Any, source: str = "label head") -> "LabelHead":
        if not isinstance(d, dict) or d.get("format") != "skipenv-label-head" or d.get("version") != 1:
            raise LabelHeadError(f"{source}: not a skipenv label head (format 'skipenv-label-head', version 1)")
        try:
            return cls(np.asarray(d["weight"], dtype=np.float64), d["bias"], d["fingerprint"], dict(d.get("info", {})))
        except (KeyError, TypeError, ValueError) as e:
            if isinstance(e, LabelHeadError):
                raise
            raise LabelHeadError(f"{source}: malformed label head ({e})") from e

    @classmethod
    def load(cls, path: str | os.PathLike) -> "LabelHead":
        """Read a head written by :meth:`save`.

        Raises:
            LabelHeadError: not a label head file, or missing / malformed fields.
        """
        try:
            d = json.loads(Path(path).read_text())
        except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:  # a binary file (e.g. a span head .npz) too
            raise LabelHeadError(f"{path}: cannot read a label head ({e})") from e
        return cls.from_dict(d, str(path))


def fit_logistic_head(features, labels, fingerprint: str, *, C: float = 0.1, info: dict | None = None) -> LabelHead:
    """Fit a :class:`LabelHead` by L2-regularised logistic regression (scikit-learn ``LogisticRegression``, lbfgs,
    deterministic) on standardised features, folded into ``w = coef / scale``, ``b = intercept - w · mean``.

    Args:
        features: ``[N, d]`` hidden states.
        labels: ``[N]`` booleans / 0-1 (1 = ``"positive"``), both classes present.
        fingerprint: the model the features come from.
        C: inverse regularisation strength (scikit-learn's ``C``) on the standardised features.
        info: stored with the head.

    Raises:
        ValueError: shapes that do not match, fewer than two classes, a non-positive ``C``.
    """
    from sklearn.linear_model import LogisticRegression

    X = np.asarray(features, dtype=np.float64)
    y = np.asarray(labels).astype(int).reshape(-1)
    if X.ndim != 2 or X.shape[0] != y.size or X.shape[0] == 0:
        raise ValueError(f"features must be [N, d] with one label per row, got {X.shape} and {y.shape}")
    if set(np.unique(y).tolist()) != {0, 1}:
        raise ValueError(f"labels must hold both classes 0 and 1, got {sorted(set(y.tolist()))}")
    if not (isinstance(C, (int, float)) and C > 0):
        raise ValueError(f"C must be a positive number, got {C!r}")
    mean, scale = X.mean(0), X.std(0)
    scale = np.where(scale > 0, scale, 1.0)
    clf = LogisticRegression(C=float(C), max_iter=5000).fit((X - mean) / scale, y)
    w = clf.coef_[0] / scale
    b = float(clf.intercept_[0] - w @ mean)
    return LabelHead(w, b, fingerprint, {"C": float(C), "rows": int(X.shape[0]), **(info or {})})


def embedded_head(name: str) -> LabelHead:
    """The head shipped in the package for ``name`` (a key of :data:`EMBEDDED_HEADS`).

    Raises:
        KeyError: an unknown name (lists the known ones).
    """
    if name not in EMBEDDED_HEADS:
        raise KeyError(f"no shipped label head {name!r}; shipped: {sorted(EMBEDDED_HEADS)}")
    return LabelHead.load(Path(__file__).parent / "data" / EMBEDDED_HEADS[name])
