"""Binary sentiment classification (SST-2, Rotten Tomatoes): accuracy of the generated label word."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .base import Example, Task

__all__ = ["ClassificationTask", "parse_label", "DEFAULT_LABEL_MAP"]

#: raw label values → label words (GLUE SST-2 ints, Rotten Tomatoes categories, common spellings)
DEFAULT_LABEL_MAP: dict[Any, str] = {
    0: "negative", 1: "positive", "0": "negative", "1": "positive",
    "negative": "negative", "positive": "positive", "neg": "negative", "pos": "positive",
    "rotten": "negative", "fresh": "positive",
}
_LABEL_WORD = re.compile(r"\b(positive|negative)\b", re.IGNORECASE)


def parse_label(text: str) -> str | None:
    """The first ``positive`` / ``negative`` word in ``text`` (case-insensitive), lower-cased; ``None`` if none."""
    m = _LABEL_WORD.search(text)
    return m.group(1).lower() if m else None


@dataclass
class ClassificationTask(Task):
    """Classify the sentiment of the document (a review) as ``positive`` or ``negative``.

    Quality = accuracy: 1.0 if the first label word in the generated text equals the gold label, else 0.0 (also
    0.0 when no label word is generated).

    Attributes:
        label_map: raw label value → ``"positive"`` / ``"negative"``; rows whose label is not in it (Rotten
            Tomatoes ``plot`` rows, GLUE's hidden test labels ``-1``) are always dropped.
    """

    label_map: Mapping[Any, str] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    user_template: str = "{instruction}\n\nReview:\n{document}\n\nAnswer with one word: positive or negative."

    kind: ClassVar[str] = "classification"
    roles: ClassVar[tuple[str, ...]] = ("id", "document", "label")
    text_roles: ClassVar[tuple[str, ...]] = ("document",)

    def _label(self, value: Any) -> str | None:
        if isinstance(value, str):
            value = value.strip()
            return self.label_map.get(value, self.label_map.get(value.lower()))
        try:
            return self.label_map.get(value)
        except TypeError:  # unhashable
            return None

    def _invalid_reason(self, fields: dict[str, Any]) -> str | None:
        """``unlabeled`` (a label missing or not in :attr:`label_map`; always dropped) or the base reasons."""
        if self._label(fields.get("label")) is None:
            return "unlabeled"
        return super()._invalid_reason(fields)

    def _make_example(self, ex_id: str, fields: dict[str, Any]) -> Example:
        label = self._label(fields.get("label"))
        return Example(id=ex_id, document=str(fields["document"]), target=label or "", label=label)

    def post_process(self, text: str) -> str:
        """The label word found in the text (``"positive"`` / ``"negative"``), or the stripped text if none."""
        return parse_label(text) or text.strip()

    def score(self, prediction: str, example: Example) -> float:
        """1.0 if the generated label word equals ``example.label``, else 0.0."""
        return float(parse_label(prediction) == (example.label or example.target))
