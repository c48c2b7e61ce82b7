"""Extractive question answering (SQuAD, DisflQA): SQuAD F1 against the gold answer(s)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, ClassVar

import math
from collections import Counter

from ..metrics import f1, normalize_answer
from .base import Example, Task
from .tokens import encode_template, encode_text, special_layout

__all__ = ["QATask", "passage_span", "QA_SCORING_MODES"]

#: how a :class:`QATask` produces its answer: free greedy generation, passage-constrained (pointer) decoding, or a
#: span head on the passage's hidden states (:mod:`skipenv.tasks.span_head`, no decoding)
QA_SCORING_MODES = ("generate", "pointer", "head")
#: version of the pointer decoding rule, part of the full-output cache key (a change of the rule is a new key)
POINTER_RULE = "pointer:no-question-start:1"


def passage_span(text: str, passage: str, max_extra_words: int = 3) -> str:
    """The word span of ``passage`` with the highest SQuAD F1 against ``text`` (an answer the model wrote), so the
    answer scored is always a span of the passage (extractive QA), never a sentence about it.

    Candidates: every run of ``1 .. n + max_extra_words`` consecutive whitespace-separated passage words, ``n`` the
    number of words of ``text``; F1 is computed on SQuAD-normalised words (:func:`skipenv.metrics.normalize_answer`
    applied word by word, which equals normalising the whole string: it never merges words). Ties go to the
    shorter, then the earlier span. Returns ``""`` when ``text`` has no word in common with the passage (F1 0 for
    every span) or is empty.

    Cost: ``O(len(passage words) * (n + max_extra_words))`` counter updates (about 2,000 for a DisflQA passage).
    """
    words = passage.split()
    norm = [normalize_answer(w).split() for w in words]
    target = Counter(normalize_answer(text).split())
    n_t = sum(target.values())
    if not n_t or not words:
        return ""
    width = len(text.split()) + int(max_extra_words)
    best, best_key = "", (0.0, 0, 0)
    for i in range(len(words)):
        have, n_p, same = Counter(), 0, 0
        for j in range(i, min(len(words), i + width)):
            for tok in norm[j]:
                have[tok] += 1
                n_p += 1
                if have[tok] <= target.get(tok, 0):
                    same += 1
            if not same:
                continue
            score = 2.0 * same / (n_p + n_t)  # F1 = 2 P R / (P + R) with P = same / n_p, R = same / n_t
            key = (score, -(j - i), -i)
            if key > best_key:
                best, best_key = " ".join(words[i: j + 1]).strip(",;:"), key
    return best


def _answers(value: Any) -> list[str]:
    """Gold answers from a column value: a string, a list of strings, or SQuAD's ``{"text": [...], ...}``."""
    if value is None:
        return []
    if isinstance(value, dict):
        value = value.get("text", [])
    if isinstance(value, str):
        return [value.strip()] if value.strip() else []
    try:
        return [str(v).strip() for v in list(value) if str(v).strip()]
    except TypeError:
        return [str(value).strip()]


