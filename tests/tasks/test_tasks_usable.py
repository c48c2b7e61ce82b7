"""Tasks the embedded generator can do (issue 23): verbalizer label scoring, its quality signals and FLOPs, the
full-output cache key, bad classification / QA data, and (slow, embedded model) the full model beating the trivial
baselines by the margins docs/tasks.md states."""

from __future__ import annotations

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

import skipenv
from skipenv import SkipPlan
from skipenv.envs import Evaluator
from skipenv.tasks import DataFileError, Example, make_task

pytestmark = pytest.mark.usefixtures("one_thread")

REVIEWS = [Example("r1", "A warm, funny and sharply acted film.", "positive", label="positive"),
           Example("r2", "Dull, overlong and badly written.", "negative", label="negative")]


@pytest.fixture(scope="module")
def scored():
    return make_task("rotten_tomatoes_scored")


def _independent_margin(gen, prompt, plan=None) -> tuple[float, int]:
    """log p(positive) - log p(negative) from ONE forward pass of the HF model over the kept input ids (logits at
    the last position only), and the FLOPs FlopCounterMode counts for that pass."""
    task = make_task("rotten_tomatoes_scored")
    pos, neg = task.verbalizer_ids(gen.tokenizer)
    plan = plan if plan is not None else gen.empty_plan()
    ids = torch.tensor([prompt.apply_token_skips(plan.tokens)])
    with gen.skipping(plan), torch.inference_mode(), FlopCounterMode(display=False) as fc:
        logits = gen.model(input_ids=ids, logits_to_keep=1).logits[0, -1]
    lp = torch.log_softmax(logits.float(), -1)
    return float(lp[pos] - lp[neg]), fc.get_total_flops()


def test_verbalizer_ids_and_label_probability_by_hand(smollm2_tokenizer, scored):
    assert scored.verbalizer_ids(smollm2_tokenizer) == (16185, 17728)  # "positive", "negative": one token each
    th = scored.threshold
    assert scored.label_of_margin(th + 1e-6) == "positive" and scored.label_of_margin(th) == "negative"
    for m in (-30.0, -1.0, th, 2.5, 40.0):
        p = 1.0 / (1.0 + math.exp(-(m - th)))
        assert scored.label_probability(m, "positive") == pytest.approx(p, abs=1e-12)
        assert scored.label_probability(m, "negative") == pytest.approx(1.0 - p, abs=1e-12)
    with pytest.raises(ValueError, match="label must be one of"):
        scored.label_probability(0.0, "neutral")
    with pytest.raises(ValueError, match="share their first token"):
        make_task("rotten_tomatoes_scored", verbalizers=("positive", "positive!")).verbalizer_ids(smollm2_tokenizer)
    with pytest.raises(ValueError, match="scoring must be one of"):
        make_task("rotten_tomatoes", scoring="logistic")


@pytest.mark.parametrize("skips", [{}, {"attention": [0]}, {"ffn": [1], "tokens": [7]}])
def test_label_scoring_margin_and_flops_equal_one_independent_pass(tiny_llama, scored, skips):
    ev = Evaluator(tiny_llama, scored, quality="label_probability", disk_cache=False)
    plan = SkipPlan.from_skips(ev.spec, **skips)
    for ex in REVIEWS:
        prompt = ev.prompt(ex)
        margin, counted = _independent_margin(tiny_llama, prompt, plan)
        assert ev.label_margin(ex, plan) == pytest.approx(margin, abs=1e-4)
        o = ev.outcome(ex, plan)
        # the env charges exactly the one forward pass (prefill + LM head at the last position) plus the observation
        assert o.num_generated == 1
        assert o.flops - o.flops_breakdown["observation"] == counted
        _, counted_full = _independent_margin(tiny_llama, prompt)
        assert o.flops_full == counted_full


def test_label_signals_against_hand_computed_values(tiny_llama, scored):
    prob = Evaluator(tiny_llama, scored, quality="label_probability", disk_cache=False)
    agree = Evaluator(tiny_llama, scored, quality="label_agreement", disk_cache=False)
    plan = SkipPlan.from_skips(prob.spec, attention=[1], ffn=[0])
    for ex in REVIEWS:
        m_full, _ = _independent_margin(tiny_llama, prob.prompt(ex))
        m_plan, _ = _independent_margin(tiny_llama, prob.prompt(ex), plan)
        th = scored.threshold
        full_label = "positive" if m_full > th else "negative"
        sig = lambda z: 1.0 / (1.0 + math.exp(-z))  # noqa: E731
        p_full = sig(m_full - th) if full_label == "positive" else 1 - sig(m_full - th)
        p_plan = sig(m_plan - th) if full_label == "positive" else 1 - sig(m_plan - th)
        full = prob.full_output(ex)
        assert full.text == full_label and full.tokens == (16185 if full_label == "positive" else 17728,)
        assert full.target_score == float(full_label == ex.label)
        o = prob.outcome(ex, plan)
        assert o.quality == pytest.approx(p_plan, abs=1e-4) and o.quality_full == pytest.approx(p_full, abs=1e-4)
        a = agree.outcome(ex, plan)
        assert a.quality == float(("positive" if m_plan > th else "negative") == full_label) and a.quality_full == 1
        e = prob.outcome(ex, prob.spec.empty_plan())
        assert e.quality == e.quality_full == pytest.approx(p_full, abs=1e-4)


def test_signal_and_task_must_match(tiny_llama, scored, xsum_task):
    with pytest.raises(ValueError, match="scores its label with verbalizers"):
        Evaluator(tiny_llama, scored, quality="agreement", disk_cache=False)
    with pytest.raises(ValueError, match="needs a classification task with scoring='verbalizer'"):
        Evaluator(tiny_llama, xsum_task, quality="label_agreement", disk_cache=False)


