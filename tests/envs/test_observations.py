"""Observation kinds (skipenv.envs.observations: ``pooled``, ``segments``, ``layer:m``, ``attention:m``):
values against the unmodified Hugging Face model (hidden states, ``output_attentions``), the Gymnasium and SB3
checkers, and the observation's FLOPs in ``cost`` (against ``FlopCounterMode``)."""

from __future__ import annotations

import copy

import gymnasium as gym
import numpy as np
import pytest
import torch
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env
from torch.utils.flop_counter import FlopCounterMode

import skipenv
from skipenv import SkipPlan
from skipenv.envs import Evaluator, SwitchDecEnv, SwitchDecLayerwiseEnv
from skipenv.envs.observations import (
    attention_features,
    observation_features,
    observation_flops,
    observation_size,
    passthrough_columns,
)
from skipenv.testing import tiny_generator

# ----------------------------------------------------------------------------------------------------
# moved here from env options (tests/test_env_options.py, dissolved by issue 19)


SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**SMALL, **kw})


def _drop_last_segment(spec) -> SkipPlan:
    return SkipPlan.from_skips(spec, tokens=[spec.token_segments - 1])


@pytest.fixture(scope="module")
def smollm2():
    """The embedded SmolLM2-135M-Instruct (sdpa attention) and the XSum task with a 256-token input budget."""
    from skipenv.envs.switchdec import shared_generator
    from skipenv.tasks import make_task

    return shared_generator("smollm2-135m-instruct"), make_task("xsum", source="embedded", max_input_tokens=256)


