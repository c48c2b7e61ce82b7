"""Skip plans: which attention / FFN sublayers and which document-token segments one input skips.

Vocabulary: a *candidate* is a unit that can be skipped — the ``attention`` sublayer of one layer,
the ``ffn`` sublayer of one layer, or one of ``K`` contiguous ``tokens`` segments of the skippable document. A
:class:`SkipPlan` is the full decision for one input; a :class:`PlanSpec` describes which candidates a model has.

Flat action layout (used by :meth:`SkipPlan.from_action` / :meth:`SkipPlan.to_action` and the environments'
``MultiBinary`` action space), 1 = skip::

    [encoder attention × L_enc, encoder ffn × L_enc, decoder attention × L_dec, decoder ffn × L_dec, tokens × K]

For decoder-only models ``L_enc = 0`` and the layers are the decoder layers. For encoder-decoder models the
decoder ``attention`` candidate is the decoder *self*-attention; cross-attention is always kept.
"""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass
from typing import Iterable, Sequence

import numpy as np

__all__ = ["PlanSpec", "SkipPlan", "PlanError"]


class PlanError(ValueError):
    """A plan that does not fit the model / candidate layout it is used with."""


@dataclass(frozen=True)
class PlanSpec:
    """The candidate layout of one model.

    Attributes:
        model_type: Hugging Face ``config.model_type`` (``"llama"``, ``"gpt2"``, ``"bart"``, ``"t5"``).
        num_encoder_layers: encoder layers (0 for decoder-only models).
        num_decoder_layers: decoder layers (all layers of a decoder-only model).
        token_segments: number ``K`` of document-token segments.
    """

    model_type: str
    num_encoder_layers: int
    num_decoder_layers: int
    token_segments: int = 8

    def __post_init__(self) -> None:
        for name in ("num_encoder_layers", "num_decoder_layers", "token_segments"):
            if getattr(self, name) < 0:
                raise PlanError(f"PlanSpec.{name} must be >= 0, got {getattr(self, name)}")

    @property
    def is_encoder_decoder(self) -> bool:
        return self.num_encoder_layers > 0

    @property
    def action_size(self) -> int:
        """Length of the flat 0/1 action vector: ``2·L_enc + 2·L_dec + K``."""
        return 2 * self.num_encoder_layers + 2 * self.num_decoder_layers + self.token_segments

    def action_labels(self) -> list[str]:
        """Human-readable name of each action bit, e.g. ``"decoder.attention.5"``, ``"tokens.3"``."""
        labels = []
        for stack, n in (("encoder", self.num_encoder_layers), ("decoder", self.num_decoder_layers)):
            labels += [f"{stack}.attention.{i}" for i in range(n)]
            labels += [f"{stack}.ffn.{i}" for i in range(n)]
        labels += [f"tokens.{k}" for k in range(self.token_segments)]
        return labels

    def empty_plan(self) -> "SkipPlan":
        """The plan that skips nothing (the full model)."""
        return SkipPlan.from_action(np.zeros(self.action_size, dtype=np.int8), self)


def _flags(values: Iterable, name: str) -> tuple[bool, ...]:
    out = []
    for v in values:
        if v not in (0, 1, True, False):
            raise PlanError(f"{name} flags must be 0/1 or booleans, got {v!r}")
        out.append(bool(v))
    return tuple(out)


