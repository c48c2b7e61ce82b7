"""Quality metrics: ROUGE, SQuAD exact match / F1, accuracy, and the full-model-relative signals.

- :func:`rouge` wraps Google's ``rouge-score`` package (the implementation behind the published XSum / CNN-DM
  numbers) with a Unicode-aware tokenizer (:class:`UnicodeRougeTokenizer`): on ASCII text it gives exactly
  ``rouge-score``'s default tokens (Porter stemming), and text in any script is kept instead of dropped.
- :func:`exact_match` / :func:`f1` follow the official SQuAD v1.1 evaluation script (``evaluate-v1.1.py``):
  lowercase, drop punctuation, drop the articles *a / an / the*, collapse whitespace; F1 over bags of tokens;
  the maximum over the gold answers when several are given. Empty answers follow the SQuAD v2 script
  (both empty → 1, one empty → 0).
- :func:`agreement` and :func:`likelihood_ratio` compare a skip plan with the full model.
"""

from __future__ import annotations

import math
import re
import string
import unicodedata
from collections import Counter
from functools import lru_cache
from typing import Sequence

import numpy as np

__all__ = ["rouge", "UnicodeRougeTokenizer", "normalize_answer", "exact_match", "f1", "accuracy", "agreement",
           "likelihood_ratio"]


_ASCII_TOKEN = re.compile(r"^[a-z0-9]+$")


def _is_cjk(ch: str) -> bool:
    """Han ideographs, Hiragana and Katakana: scripts written without spaces, scored one character a token."""
    o = ord(ch)
    return (0x4E00 <= o <= 0x9FFF or 0x3400 <= o <= 0x4DBF or 0x20000 <= o <= 0x2FA1F or 0xF900 <= o <= 0xFAFF
            or 0x3040 <= o <= 0x30FF or 0x31F0 <= o <= 0x31FF)


class UnicodeRougeTokenizer:
    """ROUGE tokenizer for any script, equal to ``rouge-score``'s default tokenizer on ASCII text.

    Steps: Unicode NFKC normalisation; lowercase; every character that is not a letter, a combining mark or a
    digit (Unicode categories ``L*``, ``M*``, ``N*``) becomes a space; each Han / Hiragana / Katakana character
    becomes its own token (these scripts do not separate words by spaces; character tokens are the usual choice
    for Chinese ROUGE); tokens of ASCII letters and digits longer than 3 characters are Porter-stemmed, as
    ``rouge_score.tokenize.tokenize`` does. The default tokenizer instead turns every non-``[a-z0-9]`` character
    into a space, so Cyrillic, Devanagari, Greek or Chinese text has no tokens and scores 0 even against itself.

    Scripts other than Han / kana that are written without spaces (Thai, Lao, Khmer, ...) are tokenised at
    spaces and punctuation only.
    """

    def __init__(self, use_stemmer: bool = True):
        from nltk.stem import porter

        self._stemmer = porter.PorterStemmer() if use_stemmer else None

    def tokenize(self, text: str) -> list[str]:
        """Tokens of ``text`` (see the class docstring)."""
        chars = []
        for ch in unicodedata.normalize("NFKC", text).lower():
            if _is_cjk(ch):
                chars.append(f" {ch} ")
            elif unicodedata.category(ch)[0] in "LMN":
                chars.append(ch)
            else:
                chars.append(" ")
        tokens = "".join(chars).split()
        if self._stemmer is not None:
            tokens = [self._stemmer.stem(t) if len(t) > 3 and _ASCII_TOKEN.match(t) else t for t in tokens]
        return tokens


@lru_cache(maxsize=1)
def _scorer():
    from rouge_score import rouge_scorer

    return rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=UnicodeRougeTokenizer(True))


