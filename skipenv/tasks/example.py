"""The :class:`Example`: one dataset example, the unit a data source produces and a task formats and scores."""

from __future__ import annotations

from dataclasses import dataclass

__all__ = ["Example"]


@dataclass(frozen=True, init=False)
class Example:
    """One dataset example.

    Attributes:
        id: unique id within the dataset (the dataset's own id, or a sha1-based one — see :meth:`Task.examples`).
        document: the skippable text: article (summarization), passage (QA), review (classification).
        target: the dataset's gold output (never the full model's output): reference summary, first gold answer,
            or label word. Rows without one are dropped when examples are built (see :meth:`Task.examples`).
        question: the question (QA only).
        label: ``"positive"`` / ``"negative"`` (classification only).
        answers: all gold answers (QA; ``target`` is ``answers[0]``), used by the SQuAD F1 maximum.

    ``reference`` is an alias of ``target`` kept for existing code: ``example.reference``,
    ``Example(..., reference=...)`` and ``dataclasses.replace(example, reference=...)`` all work (when both are
    given, ``reference`` wins, which is what ``dataclasses.replace`` needs).

    Raises:
        TypeError: no target given (neither ``target`` nor ``reference``).
    """

    id: str
    document: str
    target: str
    question: str | None = None
    label: str | None = None
    answers: tuple[str, ...] = ()

    def __init__(self, id: str, document: str, target: str | None = None, question: str | None = None,
                 label: str | None = None, answers: tuple[str, ...] = (), *, reference: str | None = None):
        if reference is not None:
            target = reference
        if target is None:
            raise TypeError(f"Example {id!r}: a target (the gold output) is required")
        for name, value in (("id", id), ("document", document), ("target", target), ("question", question),
                            ("label", label), ("answers", tuple(answers))):
            object.__setattr__(self, name, value)

    @property
    def reference(self) -> str:
        """Alias of :attr:`target` (the dataset's gold output)."""
        return self.target
