"""Token units that follow the text: the ``K`` skippable segments of a document as runs of whole sentences.

``segment_boundaries="tokens"`` (every env's default) cuts the document span into ``K`` near-equal token runs
(:meth:`skipenv.inputs.PromptInput.segment_bounds`); a cut may fall inside a word or a sentence.
``segment_boundaries="sentences"`` makes the ``K`` segments runs of whole sentences of the document text, mapped to
exact token spans of the tokenized prompt (:func:`sentence_units`). The prompt's token ids are the same under both;
only which tokens one action bit removes differs.

How the sentence units of one document are made (every step deterministic):

1. **Sentences** (:func:`sentence_spans`): NLTK's Punkt sentence tokenizer (Kiss & Strunk 2006,
   ``nltk.tokenize.punkt``; NLTK is installed with ``rouge-score``) with no trained data — nothing is downloaded —
   and a fixed list of English abbreviations (:data:`ABBREVIATIONS`, e.g. ``Mr.``, ``U.S.``); a line break also ends
   a sentence (XSum articles hold one paragraph per line); a "sentence" that starts with a lower-case letter is
   joined to the one before (Punkt without data splits after ``D.C.`` in ``D.C. on Monday``).
2. **Token spans**: the document is tokenized with the tokenizer's character offsets (a fast tokenizer; the ids are
   checked equal to the prompt's document ids). A cut between two tokens is *allowed* only where the character
   before or after it is whitespace, so no cut ever falls inside a word. A sentence starts at the first allowed cut
   whose token's first non-space character lies at or after the sentence's first character.
3. **Long sentences**: a sentence longer than twice the equal share ``n / K`` tokens (``n`` document tokens) is cut
   at allowed cuts into ``ceil(length / (n / K))`` near-equal pieces (cuts nearest to the equal positions).
4. **Fewer pieces than K** (short documents, no punctuation): the longest piece with an allowed cut inside is cut at
   the allowed cut nearest its middle, until there are ``K`` pieces or no piece can be cut (a document of fewer than
   ``K`` words then has trailing empty units, as token segments are empty when ``n < K``). A document with no
   punctuation at all is one sentence, so its units are near-equal word runs.
5. **K units**: the ``K - 1`` cuts are the piece boundaries nearest to ``k · n / K`` (``k = 1 … K-1``; ties to the
   earlier boundary), each after the previous one and leaving one boundary for every later cut, so every unit holds
   at least one piece.

A document truncated to the token budget keeps its lead: sentences past the budget are gone and the last one may
be cut by the budget (that cut is the budget's, not a unit boundary).
"""

from __future__ import annotations

import bisect
import math
import re
from functools import lru_cache
from typing import Sequence

__all__ = ["SEGMENT_BOUNDARIES", "ABBREVIATIONS", "check_segment_boundaries", "sentence_spans", "token_offsets",
           "allowed_cuts", "sentence_units", "with_sentence_units"]

#: the values of the ``segment_boundaries=`` env kwarg
SEGMENT_BOUNDARIES = ("tokens", "sentences")

#: abbreviations Punkt must not end a sentence after (lower case, without the final period); English news text
ABBREVIATIONS = frozenset({
    "mr", "mrs", "ms", "dr", "prof", "sr", "jr", "st", "rev", "gen", "col", "lt", "sgt", "capt", "cmdr", "gov",
    "sen", "rep", "pres", "insp", "supt", "det", "hon", "mt", "ft", "no", "nos", "vs", "etc", "inc", "ltd", "co",
    "corp", "plc", "bros", "dept", "univ", "assn", "est", "approx", "fig", "vol", "p", "pp", "al", "e.g", "i.e",
    "u.s", "u.k", "u.n", "e.u", "a.m", "p.m", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct",
    "nov", "dec",
})

_LINE_BREAK = re.compile(r"\n+")


def check_segment_boundaries(value) -> str:
    """``value`` if it is one of :data:`SEGMENT_BOUNDARIES`.

    Raises:
        ValueError: anything else (the message lists the choices).
    """
    if not isinstance(value, str) or value not in SEGMENT_BOUNDARIES:
        raise ValueError(f"segment_boundaries must be one of {SEGMENT_BOUNDARIES} ('tokens': K equal token runs, "
                         f"today's default; 'sentences': K runs of whole sentences), got {value!r}")
    return value


