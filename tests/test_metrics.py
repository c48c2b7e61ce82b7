"""skipenv.metrics on hand-worked cases (the arithmetic is in the comments)."""

from __future__ import annotations

import math

import pytest
import torch

from hypothesis import given, settings
from hypothesis import strategies as st

from skipenv.metrics import (
    UnicodeRougeTokenizer,
    accuracy,
    agreement,
    exact_match,
    f1,
    likelihood_ratio,
    normalize_answer,
    rouge,
)


def _close(got: dict, want: dict) -> None:
    for k, v in want.items():
        assert got[k] == pytest.approx(v, abs=1e-9), k


def test_rouge_one_word_substituted():
    # pred: the cat sat on the mat   ref: the cat is on the mat   (6 tokens each; no stem changes)
    # R1: overlap the x2, cat, on, mat = 5      -> P = R = 5/6 -> F = 5/6
    # R2: pred {the-cat, cat-sat, sat-on, on-the, the-mat}, ref {the-cat, cat-is, is-on, on-the, the-mat}
    #     overlap the-cat, on-the, the-mat = 3  -> F = 3/5
    # RL: LCS "the cat on the mat" = 5          -> F = 5/6
    _close(rouge("the cat sat on the mat", "the cat is on the mat"), {"rouge1": 5 / 6, "rouge2": 3 / 5, "rougeL": 5 / 6})


def test_rouge_stemming():
    # Porter stems: runners -> runner, running -> run, quickly -> quickli; runs -> run
    # pred [runner, run, quickli]  ref [the, runner, run]
    # R1: overlap runner, run = 2 -> P = R = 2/3      R2: overlap runner-run = 1 of 2 each -> 1/2
    # RL: LCS runner run = 2 -> 2/3
    _close(rouge("runners running quickly", "the runner runs"), {"rouge1": 2 / 3, "rouge2": 1 / 2, "rougeL": 2 / 3})


def test_rouge_different_lengths():
    # pred [police, arrest, a, man] (4)   ref [a, man, was, arrest, by, police, yesterdai] (7)
    # R1: overlap 4 -> P = 1, R = 4/7 -> F = 2 * (4/7) / (11/7) = 8/11
    # R2: pred {police-arrest, arrest-a, a-man}, ref has a-man -> P = 1/3, R = 1/6 -> F = (2/18) / (1/2) = 2/9
    # RL: LCS "a man" = 2 -> P = 1/2, R = 2/7 -> F = (2/7) / (11/14) = 4/11
    _close(rouge("Police arrested a man.", "A man was arrested by police yesterday."),
           {"rouge1": 8 / 11, "rouge2": 2 / 9, "rougeL": 4 / 11})


def test_rouge_word_order():
    # same bag of words reversed: R1 = 1, no shared bigram, LCS = 1 of 4 -> F = 1/4
    _close(rouge("alpha beta gamma delta", "delta gamma beta alpha"), {"rouge1": 1.0, "rouge2": 0.0, "rougeL": 0.25})