def test_full_label_cache_is_keyed_by_the_threshold(tiny_llama, scored, tmp_path):
    """A label cached under one threshold must never be served under another (a stale reward)."""
    ex = REVIEWS[0]
    margin, _ = _independent_margin(tiny_llama, Evaluator(tiny_llama, scored, quality="label_agreement",
                                                           disk_cache=False).prompt(ex))
    labels = []
    for th in (margin - 1.0, margin + 1.0):
        task = make_task("rotten_tomatoes_scored", threshold=th)
        ev = Evaluator(tiny_llama, task, quality="label_agreement", cache_root=tmp_path)
        labels.append(ev.full_output(ex).text)
    assert labels == ["positive", "negative"]
    assert any(tmp_path.rglob("*"))  # the disk cache was used


def test_rt_v1_env_steps_with_a_tiny_generator(tiny_llama):
    env = skipenv.make("SwitchDec-RottenTomatoes-v1", generator=tiny_llama, num_examples=2, disk_cache=False)
    assert env.spec.kwargs["quality"] == "label_probability"
    env.reset(seed=0)
    _, reward, terminated, truncated, info = env.step(env.action_space.sample())
    assert terminated and not truncated and np.isfinite(reward)
    assert info["text"] in ("positive", "negative") and 0.0 <= info["quality"] <= 1.0
    env.close()


def test_classification_file_with_one_class_raises(tmp_path):
    path = tmp_path / "reviews.csv"
    pd.DataFrame({"text": ["Great.", "Superb.", "Meh."], "label": ["yes", "yes", "no"]}).to_csv(path, index=False)
    task = make_task("rotten_tomatoes", source=path, label_column="label", label_map={"yes": "positive"})
    with pytest.raises(DataFileError, match="needs both labels"):
        task.examples("all")
    # a third class is dropped and counted, never scored as a wrong answer
    pd.DataFrame({"text": ["Great.", "Awful.", "Plot summary."], "label": [1, 0, 2]}).to_csv(path, index=False)
    task = make_task("rotten_tomatoes", source=path, label_column="label")
    with pytest.warns(UserWarning, match=r"label values not in label_map were dropped as unlabeled: 2 \(1 rows\)"):
        assert [e.label for e in task.examples("all")] == ["positive", "negative"]
    assert task.load_stats["all"] == {"rows": 3, "dropped_unlabeled": 1, "kept": 2}
    with warnings.catch_warnings():  # said once per task, not on every call
        warnings.simplefilter("error")
        task.examples("all")


def test_qa_row_whose_answer_is_not_in_the_passage_is_dropped_and_counted(tmp_path):
    path = tmp_path / "qa.jsonl"
    rows = [{"passage": "Paris is the capital of France.", "question": "What is the capital?", "answer": "Paris"},
            {"passage": "The Nile is long.", "question": "Which river?", "answer": "Amazon"},
            {"passage": "Rome was founded early.", "question": "Which city?", "answer": "Rome"}]
    path.write_text("\n".join(json.dumps(r) for r in rows))
    task = make_task("disflqa", source=path)
    assert [e.target for e in task.examples("all")] == ["Paris", "Rome"]
    assert task.load_stats["all"]["dropped_answer_not_in_document"] == 1


def test_extractive_heuristics_by_hand():
    from _scripts import load_benchmark

    tb = load_benchmark("task_baselines")
    passage = "The tower was built in 1889. It was designed by Gustave Eiffel for the fair. It is in Paris."
    q = "Who designed it for the fair?"
    assert tb.overlap_sentence(passage, q) == "It was designed by Gustave Eiffel for the fair."
    assert tb.capitalised_run("It was designed by Gustave Eiffel for the fair.", q) == "Gustave Eiffel"
    assert tb.first_words("It was designed by", 3) == "It was designed"
    m = np.array([-1.0, 0.5, 2.0, 3.0])
    assert tb.best_threshold(m, np.array([False, False, True, True])) == (1.25, 1.0)


# ------------------------------------------------------------------------------------- the embedded model (slow)
#: margins docs/tasks.md states (full model minus baseline), with slack for the smaller test sample
RT_TEST_MARGIN = 0.05


@pytest.mark.slow
@pytest.mark.assets
def test_rt_scored_full_model_beats_the_majority_label():
    """30 test reviews (docs/tasks.md: 0.767 vs 0.533): the verbalizer-scored full model's accuracy exceeds the
    train-majority label's by RT_TEST_MARGIN (one forward pass per review and verbalizer)."""
    import gymnasium as gym

    env = gym.make("SwitchDec-RottenTomatoes-v1", split="test", num_examples=30).unwrapped
    acc = np.mean([env.evaluator.full_output(ex).target_score for ex in env.examples])
    train = [e.label for e in env.task.examples("train")]
    majority = max(("positive", "negative"), key=train.count)
    base = np.mean([ex.label == majority for ex in env.examples])
    assert acc - base >= RT_TEST_MARGIN, (acc, base)


#: docs/tasks.md: +0.029 ROUGE-L on 15 test documents; asserted with slack on 10
XSUM_TEST_MARGIN = 0.0


@pytest.mark.slow
@pytest.mark.assets
def test_xsum_full_model_beats_the_first_sentence():
    """10 test documents: the full model's ROUGE-L exceeds the document's first sentence's (the lead baseline)."""
    import gymnasium as gym

    from skipenv.tasks import first_sentences

    env = gym.make("SwitchDec-XSum-v0", split="test", num_examples=10).unwrapped
    full = np.mean([env.evaluator.full_output(ex).target_score for ex in env.examples])
    lead = np.mean([env.task.score(first_sentences(ex.document, 1), ex) for ex in env.examples])
    assert full - lead > XSUM_TEST_MARGIN, (full, lead)