def _reference_attention(model, prompt, m, k, max_input_tokens):
    """The attention:m features from the unmodified HF model's output_attentions (eager), computed here."""
    ref = copy.deepcopy(model)
    ref.set_attn_implementation("eager")
    ids = torch.tensor([list(prompt.input_ids)])
    with torch.no_grad():
        out = ref(input_ids=ids, output_attentions=True, output_hidden_states=True, use_cache=False)
    att = out.attentions[m - 1][0].double()  # [H, T, T]
    t = ids.shape[1]
    q = min(8, t)
    dist = att[:, t - q:, :].mean(dim=0).mean(dim=0)  # over heads, then over the last q query positions
    bounds = prompt.segment_bounds(k)
    start, end = prompt.document_span
    masses = [float(dist[s:e].sum()) for s, e in bounds] + [float(dist[:start].sum() + dist[end:].sum())]
    sizes = [(e - s) / max_input_tokens for s, e in bounds]
    pooled = out.hidden_states[m][0].double().mean(0).numpy()  # m < L: hidden_states[m] is layer m's output
    return pooled, np.array(masses), np.array(sizes), np.array([t, end - start]) / max_input_tokens


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("family", ["llama", "gpt2"])
def test_attention_features_match_output_attentions(family, smollm2_tokenizer, xsum_task):
    g = tiny_generator(family, smollm2_tokenizer, attn_implementation="sdpa")
    k, d = 8, g.hidden_size
    for ex in list(xsum_task.examples("train"))[:2]:
        prompt = xsum_task.format(ex, g.tokenizer, encoder_decoder=False)
        for m in (1, 3):
            f = attention_features(g, prompt, m, token_segments=k, max_input_tokens=96)
            pooled, masses, sizes, lengths = _reference_attention(g.model, prompt, m, k, 96)
            assert f.shape == (d + 2 * k + 3,)
            np.testing.assert_allclose(f[:d], pooled, atol=1e-5, rtol=0)
            np.testing.assert_allclose(f[d: d + k + 1], masses, atol=1e-5, rtol=0)
            assert f[d: d + k + 1].sum() == pytest.approx(1.0, abs=1e-5)
            np.testing.assert_allclose(f[d + k + 1: d + 2 * k + 1], sizes, atol=1e-7)
            np.testing.assert_allclose(f[-2:], lengths, atol=1e-7)
    assert g.model.config._attn_implementation == "sdpa"  # restored after the eager pass


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_attention_features_smollm2(smollm2):
    g, task = smollm2
    prompt = task.format(next(iter(task.examples("test"))), g.tokenizer, encoder_decoder=False)
    m, k, d = 4, 8, g.hidden_size
    f = attention_features(g, prompt, m, token_segments=k, max_input_tokens=task.max_input_tokens)
    pooled, masses, sizes, _ = _reference_attention(g.model, prompt, m, k, task.max_input_tokens)
    np.testing.assert_allclose(f[d: d + k + 1], masses, atol=1e-5, rtol=0)
    np.testing.assert_allclose(f[:d], pooled, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(f[d + k + 1: d + 2 * k + 1], sizes, atol=1e-7)


KINDS = ["pooled", "segments", "layer:2", "attention:3"]


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind", KINDS)
def test_env_observation_kinds_pass_checkers(kind, tiny_llama):
    env = make(tiny_llama, observation=kind)
    d, k = tiny_llama.hidden_size, 8
    assert env.observation_space.shape == (observation_size(kind, d, k),)
    assert env.observation_kind == kind
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(make(tiny_llama, observation=kind), warn=True)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_env_observation_values(tiny_llama, xsum_task):
    pooled_env = make(tiny_llama)
    obs_pooled, _ = pooled_env.reset(options={"index": 0})
    prompt = pooled_env.prompt()
    assert obs_pooled.shape == (34,)  # today's observation, unchanged
    seg, _ = make(tiny_llama, observation="segments").reset(options={"index": 0})
    from skipenv.envs.observations import SegmentObservation

    wrapped, _ = SegmentObservation(make(tiny_llama)).reset(options={"index": 0})
    np.testing.assert_array_equal(seg, wrapped)  # the kwarg gives what the wrapper gives
    lay, _ = make(tiny_llama, observation="layer:3").reset(options={"index": 0})
    np.testing.assert_allclose(lay, observation_features(tiny_llama, prompt, "layer:3", token_segments=8,
                                                         max_input_tokens=96), atol=1e-6)
    att, _ = make(tiny_llama, observation="attention:2").reset(options={"index": 0})
    np.testing.assert_allclose(att, attention_features(tiny_llama, prompt, 2, token_segments=8, max_input_tokens=96),
                               atol=1e-6)


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kind,layers", [("pooled", 1), ("segments", 1), ("layer:3", 3), ("attention:2", 2),
                                         ("attention:4", 4)])