def test_rouge_case_punctuation_and_empty():
    _close(rouge("Hello, World!", "hello world"), {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    _close(rouge("", "hello world"), {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0})


@pytest.mark.parametrize("text", [
    "Премьер-министр ушёл в отставку.",           # Russian (Cyrillic)
    "प्रधानमंत्री ने इस्तीफा दे दिया।",              # Hindi (Devanagari, with combining vowel signs)
    "总理辞职了。",                                  # Chinese
    "Ο πρωθυπουργός παραιτήθηκε.",                 # Greek
    "رئيس الوزراء استقال.",                          # Arabic
])
def test_rouge_identical_text_scores_one_in_any_script(text):
    # rouge-score's default tokenizer keeps only [a-z0-9]: these texts had no tokens and scored 0.0 against
    # themselves, i.e. "as good as the full model" for every skip plan
    _close(rouge(text, text), {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0})
    assert rouge(text, "completely different words")["rouge1"] == 0.0


def test_rouge_cyrillic_partial_overlap():
    # pred [премьер, министр, ушёл, в, отставку] (5)   ref [министр, ушёл] (2)   (no stemming outside ASCII)
    # R1: overlap 2 -> P = 2/5, R = 1 -> F = 2 * (2/5) / (7/5) = 4/7
    # R2: pred 4 bigrams, ref 1 (министр-ушёл), overlap 1 -> P = 1/4, R = 1 -> F = (1/2) / (5/4) = 2/5
    # RL: LCS "министр ушёл" = 2 -> 4/7
    _close(rouge("Премьер-министр ушёл в отставку.", "Министр ушёл."),
           {"rouge1": 4 / 7, "rouge2": 2 / 5, "rougeL": 4 / 7})


def test_rouge_chinese_one_character_per_token():
    # pred [总, 理, 辞, 职, 了] (5)   ref [总, 理, 没, 有, 辞, 职] (6)
    # R1: overlap 总 理 辞 职 = 4 -> P = 4/5, R = 4/6 -> F = 2 * (8/15) / (22/15) = 8/11
    # R2: pred {总理, 理辞, 辞职, 职了}, ref {总理, 理没, 没有, 有辞, 辞职}: overlap 2 -> P = 1/2, R = 2/5 -> F = 4/9
    # RL: LCS 总理辞职 = 4 -> 8/11
    _close(rouge("总理辞职了", "总理没有辞职"), {"rouge1": 8 / 11, "rouge2": 4 / 9, "rougeL": 8 / 11})
    assert UnicodeRougeTokenizer().tokenize("BBC报道: 总理") == ["bbc", "报", "道", "总", "理"]


@settings(max_examples=300, deadline=None)
@given(st.text(alphabet=st.characters(min_codepoint=32, max_codepoint=126), max_size=80))
def test_unicode_tokenizer_equals_rouge_score_default_on_ascii(text):
    # the English scores stay what rouge-score's own tokenizer gives (the published XSum / CNN-DM setting)
    from nltk.stem import porter
    from rouge_score import tokenize

    assert UnicodeRougeTokenizer().tokenize(text) == tokenize.tokenize(text, porter.PorterStemmer())


def test_squad_normalisation():
    assert normalize_answer("The  Eiffel Tower!") == "eiffel tower"
    assert normalize_answer("an apple, a pear and THE plum.") == "apple pear and plum"
    assert normalize_answer("U.S.") == "us"
    assert normalize_answer("theory") == "theory"  # articles only as whole words


def test_exact_match():
    assert exact_match("the Eiffel tower.", "Eiffel Tower") == 1.0
    assert exact_match("U.S.", "US") == 1.0
    assert exact_match("Eiffel", "Eiffel Tower") == 0.0
    assert exact_match("Broncos", ["Denver Broncos", "Broncos"]) == 1.0
    with pytest.raises(ValueError):
        exact_match("x", [])


def test_f1():
    # [in, 1820, about] vs [about, 1820]: common 2 -> P = 2/3, R = 1 -> F = 0.8
    assert f1("in 1820 about", "about 1820") == pytest.approx(0.8)
    # "a commune" -> [commune] vs [commune, of, poland]: P = 1, R = 1/3 -> F = 0.5
    assert f1("a commune", "commune of Poland") == pytest.approx(0.5)
    # repeated tokens count once per gold occurrence: [cat, cat] vs [cat] -> P = 1/2, R = 1 -> F = 2/3
    assert f1("the the cat cat", "cat") == pytest.approx(2 / 3)
    assert f1("Denver Broncos", ["Broncos", "Denver Broncos"]) == 1.0  # max over golds
    assert f1("", "x") == 0.0
    assert f1("The", "a") == 1.0  # both empty after normalisation (SQuAD v2 convention)
    assert f1("completely wrong", "right") == 0.0


def test_accuracy():
    assert accuracy(["positive", "negative", "positive"], ["positive", "positive", "positive"]) == pytest.approx(2 / 3)
    with pytest.raises(ValueError, match="2 predictions but 1"):
        accuracy(["a", "b"], ["a"])
    with pytest.raises(ValueError):
        accuracy([], [])


def test_agreement():
    assert agreement([1, 2, 3, 4], [1, 2, 0, 4]) == 0.75
    assert agreement(torch.tensor([5, 6]), torch.tensor([5, 6])) == 1.0
    assert agreement([], []) == 1.0  # documented: nothing to disagree on
    with pytest.raises(ValueError, match="must match"):
        agreement([1, 2], [1])
    with pytest.raises(ValueError, match="1-D"):
        agreement([[1, 2]], [[1, 2]])


def test_likelihood_ratio():
    # mean plan -1.0, mean full -0.5 -> exp(-0.5)
    assert likelihood_ratio([-1.0, -1.0], [-0.5, -0.5]) == pytest.approx(math.exp(-0.5))
    # different per-token values: means -2 and -1 -> exp(-1)
    assert likelihood_ratio([-3.0, -1.0], [-1.5, -0.5]) == pytest.approx(math.exp(-1.0))
    assert likelihood_ratio([-0.1], [-0.5]) == 1.0  # better than the full model: clipped to 1
    assert likelihood_ratio([], []) == 1.0
    assert likelihood_ratio([-math.inf, -1.0], [-1.0, -1.0]) == 0.0
    with pytest.raises(ValueError):
        likelihood_ratio([-1.0], [-1.0, -2.0])
    with pytest.raises(ValueError):
        likelihood_ratio([math.nan], [-1.0])


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("text", ["😀😀", "...", "!!! ???", "👍"])
def test_rouge_of_identical_texts_without_word_tokens_is_one(text):
    """The docstring promised 1.0 for identical non-empty texts in any script; emoji / punctuation-only texts
    scored 0.0 (no tokens). Different token-less texts still score 0."""
    from skipenv import metrics

    assert metrics.rouge(text, text) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0}
    assert metrics.rouge(text, "😢")["rougeL"] == 0.0
    assert metrics.rouge("   ", "   ")["rougeL"] == 0.0
