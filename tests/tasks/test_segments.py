"""Token units that follow the text (``segment_boundaries="sentences"``, issue 22 item 3): exact span mapping on
hand-written texts, word boundaries never cut, the env's kept tokens and outcome against the plain HF model, edge
cases, cache / record / table identity, the ``"units"`` observation kind, bad input."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch

from skipenv.plan import SkipPlan
from skipenv.tasks.units import (allowed_cuts, check_segment_boundaries, sentence_spans, sentence_units,
                                 token_offsets, with_sentence_units)

pytestmark = pytest.mark.usefixtures("one_thread")


@pytest.fixture(scope="module")
def word_tokenizer():
    """A fast word-level tokenizer (words and punctuation marks are separate tokens), built in memory: its token
    spans can be computed by hand."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    words = ("Mr . Smith came home He slept well The end One two three four five six seven eight nine ten End "
             "alpha beta gamma delta").split()
    vocab = {"[UNK]": 0, **{w: i + 1 for i, w in enumerate(dict.fromkeys(words))}}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="[UNK]"))
    tok.pre_tokenizer = pre_tokenizers.Whitespace()
    return PreTrainedTokenizerFast(tokenizer_object=tok, unk_token="[UNK]")


def _units(tokenizer, text, k):
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return sentence_units(text, token_offsets(tokenizer, text, ids), k), len(ids)


# ------------------------------------------------------------------------------------------ hand-computed spans
def test_sentences_map_to_exact_token_spans(word_tokenizer):
    # tokens: Mr . Smith came home . | He slept well . | The end   (12 tokens; "Mr." does not end a sentence)
    text = "Mr. Smith came home. He slept well.\nThe end"
    assert [text[a:b] for a, b in sentence_spans(text)] == ["Mr. Smith came home.", "He slept well.", "The end"]
    assert _units(word_tokenizer, text, 3) == ([(0, 6), (6, 10), (10, 12)], 12)


def test_fewer_sentences_than_units_split_the_longest_at_a_word(word_tokenizer):
    text = "Mr. Smith came home. He slept well.\nThe end"
    # 3 sentences (6, 4, 2 tokens) for K = 4: share 3, none longer than 6; the longest piece [0,6) is cut at the
    # allowed cut nearest its middle (token 3 "came"); the cut before "." (token 5) is never allowed
    assert _units(word_tokenizer, text, 4) == ([(0, 3), (3, 6), (6, 10), (10, 12)], 12)
    # K = 5: share 2.4, so [0,6) (6 > 2 * 2.4 tokens) is a long sentence: ceil(6 / 2.4) = 3 pieces, cut at the
    # allowed cuts nearest 2 and 4 (tokens 2 "Smith" and 4 "home"): 5 pieces, one per unit
    assert _units(word_tokenizer, text, 5) == ([(0, 2), (2, 4), (4, 6), (6, 10), (10, 12)], 12)


def test_a_very_long_sentence_is_cut_into_word_runs(word_tokenizer):
    # 13 tokens, K = 4: share 3.25; the first sentence (11 tokens > 2 * 3.25) is cut at the allowed cuts nearest
    # 11/4 * (1, 2, 3) = 2.75, 5.5, 8.25 -> 3, 5 (tie: the earlier), 8; then the K - 1 cuts nearest 3.25, 6.5,
    # 9.75 among [3, 5, 8, 11] -> 3, 5 (tie), 11
    text = "One two three four five six seven eight nine ten. End."
    assert _units(word_tokenizer, text, 4) == ([(0, 3), (3, 5), (5, 11), (11, 13)], 13)


def test_no_punctuation_and_fewer_words_than_units(word_tokenizer):
    assert sentence_spans("alpha beta gamma delta") == [(0, 22)]
    assert _units(word_tokenizer, "alpha beta gamma delta", 2) == ([(0, 2), (2, 4)], 4)
    # two words, three units: the last unit is empty (as token segments are when n < K)
    assert _units(word_tokenizer, "alpha beta", 3) == ([(0, 1), (1, 2), (2, 2)], 2)
    assert sentence_spans("   ") == [] and sentence_units("", [], 4) == [(0, 0)] * 4


