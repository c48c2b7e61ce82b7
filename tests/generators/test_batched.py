"""Batched plan scoring (``skipenv.generators.batched``): rows of different inputs, targets and plans scored in padded
forward passes give the one-row-at-a-time from-scratch results (log-probabilities within 1e-4, identical argmax),
with and without prefix reuse, on random batches of both decoder-only families and on the embedded SmolLM2; the
rows really share forward calls and a sublayer runs only on the rows that keep it; the grouping cost model; the
evaluator's batched outcomes equal its one-by-one outcomes (quality, FLOPs, cost)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from skipenv import PromptInput, SkipPlan
from skipenv.generators.batched import group_rows, score_plans
from skipenv.generators.reuse import PrefixStore
from skipenv.testing import tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")

SEGMENTS = 4


@pytest.fixture(scope="module", params=["llama", "gpt2"])
def gen(request):
    torch.manual_seed(0)
    return tiny_generator(request.param)


@st.composite
def rows(draw):
    """1-6 rows: (input, target, skip probability, plan seed); inputs may repeat (rows on the same document)."""
    docs = []
    for _ in range(draw(st.integers(1, 3))):
        t = draw(st.integers(6, 40))
        ids = tuple(draw(st.lists(st.integers(2, 63), min_size=t, max_size=t)))
        start = draw(st.integers(0, t // 3))
        docs.append((PromptInput(ids, (start, draw(st.integers(start, t))), f"doc{len(docs)}"),
                     draw(st.lists(st.integers(2, 63), min_size=1, max_size=6))))
    out = []
    for _ in range(draw(st.integers(1, 6))):
        inp, target = docs[draw(st.integers(0, len(docs) - 1))]
        out.append((inp, target, draw(st.sampled_from([0.0, 0.05, 0.2, 0.5])), draw(st.integers(0, 2**31 - 1))))
    return out


def _plan(gen, p, seed) -> SkipPlan:
    spec = gen.plan_spec(SEGMENTS)
    size = len(spec.empty_plan().to_action())
    return SkipPlan.from_action((np.random.default_rng(seed).random(size) < p).astype(np.int8), spec)


def _assert_same(got, want):
    for a, b in zip(got, want, strict=True):
        assert torch.allclose(a.logprobs, b.logprobs, atol=1e-4, rtol=0), (a.logprobs - b.logprobs).abs().max()
        assert torch.equal(a.argmax, b.argmax)
        assert a.prompt_length == b.prompt_length


@settings(max_examples=30, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=rows(), reuse=st.booleans(), fixed=st.sampled_from([0.0, 32.0, float("inf")]))
def test_batched_equals_row_by_row_from_scratch(gen, case, reuse, fixed):
    gen.prefix_store = PrefixStore(admit_after=1) if reuse else None
    inputs = [inp for inp, _, _, _ in case]
    targets = [t for _, t, _, _ in case]
    plans = [_plan(gen, p, seed) for _, _, p, seed in case]
    try:
        want = [gen.score([i], [t], plan, reuse=False)[0] for i, t, plan in zip(inputs, targets, plans)]
    except ValueError:  # a plan removes every token: the batch refuses it too
        with pytest.raises(ValueError, match="removes every input token"):
            score_plans(gen, inputs, targets, plans, fixed_tokens=fixed)
        return
    _assert_same(score_plans(gen, inputs, targets, plans, fixed_tokens=fixed), want)


def _layer_plan(gen, tokens=(False,) * SEGMENTS, attn=(), ffn=()):
    L = gen.num_decoder_layers
    return SkipPlan(gen.plan_spec(SEGMENTS), (), (), tuple(i in attn for i in range(L)),
                    tuple(i in ffn for i in range(L)), tuple(tokens))


def test_rows_share_calls_and_sublayers_run_only_where_kept(gen):
    """Four rows on two inputs in one batch (fixed cost infinite): phase 1 (the tails of the two rows that drop
    tokens) and phase 2 (every position of the rows that skip a sublayer) are one model call each; the attention of
    layer 1 runs on the one row that reaches it and keeps it; the empty-plan row equals the unmodified HF model."""
    gen.prefix_store = PrefixStore(admit_after=1)
    a = PromptInput(tuple(range(3, 35)), (0, 32), "a")
    b = PromptInput(tuple(range(10, 30)), (4, 20), "b")
    target = [5, 9, 11]
    plans = [_layer_plan(gen), _layer_plan(gen, tokens=(False, False, False, True)), _layer_plan(gen, attn=(1,)),
             _layer_plan(gen, ffn=(0,))]
    inputs = [a, b, a, b]
    for inp in (a, b):
        gen.score([inp], [target], None)  # the stored states (input + target)
    calls, attention_rows = [], []
    base = gen.model.base_model
    handles = [base.register_forward_pre_hook(lambda m, a, k: calls.append(k["input_ids"].shape), with_kwargs=True),
               gen.sublayer_modules("decoder", 1).attention[-1].register_forward_pre_hook(
                   lambda m, a, k: attention_rows.append((a[0] if a else k["hidden_states"]).shape[0]),
                   with_kwargs=True)]
    try:
        got = score_plans(gen, inputs, [target] * 4, plans, fixed_tokens=float("inf"))
    finally:
        for h in handles:
            h.remove()
    # phase 1: rows 0 and 1 (tails: the last input position + target, resp. positions after segment 3 + target);
    # phase 2: rows 2 and 3 over all their positions (35 and 23, padded to 35)
    # row 0: s = 35 - 4 (the last input position is recomputed) -> tail 4; row 1 keeps b's first 16 ids, s = 19 - 4
    assert [tuple(c) for c in calls] == [(2, 4), (2, 35)]
    # layer 1's attention: phase 1 runs both tail rows; phase 2 only the row skipping FFN 0 (row 2 skips it)
    assert attention_rows == [2, 1]
    _assert_same(got, [gen.score([i], [target], p, reuse=False)[0] for i, p in zip(inputs, plans)])
    ids = torch.tensor([list(a.input_ids) + target])
    with torch.inference_mode():
        logp = torch.log_softmax(gen.model(input_ids=ids).logits[0].float(), -1)
    want = logp[-4:-1].gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
    assert torch.allclose(got[0].logprobs, want, atol=1e-4)


def test_group_rows_cost_model():
    # phase 2 (gathered): lengths 100 and 110, full depth: together 32 + 110 * 2 = 252 <= (32 + 100) + (32 + 110)
    assert group_rows([110, 100], [1.0, 1.0], 32.0, gathered=True) == [[1, 0]]
    # 100 and 200: together 32 + 400 = 432 > 132 + 232 = 364: separate, shortest first
    assert group_rows([200, 100], [1.0, 1.0], 32.0, gathered=True) == [[1], [0]]
    # phase 1 (not gathered): depth 0.5 and 1.0 at length 40: together 32 + 40 * 2 * 1.0 = 112 > 52 + 72 = 124? no:
    # 112 <= 124, so together
    assert group_rows([40, 40], [0.5, 1.0], 32.0, gathered=False) == [[0, 1]]
    assert group_rows([40, 40], [0.5, 1.0], 0.0, gathered=False) == [[0], [1]]  # no fixed cost: never pad
    assert group_rows([5, 300, 40], [1.0, 1.0, 1.0], float("inf"), gathered=True) == [[0, 2, 1]]
    assert group_rows([], [], 32.0, gathered=True) == []
    with pytest.raises(ValueError, match="fixed_tokens"):
        group_rows([1], [1.0], -1.0, gathered=True)


def test_bad_batches(gen):
    inp = PromptInput(tuple(range(3, 20)), (0, 17), "doc")
    with pytest.raises(ValueError, match="one of each per row"):
        score_plans(gen, [inp, inp], [[4]], [None, None])
    with pytest.raises(ValueError, match="at least one token"):
        score_plans(gen, [inp], [[]], [None])
    with pytest.raises(TypeError, match="decoder-only"):
        score_plans(tiny_generator("bart"), [inp], [[4]], [None])


class _Task:
    """A stand-in task for the evaluator tests: formatted inputs are the example's ids."""

    max_new_tokens = 4
    metric = "none"

    def format(self, example, tokenizer, encoder_decoder=False):
        return PromptInput(example.ids, (0, len(example.ids)), example.id)

    def score(self, text, example):
        return 0.0

    def output_complete(self, text):
        return False