def rouge(prediction: str, reference: str) -> dict[str, float]:
    """ROUGE-1 / ROUGE-2 / ROUGE-L F-measures of ``prediction`` against ``reference``.

    Tokenisation: :class:`UnicodeRougeTokenizer` (on ASCII text identical to ``rouge-score``'s default: lowercase,
    non-alphanumeric characters become spaces, Porter stemming; other scripts are kept, Chinese / Japanese
    character by character). Identical non-empty texts score 1.0 in any script. ROUGE-L is the sentence-level
    LCS variant (not ``rougeLsum``).

    Returns:
        ``{"rouge1": f, "rouge2": f, "rougeL": f}``, each in ``[0, 1]``; all ``1.0`` for identical non-blank texts
        (also those without word tokens, e.g. only emoji or punctuation); otherwise all ``0.0`` when either side
        has no tokens.
    """
    if prediction == reference and prediction.strip():
        return {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    scores = _scorer().score(reference, prediction)  # rouge-score's order is (target, prediction)
    return {k: float(v.fmeasure) for k, v in scores.items()}


_PUNCT = set(string.punctuation)
_ARTICLES = re.compile(r"\b(a|an|the)\b")


def normalize_answer(text: str) -> str:
    """SQuAD answer normalisation: lowercase, remove punctuation, remove articles, collapse whitespace."""
    text = text.lower()
    text = "".join(ch for ch in text if ch not in _PUNCT)
    text = _ARTICLES.sub(" ", text)
    return " ".join(text.split())


def _golds(gold: str | Sequence[str]) -> list[str]:
    golds = [gold] if isinstance(gold, str) else list(gold)
    if not golds:
        raise ValueError("at least one gold answer is needed")
    return golds


def exact_match(prediction: str, gold: str | Sequence[str]) -> float:
    """1.0 if the normalised prediction equals a normalised gold answer, else 0.0 (max over golds).

    Raises:
        ValueError: ``gold`` is an empty sequence.
    """
    p = normalize_answer(prediction)
    return float(max(p == normalize_answer(g) for g in _golds(gold)))


def _f1_single(prediction: str, gold: str) -> float:
    p, g = normalize_answer(prediction).split(), normalize_answer(gold).split()
    if not p or not g:  # the official script scores this case 0 unless both are empty (SQuAD v2 convention)
        return float(p == g)
    common = Counter(p) & Counter(g)
    same = sum(common.values())
    if same == 0:
        return 0.0
    precision, recall = same / len(p), same / len(g)
    return 2 * precision * recall / (precision + recall)


def f1(prediction: str, gold: str | Sequence[str]) -> float:
    """SQuAD token-level F1 of the normalised prediction, maximum over the gold answers.

    Both sides empty after normalisation → 1.0; one side empty → 0.0.

    Raises:
        ValueError: ``gold`` is an empty sequence.
    """
    return max(_f1_single(prediction, g) for g in _golds(gold))


def accuracy(predictions: Sequence, references: Sequence) -> float:
    """Fraction of positions where ``predictions[i] == references[i]``.

    Raises:
        ValueError: different lengths, or no items.
    """
    if len(predictions) != len(references):
        raise ValueError(f"accuracy: {len(predictions)} predictions but {len(references)} references")
    if len(predictions) == 0:
        raise ValueError("accuracy of zero items is undefined")
    return sum(p == r for p, r in zip(predictions, references)) / len(predictions)


def _as_1d(x, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # torch tensor
        x = x.detach().cpu().numpy()
    arr = np.asarray(x)
    if arr.ndim != 1:
        raise ValueError(f"{name} must be 1-D (one sequence), got shape {arr.shape}")
    return arr


def agreement(plan_argmax: Sequence[int], full_tokens: Sequence[int]) -> float:
    """Fraction of positions where the plan's teacher-forced argmax token equals the full model's greedy token.

    Args:
        plan_argmax: shape ``[L]``, argmax of the plan's logits when the full model's greedy output is fed back
            (teacher forcing), position ``i`` predicting token ``i`` of the output.
        full_tokens: shape ``[L]``, the full model's greedy output tokens.

    Returns:
        A value in ``[0, 1]``; ``1.0`` for empty sequences (nothing to disagree on, so the plan is as good as the
        full model).

    Raises:
        ValueError: lengths differ, or inputs are not 1-D.
    """
    a, b = _as_1d(plan_argmax, "plan_argmax"), _as_1d(full_tokens, "full_tokens")
    if a.shape != b.shape:
        raise ValueError(f"agreement: plan_argmax has {a.size} positions, full_tokens {b.size}; they must match")
    if a.size == 0:
        return 1.0
    return float(np.mean(a == b))


def likelihood_ratio(plan_logprobs: Sequence[float], full_logprobs: Sequence[float]) -> float:
    """Per-token geometric-mean likelihood of a target under the plan relative to the full model.

    ``exp(mean(plan_logprobs) - mean(full_logprobs))`` clipped to ``[0, 1]``: the teacher-forced log-probabilities
    (natural log) of the same target tokens (e.g. the reference summary) under the plan and under the full model.
    1.0 means the plan is at least as likely to produce the target as the full model.

    Args:
        plan_logprobs, full_logprobs: shape ``[L]`` each, log-probabilities (``<= 0``) of the target tokens.

    Returns:
        A value in ``[0, 1]``; ``1.0`` for empty targets.

    Raises:
        ValueError: lengths differ, not 1-D, or non-finite values (``-inf`` in ``plan_logprobs`` gives 0.0).
    """
    p = _as_1d(plan_logprobs, "plan_logprobs").astype(np.float64)
    q = _as_1d(full_logprobs, "full_logprobs").astype(np.float64)
    if p.shape != q.shape:
        raise ValueError(f"likelihood_ratio: {p.size} plan log-probs but {q.size} full-model log-probs")
    if p.size == 0:
        return 1.0
    if np.isnan(p).any() or np.isnan(q).any() or not np.isfinite(q).all() or np.isposinf(p).any():
        raise ValueError("likelihood_ratio: log-probabilities must be finite (plan may contain -inf)")
    diff = float(p.mean() - q.mean())
    if diff >= 0:
        return 1.0
    return float(math.exp(diff))
