"""The plan grammar of a replay table: which skip plans a table holds, by name, and how actions map onto them.

A :class:`Grammar` has two parts:

- ``factors``: ``F`` named groups of candidates (e.g. "drop segment 7", "attention 25"). Every one of the ``2**F``
  combinations is a plan of the table, so a ``MultiBinary(F)`` action (bit ``i`` = skip factor ``i``) is always
  tabulated (a full factorial design). Combination ``c`` (an integer whose bit ``i`` is factor ``i``) is plan
  index ``c``; index 0 is the empty plan (skip nothing).
- ``extras``: further named plans (indices ``2**F ...``), reachable through the ``Discrete(N)`` menu env only.

Plans are :class:`~skipenv.plan.SkipPlan` objects for one :class:`~skipenv.plan.PlanSpec`; a group is written as a
dict of decoder-layer / token-segment indices, ``{"attention": [25], "ffn": [], "tokens": [6, 7]}`` (0-based).
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Mapping, Sequence

import numpy as np

from ..plan import PlanError, PlanSpec, SkipPlan

__all__ = ["Grammar", "GrammarError", "default_grammar", "DEFAULT_SUBLAYER_FACTORS"]

_KINDS = ("attention", "ffn", "tokens")

#: Sublayer factors of the default grammar on a 30-layer model (SmolLM2-135M): the attention and the FFN sublayer
#: whose identity skip costs the least mean probability on XSum, one bit at a time (issue 22's measurement on main
#: d70fbd0, 12 XSum train documents, SwitchDec-XSum-v1: attention 25 loses 0.0085, FFN 21 loses 0.012; the next best
#: attention sublayers are 8 (0.020) and 27 (0.024), which the default grammar adds as extras).
DEFAULT_SUBLAYER_FACTORS = {"attention": 25, "ffn": 21}


class GrammarError(PlanError):
    """A plan, action or grammar that the table does not hold (the message names it and the table's grammar)."""


def _group(skips: Mapping[str, Sequence[int]]) -> dict[str, list[int]]:
    unknown = sorted(set(skips) - set(_KINDS))
    if unknown:
        raise GrammarError(f"unknown candidate kind(s) {unknown} in a grammar entry; use {list(_KINDS)}")
    return {k: sorted(int(i) for i in skips.get(k, ())) for k in _KINDS}


@dataclass(frozen=True)
class Grammar:
    """A table's plans: a factorial design over ``factors`` plus named ``extras`` (see the module docstring).

    Args:
        factors: ``[(name, {"attention": [...], "ffn": [...], "tokens": [...]}), ...]``; the groups must be
            disjoint and non-empty.
        extras: ``[(name, group), ...]``: named plans beyond the factorial (none may equal a factorial plan).

    Raises:
        GrammarError: duplicate names, empty or overlapping factors, or an extra plan that repeats another.
    """

    factors: tuple = ()
    extras: tuple = ()
    _cache: dict = field(default_factory=dict, compare=False, repr=False, hash=False)

    def __post_init__(self) -> None:
        factors = tuple((str(n), _group(g)) for n, g in self.factors)
        extras = tuple((str(n), _group(g)) for n, g in self.extras)
        object.__setattr__(self, "factors", factors)
        object.__setattr__(self, "extras", extras)
        seen: set = set()
        for name, g in factors:
            units = {(k, i) for k in _KINDS for i in g[k]}
            if not units:
                raise GrammarError(f"factor {name!r} skips nothing")
            if units & seen:
                raise GrammarError(f"factor {name!r} overlaps another factor ({sorted(units & seen)}); factors "
                                   f"must be disjoint so that each combination is a distinct plan")
            seen |= units
        names = self.plan_names
        dup = sorted({n for n in names if names.count(n) > 1})
        if dup:
            raise GrammarError(f"duplicate plan name(s) {dup} in the grammar")
        if len(factors) > 12:
            raise GrammarError(f"{len(factors)} factors = {2 ** len(factors)} plans per document; use at most 12")

    # ------------------------------------------------------------------ structure
    @property
    def num_factors(self) -> int:
        return len(self.factors)

    @property
    def num_factorial(self) -> int:
        """``2**F``: the plans a ``MultiBinary(F)`` action reaches (indices ``0 .. 2**F - 1``)."""
        return 1 << len(self.factors)

    @property
    def num_plans(self) -> int:
        """``N = 2**F + len(extras)``."""
        return self.num_factorial + len(self.extras)

    @property
    def plan_names(self) -> list[str]:
        """Name of every plan, in index order: ``"skip nothing"``, then factor names joined by ``" + "``."""
        names = []
        for c in range(self.num_factorial):
            parts = [n for i, (n, _) in enumerate(self.factors) if c >> i & 1]
            names.append(" + ".join(parts) if parts else "skip nothing")
        return names + [n for n, _ in self.extras]

    def group(self, index: int) -> dict[str, list[int]]:
        """The candidate indices plan ``index`` skips (``{"attention", "ffn", "tokens"}`` → sorted lists)."""
        self._check_index(index)
        if index < self.num_factorial:
            out: dict[str, list[int]] = {k: [] for k in _KINDS}
            for i, (_, g) in enumerate(self.factors):
                if index >> i & 1:
                    for k in _KINDS:
                        out[k] += g[k]
            return {k: sorted(v) for k, v in out.items()}
        return dict(self.extras[index - self.num_factorial][1])

    def plans(self, spec: PlanSpec) -> list[SkipPlan]:
        """Every plan as a :class:`SkipPlan` of ``spec``, in index order.

        Raises:
            GrammarError: an index outside the model's layers / segments, or two entries that are the same plan.
        """
        key = ("plans", spec)
        if key not in self._cache:
            plans = []
            for i in range(self.num_plans):
                g = self.group(i)
                try:
                    plans.append(SkipPlan.from_skips(spec, **g))
                except PlanError as e:
                    raise GrammarError(f"plan {self.plan_names[i]!r} does not fit {spec}: {e}") from None
            if len(set(plans)) != len(plans):
                raise GrammarError("two grammar entries are the same plan; remove the repeated extra")
            self._cache[key] = plans
        return self._cache[key]

    def index_of(self, plan: SkipPlan, spec: PlanSpec) -> int:
        """Index of ``plan`` in this grammar.

        Raises:
            GrammarError: the plan is not in the grammar (the message lists the plan names).
        """
        key = ("index", spec)
        if key not in self._cache:
            self._cache[key] = {p: i for i, p in enumerate(self.plans(spec))}
        i = self._cache[key].get(plan)
        if i is None:
            raise GrammarError(f"plan {plan.to_json()} is not in the table's grammar ({self.num_plans} plans: "
                               f"{self.plan_names}); a table answers only the plans it holds: rebuild the table with "
                               f"that plan in its grammar (skipenv table build --grammar FILE) or use the live env")
        return i

    def action_index(self, action) -> int:
        """Plan index of a ``MultiBinary(F)`` action (bit ``i`` = factor ``i``).

        Raises:
            GrammarError: wrong shape or entries other than 0 / 1.
        """
        a = np.asarray(action)
        if a.shape != (self.num_factors,):
            raise GrammarError(f"action must have shape ({self.num_factors},) (one bit per factor: "
                               f"{[n for n, _ in self.factors]}), got shape {a.shape}")
        if a.dtype.kind not in "biuf" or not np.isin(a, (0, 1)).all():
            raise GrammarError(f"action entries must be 0 or 1, got {a.tolist()}")
        return int(np.dot(a.astype(np.int64), 1 << np.arange(self.num_factors, dtype=np.int64)))

    def index_action(self, index: int) -> np.ndarray:
        """The ``MultiBinary`` action (``int8``, shape ``[F]``) of a factorial plan index.

        Raises:
            GrammarError: ``index`` is an extra (menu-only) plan or out of range.
        """
        self._check_index(index)
        if index >= self.num_factorial:
            raise GrammarError(f"plan {self.plan_names[index]!r} is an extra of the grammar, reachable from the "
                               f"Discrete menu env only (no MultiBinary action holds it)")
        return np.array([index >> i & 1 for i in range(self.num_factors)], dtype=np.int8)

    def _check_index(self, index) -> None:
        if isinstance(index, bool) or not isinstance(index, (int, np.integer)) or not 0 <= index < self.num_plans:
            raise GrammarError(f"plan index must be an integer in [0, {self.num_plans}), got {index!r}")

    # ------------------------------------------------------------------ (de)serialisation
    def to_dict(self) -> dict:
        return {"factors": [{"name": n, "skips": g} for n, g in self.factors],
                "extras": [{"name": n, "skips": g} for n, g in self.extras]}

    @classmethod
    def from_dict(cls, d: Mapping) -> "Grammar":
        """Inverse of :meth:`to_dict`.

        Raises:
            GrammarError: a malformed entry (names the expected form).
        """
        try:
            return cls(tuple((e["name"], e["skips"]) for e in d.get("factors", ())),
                       tuple((e["name"], e["skips"]) for e in d.get("extras", ())))
        except (KeyError, TypeError, AttributeError) as e:
            raise GrammarError(f"malformed grammar ({e!r}); expected {{'factors': [{{'name': str, 'skips': "
                               f"{{'attention': [int], 'ffn': [int], 'tokens': [int]}}}}], 'extras': [...]}}") from None

    @property
    def digest(self) -> str:
        """A 16-hex-digit digest of :meth:`to_dict` (part of a table's identity)."""
        return hashlib.sha256(json.dumps(self.to_dict(), sort_keys=True).encode()).hexdigest()[:16]


def default_grammar(spec: PlanSpec) -> Grammar:
    """The default table grammar for ``spec`` (decoder-only, ``K >= 4`` token segments, ``L >= 2`` layers).

    Factors (5 bits, 32 plans): drop the last segment ``K-1``; drop segment ``K-2``; drop segments ``K-4, K-3``;
    skip attention of layer :data:`DEFAULT_SUBLAYER_FACTORS` ``["attention"]`` (25; on a smaller model the layer at
    the same relative depth); skip FFN of layer 21 (same rule). The factorial contains the probe's menu plans "drop
    last 1/2/4 segments" (:func:`skipenv.policies.menu.default_menu`). Extras: the probe menu's other plans ("drop last 3",
    "drop segment 3", "drop segment 5", "skip attention 6") and attention 8 and 27 (the next best single attention
    skips on SmolLM2, issue 22), so ``N = 38`` on SmolLM2 with ``K = 8``.

    Raises:
        GrammarError: ``K < 4``, an encoder-decoder spec, or no layers.
    """
    from ..policies.menu import DEFAULT_ATTENTION_LAYER

    k, L = spec.token_segments, spec.num_decoder_layers
    if k < 4 or L < 2 or spec.num_encoder_layers:
        raise GrammarError(f"the default grammar needs a decoder-only model with >= 2 layers and token_segments "
                           f">= 4, got {spec}; pass an explicit Grammar")

    def layer(i: int) -> int:
        return i if L == 30 else min(L - 1, round(i * L / 30))

    a, f = layer(DEFAULT_SUBLAYER_FACTORS["attention"]), layer(DEFAULT_SUBLAYER_FACTORS["ffn"])
    factors = [(f"drop segment {k - 1}", {"tokens": [k - 1]}), (f"drop segment {k - 2}", {"tokens": [k - 2]}),
               (f"drop segments {k - 4}-{k - 3}", {"tokens": [k - 4, k - 3]}),
               (f"skip attention {a}", {"attention": [a]}), (f"skip ffn {f}", {"ffn": [f]})]
    extras = [(f"drop last 3/{k} segments", {"tokens": [k - 3, k - 2, k - 1]})]
    for s in (3, 5):
        if s < k - 4:  # segments K-4 .. K-1 alone are factorial plans already
            extras.append((f"drop segment {s}", {"tokens": [s]}))
        elif s == k - 3:
            extras.append((f"drop segment {s}", {"tokens": [s]}))
    att = DEFAULT_ATTENTION_LAYER if L >= 12 else L // 2
    for la in dict.fromkeys((att, layer(8), layer(27))):
        if la != a:
            extras.append((f"skip attention {la}", {"attention": [la]}))
    return Grammar(tuple(factors), tuple(extras))