class _Ex:
    def __init__(self, name, ids):
        self.id, self.ids, self.reference, self.label, self.answers = name, ids, "a b c", None, ()


def _count_batched_rows(monkeypatch) -> list:
    """Rows of every ``score_plans`` call the evaluator makes from now on (appended to the returned list)."""
    import skipenv.generators.batched as batched_module

    rows_per_call = []
    real = batched_module.score_plans
    monkeypatch.setattr(batched_module, "score_plans", lambda *a, **k: rows_per_call.append(len(a[1])) or real(*a, **k))
    return rows_per_call


def test_evaluator_batched_outcomes_equal_one_by_one(gen, monkeypatch):
    """Evaluator.outcomes_together (batched) against Evaluator.outcome pair by pair on a second evaluator: same
    quality, FLOPs and cost for every pair (agreement and likelihood)."""
    from skipenv.envs import Evaluator

    rows_per_call = _count_batched_rows(monkeypatch)
    gen.prefix_store = None
    rng = np.random.default_rng(1)
    examples = [_Ex(f"e{i}", tuple(int(x) for x in rng.integers(2, 63, int(rng.integers(12, 30))))) for i in range(3)]
    for quality in ("agreement", "likelihood", "probability"):
        batched = Evaluator(gen, _Task(), quality=quality, token_segments=SEGMENTS, disk_cache=False, lru_size=0)
        single = Evaluator(gen, _Task(), quality=quality, token_segments=SEGMENTS, disk_cache=False, reuse=False)
        pairs = [(examples[k % 3], _plan(gen, 0.15, k)) for k in range(7)]
        for _ in range(2):  # the second round starts from the stored states (admitted on the second request)
            got = batched.outcomes_together([e for e, _ in pairs], [p for _, p in pairs])
            for o, (ex, plan) in zip(got, pairs):
                w = single.outcome(ex, plan)
                assert (o.flops, o.cost, o.flops_full) == (w.flops, w.cost, w.flops_full)
                assert o.quality == pytest.approx(w.quality, abs=0 if quality == "agreement" else 1e-4)
    # 3 qualities x 2 rounds (probability ran row by row before it named its scored target), the non-empty plans
    assert len(rows_per_call) == 6 and min(rows_per_call) >= 5