@lru_cache(maxsize=1)
def _punkt():
    from nltk.tokenize.punkt import PunktParameters, PunktSentenceTokenizer

    params = PunktParameters()
    params.abbrev_types = set(ABBREVIATIONS)
    return PunktSentenceTokenizer(params)


def sentence_spans(text: str) -> list[tuple[int, int]]:
    """Half-open character spans ``(start, end)`` of the sentences of ``text``, in order, without the whitespace
    between them (steps 1 of the module docstring: Punkt with :data:`ABBREVIATIONS`, line breaks, lower-case starts
    joined). ``[]`` for empty or whitespace-only text."""
    spans: list[tuple[int, int]] = []
    for a, b in _punkt().span_tokenize(text):
        pos = a
        for m in _LINE_BREAK.finditer(text, a, b):
            if text[pos:m.start()].strip():
                spans.append((pos, m.start()))
            pos = m.end()
        if text[pos:b].strip():
            spans.append((pos, b))
    out: list[tuple[int, int]] = []
    for a, b in spans:
        while a < b and text[a].isspace():
            a += 1
        if out and text[a].islower() and "\n" not in text[out[-1][1]:a]:
            out[-1] = (out[-1][0], b)  # Punkt split before a lower-case word (e.g. "D.C. on Monday")
        else:
            out.append((a, b))
    return out


def token_offsets(tokenizer, text: str, ids: Sequence[int]) -> list[tuple[int, int]]:
    """Character spans of the first ``len(ids)`` tokens of ``text`` (``ids`` = the prompt's document ids: the text's
    tokens as :func:`skipenv.tasks.tokens.encode_text` gives them, possibly truncated).

    Raises:
        ValueError: the tokenizer gives no character offsets (a slow / stand-in tokenizer), or its ids for
            ``text`` differ from ``ids`` (the document in the prompt is not ``text``).
    """
    try:
        enc = tokenizer(text, add_special_tokens=False, split_special_tokens=True, return_offsets_mapping=True)
        offsets = enc["offset_mapping"]
    except (TypeError, NotImplementedError, KeyError, ValueError):
        offsets = None
    if offsets is None:
        raise ValueError(f"segment_boundaries='sentences' needs a tokenizer that returns character offsets (a Hugging "
                         f"Face fast tokenizer); {type(tokenizer).__name__} does not: use "
                         f"segment_boundaries='tokens'")
    got = [int(i) for i in enc["input_ids"][: len(ids)]]
    if got != [int(i) for i in ids]:
        raise ValueError("segment_boundaries='sentences': the tokenizer's ids of the document text differ from the "
                         "document ids of the prompt, so sentence units cannot be mapped to prompt tokens")
    return [(int(a), int(b)) for a, b in offsets[: len(ids)]]


def allowed_cuts(text: str, offsets: Sequence[tuple[int, int]]) -> list[int]:
    """Token indices ``t`` in ``1 … len(offsets) - 1`` before which a cut falls between words: the character just
    before token ``t`` or its first character is whitespace (so a cut never separates two characters of a word)."""
    out = []
    for t in range(1, len(offsets)):
        c = offsets[t][0]
        if c >= len(text) or c == 0 or text[c].isspace() or text[c - 1].isspace():
            out.append(t)
    return out


def _nearest(cands: Sequence[int], target: float, lo: int, hi: int) -> int | None:
    """The element of sorted ``cands`` in ``[lo, hi]`` nearest to ``target`` (ties: the smaller); ``None`` if
    none."""
    i, j = bisect.bisect_left(cands, lo), bisect.bisect_right(cands, hi)
    if i >= j:
        return None
    k = bisect.bisect_left(cands, target, i, j)
    best = None
    for m in (k - 1, k):
        if i <= m < j and (best is None or abs(cands[m] - target) < abs(best - target)):
            best = cands[m]
    return best


