"""Prefix reuse (``skipenv.generators.reuse``): a plan started from the full model's stored computation gives the
from-scratch results (log-probabilities within 1e-4, identical argmax and generated tokens), on random
(input, plan, target) triples of every decoder-only family, and on the embedded SmolLM2 with XSum documents; the
reused path really computes fewer positions; the store's bytes and cap; the off switches; FLOPs unchanged."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipenv import PromptInput, SkipPlan
from skipenv.generators.reuse import PrefixStore, plan_reuse_point
from skipenv.testing import tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")

DECODER_ONLY = ["llama", "gpt2"]
SEGMENTS = 4


@pytest.fixture(scope="module", params=DECODER_ONLY)
def gen(request):
    torch.manual_seed(0)
    g = tiny_generator(request.param)
    g.prefix_store = PrefixStore(admit_after=1)  # every call takes the reused path (default: from the 2nd request)
    return g


@st.composite
def cases(draw):
    t = draw(st.integers(6, 40))
    ids = tuple(draw(st.lists(st.integers(2, 63), min_size=t, max_size=t)))
    start = draw(st.integers(0, t // 3))
    end = draw(st.integers(start, t))
    target = draw(st.lists(st.integers(2, 63), min_size=1, max_size=6))
    p = draw(st.sampled_from([0.0, 0.05, 0.2, 0.5]))
    seed = draw(st.integers(0, 2**31 - 1))
    return PromptInput(ids, (start, end), "doc"), target, p, seed


def _plan(gen, p, seed) -> SkipPlan:
    spec = gen.plan_spec(SEGMENTS)
    size = len(spec.empty_plan().to_action())
    return SkipPlan.from_action((np.random.default_rng(seed).random(size) < p).astype(np.int8), spec)


def _check_same(gen, inp, target, plan):
    try:
        ref = gen.score([inp], [target], plan, reuse=False)[0]
    except ValueError:  # the plan removes every token
        return
    got = gen.score([inp], [target], plan)[0]
    assert torch.allclose(got.logprobs, ref.logprobs, atol=1e-4, rtol=0), (got.logprobs - ref.logprobs).abs().max()
    assert torch.equal(got.argmax, ref.argmax)
    assert got.prompt_length == ref.prompt_length
    a = gen.generate([inp], plan, max_new_tokens=6, reuse=False)
    b = gen.generate([inp], plan, max_new_tokens=6)
    assert b.tokens == a.tokens and b.texts == a.texts


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=cases())
def test_reuse_equals_from_scratch_on_random_plans(gen, case):
    inp, target, p, seed = case
    _check_same(gen, inp, target, _plan(gen, p, seed))


def _plans(gen):
    """One plan per path of the reused forward: tokens only (lead truncation, middle segment), a sublayer in a late /
    early / first layer, every attention skipped, mixed."""
    spec = gen.plan_spec(SEGMENTS)
    L = gen.num_decoder_layers
    no = (False,) * L

    def plan(tokens=(False,) * SEGMENTS, attn=no, ffn=no):
        return SkipPlan(spec, (), (), tuple(attn), tuple(ffn), tuple(tokens))

    one = lambda i: tuple(k == i for k in range(L))  # noqa: E731
    return {
        "empty": plan(),
        "lead": plan(tokens=(False, False, True, True)),
        "middle": plan(tokens=(False, True, False, False)),
        "ffn_late": plan(ffn=one(L - 1)),
        "attn_1_and_tokens": plan(tokens=(False, False, False, True), attn=one(1)),
        "first_layer": plan(ffn=one(0)),
        "all_attention": plan(attn=(True,) * L),
    }


@pytest.mark.parametrize("name", ["empty", "lead", "middle", "ffn_late", "attn_1_and_tokens", "first_layer",
                                  "all_attention"])
def test_every_reuse_path_matches_from_scratch_and_the_plain_model(gen, name):
    inp = PromptInput(tuple(range(3, 35)), (4, 28), "doc")
    target = [5, 9, 11, 7]
    plan = _plans(gen)[name]
    _check_same(gen, inp, target, plan)
    if name == "empty":  # independently: the unmodified HF model's log-probabilities
        ids = torch.tensor([list(inp.input_ids) + target])
        with torch.inference_mode():
            logp = torch.log_softmax(gen.model(input_ids=ids).logits[0].float(), -1)
        m = len(target)
        want = logp[-m - 1:-1].gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
        assert torch.allclose(gen.score([inp], [target], plan)[0].logprobs, want, atol=1e-4)


def test_reused_path_computes_only_the_tail(gen):
    """What the attention sublayers really compute (positions per call): a lead-truncation plan runs every layer over
    the last kept input position + the target only; a plan skipping the FFN of the last layer runs no layer but the
    last (the stored state covers input + target); a plan skipping a sublayer of layer 1 and the last segment runs
    layer 0 over the tail and the later layers over every position."""
    inp = PromptInput(tuple(range(3, 43)), (0, 40), "doc")  # 40 document tokens, 10 per segment
    target = [5, 9, 11]
    plans = _plans(gen)
    L = gen.num_decoder_layers
    seen: list[tuple[int, int]] = []
    attention = [gen.sublayer_modules("decoder", i).attention[-1] for i in range(L)]
    handles = [m.register_forward_pre_hook(
        lambda m, a, k, i=i: seen.append((i, (a[0] if a else k["hidden_states"]).shape[1])), with_kwargs=True)
        for i, m in enumerate(attention)]
    try:
        gen.score([inp], [target], None)  # computes the stored state of input + target
        seen.clear()
        gen.score([inp], [target], plans["lead"])  # keeps positions 0..19: s = 19 (the last one is recomputed)
        assert seen == [(i, 1 + 3) for i in range(L)]
        seen.clear()
        gen.score([inp], [target], plans["ffn_late"])
        assert seen == [(L - 1, 43)]
        seen.clear()
        gen.score([inp], [target], plans["attn_1_and_tokens"])  # drops positions 30..39: s = 30, j = 1
        assert seen == [(0, 3)] + [(i, 33) for i in range(2, L)]
    finally:
        for h in handles:
            h.remove()


@pytest.mark.parametrize("family", ["bart", "t5"])
def test_encoder_decoder_reuses_the_encoder_output(family):
    """Encoder-decoder: plans that keep every token and encoder sublayer take the stored encoder output (the encoder
    runs once per input); every plan gives the from-scratch results."""
    torch.manual_seed(0)
    g = tiny_generator(family)
    g.prefix_store = PrefixStore()
    inp = PromptInput(tuple(range(3, 30)), (2, 26), "doc")
    target = [5, 9, 11, 7]
    calls = []
    handle = g._encoder_layers()[0].register_forward_pre_hook(lambda m, a: calls.append(1))
    try:
        spec = g.plan_spec(SEGMENTS)
        E, D = g.num_encoder_layers, g.num_decoder_layers
        decoder_only_skip = SkipPlan(spec, (False,) * E, (False,) * E, (True,) + (False,) * (D - 1), (False,) * D,
                                     (False,) * SEGMENTS)
        for _ in range(2):
            g.score([inp], [target], decoder_only_skip)
            g.generate([inp], decoder_only_skip, max_new_tokens=4)
        assert len(calls) == 1
        rng = np.random.default_rng(0)
        size = len(spec.empty_plan().to_action())
        for plan in [None, decoder_only_skip] + [
                SkipPlan.from_action((rng.random(size) < 0.2).astype(np.int8), spec) for _ in range(6)]:
            _check_same(g, inp, target, plan)
    finally:
        handle.remove()


def _evaluator(g, **kw):
    """An Evaluator on a stand-in task (the reuse switch needs no data)."""
    from skipenv.envs import Evaluator

    class _Task:
        max_new_tokens = 4

    return Evaluator(g, _Task(), disk_cache=False, **kw)


def test_plan_reuse_point():
    assert plan_reuse_point([1, 2, 3, 4, 5], [1, 2, 4, 5], [False, True], [False, False]) == (2, 1)
    assert plan_reuse_point([1, 2, 3], [1, 2, 3], [False, False], [False, False]) == (2, 2)  # last one recomputed
    assert plan_reuse_point([1, 2, 3], [1, 2, 3], [False, False], [False, False], num_logits=3) == (0, 2)
    assert plan_reuse_point([1, 2, 3], [1, 2, 3], [False, False], [False, True]) == (3, 1)  # nothing to recompute
    assert plan_reuse_point([1, 2, 3], [7, 3], [False, False], [True, False]) == (0, 0)


def test_store_bytes_cap_and_lru():
    g = tiny_generator("llama")
    c = g.config
    hd = c.hidden_size // c.num_attention_heads
    T = 20
    # per token of input + target (1 token): keys + values of every layer, the residual stream entering layers
    # 1..L-1; float32
    L, d = c.num_hidden_layers, c.hidden_size
    per_input = 4 * (T + 1) * (L * 2 * c.num_key_value_heads * hd + (L - 1) * d)
    g.prefix_store = PrefixStore(max_bytes=2 * per_input, admit_after=1)
    inputs = [PromptInput(tuple(range(k + 2, k + 2 + T)), (0, T), f"d{k}") for k in range(3)]
    for inp in inputs:
        g.score([inp], [[5]], None)
    store = g.prefix_store
    assert store.nbytes == 2 * per_input and store.peak_bytes == 2 * per_input and len(store) == 2
    assert store.get(inputs[0].input_ids) is None and store.evictions == 1  # least recently used: evicted
    assert store.get(inputs[2].input_ids).ids == inputs[2].input_ids + (5,)  # the state covers input + target
    with pytest.raises(ValueError, match="max_bytes"):
        PrefixStore(max_bytes=-1)


def test_off_switches(monkeypatch):
    g = tiny_generator("gpt2")
    assert g.prefix_store is None  # a bare generator runs every call from scratch
    monkeypatch.setenv("SKIPENV_REUSE", "0")
    assert not _evaluator(g).reuse and g.prefix_store is None
    assert not _evaluator(g, reuse=None).reuse
    monkeypatch.delenv("SKIPENV_REUSE")
    assert not _evaluator(g, reuse=False).reuse and g.prefix_store is None
    assert _evaluator(g).reuse and isinstance(g.prefix_store, PrefixStore)  # attached by the evaluator
    assert g.prefix_store.max_bytes == 2 << 30 and g.prefix_store.admit_after == 2
    inp = PromptInput(tuple(range(3, 20)), (0, 17), "doc")
    g.score([inp], [[4, 5]], None, reuse=False)
    g.generate([inp], None, max_new_tokens=2, reuse=False)
    assert len(g.prefix_store) == 0 and g.prefix_store.misses == 0
    g.generate([g_inp for g_inp in [inp, inp]], None, max_new_tokens=2)  # batches are never reused
    assert len(g.prefix_store) == 0
    # default admission: an input's state is computed on its second request; full-model generation computes none
    g.generate([inp], None, max_new_tokens=2)
    g.score([inp], [[4, 5]], None)
    assert len(g.prefix_store) == 0
    g.score([inp], [[4, 5]], None)
    assert len(g.prefix_store) == 1 and g.prefix_store.get(inp.input_ids).ids == inp.input_ids + (4, 5)
    with pytest.raises(ValueError, match="admit_after"):
        PrefixStore(admit_after=0)


@pytest.mark.assets
def test_reuse_on_smollm2_xsum():
    """The embedded SmolLM2 on XSum train documents: lead-N, single-sublayer and sampled plans give the
    from-scratch log-probabilities (within 1e-4), argmax and greedy tokens."""
    from skipenv.loading import load_generator
    from skipenv.tasks import make_task

    g = load_generator()
    g.prefix_store = PrefixStore(admit_after=1)
    task = make_task("xsum", source="embedded")
    examples = list(task.examples("train"))[:2]
    spec = g.plan_spec(8)
    L = g.num_decoder_layers
    rng = np.random.default_rng(0)
    size = len(spec.empty_plan().to_action())
    plans = [SkipPlan(spec, (), (), (False,) * L, (False,) * L, (False,) * 7 + (True,)),
             SkipPlan(spec, (), (), tuple(i == 20 for i in range(L)), (False,) * L, (False,) * 8),
             SkipPlan.from_action((rng.random(size) < 0.05).astype(np.int8), spec)]
    for ex in examples:
        inp = task.format(ex, g.tokenizer, encoder_decoder=False)
        full = g.generate([inp], None, max_new_tokens=12, reuse=False).tokens[0]
        for plan in plans:
            a = g.score([inp], [full], plan, reuse=False)[0]
            b = g.score([inp], [full], plan)[0]
            assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4, rtol=0)
            assert torch.equal(a.argmax, b.argmax)
            assert g.generate([inp], plan, max_new_tokens=12).tokens == \
                g.generate([inp], plan, max_new_tokens=12, reuse=False).tokens


@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16, "float16"])
def test_lower_precision_store_halves_bytes(dtype):
    """A float16 / bfloat16 store keeps half the bytes of float32 states, hands the rounded state to the first call
    too (what later calls get), and its results differ from the exact path only by that rounding (tiny Llama: well
    within 0.05 nats); the float32 store stays exact (1e-4)."""
    torch.manual_seed(0)
    g = tiny_generator("llama")
    inp = PromptInput(tuple(range(3, 35)), (4, 28), "doc")
    target = [5, 9, 11, 7]
    plans = _plans(g)
    exact = PrefixStore(admit_after=1)
    low = PrefixStore(admit_after=1, dtype=dtype)
    for store in (exact, low):
        g.prefix_store = store
        g.score([inp], [target], None)
    want = torch.float16 if dtype in (torch.float16, "float16") else torch.bfloat16
    state = low.get(inp.input_ids)
    assert low.dtype == want and all(k.dtype == want for k in state.keys) and state.hidden[1].dtype == want
    assert low.nbytes * 2 == exact.nbytes
    for name in ("lead", "ffn_late", "attn_1_and_tokens"):
        ref = g.score([inp], [target], plans[name], reuse=False)[0]
        g.prefix_store = low
        got = g.score([inp], [target], plans[name])[0]
        diff = (got.logprobs - ref.logprobs).abs().max().item()
        assert 0 < diff < 0.05  # rounded (not exact), but close
        g.prefix_store = exact
        assert torch.allclose(g.score([inp], [target], plans[name])[0].logprobs, ref.logprobs, atol=1e-4)
    for bad in ("int8", torch.int32, 16):
        with pytest.raises(ValueError, match="dtype"):
            PrefixStore(dtype=bad)


@pytest.mark.assets
def test_float16_store_on_smollm2_within_documented_bound():
    """The float16 store's documented tolerance on the embedded SmolLM2 (PrefixStore docstring): max
    |Δ log-probability| <= 0.05 nats against the from-scratch path, on XSum train documents and sampled plans."""
    from skipenv.loading import load_generator
    from skipenv.tasks import make_task

    g = load_generator()
    g.prefix_store = PrefixStore(admit_after=1, dtype=torch.float16)
    task = make_task("xsum", source="embedded")
    spec = g.plan_spec(8)
    L = g.num_decoder_layers
    rng = np.random.default_rng(1)
    size = len(spec.empty_plan().to_action())
    plans = [SkipPlan(spec, (), (), (False,) * L, (False,) * L, (False,) * 6 + (True, True)),
             SkipPlan(spec, (), (), (False,) * L, tuple(i == 12 for i in range(L)), (False,) * 8),
             SkipPlan.from_action((rng.random(size) < 0.03).astype(np.int8), spec)]
    for ex in list(task.examples("train"))[:2]:
        inp = task.format(ex, g.tokenizer, encoder_decoder=False)
        full = g.generate([inp], None, max_new_tokens=16, reuse=False).tokens[0]
        for plan in plans:
            a = g.score([inp], [full], plan, reuse=False)[0]
            b = g.score([inp], [full], plan)[0]
            assert (a.logprobs - b.logprobs).abs().max().item() <= 0.05
