"""Binary sentiment classification (SST-2, Rotten Tomatoes): accuracy of the generated label word."""

from __future__ import annotations

import math
import os
import re
import warnings
from collections import Counter
from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping

from .base import Example, Task
from .heads import EMBEDDED_HEADS, LabelHead, LabelHeadError, embedded_head
from .sources import DataFileError

__all__ = ["ClassificationTask", "parse_label", "DEFAULT_LABEL_MAP", "SCORING_MODES", "LABELS"]

#: the two label words, in the order of :meth:`ClassificationTask.verbalizer_ids`
LABELS = ("positive", "negative")
#: how a :class:`ClassificationTask` reads the model's label: ``"generate"`` (greedy generation, first label word of
#: the text) or ``"verbalizer"`` (one forward pass, calibrated margin of the two label words' log-probabilities at
#: the answer position) or ``"head"`` (one forward pass, a logistic :class:`~skipenv.tasks.heads.LabelHead` on the
#: final hidden state at the answer position)
SCORING_MODES = ("generate", "verbalizer", "head")

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

    Quality = accuracy: 1.0 if the model's label equals the gold label, else 0.0 (also 0.0 when no label word is
    generated).

    Two ways to read the model's label (:attr:`scoring`):

    - ``"generate"`` (the v0 envs): greedy generation, the first ``positive`` / ``negative`` word of the text.
    - ``"verbalizer"``: label scoring, no generation. One forward pass over the formatted input gives the
      next-token log-probabilities at the answer position (the last input token); the *margin*
      ``log p(v_pos) - log p(v_neg)`` of the first tokens of the two verbalizers (:attr:`verbalizers`) is compared
      with a threshold fitted on the train split (:attr:`threshold`; a bias calibration, cf. Zhao et al. 2021,
      "Calibrate before use"): ``"positive"`` iff ``margin > threshold``. The full output is then one token (the
      chosen verbalizer's), so its FLOPs are one prefill (:class:`skipenv.generators.flops.FlopsModel` with
      ``num_generated = 1``: every layer over the input plus the LM head at the last position).
    - ``"head"`` (``SwitchDec-RottenTomatoes-v2``): one forward pass; the final (normed) hidden state ``h`` ``[d]``
      at the answer position goes through a logistic :attr:`head` (``z = w · h + b``, nats) instead of the LM head;
      the margin is ``z`` and the label ``"positive"`` iff ``z > threshold`` (0 by default: the head is already
      calibrated by its fit). FLOPs: one prefill with the head's ``2 · d`` in place of the LM head's row. The head
      is tied to the model it was fitted on (:meth:`~skipenv.tasks.heads.LabelHead.check_model`).

    Attributes:
        label_map: raw label value → ``"positive"`` / ``"negative"``; rows whose label is not in it (Rotten
            Tomatoes ``plot`` rows, GLUE's hidden test labels ``-1``) are always dropped (counted as
            ``dropped_unlabeled`` in :attr:`load_stats`). A local file whose kept rows do not hold both labels
            raises :class:`~skipenv.tasks.sources.DataFileError`; a value mapped to a word other than
            ``"positive"`` / ``"negative"`` (e.g. ``{2: "neutral"}``) raises ``ValueError`` at construction.
        scoring: ``"generate"`` or ``"verbalizer"`` (see above).
        verbalizers: the texts whose first tokens are scored for ``("positive", "negative")``.
        threshold: margin threshold (nats) of ``"verbalizer"`` / ``"head"`` scoring.
        head: the :class:`~skipenv.tasks.heads.LabelHead` of ``"head"`` scoring (required there, ``None``
            otherwise); also accepted: a name in :data:`~skipenv.tasks.heads.EMBEDDED_HEADS` (a head shipped in the
            package) or the path of a head JSON file (:meth:`LabelHead.save`).
    """

    label_map: Mapping[Any, str] = field(default_factory=lambda: dict(DEFAULT_LABEL_MAP))
    user_template: str = "{instruction}\n\nReview:\n{document}\n\nAnswer with one word: positive or negative."
    scoring: str = "generate"
    verbalizers: tuple[str, str] = LABELS
    threshold: float = 0.0
    head: Any = None

    kind: ClassVar[str] = "classification"
    roles: ClassVar[tuple[str, ...]] = ("id", "document", "label")
    text_roles: ClassVar[tuple[str, ...]] = ("document",)

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scoring not in SCORING_MODES:
            raise ValueError(f"task {self.name!r}: scoring must be one of {SCORING_MODES}, got {self.scoring!r}")
        if len(tuple(self.verbalizers)) != 2 or not all(isinstance(v, str) and v for v in self.verbalizers):
            raise ValueError(f"task {self.name!r}: verbalizers must be two non-empty strings (positive, negative), "
                             f"got {self.verbalizers!r}")
        self.verbalizers = tuple(self.verbalizers)
        if isinstance(self.threshold, bool) or not isinstance(self.threshold, (int, float)) \
                or not math.isfinite(self.threshold):
            raise ValueError(f"task {self.name!r}: threshold must be a finite number (nats), got {self.threshold!r}")
        self.threshold = float(self.threshold)
        self.head = self._resolve_head(self.head)
        # a label word outside LABELS would be scored 0.0 on every row of its class: a silent zero, so refuse it
        bad = {k: v for k, v in dict(self.label_map).items() if v not in LABELS}
        if bad:
            raise ValueError(f"task {self.name!r}: label_map must map raw label values to 'positive' or 'negative' "
                             f"(this task is binary), got {bad!r}; leave other classes out of label_map (their rows "
                             f"are dropped and counted as unlabeled) or map each to one of the two labels")
        # label values present in a row but not in label_map (value -> rows), filled while rows are converted
        self._unmapped_labels: Counter = Counter()
        self._seen_mapped: set = set()  # raw label values that label_map mapped (for the error message)
        self._warned_unmapped = False

    def _resolve_head(self, head: Any) -> LabelHead | None:
        if self.scoring != "head":
            if head is not None:
                raise ValueError(f"task {self.name!r}: head= is a setting of scoring='head', not {self.scoring!r}: "
                                 f"drop it or pass scoring='head'")
            return None
        if head is None:
            raise ValueError(f"task {self.name!r}: scoring='head' needs head= (a LabelHead, a shipped head's name "
                             f"{sorted(EMBEDDED_HEADS)} or a head JSON file)")
        if isinstance(head, LabelHead):
            return head
        if isinstance(head, str) and head in EMBEDDED_HEADS:
            return embedded_head(head)
        if isinstance(head, (str, os.PathLike)) and os.path.isfile(head):
            return LabelHead.load(head)
        raise LabelHeadError(f"task {self.name!r}: head must be a LabelHead, a shipped head's name "
                             f"{sorted(EMBEDDED_HEADS)} or an existing head JSON file, got {head!r}")

    @property
    def label_scoring(self) -> bool:
        """Whether the label is read in one forward pass (verbalizer or head scoring) instead of generation."""
        return self.scoring in ("verbalizer", "head")

    @property
    def label_head_scoring(self) -> bool:
        """Whether the label is read by a :class:`~skipenv.tasks.heads.LabelHead` on the final hidden state."""
        return self.scoring == "head"

    def cache_tag(self) -> str:
        """What besides the input ids determines the full model's label (part of the evaluator's full-output cache
        key): the scoring mode, the verbalizers and the threshold (and the head's digest). Empty for
        ``"generate"`` (keeps v0's keys)."""
        if not self.label_scoring:
            return ""
        if self.label_head_scoring:
            return f"head:{self.head.digest}:{self.threshold!r}"
        return f"verbalizer:{self.verbalizers[0]}|{self.verbalizers[1]}:{self.threshold!r}"

    def verbalizer_ids(self, tokenizer) -> tuple[int, int]:
        """First token ids of the two verbalizers ``(positive, negative)`` (tokenised without special tokens).

        Raises:
            ValueError: a verbalizer that tokenises to nothing, or two verbalizers that share their first token.
        """
        ids = []
        for v in self.verbalizers:
            toks = tokenizer(v, add_special_tokens=False)["input_ids"]
            if not toks:
                raise ValueError(f"task {self.name!r}: verbalizer {v!r} tokenises to no token")
            ids.append(int(toks[0]))
        if ids[0] == ids[1]:
            raise ValueError(f"task {self.name!r}: verbalizers {self.verbalizers!r} share their first token {ids[0]}; "
                             f"choose words that start differently")
        return ids[0], ids[1]

    def label_of_margin(self, margin: float) -> str:
        """``"positive"`` iff ``margin > threshold`` (margin = ``log p(v_pos) - log p(v_neg)``, or the head's logit
        ``w · h + b``; nats)."""
        return LABELS[0] if float(margin) > self.threshold else LABELS[1]

    def label_probability(self, margin: float, label: str) -> float:
        """Calibrated probability of ``label`` given the margin: ``sigmoid(margin - threshold)`` for ``"positive"``,
        one minus it for ``"negative"`` (the two-way softmax of the verbalizer log-probabilities, shifted by the
        threshold). A fraction in ``[0, 1]``.

        Raises:
            ValueError: a label other than ``"positive"`` / ``"negative"``.
        """
        if label not in LABELS:
            raise ValueError(f"label must be one of {LABELS}, got {label!r}")
        z = float(margin) - self.threshold
        p_pos = 1.0 / (1.0 + math.exp(-z)) if z >= 0 else math.exp(z) / (1.0 + math.exp(z))
        return p_pos if label == LABELS[0] else 1.0 - p_pos

    def examples(self, split: str = "all") -> list[Example]:
        """As :meth:`Task.examples`; a local file must also hold both labels among its kept rows.

        Warns:
            UserWarning: (local files, once) rows held label values that are not in :attr:`label_map` (e.g. a third
                class ``2``): names each value and its row count; those rows are dropped as ``unlabeled``.

        Raises:
            DataFileError: (local files) the label column holds two or more values outside :attr:`label_map` (more
                than two classes, e.g. ratings 0-5: refused whole, naming the values and the fix); or the kept rows
                hold fewer than two labels — e.g. a label column whose values
                are not in :attr:`label_map`, so every row was dropped as unlabeled but one class — naming the counts
                and the fix (``label_map=`` or ``label_column=``). Otherwise as :meth:`Task.examples`.
        """
        out = super().examples(split)
        if self.source not in ("embedded", "hub"):
            everything = out if split == "all" else super().examples("all")
            labels = {e.label for e in everything}
            if len(self._unmapped_labels) >= 2:
                # two or more values outside label_map (e.g. ratings 0-5 under the default map, where 0 / 1 would
                # be read as negative / positive and the rest dropped): not a two-class file; refuse it whole
                values = sorted({str(v) for v in self._unmapped_labels} | {str(k) for k in self._seen_mapped})
                raise DataFileError(
                    f"{self.source}: the label column holds more than two classes ({len(values)} values: "
                    f"{', '.join(values[:12])}{', ...' if len(values) > 12 else ''}), but this task is binary "
                    f"(positive / negative); map every value to one of the two with make_task(..., "
                    f"label_map={{value: 'positive' | 'negative'}}), pick the right label_column, or keep only "
                    f"two-class rows")
            if self._unmapped_labels and not self._warned_unmapped:
                # a third class (e.g. 0 / 1 / 2) is not a missing label: say which values were left out
                self._warned_unmapped = True
                values = ", ".join(f"{v!r} ({n} rows)" for v, n in sorted(self._unmapped_labels.items(),
                                                                           key=lambda kv: str(kv[0])))
                warnings.warn(
                    f"{self.source}: label values not in label_map were dropped as unlabeled: {values}; this task "
                    f"is binary (positive / negative). If they are a class, map them with "
                    f"make_task(..., label_map={{value: 'positive' | 'negative'}}); counts in task.load_stats",
                    UserWarning, stacklevel=2)
            if len(labels) < 2:
                raise DataFileError(
                    f"{self.source}: binary classification needs both labels 'positive' and 'negative', but the kept "
                    f"rows hold only {sorted(labels)} ({self.load_stats}); map the file's label values with "
                    f"make_task(..., label_map={{value: 'positive' | 'negative'}}) or pick the right label_column")
        return out

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
        value = fields.get("label")
        if self._label(value) is not None and isinstance(value, (str, int, float)):
            self._seen_mapped.add(value)
        if self._label(value) is None:
            if value is not None and value != "":
                self._unmapped_labels[value if isinstance(value, (str, int, float)) else repr(value)] += 1
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