def test_observation_flops_charged(kind, layers, tiny_llama):
    """The charged observation FLOPs equal FlopCounterMode over the pass that computes the observation (eager
    tiny model, so the attention products are counted) and what is added to the plan's FLOPs in ``cost``."""
    env = make(tiny_llama, observation=kind)
    env.reset(options={"index": 0})
    prompt = env.prompt()
    n = len(prompt)
    charged = observation_flops(tiny_llama, prompt, kind)
    assert charged == layers * tiny_llama.flops_model.first_layer(n)
    if kind.startswith("attention"):
        counted = _counted(lambda: attention_features(tiny_llama, prompt, layers, token_segments=8,
                                                      max_input_tokens=96))
        assert counted == charged
    elif kind.startswith("layer"):
        assert _counted(lambda: observation_features(tiny_llama, prompt, kind, token_segments=8,
                                                     max_input_tokens=96)) == charged
    else:  # pooled; segments reads the same first-layer states
        assert _counted(lambda: tiny_llama.observe([prompt])) == charged
    plan = _drop_last_segment(env.plan_spec)
    _, _, _, _, info = env.step(env.plan_to_action(plan))
    run = tiny_llama.flops(plan, prompt, env.full_output().num_generated)  # agreement: the full output's length
    assert info["flops_breakdown"]["observation"] == charged
    assert info["flops"] == run.total + charged
    assert info["cost"] == pytest.approx((run.total + charged) / info["flops_full"], rel=1e-12)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_outcome_cost_depends_on_the_evaluator_observation(tiny_llama, xsum_task):
    """Outcomes are cached per evaluator, whose observation kind is fixed and keys its outcome cache: a layer:3
    evaluator charges exactly two more first layers than a pooled one for the same (example, plan)."""
    ex = next(iter(xsum_task.examples("train")))
    a = Evaluator(tiny_llama, xsum_task, max_new_tokens=5, disk_cache=False)
    b = Evaluator(tiny_llama, xsum_task, max_new_tokens=5, disk_cache=False, observation="layer:3")
    plan = _drop_last_segment(a.spec)
    oa, ob = a.outcome(ex, plan), b.outcome(ex, plan)
    extra = 2 * tiny_llama.flops_model.first_layer(len(a.prompt(ex)))
    assert ob.flops - oa.flops == extra and ob.cost == pytest.approx(oa.cost + extra / oa.flops_full, rel=1e-12)
    assert b.outcome(ex, plan) is ob and (ex.id, plan, "layer:3") in b.outcomes._data
    with pytest.raises(AttributeError):
        b.observation_kind = "pooled"  # read-only: the cached costs stay true
    # an env cannot take another observation than its shared evaluator charges
    with pytest.raises(ValueError, match="differs from the evaluator"):
        SwitchDecEnv("xsum", evaluator=a, observation="attention:2")
    assert SwitchDecEnv("xsum", evaluator=b, observation="layer:03").observation_kind == "layer:3"


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_observation_errors(tiny_llama, tiny_bart_tokenizer, xsum_task):
    with pytest.raises(ValueError, match="unknown observation kind 'attn:2'.*'pooled', 'segments', 'layer:m', "
                                         "'attention:m'"):
        make(tiny_llama, observation="attn:2")
    with pytest.raises(ValueError, match="unknown observation kind"):
        make(tiny_llama, observation="attention:0")
    with pytest.raises(ValueError, match="exceeds the model's 4 layers"):
        make(tiny_llama, observation="attention:5")
    with pytest.raises(ValueError, match="only the pooled observation"):
        make(tiny_llama, SwitchDecLayerwiseEnv, observation="layer:2")
    layerwise = make(tiny_llama, SwitchDecLayerwiseEnv, observation="pooled")
    assert layerwise.observation_kind == "pooled"
    ev = Evaluator(tiny_llama, xsum_task, max_new_tokens=5, disk_cache=False, observation="segments")
    with pytest.raises(ValueError, match="only the pooled observation"):
        SwitchDecLayerwiseEnv("xsum", evaluator=ev)
    bart = tiny_generator("bart", tiny_bart_tokenizer)
    for kind in ("segments", "layer:1", "attention:1"):
        with pytest.raises(ValueError, match="decoder-only generator.*only observation='pooled'"):
            Evaluator(bart, xsum_task, max_new_tokens=5, disk_cache=False, observation=kind)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_vector_env_with_observation(tiny_llama):
    with skipenv.sharing(generator=tiny_llama):
        v = gym.make_vec("SwitchDec-XSum-v0", num_envs=2, vectorization_mode="vector_entry_point",
                         observation="attention:2", **SMALL)
    assert v.single_observation_space.shape == (32 + 2 * 8 + 3,)
    obs, _ = v.reset(seed=0)
    assert obs.shape == (2, 51) and all(e.observation_kind == "attention:2" for e in v.envs)
    _, _, _, _, infos = v.step(np.zeros((2, v.single_action_space.n), dtype=np.int8))
    for env, info in zip(v.envs, infos["final_info"]):
        ex = env._by_id[info["example_id"]]
        assert info["flops_breakdown"]["observation"] == 2 * tiny_llama.flops_model.first_layer(len(env.prompt(ex)))


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_passthrough_columns():
    assert [passthrough_columns(k, 8) for k in ("pooled", "layer:4", "segments", "attention:4")] == [2, 2, 16, 19]
