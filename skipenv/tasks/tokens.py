"""Text → token ids for prompt formatting: template text (control strings are special tokens) versus data text
(documents, questions: always plain text, so data cannot forge chat turns), and probing where a tokenizer puts its
special tokens."""

from __future__ import annotations

__all__ = ["QUESTION_PLACEHOLDER", "encode_template", "encode_text", "encode_mixed", "has_control_text", "special_ids",
           "control_strings", "special_layout"]

#: rendered in place of a question that contains the tokenizer's control strings (see :meth:`Task.format`)
QUESTION_PLACEHOLDER = "\u27e6SKIPENV-QUESTION-4b7e\u27e7"


def encode_template(tokenizer, text: str) -> list[int]:
    """Token ids of template text (control strings such as ``<|im_end|>`` become their special tokens), without
    the tokenizer's added special tokens (``[]`` for the empty string)."""
    if not text:
        return []
    return list(tokenizer(text, add_special_tokens=False)["input_ids"])


def special_ids(tokenizer) -> set[int]:
    """Ids of the tokenizer's special tokens (``all_special_ids`` and added tokens flagged special)."""
    ids = set(getattr(tokenizer, "all_special_ids", None) or ())
    for i, tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).items():
        if getattr(tok, "special", False):
            ids.add(int(i))
    return ids


def control_strings(tokenizer) -> list[str]:
    """The texts of the tokenizer's special tokens (``<|im_end|>``, ``</s>``, ...)."""
    out = set(getattr(tokenizer, "all_special_tokens", None) or ())
    for tok in (getattr(tokenizer, "added_tokens_decoder", None) or {}).values():
        if getattr(tok, "special", False):
            out.add(str(tok))
    return [t for t in out if t]


def has_control_text(tokenizer, text: str) -> bool:
    return any(t in text for t in control_strings(tokenizer))


def encode_text(tokenizer, text: str) -> list[int]:
    """Token ids of data text (a document, a question) as plain text: control strings in it (``<|im_end|>``,
    ``<|im_start|>assistant``) are split into ordinary tokens, so data cannot forge chat turns.

    Uses the Hugging Face ``split_special_tokens=True`` call option; for ordinary text the ids equal
    :func:`encode_template`'s.

    Raises:
        ValueError: the tokenizer has no ``split_special_tokens`` option and encodes a control string in ``text``
            as a special token.
    """
    if not text:
        return []
    try:
        ids = list(tokenizer(text, add_special_tokens=False, split_special_tokens=True)["input_ids"])
    except TypeError:  # a tokenizer stand-in without the option
        ids = list(tokenizer(text, add_special_tokens=False)["input_ids"])
        special = special_ids(tokenizer) & set(ids)
        if special:
            raise ValueError(
                f"{type(tokenizer).__name__} turns control strings inside data text into special tokens "
                f"{sorted(special)} and has no split_special_tokens option; remove them from the data or use a "
                f"Hugging Face tokenizer"
            ) from None
    return ids


def encode_mixed(tokenizer, text: str, question: str) -> list[int]:
    """Template text that may hold :data:`QUESTION_PLACEHOLDER`: the template parts as :func:`encode_template`, the
    question as plain text (:func:`encode_text`)."""
    if QUESTION_PLACEHOLDER not in text:
        return encode_template(tokenizer, text)
    out: list[int] = []
    for k, part in enumerate(text.split(QUESTION_PLACEHOLDER)):
        if k:
            out += encode_text(tokenizer, question)
        out += encode_template(tokenizer, part)
    return out


def special_layout(tokenizer, *, pair: bool) -> tuple[list[int], list[int], list[int]]:
    """The special tokens a tokenizer adds around one sequence (or a pair), found by probing it.

    Returns:
        ``(lead, middle, trail)`` token ids: before the first sequence, between the two (pair only; ``[]`` for a
        single sequence), after the last one.

    Raises:
        ValueError: the tokenizer's special-token mask does not show one run of text tokens per sequence.
    """
    args = ("a", "b") if pair else ("a",)
    enc = tokenizer(*args, add_special_tokens=True, return_special_tokens_mask=True)
    ids, mask = list(enc["input_ids"]), list(enc["special_tokens_mask"])
    runs: list[tuple[int, int]] = []  # runs of non-special tokens
    i = 0
    while i < len(ids):
        if mask[i] == 0:
            j = i
            while j < len(ids) and mask[j] == 0:
                j += 1
            runs.append((i, j))
            i = j
        else:
            i += 1
    if len(runs) != len(args):
        raise ValueError(
            f"cannot find where {type(tokenizer).__name__} puts its special tokens around "
            f"{'a pair of sequences' if pair else 'a sequence'} (special-token mask {mask})"
        )
    lead = ids[: runs[0][0]]
    trail = ids[runs[-1][1]:]
    middle = ids[runs[0][1]: runs[1][0]] if pair else []
    return lead, middle, trail