def _split_equal(start: int, end: int, parts: int, cuts: Sequence[int]) -> list[int]:
    """Allowed cuts inside ``(start, end)`` nearest to ``parts`` equal positions (strictly increasing)."""
    out: list[int] = []
    for k in range(1, parts):
        lo = (out[-1] if out else start) + 1
        c = _nearest(cuts, start + k * (end - start) / parts, lo, end - 1)
        if c is not None:
            out.append(c)
    return out


def sentence_units(text: str, offsets: Sequence[tuple[int, int]], num_units: int) -> list[tuple[int, int]]:
    """The ``num_units`` sentence units of a document, as half-open token ranges relative to the document's first
    token (steps 2–5 of the module docstring).

    Args:
        text: the document text.
        offsets: character spans of its (kept) tokens, :func:`token_offsets`; ``n = len(offsets)`` tokens.
        num_units: ``K >= 0``.

    Returns:
        ``K`` contiguous ranges covering ``0 … n`` in order (trailing ones empty only when fewer than ``K``
        word-separated pieces exist).
    """
    n, k = len(offsets), int(num_units)
    if k <= 0:
        return []
    cuts = allowed_cuts(text, offsets)
    # step 2: a sentence starts at the first allowed cut whose token's first non-space character is in it
    anchors = []
    for a, b in offsets:
        while a < b - 1 and a < len(text) and text[a].isspace():
            a += 1
        anchors.append(a)
    bounds = {0, n}
    for s, _ in sentence_spans(text)[1:]:
        t0 = max(1, bisect.bisect_left(anchors, s))  # anchors never decrease
        i = bisect.bisect_left(cuts, t0)
        if i < len(cuts):
            bounds.add(cuts[i])
    pieces = sorted(bounds)
    share = n / k
    # step 3: very long sentences become near-equal word runs
    split: list[int] = [0]
    for a, b in zip(pieces, pieces[1:]):
        if b - a > 2 * share:
            split += _split_equal(a, b, math.ceil((b - a) / share), cuts)
        split.append(b)
    pieces = sorted(set(split))
    # step 4: fewer pieces than units -> cut the longest cuttable piece at its middle
    while len(pieces) - 1 < k:
        order = sorted(range(len(pieces) - 1), key=lambda i: (-(pieces[i + 1] - pieces[i]), i))
        for i in order:
            a, b = pieces[i], pieces[i + 1]
            c = _nearest(cuts, (a + b) / 2, a + 1, b - 1)
            if c is not None:
                pieces.insert(i + 1, c)
                break
        else:
            break
    # step 5: K - 1 cuts at the piece boundaries nearest to the equal positions
    inner = pieces[1:-1]
    chosen: list[int] = []
    room = min(k - 1, len(inner))
    for j in range(1, room + 1):
        lo_idx = 0 if not chosen else bisect.bisect_right(inner, chosen[-1])
        hi_idx = len(inner) - (room - j)  # leave a boundary for each later cut
        cands = inner[lo_idx:hi_idx]
        c = _nearest(cands, j * share, cands[0], cands[-1]) if cands else None
        if c is not None:
            chosen.append(c)
    edges = [0, *chosen, n]
    units = list(zip(edges, edges[1:]))
    units += [(n, n)] * (k - len(units))
    return units


def with_sentence_units(prompt, document: str, tokenizer, num_units: int):
    """``prompt`` (a :class:`~skipenv.inputs.PromptInput` whose document span holds the tokens of ``document``)
    with :attr:`~skipenv.inputs.PromptInput.unit_bounds` set to the ``num_units`` sentence units of
    :func:`sentence_units`, as absolute positions in ``prompt.input_ids``; ``extra["num_sentences"]`` holds the
    sentence count of the document text. The token ids are unchanged.

    Raises:
        ValueError: see :func:`token_offsets`.
    """
    import dataclasses

    start, end = prompt.document_span
    offsets = token_offsets(tokenizer, document, prompt.input_ids[start:end])
    units = tuple((start + a, start + b) for a, b in sentence_units(document, offsets, num_units))
    extra = {**prompt.extra, "num_sentences": len(sentence_spans(document))}
    return dataclasses.replace(prompt, unit_bounds=units or None, extra=extra)
