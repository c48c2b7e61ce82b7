"""Action codecs: the action space of an environment, readable labels of its actions, and action ↔
:class:`~skipenv.plan.SkipPlan`. This is the one place where an agent's action is validated.

- :class:`ActionCodec` — one-shot: ``MultiBinary(n)``, one bit per candidate group (1 = skip).
- :class:`LayerwiseCodec` — sequential: ``Discrete(4)`` per step (a token step, then one step per layer).
"""

from __future__ import annotations

import math
import numbers
from typing import Sequence

import numpy as np
from gymnasium import spaces

from ..plan import PlanError, PlanSpec, SkipPlan

__all__ = ["CANDIDATE_KINDS", "ActionCodec", "LayerwiseCodec"]

CANDIDATE_KINDS = ("attention", "ffn", "tokens")


class ActionCodec:
    """One-shot actions: ``MultiBinary(n)``; blocks of bits in this order: attention (encoder layers, then decoder
    layers), FFN (same), token segments.

    Args:
        spec: the candidate layout of the generator.
        candidates: the kinds that can be skipped, a non-empty subset of :data:`CANDIDATE_KINDS` (others are never
            skipped).
        layer_block: layers per action bit (``>= 1``): one bit skips the sublayer in ``layer_block`` consecutive
            layers (``n = 2·ceil(L/layer_block) + K`` for a decoder-only model with all kinds).

    Raises:
        ValueError: unknown candidate kinds, ``layer_block < 1``, or candidates that give no action bit.
    """

    def __init__(self, spec: PlanSpec, candidates: Sequence[str] = CANDIDATE_KINDS, layer_block: int = 1):
        if isinstance(candidates, str) or not isinstance(candidates, (tuple, list)):
            raise ValueError(f"candidates must be a list or tuple of kinds from {CANDIDATE_KINDS}, got {candidates!r}")
        bad = [c for c in candidates if c not in CANDIDATE_KINDS]
        if bad or not candidates:
            raise ValueError(f"unknown candidate kinds {bad}; choose a non-empty subset of {CANDIDATE_KINDS}")
        if isinstance(layer_block, bool) or not isinstance(layer_block, (int, np.integer)) or layer_block < 1:
            raise ValueError(f"layer_block must be an integer >= 1, got {layer_block!r}")
        self.spec, self.candidates, self.layer_block = spec, tuple(candidates), int(layer_block)
        self.groups = self._make_groups()
        if not self.groups:  # e.g. candidates=("tokens",) with token_segments=0
            raise ValueError(f"candidates {self.candidates} give no action bits for {spec} (token_segments="
                             f"{spec.token_segments}): add a kind or use token_segments >= 1")
        self.space = spaces.MultiBinary(len(self.groups))

    @property
    def n(self) -> int:
        """Number of action bits."""
        return len(self.groups)

    def _make_groups(self) -> list[list[int]]:
        """For each action bit, the indices into the flat plan vector it sets (see :mod:`skipenv.plan`)."""
        s = self.spec
        le, ld = s.num_encoder_layers, s.num_decoder_layers
        offsets = {"encoder.attention": 0, "encoder.ffn": le, "decoder.attention": 2 * le,
                   "decoder.ffn": 2 * le + ld}
        groups: list[list[int]] = []
        for kind in ("attention", "ffn"):
            if kind not in self.candidates:
                continue
            for stack, n in (("encoder", le), ("decoder", ld)):
                for start in range(0, n, self.layer_block):
                    groups.append([offsets[f"{stack}.{kind}"] + i
                                   for i in range(start, min(start + self.layer_block, n))])
        if "tokens" in self.candidates:
            groups += [[2 * le + 2 * ld + k] for k in range(s.token_segments)]
        return groups

    @property
    def labels(self) -> list[str]:
        """A readable name per action bit, e.g. ``"decoder.attention.4-5"``."""
        names = self.spec.action_labels()
        out = []
        for g in self.groups:
            first, last = names[g[0]], names[g[-1]]
            out.append(first if len(g) == 1 else f"{first}-{last.rsplit('.', 1)[1]}")
        return out

    def decode(self, action) -> SkipPlan:
        """The plan of an action (shape ``[n]``, entries 0/1).

        Raises:
            ValueError: not a numeric array, wrong shape, or entries other than 0/1 (the message gives the
                expected shape).
        """
        try:
            a = np.asarray(action)
        except (ValueError, TypeError) as e:
            raise ValueError(f"action must be an array of 0/1 of shape ({self.n},), got {action!r}") from e
        if a.dtype.kind not in "biuf":
            raise ValueError(f"action must be a numeric array of 0/1 (MultiBinary({self.n})), got dtype {a.dtype}")
        if a.shape != (self.n,):
            raise ValueError(f"action must have shape ({self.n},) for this env (MultiBinary({self.n})), got shape "
                             f"{a.shape}")
        ok = (a == 0) | (a == 1)
        if not ok.all():
            raise ValueError(f"action entries must be 0 or 1, got {a[~ok][:3].tolist()}")
        flat = [False] * self.spec.action_size
        for bit, g in zip(a.astype(bool).tolist(), self.groups):
            if bit:
                for i in g:
                    flat[i] = True
        return _plan_from_flags(self.spec, flat)

    def encode(self, plan: SkipPlan) -> np.ndarray:
        """Best action for ``plan`` (``int8``, shape ``[n]``): a bit is set when all plan entries it covers are
        skipped.

        Raises:
            PlanError: a plan made for another model / segment count.
        """
        if plan.spec != self.spec:
            raise PlanError(f"plan was made for {plan.spec} but this env needs {self.spec}")
        flat = plan.to_action()
        return np.array([int(flat[g].all()) for g in self.groups], dtype=np.int8)


