"""Quality signals (skipenv.envs.quality): the ``"probability"`` signal against the softmax of the unmodified
Hugging Face model, with and without prefix reuse, and cached with the full output."""

from __future__ import annotations

import pytest
import torch

import skipenv
from skipenv import SkipPlan
from skipenv.envs import Evaluator
from skipenv.testing import tiny_generator

# ----------------------------------------------------------------------------------------------------
# moved here from env options (tests/test_env_options.py, dissolved by issue 19)


def _drop_last_segment(spec) -> SkipPlan:
    return SkipPlan.from_skips(spec, tokens=[spec.token_segments - 1])


def _hf_mean_probability(model, prompt_ids, target) -> float:
    """mean_t softmax(logits)[y_t] of the unmodified HF model, teacher forced on ``target`` after ``prompt_ids``."""
    ids = torch.tensor([list(prompt_ids) + list(target)])
    with torch.no_grad():
        logits = model(input_ids=ids, use_cache=False).logits[0].double()
    n = len(prompt_ids)
    probs = torch.softmax(logits[n - 1: n - 1 + len(target)], dim=-1)
    return float(probs[torch.arange(len(target)), torch.tensor(target)].mean())


def _check_probability(generator, task, example, token_segments=8):
    ev = Evaluator(generator, task, quality="probability", token_segments=token_segments, max_new_tokens=6,
                   disk_cache=False)
    full = ev.full_output(example)
    prompt = ev.prompt(example)
    p_full = _hf_mean_probability(generator.model, prompt.input_ids, full.tokens)
    empty = ev.outcome(example, ev.spec.empty_plan())
    assert empty.quality == empty.quality_full == full.output_probability  # identity, not just close
    assert empty.quality_full == pytest.approx(p_full, abs=1e-5)
    plan = _drop_last_segment(ev.spec)  # expressible with the unmodified model: drop the tokens
    o = ev.outcome(example, plan)
    kept = [prompt.input_ids[i] for i in prompt.kept_positions(plan.tokens)]
    assert o.quality == pytest.approx(_hf_mean_probability(generator.model, kept, full.tokens), abs=1e-5)
    assert o.quality_full == empty.quality_full and 0.0 <= o.quality <= 1.0
    return ev


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_probability_against_hf_softmax_tiny_llama(tiny_llama, xsum_task):
    ex = next(iter(xsum_task.examples("train")))
    ev = _check_probability(tiny_llama, xsum_task, ex)
    assert ev.default_tau == skipenv.envs.quality.PROBABILITY_DEFAULT_TAU == 0.01
    # a sublayer skip changes the probability the plan gives the full output (it is not the argmax agreement)
    spec = ev.spec
    o = ev.outcome(ex, SkipPlan.from_skips(spec, attention=[1], ffn=[2]))
    assert o.quality != o.quality_full


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (sdpa attention) and the XSum task with a 256-token input budget."""
    from skipenv.envs.switchdec import shared_generator
    from skipenv.tasks import make_task

    return shared_generator("smollm2-135m-instruct"), make_task("xsum", source="embedded", max_input_tokens=256)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_probability_against_hf_softmax_smollm2(smollm2):
    g, task = smollm2
    _check_probability(g, task, next(iter(task.examples("test"))))


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_probability_reuse_on_off(smollm2_tokenizer, xsum_task):
    from skipenv.generators.reuse import PrefixStore

    g = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.3)
    g.prefix_store = PrefixStore(admit_after=1)
    ex = list(xsum_task.examples("train"))[:2]
    kw = dict(quality="probability", max_new_tokens=6, disk_cache=False)
    on, off = Evaluator(g, xsum_task, reuse=True, **kw), Evaluator(g, xsum_task, reuse=False, **kw)
    spec = on.spec
    plans = [spec.empty_plan(), _drop_last_segment(spec), SkipPlan.from_skips(spec, attention=[3], tokens=[6, 7]),
             SkipPlan.from_skips(spec, ffn=[0, 2])]
    for e in ex:
        for plan in plans:
            a, b = on.outcome(e, plan), off.outcome(e, plan)
            assert a.quality == pytest.approx(b.quality, abs=1e-5)
            assert a.quality_full == pytest.approx(b.quality_full, abs=1e-5)
    assert g.prefix_store.hits > 0  # the reuse path really ran


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_probability_cached_with_the_full_output(tiny_llama, xsum_task, tmp_path):
    ex = next(iter(xsum_task.examples("train")))
    kw = dict(max_new_tokens=6, cache_root=tmp_path)
    agree = Evaluator(tiny_llama, xsum_task, quality="agreement", **kw)
    old = agree.full_output(ex)  # an entry without the field (as written before the signal existed)
    assert old.output_probability is None
    prob = Evaluator(tiny_llama, xsum_task, quality="probability", **kw)
    full = prob.full_output(ex)
    assert full.tokens == old.tokens and full.output_probability == pytest.approx(
        _hf_mean_probability(tiny_llama.model, prob.prompt(ex).input_ids, full.tokens), abs=1e-5)
    # stored next to its tokens: a fresh evaluator reads it from disk, without a forward pass
    again = Evaluator(tiny_llama, xsum_task, quality="probability", **kw)
    again.output_probability = None  # would fail if called
    assert again.full_output(ex).output_probability == full.output_probability
    # the schema check refuses a probability outside [0, 1]
    from skipenv.envs.evaluator import _full_output_problem

    bad = dict(full.to_json(), output_probability=1.5)
    assert "output_probability" in _full_output_problem(bad, None, full.prompt_length)