def test_truncated_document_keeps_its_lead(word_tokenizer):
    text = "Mr. Smith came home. He slept well.\nThe end"
    ids = word_tokenizer(text, add_special_tokens=False)["input_ids"][:8]  # the budget cut "well . The end"
    assert sentence_units(text, token_offsets(word_tokenizer, text, ids), 2) == [(0, 6), (6, 8)]


def test_offsets_must_match_the_prompt(word_tokenizer):
    with pytest.raises(ValueError, match="differ from the document ids"):
        token_offsets(word_tokenizer, "alpha beta", [1, 2, 3])
    from skipenv.testing import ToyTokenizer

    with pytest.raises(ValueError, match="character offsets"):
        token_offsets(ToyTokenizer(), "alpha beta", [1, 2])


# ------------------------------------------------------------------------------------------ real documents
@pytest.mark.parametrize("task_name", ["xsum", "disflqa", "rotten_tomatoes"])
def test_units_never_cut_a_word_on_every_task(smollm2_tokenizer, task_name):
    from skipenv.tasks import make_task

    task = make_task(task_name, max_input_tokens=200)
    k = 8
    for ex in task.examples("train")[:12]:
        p = with_sentence_units(task.format(ex, smollm2_tokenizer, encoder_decoder=False), ex.document,
                                smollm2_tokenizer, k)
        s, e = p.document_span
        units = p.segment_bounds(k)
        assert units[0][0] == s and units[-1][1] == e
        assert all(a[1] == b[0] for a, b in zip(units, units[1:]))  # contiguous, in order
        assert p.input_ids == task.format(ex, smollm2_tokenizer, encoder_decoder=False).input_ids  # same ids
        offsets = token_offsets(smollm2_tokenizer, ex.document, p.input_ids[s:e])
        text = ex.document
        for a, _ in units[1:]:
            if a == e:
                continue
            c = offsets[a - s][0]  # character where the unit starts: never between two non-space characters
            assert text[c].isspace() or text[c - 1].isspace(), (ex.id, text[max(0, c - 10):c + 10])
        # a unit boundary that is a sentence start is exactly one (the first token of a sentence)
        starts = {a for a, _ in sentence_spans(text)}
        anchors = [next((i for i in range(x, y) if not text[i].isspace()), x) for x, y in offsets]
        n_sentences = len([a for a in starts if a < offsets[-1][1]])
        if n_sentences >= k:  # enough sentences: most cuts are sentence starts
            assert sum(anchors[a - s] in starts for a, _ in units[1:]) >= (k - 1) // 2


# ------------------------------------------------------------------------------------------ the env
@pytest.fixture(scope="module")
def sentence_env(smollm2_tokenizer):
    from skipenv.envs import SwitchDecEnv
    from skipenv.testing import tiny_generator

    g = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)
    make = lambda sb, **kw: SwitchDecEnv("xsum", generator=g, split="train", num_examples=3, max_new_tokens=5,  # noqa
                                         max_input_tokens=160, disk_cache=False, quality="probability",
                                         segment_boundaries=sb, **kw)
    return make