def _plan_from_flags(spec: PlanSpec, flat: Sequence[bool]) -> SkipPlan:
    le, ld = spec.num_encoder_layers, spec.num_decoder_layers
    parts, i = [], 0
    for n in (le, le, ld, ld, spec.token_segments):
        parts.append(tuple(flat[i: i + n]))
        i += n
    return SkipPlan(spec, *parts)


class LayerwiseCodec:
    """Layerwise actions, ``Discrete(4)`` per step, for decoder-only generators.

    1. token step: keep all document tokens / skip the last 25 % / 50 % / 75 % of the token segments (lead
       truncation at segment granularity, ``floor(fraction · K)`` segments);
    2. one step per layer ``l``: 0 keep, 1 skip attention, 2 skip FFN, 3 skip both.

    Raises:
        NotImplementedError: an encoder-decoder spec.
    """

    TOKEN_FRACTIONS = (0.0, 0.25, 0.5, 0.75)

    def __init__(self, spec: PlanSpec):
        if spec.is_encoder_decoder:
            raise NotImplementedError("SwitchDecLayerwiseEnv supports decoder-only generators (Llama, GPT-2); use "
                                      "SwitchDecEnv for encoder-decoder models")
        self.spec = spec
        self.num_layers = spec.num_decoder_layers
        self.space = spaces.Discrete(4)

    @staticmethod
    def decode_step(action) -> int:
        """The integer of one step's action.

        Raises:
            ValueError: not an integer (or integer-valued number / 0-d array) in [0, 3]; strings and ``None``
                included.
        """
        a = action
        if isinstance(a, np.ndarray) and a.ndim == 0 and a.dtype.kind in "biuf":
            a = a.item()
        if isinstance(a, np.generic):
            a = a.item()
        ok = isinstance(a, numbers.Real) and not isinstance(a, bool) and math.isfinite(a) and float(a).is_integer() \
            and 0 <= int(a) <= 3
        if not ok:
            raise ValueError(f"action must be an integer in [0, 3] (Discrete(4)), got {action!r}")
        return int(a)

    def token_flags(self, action: int) -> tuple[bool, ...]:
        """Token-segment flags of a token-step action (last segments skipped)."""
        k = self.spec.token_segments
        n_skip = int(math.floor(self.TOKEN_FRACTIONS[action] * k))
        return tuple([False] * (k - n_skip) + [True] * n_skip)

    @staticmethod
    def layer_flags(action: int) -> tuple[bool, bool]:
        """``(skip attention, skip FFN)`` of a layer-step action."""
        return action in (1, 3), action in (2, 3)

    def plan(self, tokens: Sequence[bool], attention: Sequence[bool], ffn: Sequence[bool]) -> SkipPlan:
        """The plan of a finished (or partly decided) episode."""
        return SkipPlan(self.spec, (), (), tuple(attention), tuple(ffn), tuple(tokens))

    def encode(self, plan: SkipPlan) -> list[int]:
        """The step actions (``L + 1`` integers) that produce ``plan``.

        Raises:
            PlanError: another model's plan, or token flags that no token-step action produces (only lead
                truncations by 0 / 25 / 50 / 75 % of the segments are reachable).
        """
        if plan.spec != self.spec:
            raise PlanError(f"plan was made for {plan.spec} but this env needs {self.spec}")
        first = [a for a in range(4) if self.token_flags(a) == plan.tokens]
        if not first:
            raise PlanError(f"token flags {plan.tokens} are not reachable in the layerwise env (it skips the last "
                            f"0/25/50/75 % of the segments)")
        return [first[0]] + [int(a) + 2 * int(f) for a, f in zip(plan.decoder_attention, plan.decoder_ffn)]