@dataclass(frozen=True)
class SkipPlan:
    """The skip decision for one input. Immutable and hashable; ``True`` = skipped.

    Attributes:
        spec: the :class:`PlanSpec` the plan was made for.
        encoder_attention, encoder_ffn: one flag per encoder layer (empty for decoder-only models).
        decoder_attention, decoder_ffn: one flag per decoder layer.
        tokens: one flag per document-token segment.

    Raises:
        PlanError: if a flag tuple's length does not match ``spec`` (the message names the field and both lengths).
    """

    spec: PlanSpec
    encoder_attention: tuple[bool, ...] = ()
    encoder_ffn: tuple[bool, ...] = ()
    decoder_attention: tuple[bool, ...] = ()
    decoder_ffn: tuple[bool, ...] = ()
    tokens: tuple[bool, ...] = ()

    def __post_init__(self) -> None:
        expected = {
            "encoder_attention": self.spec.num_encoder_layers,
            "encoder_ffn": self.spec.num_encoder_layers,
            "decoder_attention": self.spec.num_decoder_layers,
            "decoder_ffn": self.spec.num_decoder_layers,
            "tokens": self.spec.token_segments,
        }
        for name, n in expected.items():
            flags = _flags(getattr(self, name), name)
            object.__setattr__(self, name, flags)
            if len(flags) != n:
                raise PlanError(
                    f"SkipPlan.{name} has {len(flags)} flags but the {self.spec.model_type} model has {n} "
                    f"({'layers' if name != 'tokens' else 'token segments'}); build plans with "
                    f"SkipPlan.from_action(action, spec) or spec.empty_plan()"
                )

    # ------------------------------------------------------------------ constructors / conversions
    @classmethod
    def from_action(cls, action: Sequence[int] | np.ndarray, spec: PlanSpec) -> "SkipPlan":
        """Build a plan from a flat 0/1 vector laid out as in the module docstring.

        Raises:
            PlanError: wrong length or a value other than 0/1.
        """
        a = np.asarray(action).reshape(-1)
        if a.shape[0] != spec.action_size:
            raise PlanError(
                f"action has {a.shape[0]} entries but the {spec.model_type} plan layout needs {spec.action_size} "
                f"(2×{spec.num_encoder_layers} encoder + 2×{spec.num_decoder_layers} decoder sublayers + "
                f"{spec.token_segments} token segments)"
            )
        if not np.all((a == 0) | (a == 1)):
            bad = a[~((a == 0) | (a == 1))][:3]
            raise PlanError(f"action entries must be 0 or 1, got {bad.tolist()}")
        a = a.astype(bool).tolist()
        le, ld = spec.num_encoder_layers, spec.num_decoder_layers
        i = 0
        parts = []
        for n in (le, le, ld, ld, spec.token_segments):
            parts.append(tuple(a[i : i + n]))
            i += n
        return cls(spec, *parts)

    @classmethod
    def from_skips(
        cls,
        spec: PlanSpec,
        *,
        attention: Iterable[int] = (),
        ffn: Iterable[int] = (),
        tokens: Iterable[int] = (),
        encoder_attention: Iterable[int] = (),
        encoder_ffn: Iterable[int] = (),
    ) -> "SkipPlan":
        """Build a plan from the *indices* to skip. ``attention`` / ``ffn`` are decoder-layer indices (all
        layers of a decoder-only model); ``encoder_*`` are encoder-layer indices.

        Raises:
            PlanError: an index out of range.
        """

        def mask(idx: Iterable[int], n: int, name: str) -> tuple[bool, ...]:
            m = [False] * n
            for i in idx:
                if not 0 <= int(i) < n:
                    raise PlanError(f"{name} index {i} out of range: the model has {n}")
                m[int(i)] = True
            return tuple(m)

        return cls(
            spec,
            mask(encoder_attention, spec.num_encoder_layers, "encoder_attention"),
            mask(encoder_ffn, spec.num_encoder_layers, "encoder_ffn"),
            mask(attention, spec.num_decoder_layers, "decoder attention"),
            mask(ffn, spec.num_decoder_layers, "decoder ffn"),
            mask(tokens, spec.token_segments, "tokens"),
        )

    def to_action(self) -> np.ndarray:
        """The flat 0/1 ``int8`` vector of shape ``[spec.action_size]`` (inverse of :meth:`from_action`)."""
        return np.array(
            self.encoder_attention + self.encoder_ffn + self.decoder_attention + self.decoder_ffn + self.tokens,
            dtype=np.int8,
        )

    def to_dict(self) -> dict:
        """JSON-ready dict: the spec plus the *indices* skipped per candidate kind."""
        idx = lambda flags: [i for i, f in enumerate(flags) if f]  # noqa: E731
        return {
            "spec": asdict(self.spec),
            "encoder_attention": idx(self.encoder_attention),
            "encoder_ffn": idx(self.encoder_ffn),
            "decoder_attention": idx(self.decoder_attention),
            "decoder_ffn": idx(self.decoder_ffn),
            "tokens": idx(self.tokens),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    @classmethod
    def from_dict(cls, d: dict, spec: PlanSpec | None = None) -> "SkipPlan":
        """Inverse of :meth:`to_dict`. If ``spec`` is given it must equal the stored spec.

        Raises:
            PlanError: missing keys, or a plan made for another model.
        """
        try:
            stored = PlanSpec(**d["spec"])
        except (KeyError, TypeError) as e:
            raise PlanError(f"not a serialised SkipPlan (missing or bad 'spec'): {e}") from e
        if spec is not None and spec != stored:
            raise PlanError(f"plan was made for {stored} but is used with {spec}")
        return cls.from_skips(
            stored,
            attention=d.get("decoder_attention", ()),
            ffn=d.get("decoder_ffn", ()),
            tokens=d.get("tokens", ()),
            encoder_attention=d.get("encoder_attention", ()),
            encoder_ffn=d.get("encoder_ffn", ()),
        )

    @classmethod
    def from_json(cls, s: str, spec: PlanSpec | None = None) -> "SkipPlan":
        return cls.from_dict(json.loads(s), spec)

    # ------------------------------------------------------------------ queries
    def check(self, spec: PlanSpec) -> None:
        """Raise :class:`PlanError` unless the plan was made for ``spec``."""
        if spec != self.spec:
            raise PlanError(
                f"plan was made for {self.spec} but the generator needs {spec}; build it with "
                f"generator.plan_spec(token_segments=...)"
            )

    @property
    def is_empty(self) -> bool:
        """True if nothing is skipped."""
        return not self.to_action().any()

    @property
    def num_skipped(self) -> int:
        return int(self.to_action().sum())

    def sublayer_flags(self) -> tuple[bool, ...]:
        """All sublayer flags (without tokens), in flat-action order."""
        return self.encoder_attention + self.encoder_ffn + self.decoder_attention + self.decoder_ffn

    def with_tokens(self, tokens: Sequence[bool]) -> "SkipPlan":
        return SkipPlan(self.spec, self.encoder_attention, self.encoder_ffn, self.decoder_attention,
                        self.decoder_ffn, tuple(tokens))

    def __repr__(self) -> str:
        idx = lambda flags: [i for i, f in enumerate(flags) if f]  # noqa: E731
        parts = []
        if self.spec.is_encoder_decoder:
            parts += [f"enc_attn={idx(self.encoder_attention)}", f"enc_ffn={idx(self.encoder_ffn)}"]
            parts += [f"dec_attn={idx(self.decoder_attention)}", f"dec_ffn={idx(self.decoder_ffn)}"]
        else:
            parts += [f"attn={idx(self.decoder_attention)}", f"ffn={idx(self.decoder_ffn)}"]
        parts.append(f"tokens={idx(self.tokens)}/{self.spec.token_segments}")
        layers = (f"{self.spec.num_encoder_layers}+{self.spec.num_decoder_layers}L"
                  if self.spec.is_encoder_decoder else f"{self.spec.num_decoder_layers}L")
        return f"SkipPlan({self.spec.model_type} {layers}: " + ", ".join(parts) + ")"
