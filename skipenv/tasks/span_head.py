"""A span head on frozen hidden states: the extractive-QA answer as the passage span with the highest start + end
score (the BERT-SQuAD head of Devlin et al., 2019, section 4.2, on a frozen causal LM), numpy only.

The head reads the hidden states of the passage tokens of a prompt whose question comes *before* the passage (so a
causal LM's passage states are question-conditioned), at the hidden-state indices :attr:`SpanHead.layers`
(Hugging Face ``output_hidden_states`` numbering: 0 = embeddings, ``L`` = the final, normed layer), concatenated
into ``F`` features per token. Start and end scores are two linear maps of them (feature standardisation folded
in); the answer is the best span with ``end >= start``, at most :attr:`SpanHead.max_answer_tokens` tokens, starting
at a word start and ending at a word end. The forward pass that produces the states and the fitting live in
:mod:`skipenv.envs.span_head` (they need the generator); this module is what a task needs to name, load, hash and
check a head.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

__all__ = ["SpanHead", "SpanHeadError", "SPAN_HEAD_RULE", "SHIPPED_SPAN_HEADS", "span_head_path", "best_span",
           "word_starts", "lexical_features", "NUM_LEXICAL"]

#: version of the span-selection rule (word-start start, word-end end, length cap); part of the full-output cache key
SPAN_HEAD_RULE = "span-head:1"
#: shipped heads: name -> file in ``skipenv/tasks/data/`` (fitted by ``benchmarks/fit_span_head.py``)
SHIPPED_SPAN_HEADS = {"disflqa_smollm2": "disflqa_span_head_smollm2.npz"}


#: words that say nothing about where an answer is (function words and DisflQA's disfluency markers)
_STOP = frozenset({"the", "a", "an", "of", "in", "on", "to", "is", "was", "what", "which", "who", "when", "where",
                   "how", "did", "does", "do", "and", "or", "for", "by", "with", "as", "at", "that", "this", "are",
                   "were", "be", "uh", "um", "no", "sorry", "i", "mean", "rather"})
#: question words that ask for a number / date, or for a name
_ASKS_NUMBER = frozenset({"when", "year", "many", "much", "number", "percent", "date", "long", "old"})
_ASKS_NAME = frozenset({"who", "whom", "whose", "name", "called"})
#: features per token of :func:`lexical_features`
NUM_LEXICAL = 16


def word_starts(tokenizer, doc: list[int]) -> np.ndarray:
    """``[N]`` bool: whether each passage token starts a word (the first token, a token whose text begins with a
    space marker — byte-level BPE ``Ġ``, SentencePiece ``▁`` — or with a non-alphanumeric character)."""
    pieces = tokenizer.convert_ids_to_tokens(list(doc))
    return np.array([i == 0 or (p or "")[:1] in ("\u0120", "\u2581", " ", "\u010a") or not (p or "")[:1].isalnum()
                     for i, p in enumerate(pieces)], dtype=bool)


def lexical_features(tokenizer, doc: list[int], question: str) -> np.ndarray:
    """``[N, 16]`` float32 question-passage word features of each passage token (the features of the word it is
    part of), plan-independent: where the classic extractive-QA features say an answer is (overlap with the
    question, answer type), which a 135M model's states alone do not separate from 478 train rows (docs/tasks.md).

    Per word (SQuAD-normalised, :func:`skipenv.metrics.normalize_answer`; ``Q`` = the question's words without
    :data:`_STOP`): 0 in ``Q``; 1 ``|Q ∩ sentence| / |Q|`` of its sentence; 2 its sentence has the most overlap;
    3 ``1 / (1 + distance in words to the nearest Q word of the same sentence)`` (0 if none); 4 capitalised; 5 has a
    digit; 6 a stop word or empty; 7 punctuation; 8-10 features 0, 4, 7 of the previous word; 11-13 of the next word;
    14 has a digit and the question asks for a number / date; 15 capitalised and the question asks for a name.
    Sentences end at a word ``.``, ``?`` or ``!``. Cost: string work on the CPU, ``O(N^2)`` at most, no FLOPs.
    """
    from ..metrics import normalize_answer

    doc = list(doc)
    n = len(doc)
    if n == 0:
        return np.zeros((0, NUM_LEXICAL), np.float32)
    ws = word_starts(tokenizer, doc)
    starts = [i for i in range(n) if ws[i]] + [n]
    raw = [tokenizer.decode(doc[a:b]).strip() for a, b in zip(starts, starts[1:])]
    words = [normalize_answer(w) for w in raw]
    qwords = set(normalize_answer(question).split())
    q = qwords - _STOP
    sid, s = [], 0
    for w in raw:
        sid.append(s)
        s += w in (".", "?", "!")
    sid = np.array(sid)
    inq = np.array([bool(w) and w in q for w in words], float)
    sscore = np.bincount(sid, weights=inq, minlength=s + 1)
    near = np.zeros(len(words))
    hits = np.where(inq > 0)[0]
    for k in range(len(words)):
        same = [abs(k - m) for m in hits if sid[m] == sid[k]]
        near[k] = 1.0 / (1 + min(same)) if same else 0.0
    cap = np.array([w[:1].isupper() for w in raw], float)
    dig = np.array([any(c.isdigit() for c in w) for w in raw], float)
    stop = np.array([w in _STOP or not w for w in words], float)
    punct = np.array([not any(c.isalnum() for c in w) for w in raw], float)
    base = np.stack([inq, sscore[sid] / max(1, len(q)), (sscore[sid] == sscore.max()).astype(float), near, cap, dig,
                     stop, punct], 1)
    prev = np.vstack([np.zeros((1, 8)), base[:-1]])[:, [0, 4, 7]]
    nxt = np.vstack([base[1:], np.zeros((1, 8))])[:, [0, 4, 7]]
    typed = np.stack([dig * float(bool(qwords & _ASKS_NUMBER)), cap * float(bool(qwords & _ASKS_NAME))], 1)
    per_word = np.concatenate([base, prev, nxt, typed], 1).astype(np.float32)
    return per_word[np.cumsum(ws) - 1]


class SpanHeadError(ValueError):
    """A span head that cannot be used: missing / garbled file, or fitted for another model."""


def span_head_path(name_or_path: str) -> Path:
    """The file of a shipped head (a key of :data:`SHIPPED_SPAN_HEADS`) or of a ``.npz`` path.

    Raises:
        SpanHeadError: neither a shipped name nor an existing file.
    """
    if name_or_path in SHIPPED_SPAN_HEADS:
        return Path(__file__).parent / "data" / SHIPPED_SPAN_HEADS[name_or_path]
    path = Path(str(name_or_path)).expanduser()
    if not path.is_file():
        raise SpanHeadError(f"span head {name_or_path!r} is neither a shipped head {sorted(SHIPPED_SPAN_HEADS)} nor "
                            f"an existing .npz file; fit one with skipenv.envs.span_head.fit_span_head(...).save(path)")
    return path


def best_span(scores: np.ndarray, positions: np.ndarray, word_start: np.ndarray, max_tokens: int
              ) -> tuple[int, int]:
    """The passage span ``(i, j)`` (passage token indices, inclusive) maximising ``start[i] + end[j]``.

    Args:
        scores: ``[n, 2]`` start / end scores of the ``n`` passage tokens the plan kept.
        positions: ``[n]`` their passage token indices (increasing; a plan that drops segments leaves gaps).
        word_start: ``[N]`` bool over *all* passage tokens: whether the token starts a word. A span starts at a word
            start and ends before one (or at the passage end), so its text is whole passage words.
        max_tokens: spans cover at most this many passage tokens (``j - i < max_tokens``).

    Returns:
        ``(i, j)``; ties go to the earlier start, then the shorter span.

    Raises:
        ValueError: no kept passage token, or shapes that do not match.
    """
    scores, positions = np.asarray(scores, dtype=np.float64), np.asarray(positions, dtype=np.int64)
    word_start = np.asarray(word_start, dtype=bool)
    n = len(positions)
    if n == 0 or scores.shape != (n, 2):
        raise ValueError(f"best_span needs scores [n, 2] for n >= 1 kept passage tokens, got {scores.shape} for "
                         f"{n} positions")
    word_end = np.append(word_start[1:], True)
    total = scores[:, 0][:, None] + scores[:, 1][None, :]
    gap = positions[None, :] - positions[:, None]
    ok = (gap >= 0) & (gap < int(max_tokens)) & word_start[positions][:, None] & word_end[positions][None, :]
    if not ok.any():  # no whole-word span among the kept tokens: any single kept token
        ok = gap == 0
    total = np.where(ok, total, -np.inf)
    a, b = np.unravel_index(int(np.argmax(total)), total.shape)  # row-major: earliest start, then shortest
    return int(positions[a]), int(positions[b])


@dataclass(frozen=True)
class SpanHead:
    """Linear start / end scores over frozen hidden-state features of passage tokens.

    Attributes:
        layers: hidden-state indices read (``output_hidden_states`` numbering), concatenated in this order.
        weight: ``[F, 2]`` float32, ``F = len(layers) * d + num_lexical``; column 0 start, column 1 end
            (standardisation and any projection of the states folded in). Rows: the hidden states, then the
            :func:`lexical_features`.
        bias: ``[2]`` float32.
        max_answer_tokens: longest span in passage tokens.
        fingerprint: :func:`~skipenv.envs.cache.model_fingerprint` of the model it was fitted on; any other model is
            refused (:meth:`check_model`).
        meta: how it was fitted (rows, plans, L2 weight, template), for the record only.
        num_lexical: ``0`` or :data:`NUM_LEXICAL`: whether the :func:`lexical_features` follow the states.
    """

    layers: tuple[int, ...]
    weight: np.ndarray
    bias: np.ndarray
    max_answer_tokens: int
    fingerprint: str
    meta: dict = field(default_factory=dict, compare=False)
    num_lexical: int = 0

    def __post_init__(self) -> None:
        w, b = np.asarray(self.weight, dtype=np.float32), np.asarray(self.bias, dtype=np.float32)
        if w.ndim != 2 or w.shape[1] != 2 or b.shape != (2,) or not len(self.layers) \
                or self.num_lexical not in (0, NUM_LEXICAL) or w.shape[0] <= self.num_lexical \
                or (w.shape[0] - self.num_lexical) % len(self.layers) \
                or not np.isfinite(w).all() or not np.isfinite(b).all():
            raise SpanHeadError(f"span head: weight must be finite [len(layers) * d + num_lexical, 2] (layers "
                                f"{len(self.layers)}, num_lexical {self.num_lexical} in (0, {NUM_LEXICAL})) and bias "
                                f"[2], got {w.shape} and {b.shape}")
        if int(self.max_answer_tokens) < 1:
            raise SpanHeadError(f"span head: max_answer_tokens must be >= 1, got {self.max_answer_tokens}")
        object.__setattr__(self, "weight", w)
        object.__setattr__(self, "bias", b)
        object.__setattr__(self, "layers", tuple(int(x) for x in self.layers))

    @property
    def num_features(self) -> int:
        """``F``, features per token."""
        return int(self.weight.shape[0])

    def digest(self) -> str:
        """16 hex chars over every parameter (part of the full-output cache key: another head, another key)."""
        h = hashlib.blake2b(digest_size=8)
        h.update(json.dumps([self.layers, int(self.max_answer_tokens), self.fingerprint, self.num_lexical]).encode())
        h.update(self.weight.tobytes())
        h.update(self.bias.tobytes())
        return h.hexdigest()

    def scores(self, features: np.ndarray) -> np.ndarray:
        """``[n, 2]`` start / end scores of ``[n, F]`` features (``features @ weight + bias``)."""
        features = np.asarray(features, dtype=np.float32)
        if features.ndim != 2 or features.shape[1] != self.num_features:
            raise SpanHeadError(f"span head expects [n, {self.num_features}] features, got {features.shape}")
        return features @ self.weight + self.bias

    def flops(self, num_tokens: int) -> int:
        """Analytic FLOPs of scoring ``num_tokens`` kept passage tokens and choosing the span.

        ``2 * F * 2 * n`` for the matrix-vector products (a multiply-add = 2 FLOPs, the convention of
        ``torch.utils.flop_counter``), ``2 * n`` bias adds, and one add per candidate (start, end) pair within the
        length cap: ``sum_{k < min(cap, n)} (n - k)``. Comparisons are not counted (as elsewhere in skipenv).
        """
        n = int(num_tokens)
        if n < 0:
            raise ValueError(f"num_tokens must be >= 0, got {num_tokens}")
        cap = min(int(self.max_answer_tokens), n)
        pairs = cap * n - cap * (cap - 1) // 2
        return 4 * self.num_features * n + 2 * n + pairs

    def check_model(self, fingerprint: str) -> None:
        """Raise :class:`SpanHeadError` unless the head was fitted on the model of ``fingerprint``."""
        if fingerprint != self.fingerprint:
            raise SpanHeadError(
                f"this span head was fitted on the model with fingerprint {self.fingerprint}, not on this one "
                f"({fingerprint}); its scores would be meaningless here. Fit a head for this model with "
                f"skipenv.envs.span_head.fit_span_head(generator, task, train_examples).save(path) and pass "
                f"span_head=path to the task")

    def save(self, path) -> None:
        """Write the head to a ``.npz`` file (float32 arrays + JSON metadata)."""
        info = dict(layers=list(self.layers), max_answer_tokens=int(self.max_answer_tokens),
                    fingerprint=self.fingerprint, meta=self.meta, num_lexical=int(self.num_lexical))
        with open(path, "wb") as fh:
            np.savez(fh, weight=self.weight, bias=self.bias, info=np.array(json.dumps(info, sort_keys=True)))

    @classmethod
    def load(cls, path) -> "SpanHead":
        """Read a head written by :meth:`save`.

        Raises:
            SpanHeadError: a file that is not such a head.
        """
        try:
            with np.load(path, allow_pickle=False) as z:
                info = json.loads(str(z["info"]))
                return cls(tuple(info["layers"]), z["weight"], z["bias"], int(info["max_answer_tokens"]),
                           str(info["fingerprint"]), dict(info.get("meta", {})), int(info.get("num_lexical", 0)))
        except SpanHeadError:
            raise
        except Exception as err:  # garbled zip, missing keys, bad JSON
            raise SpanHeadError(f"{path}: not a span head file written by SpanHead.save ({err})") from err