def test_env_runs_the_kept_tokens_of_sentence_units(sentence_env):
    env = sentence_env("sentences")
    env.reset(options={"index": 0})
    ex = env.example
    prompt = env.prompt()
    assert prompt.unit_bounds is not None and prompt.unit_bounds != tuple(prompt.__class__(
        prompt.input_ids, prompt.document_span).segment_bounds(8))
    plan = SkipPlan.from_skips(env.plan_spec, tokens=[1, 6])
    # independent recomputation: the prompt with units 1 and 6 removed, as text: the document without them
    (a1, b1), (a6, b6) = prompt.unit_bounds[1], prompt.unit_bounds[6]
    kept = list(prompt.input_ids[:a1]) + list(prompt.input_ids[b1:a6]) + list(prompt.input_ids[b6:])
    assert prompt.apply_token_skips(plan.tokens) == kept
    tok = env.generator.tokenizer
    doc = tok.decode(list(prompt.input_ids[slice(*prompt.document_span)]))
    removed = tok.decode(list(prompt.input_ids[a1:b1])), tok.decode(list(prompt.input_ids[a6:b6]))
    assert doc.replace(removed[0], "", 1).replace(removed[1], "", 1) == \
        tok.decode(kept[prompt.document_span[0]: len(kept) - (len(prompt) - prompt.document_span[1])])
    # the outcome's quality equals the plain HF model's mean probability of the full output on the kept ids
    info = env.step(env.plan_to_action(plan))[4]
    full = env.full_output(ex).tokens
    model = env.generator.model
    with torch.no_grad():
        ids = torch.tensor([kept + list(full[:-1])])
        logp = torch.log_softmax(model(input_ids=ids).logits[0].double(), -1)
    n = len(kept)
    p = np.mean([math.exp(float(logp[n - 1 + t, full[t]])) for t in range(len(full))])
    assert info["quality"] == pytest.approx(p, abs=1e-5)
    # FLOPs: the analytic count of the kept length (fewer tokens than the full input)
    assert info["cost"] < 1.0


def test_prefix_reuse_and_batching_give_the_same_outcomes(sentence_env):
    from skipenv.envs.evaluator import Evaluator

    env = sentence_env("sentences")
    plans = [SkipPlan.from_skips(env.plan_spec, tokens=t) for t in ([7], [2, 3], [0])]
    exs = env.examples[:2]
    fresh = Evaluator(env.generator, env.task, quality="probability", max_new_tokens=5, disk_cache=False,
                      reuse=False, segment_boundaries="sentences")
    batched = env.evaluator.outcomes_together([e for e in exs for _ in plans], plans * len(exs))
    one = [fresh.outcome(e, p) for e in exs for p in plans]
    for a, b in zip(batched, one):
        assert a.quality == pytest.approx(b.quality, abs=1e-5) and a.cost == b.cost


def test_outcomes_of_token_segments_are_never_served_for_sentence_units(sentence_env):
    tok_env, sen_env = sentence_env("tokens"), sentence_env("sentences")
    plan = SkipPlan.from_skips(tok_env.plan_spec, tokens=[1])
    ex = tok_env.examples[0]
    a, b = tok_env.outcome(plan, ex), sen_env.outcome(plan, ex)
    assert a.cost != b.cost  # other tokens removed
    assert tok_env.evaluator._outcome_key(ex.id, plan) != sen_env.evaluator._outcome_key(ex.id, plan)
    # a shared evaluator cannot be reused under the other unit kind
    from skipenv.envs import SwitchDecEnv

    with pytest.raises(ValueError, match="segment_boundaries='sentences' differs from the evaluator's 'tokens'"):
        SwitchDecEnv("xsum", evaluator=tok_env.evaluator, segment_boundaries="sentences")
    assert SwitchDecEnv("xsum", evaluator=sen_env.evaluator).segment_boundaries == "sentences"


def test_records_carry_the_unit_kind(sentence_env):
    from skipenv.envs.records import EpisodeRecord, _settings_differ

    env = sentence_env("sentences")
    env.reset(options={"index": 0})
    info = env.step(env.plan_to_action(SkipPlan.from_skips(env.plan_spec, tokens=[2])))[4]
    rec = EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={})
    assert rec.env_kwargs["segment_boundaries"] == "sentences"
    notes = _settings_differ(rec, sentence_env("tokens"))
    assert any("segment_boundaries differs: recorded 'sentences', replay 'tokens'" in n for n in notes)
    assert not any("segment_boundaries" in n for n in _settings_differ(rec, env))