@dataclass
class QATask(Task):
    """Answer the question from the passage (the passage is the skippable document).

    Quality = SQuAD F1 (official normalisation) of the first line of the generated text, maximum over the gold
    answers.

    Attributes:
        require_answer_in_document: drop rows none of whose gold answers occurs verbatim in the passage (DisflQA:
            SQuAD-v2 "unknown" rows and rephrased answers; 600 of 1,000 rows are kept).
        answer_from_passage: score the passage span closest to the generated answer (:func:`passage_span`)
            instead of the generated line itself, so every scored answer is a span of the passage
            (``disflqa_span``).
        scoring: how the answer is produced: ``"generate"`` (free greedy generation, the v0 envs) or ``"pointer"``
            (greedy decoding restricted to spans of the passage, :func:`skipenv.envs.spans.pointer_decode`: the
            output is always a passage span; the evaluator runs it for the full model and for every plan).
        eos_bias: ``"pointer"`` only: nats added to the end-of-answer token's logit (> 0: shorter spans), fitted
            on train rows (docs/tasks.md).
        span_head: ``"head"`` only: a shipped head's name (:data:`~skipenv.tasks.span_head.SHIPPED_SPAN_HEADS`) or
            the path of a ``.npz`` written by :meth:`~skipenv.tasks.span_head.SpanHead.save`; the answer is the
            passage span the head scores highest under the plan (:func:`skipenv.envs.span_head.head_decode`).
    """

    require_answer_in_document: bool = True
    answer_from_passage: bool = False
    scoring: str = "generate"
    eos_bias: float = 0.0
    span_head: str = ""
    user_template: str = "{instruction}\n\nPassage:\n{document}\n\nQuestion: {question}"

    kind: ClassVar[str] = "qa"
    roles: ClassVar[tuple[str, ...]] = ("id", "document", "question", "target")
    text_roles: ClassVar[tuple[str, ...]] = ("document", "question")  # answers: text, list or SQuAD's dict

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.scoring not in QA_SCORING_MODES:
            raise ValueError(f"task {self.name!r}: scoring must be one of {QA_SCORING_MODES}, got {self.scoring!r}")
        if isinstance(self.eos_bias, bool) or not isinstance(self.eos_bias, (int, float)) \
                or not math.isfinite(self.eos_bias):
            raise ValueError(f"task {self.name!r}: eos_bias must be a finite number (nats), got {self.eos_bias!r}")
        self.eos_bias = float(self.eos_bias)
        if self.scoring == "head" and not self.span_head:
            raise ValueError(f"task {self.name!r}: scoring='head' needs span_head= (a shipped head's name or a .npz "
                             f"path written by SpanHead.save)")
        self._head = None

    @property
    def span_scoring(self) -> bool:
        """Whether answers are passage spans (``scoring="pointer"`` or ``"head"``) instead of generated freely."""
        return self.scoring in ("pointer", "head")

    @property
    def span_head_scoring(self) -> bool:
        """Whether the answer is read by a span head (``scoring="head"``: one forward pass, no decoding)."""
        return self.scoring == "head"

    def load_span_head(self):
        """The :class:`~skipenv.tasks.span_head.SpanHead` of :attr:`span_head` (loaded once).

        Raises:
            ~skipenv.tasks.span_head.SpanHeadError: not ``scoring="head"``, an unknown name or a garbled file.
        """
        from .span_head import SpanHead, SpanHeadError, span_head_path

        if not self.span_head_scoring:
            raise SpanHeadError(f"task {self.name!r} does not use a span head (scoring={self.scoring!r})")
        if getattr(self, "_head", None) is None:
            self._head = SpanHead.load(span_head_path(self.span_head))
        return self._head

    def cache_tag(self) -> str:
        """What besides the input ids determines the full model's answer (part of the evaluator's full-output cache
        key): the pointer rule's version for span decoding (spans may not start with a question word), empty for
        generation (keeps v0's keys)."""
        if self.span_head_scoring:
            from .span_head import SPAN_HEAD_RULE

            return f"{SPAN_HEAD_RULE}:{self.load_span_head().digest()}"
        return f"{POINTER_RULE}:eos_bias={self.eos_bias!r}" if self.span_scoring else ""

    def start_exclusions(self, example: Example) -> frozenset[str]:
        """Words a decoded span may not start with (``scoring="pointer"``): the question's SQuAD-normalised
        words, since an extractive answer rarely repeats the question (without this the embedded SmolLM2 starts
        its span at the passage sentence that echoes the question and copies it, docs/tasks.md)."""
        return frozenset(normalize_answer(example.question or "").split())

    def _invalid_reason(self, fields: dict[str, Any]) -> str | None:
        """``empty_document``, ``empty_question``, ``no_answer`` (always dropped) or ``answer_not_in_document``."""
        reason = super()._invalid_reason(fields)
        if reason:
            return reason
        if not (fields.get("question") or "").strip():
            return "empty_question"
        answers = _answers(fields.get("target"))
        if not answers:
            return "no_answer"
        if self.require_answer_in_document and not any(a in fields["document"] for a in answers):
            return "answer_not_in_document"
        return None

    def _make_example(self, ex_id: str, fields: dict[str, Any]) -> Example:
        answers = tuple(_answers(fields.get("target")))
        return Example(id=ex_id, document=str(fields["document"]), target=answers[0] if answers else "",
                       question=str(fields.get("question") or ""), answers=answers)

    def _check_example(self, example: Example) -> None:
        super()._check_example(example)
        if not example.question or not example.question.strip():
            raise ValueError(f"example {example.id!r} of task {self.name!r} has an empty question")

    def _encoder_pieces(self, example: Example, tokenizer) -> tuple[list[int], list[int]]:
        """``lead + instruction + question + middle`` | passage | ``trail`` of the tokenizer's pair form."""
        q_ids = encode_text(tokenizer, example.question or "")
        instr = encode_template(tokenizer, self.encoder_instruction) if self.encoder_instruction else []
        try:
            lead, middle, trail = special_layout(tokenizer, pair=True)
        except ValueError:  # no pair form (e.g. T5): "question passage" as one sequence
            lead, _, trail = special_layout(tokenizer, pair=False)
            middle = encode_template(tokenizer, "\n")
        return lead + instr + q_ids + middle, trail

    def post_process(self, text: str) -> str:
        """The first non-empty line, stripped, with an ``"Answer:"`` label removed.

        A first line that only introduces the answer (ends with ``":"``, e.g. ``"The answer is:"``) is skipped.
        """
        lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
        while len(lines) > 1 and lines[0].endswith(":"):
            lines.pop(0)
        if not lines:
            return ""
        line = lines[0]
        if line.lower().startswith("answer:"):
            line = line[len("answer:"):].strip()
        return line

    def score(self, prediction: str, example: Example) -> float:
        """SQuAD F1 of ``post_process(prediction)`` against the gold answer(s), in ``[0, 1]``.

        The golds are ``example.answers`` when ``example.target`` is one of them (as built by
        :meth:`examples`), else just ``example.target`` — so ``dataclasses.replace(example, target=text)``
        scores against ``text`` alone (e.g. fidelity to the full model's output).
        """
        golds = list(example.answers) if example.target in example.answers else [example.target]
        return f1(self.answer(prediction, example), golds)

    def answer(self, prediction: str, example: Example) -> str:
        """The answer :meth:`score` scores: ``post_process(prediction)``, mapped to its closest passage span
        (:func:`passage_span`) when :attr:`answer_from_passage`."""
        line = self.post_process(prediction)
        return passage_span(line, example.document) if self.answer_from_passage else line
