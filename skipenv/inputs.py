"""The generator-facing description of one formatted input.

A :class:`PromptInput` is what a :class:`~skipenv.tasks.Task` produces from one dataset example and what a
:class:`~skipenv.generators.SkippableGenerator` consumes. It is model-specific (token ids of one tokenizer).
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np


@dataclass(frozen=True)
class PromptInput:
    """One formatted generator input.

    Attributes:
        input_ids: token ids of the whole input, shape ``[T]`` — the prompt for decoder-only models (chat template
            included, no padding), the encoder input for encoder-decoder models (special tokens included).
        document_span: half-open ``(start, end)`` token positions of the skippable document inside
            ``input_ids``. Everything outside it (template, instruction, question, special tokens) is never
            skipped. ``start == end`` means nothing is skippable.
        example_id: id of the dataset example, carried into ``info`` and error messages.
        unit_bounds: explicit half-open ``(start, end)`` positions of the ``K`` skippable segments (contiguous, in
            order, covering ``document_span``), e.g. runs of whole sentences
            (:func:`skipenv.tasks.units.with_sentence_units`); ``None`` (default) = ``K`` near-equal token runs.

    Raises:
        ValueError: if the span does not lie within ``input_ids``, or ``unit_bounds`` do not tile it.
    """

    input_ids: tuple[int, ...]
    document_span: tuple[int, int]
    example_id: str = ""
    extra: dict = field(default_factory=dict, compare=False, hash=False)
    unit_bounds: tuple[tuple[int, int], ...] | None = None

    def __post_init__(self) -> None:
        start, end = self.document_span
        if not (0 <= start <= end <= len(self.input_ids)):
            raise ValueError(
                f"document_span {self.document_span} of example {self.example_id!r} does not lie within its "
                f"{len(self.input_ids)} input ids; the span must be 0 <= start <= end <= len(input_ids)"
            )
        if len(self.input_ids) == 0:
            raise ValueError(f"example {self.example_id!r} has no input ids")
        if self.unit_bounds is not None:
            edges = [start] + [e for _, e in self.unit_bounds]
            if not self.unit_bounds or [s for s, _ in self.unit_bounds] != edges[:-1] or edges[-1] != end \
                    or any(b < a for a, b in zip(edges, edges[1:])):
                raise ValueError(f"unit_bounds {self.unit_bounds} of example {self.example_id!r} must be contiguous "
                                 f"(start, end) ranges in order that cover document_span {self.document_span}")

    def __len__(self) -> int:
        return len(self.input_ids)

    @property
    def num_document_tokens(self) -> int:
        return self.document_span[1] - self.document_span[0]

    def segment_bounds(self, num_segments: int) -> list[tuple[int, int]]:
        """Split the document span into ``num_segments`` contiguous segments: :attr:`unit_bounds` when set, else
        near-equal token runs.

        Near-equal runs follow ``numpy.array_split``: the first ``n % K`` segments get one token more. Segments can
        be empty when the document has fewer tokens (or, for sentence units, words) than segments.

        Returns:
            ``num_segments`` half-open ``(start, end)`` position ranges inside ``input_ids``.

        Raises:
            ValueError: :attr:`unit_bounds` holds another number of units than ``num_segments``.
        """
        if self.unit_bounds is not None:
            if len(self.unit_bounds) != num_segments:
                raise ValueError(f"example {self.example_id!r} has {len(self.unit_bounds)} text units but the plan "
                                 f"has {num_segments} token segments: make the prompt for this token_segments")
            return list(self.unit_bounds)
        start, end = self.document_span
        n = end - start
        sizes = [len(a) for a in np.array_split(np.arange(n), num_segments)] if num_segments else []
        bounds, pos = [], start
        for size in sizes:
            bounds.append((pos, pos + size))
            pos += size
        return bounds

    def kept_positions(self, skipped_segments: tuple[bool, ...]) -> list[int]:
        """Positions of ``input_ids`` that survive skipping the flagged segments (in order; all of them when no flag
        is set, whatever the number of flags)."""
        if not any(skipped_segments):
            return list(range(len(self.input_ids)))
        drop = np.zeros(len(self.input_ids), dtype=bool)
        for (s, e), skip in zip(self.segment_bounds(len(skipped_segments)), skipped_segments):
            if skip:
                drop[s:e] = True
        return [i for i in range(len(self.input_ids)) if not drop[i]]

    def apply_token_skips(self, skipped_segments: tuple[bool, ...]) -> list[int]:
        """Token ids left after removing the skipped segments, shape ``[T']`` with ``T' <= T``."""
        return [self.input_ids[i] for i in self.kept_positions(skipped_segments)]