@pytest.mark.assets
def test_batched_on_smollm2_xsum():
    """The embedded SmolLM2, 8 rows on 3 XSum train documents (lead-N, one sublayer, sampled plans, the empty
    plan) in one batch: the one-by-one from-scratch log-probabilities (within 1e-4) and argmax."""
    from skipenv.loading import load_generator
    from skipenv.tasks import make_task

    g = load_generator()
    g.prefix_store = PrefixStore(admit_after=1)
    task = make_task("xsum", source="embedded")
    examples = list(task.examples("train"))[:3]
    spec = g.plan_spec(8)
    L = g.num_decoder_layers
    rng = np.random.default_rng(0)
    size = len(spec.empty_plan().to_action())
    no = (False,) * L
    plans = [SkipPlan(spec, (), (), no, no, (False,) * 6 + (True, True)),
             SkipPlan(spec, (), (), tuple(i == 20 for i in range(L)), no, (False,) * 8),
             SkipPlan(spec, (), (), no, tuple(i == 5 for i in range(L)), (False,) * 7 + (True,)),
             spec.empty_plan()] + [SkipPlan.from_action((rng.random(size) < 0.03).astype(np.int8), spec)
                                   for _ in range(4)]
    inputs = [task.format(examples[k % 3], g.tokenizer, encoder_decoder=False) for k in range(8)]
    fulls = {inp.example_id: g.generate([inp], None, max_new_tokens=12, reuse=False).tokens[0] for inp in inputs}
    targets = [fulls[inp.example_id] for inp in inputs]
    want = [g.score([i], [t], p, reuse=False)[0] for i, t, p in zip(inputs, targets, plans)]
    _assert_same(score_plans(g, inputs, targets, plans, fixed_tokens=float("inf")), want)


def test_evaluator_batch_skips_cached_outcomes(gen, monkeypatch):
    """outcomes_together scores only the pairs missing from the outcome cache: a second call on the same pairs runs
    no batched forward pass, and a batch with one cached pair scores one row fewer (the cache key includes the
    observation kind, and the batch must look it up with the same key)."""
    from skipenv.envs import Evaluator

    rows_per_call = _count_batched_rows(monkeypatch)
    rng = np.random.default_rng(2)
    examples = [_Ex(f"c{i}", tuple(int(x) for x in rng.integers(2, 63, 20))) for i in range(3)]
    ev = Evaluator(gen, _Task(), quality="agreement", token_segments=SEGMENTS, disk_cache=False, reuse=False)
    plans = [_plan(gen, 0.3, k) for k in range(3)]
    assert not any(p.is_empty for p in plans)
    ev.outcome(examples[0], plans[0])  # one pair cached beforehand
    first = ev.outcomes_together(examples, plans)
    assert rows_per_call == [2]
    again = ev.outcomes_together(examples, plans)
    assert rows_per_call == [2]  # all three cached: no batched pass
    assert [o.quality for o in again] == [o.quality for o in first]
