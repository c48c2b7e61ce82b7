"""Abstractive summarization (XSum, CNN/DailyMail): ROUGE-L F-measure against the gold summary."""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any, ClassVar

from ..metrics import rouge
from .base import Example, Task

__all__ = ["SummarizationTask", "first_sentences"]

_SENTENCE_END = re.compile(r"(?<=[.!?])[\"')\]]*\s+(?=[\"'(\[]?[A-Z0-9])")
_LABEL = re.compile(r"^\s*(?:here is\s+)?(?:an?\s+|the\s+)?(?:one[- ]sentence\s+)?summary(?:\s+of\s+the\s+article)?\s*:\s*",
                    re.IGNORECASE)


def first_sentences(text: str, n: int = 1) -> str:
    """The first ``n`` sentences of ``text``.

    With ``n == 1`` only the first non-empty line is considered (chat models often add a second paragraph).
    A leading ``"Summary:"``-style label is removed. Sentences end at ``.``, ``!`` or ``?`` followed by
    whitespace and an upper-case letter or digit.
    """
    text = text.strip()
    lines = [ln.strip() for ln in text.splitlines() if ln.strip()]
    if not lines:
        return ""
    body = _LABEL.sub("", lines[0]) if n == 1 else " ".join(_LABEL.sub("", ln) for ln in lines)
    if not body and len(lines) > 1 and n == 1:  # "Summary:" alone on the first line
        body = lines[1]
    parts = _SENTENCE_END.split(body)
    return " ".join(p.strip() for p in parts[:n]).strip()


@dataclass
class SummarizationTask(Task):
    """Summarize the document; quality = ROUGE-L F-measure (``rouge-score``, stemming) vs the gold summary.

    Attributes:
        max_sentences: :meth:`post_process` keeps this many sentences (XSum 1, CNN/DailyMail 3).
    """

    max_sentences: int = 1

    kind: ClassVar[str] = "summarization"
    roles: ClassVar[tuple[str, ...]] = ("id", "document", "target")

    def _invalid_reason(self, fields: dict[str, Any]) -> str | None:
        """``empty_document``, or ``empty_target`` (a summary that is empty / null / missing; always dropped)."""
        reason = super()._invalid_reason(fields)
        if reason:
            return reason
        if not (fields.get("target") or "").strip():
            return "empty_target"
        return None

    def post_process(self, text: str) -> str:
        """The first :attr:`max_sentences` sentence(s) of the generated text (see :func:`first_sentences`)."""
        return first_sentences(text, self.max_sentences)

    def score(self, prediction: str, example: Example) -> float:
        """ROUGE-L F-measure of ``post_process(prediction)`` against ``example.target``, in ``[0, 1]``."""
        return rouge(self.post_process(prediction), example.target)["rougeL"]