def test_table_configuration_identity():
    from skipenv.tables.build import table_config
    from skipenv.tables.store import TableError

    tokens, sentences = table_config(), table_config(segment_boundaries="sentences")
    assert "segment_boundaries" not in tokens  # earlier token builds keep their key
    assert sentences["segment_boundaries"] == "sentences" and tokens != sentences
    with pytest.raises(TableError, match="segment_boundaries must be one of"):
        table_config(segment_boundaries="words")


def test_shipped_table_is_token_segments_and_refuses_sentences():
    from skipenv.tables.envs import _XSUM_V1_EXPECT, load_table
    from skipenv.tables.store import TableError

    t = load_table("xsum-v1")  # built before the kwarg existed: equal token runs
    assert t.config["segment_boundaries"] == "tokens"
    t.check_config(_XSUM_V1_EXPECT)
    with pytest.raises(TableError, match="segment_boundaries: table 'tokens'"):
        t.check_config({**_XSUM_V1_EXPECT, "segment_boundaries": "sentences"})


# ------------------------------------------------------------------------------------------ observation
def test_units_observation(sentence_env):
    from skipenv.envs.observations import lexical_similarity, observation_size

    # hand-computed: counts {a: 2, b: 1} vs {a: 1, c: 1}: dot 2, norms sqrt(5), sqrt(2)
    assert lexical_similarity("A b a", "a, c") == pytest.approx(2 / math.sqrt(10))
    assert lexical_similarity("", "a") == 0.0
    env = sentence_env("sentences", observation="units")
    obs, _ = env.reset(options={"index": 0})
    d, k = env.generator.hidden_size, 8
    assert obs.shape == (observation_size("units", d, k),) == (d + 2 + 3 * k,)
    pooled = sentence_env("sentences")
    base, _ = pooled.reset(options={"index": 0})
    np.testing.assert_allclose(obs[: d + 2], base)  # the pooled observation is unchanged
    p = env.prompt()
    s, e = p.document_span
    units = p.segment_bounds(k)
    pos, length, sim = obs[d + 2: d + 2 + k], obs[d + 2 + k: d + 2 + 2 * k], obs[d + 2 + 2 * k:]
    np.testing.assert_allclose(pos, [(a - s) / (e - s) for a, _ in units], rtol=1e-6)
    np.testing.assert_allclose(length, [(b - a) / 160 for a, b in units], rtol=1e-6)
    first = env.example.document[slice(*sentence_spans(env.example.document)[0])]
    a0, b0 = units[0]
    assert sim[0] == pytest.approx(lexical_similarity(env.generator.tokenizer.decode(list(p.input_ids[a0:b0])),
                                                      first), abs=1e-6)
    assert sim[0] > 0.5 and obs.dtype == np.float32
    # cost: the first layer only, as pooled
    a = env.step(np.zeros(env.action_space.shape, np.int8))[4]["cost"]
    b = pooled.step(np.zeros(pooled.action_space.shape, np.int8))[4]["cost"]
    assert a == pytest.approx(b)


# ------------------------------------------------------------------------------------------ bad input
def test_bad_segment_boundaries_fail_before_anything_loads():
    import gymnasium as gym

    import skipenv  # noqa: F401

    for bad in ("words", "Sentences", 8, None):
        if bad is None:
            continue
        with pytest.raises(ValueError, match="segment_boundaries must be one of \\('tokens', 'sentences'\\)"):
            check_segment_boundaries(bad)
    with pytest.raises(ValueError, match="segment_boundaries must be one of"):
        gym.make("SwitchDec-XSum-v1", segment_boundaries="words", model="/nonexistent/model")


def test_allowed_cuts_are_word_starts(word_tokenizer):
    text = "Mr. Smith came home."
    ids = word_tokenizer(text, add_special_tokens=False)["input_ids"]
    assert allowed_cuts(text, token_offsets(word_tokenizer, text, ids)) == [2, 3, 4]
