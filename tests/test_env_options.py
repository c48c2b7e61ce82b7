"""Env options selectable by ``gym.make`` kwargs: the ``"probability"`` quality signal, the observation kinds
(``pooled``, ``segments``, ``layer:m``, ``attention:m``) with their FLOPs charged in ``cost``, and
``formulation=``. Reference values come from the unmodified Hugging Face model (softmax of its logits, its
``output_attentions=True`` with eager attention) and from ``torch.utils.flop_counter.FlopCounterMode``."""

from __future__ import annotations

import copy
import warnings

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

pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("one_thread")]

SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**SMALL, **kw})


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


# ---------------------------------------------------------------------------------------------- probability
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


def test_probability_against_hf_softmax_smollm2(smollm2):
    g, task = smollm2
    _check_probability(g, task, next(iter(task.examples("test"))))


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


# ---------------------------------------------------------------------------------------------- attention
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


def test_attention_features_smollm2(smollm2):
    g, task = smollm2
    prompt = task.format(next(iter(task.examples("test"))), g.tokenizer, encoder_decoder=False)
    m, k, d = 4, 8, g.hidden_size
    f = attention_features(g, prompt, m, token_segments=k, max_input_tokens=task.max_input_tokens)
    pooled, masses, sizes, _ = _reference_attention(g.model, prompt, m, k, task.max_input_tokens)
    np.testing.assert_allclose(f[d: d + k + 1], masses, atol=1e-5, rtol=0)
    np.testing.assert_allclose(f[:d], pooled, atol=1e-4, rtol=1e-5)
    np.testing.assert_allclose(f[d + k + 1: d + 2 * k + 1], sizes, atol=1e-7)


# ---------------------------------------------------------------------------------------------- env kinds
KINDS = ["pooled", "segments", "layer:2", "attention:3"]


@pytest.mark.parametrize("kind", KINDS)
def test_env_observation_kinds_pass_checkers(kind, tiny_llama):
    env = make(tiny_llama, observation=kind)
    d, k = tiny_llama.hidden_size, 8
    assert env.observation_space.shape == (observation_size(kind, d, k),)
    assert env.observation_kind == kind
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(make(tiny_llama, observation=kind), warn=True)


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


def test_passthrough_columns():
    assert [passthrough_columns(k, 8) for k in ("pooled", "layer:4", "segments", "attention:4")] == [2, 2, 16, 19]


# ---------------------------------------------------------------------------------------------- formulations
def test_formulation_at_gym_make(tiny_llama):
    from skipenv.envs.wrappers import BudgetConditioned, ExpectedConstraint

    with warnings.catch_warnings():
        warnings.simplefilter("error", UserWarning)  # formulation_kwargs (a dict of plain values) stays in the spec
        env = skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, formulation="expected", tau=0.05,
                           formulation_kwargs={"lr": 0.2, "update_every": 2}, **SMALL)
    expected = [x for x in _chain(env) if isinstance(x, ExpectedConstraint)]
    assert len(expected) == 1 and type(env.unwrapped) is SwitchDecEnv
    assert expected[0].tau == 0.05 == env.unwrapped.tau and expected[0].multiplier.lr == 0.2
    assert expected[0].multiplier.update_every == 2
    assert env.spec.kwargs["formulation_kwargs"] == {"lr": 0.2, "update_every": 2}
    env.reset(seed=0)
    _, reward, _, _, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    assert info["lagrange_multiplier"] == 0.0  # lam_init: the first reward is the FLOPs saved
    assert info["reward"] == reward == pytest.approx(1 - info["cost"])

    budget = skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, formulation="budget",
                          formulation_kwargs={"tau_range": [0.0, 0.2]}, observation="layer:2", **SMALL)
    assert any(isinstance(x, BudgetConditioned) for x in _chain(budget))
    assert budget.observation_space.shape == (34 + 1,)
    obs, info = budget.reset(seed=0)
    assert 0.0 <= info["tau"] <= 0.2 and obs[-1] == pytest.approx(info["tau"])
    default = skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, **SMALL)
    assert not any(isinstance(x, (ExpectedConstraint, BudgetConditioned)) for x in _chain(default))
    layerwise = skipenv.make("SwitchDec-XSum-Layerwise-v0", generator=tiny_llama, formulation="expected", **SMALL)
    assert type(layerwise.unwrapped) is SwitchDecLayerwiseEnv
    assert any(isinstance(x, ExpectedConstraint) and x.tau == 0.1 for x in _chain(layerwise))


def _chain(env):
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(env)
        env = env.env
    return out


def test_formulation_errors(tiny_llama):
    with pytest.raises(ValueError, match="unknown formulation 'lagrange'.*per_input"):
        skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, formulation="lagrange", **SMALL)
    with pytest.raises(ValueError, match="per_input formulation takes no formulation_kwargs"):
        skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, formulation_kwargs={"lr": 1.0}, **SMALL)
    with pytest.raises(ValueError, match=r"does not take formulation_kwargs \['tau_range'\]"):
        skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, formulation="expected",
                     formulation_kwargs={"tau_range": (0, 1)}, **SMALL)
    with skipenv.sharing(generator=tiny_llama):
        with pytest.raises(ValueError, match="vector_entry_point.*per_input formulation only"):
            gym.make_vec("SwitchDec-XSum-v0", num_envs=2, vectorization_mode="vector_entry_point",
                         formulation="expected", **SMALL)
        v = gym.make_vec("SwitchDec-XSum-v0", num_envs=2, vectorization_mode="vector_entry_point", **SMALL)
        assert v.reset(seed=0)[0].shape == (2, 34)


# ---------------------------------------------------------------------------------------------- probe
def test_probe_options_and_attention_features(smollm2_tokenizer, tmp_path):
    import argparse

    from skipenv.evaluation import probe
    from skipenv.cli.probe import configure_parser
    from skipenv.envs.observations import feature_table

    p = argparse.ArgumentParser()
    configure_parser(p)
    args = p.parse_args(["--quality", "probability", "--observation", "attention:4", "--observations", "layer:2",
                         "attention:2"])
    assert (args.quality, args.observation, args.observations) == ("probability", "attention:4",
                                                                   ["layer:2", "attention:2"])
    with pytest.raises(ValueError, match="formulation"):
        probe.run_probe(env_kwargs={"formulation": "expected"}, out_dir=tmp_path)
    with pytest.raises(ValueError, match="unknown observation kind"):
        probe.run_probe(env_kwargs={"observation": "attention"}, out_dir=tmp_path)

    g = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)

    def make_env(split, n):
        return SwitchDecEnv("xsum", generator=g, split=split, num_examples=n, max_new_tokens=5,
                            max_input_tokens=96, disk_cache=False, observation="attention:2", quality="probability")

    table = probe.evaluate_menu(make_env, num_train=4, num_test=3, progress=False)
    assert table.observations.filter(like="obs_").shape == (7, 32 + 2 * 8 + 3)
    feats = feature_table(make_env, table, "attention:3", progress=False)
    assert feats.filter(like="f_").shape == (7, 32 + 19)
    env = make_env("train", 4)
    prompt = env.prompt(env.examples[0])
    row = feats[(feats["split"] == "train") & (feats["doc"] == 0)].iloc[0]
    assert row["extra_flops"] == 2 * g.flops_model.first_layer(len(prompt))
    np.testing.assert_allclose(row.filter(like="f_").to_numpy(float),
                               attention_features(g, prompt, 3, token_segments=8, max_input_tokens=96), atol=1e-6)
    cmp = probe.compare_observations(table, 0.05, {"attention:2 (env)": None, "attention:3": feats},
                                     {"attention:2 (env)": 19, "attention:3": 19})
    assert list(cmp["observation"]) == ["attention:2 (env)", "attention:3"]


def test_records_check_the_observation(tiny_llama):
    """A recorded episode's cost includes its observation's FLOPs: replaying it under another observation kind is
    flagged (a note naming the setting), under the same kind it validates."""
    from skipenv.envs.records import EpisodeRecord, validate

    env = make(tiny_llama, observation="layer:2")
    env.reset(options={"index": 0})
    _, _, _, _, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    record = EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={"observation": "layer:2"})
    same = validate(record, env=make(tiny_llama, observation="layer:2"))
    assert same.ok, same.notes
    # the env accepts "layer:02" as "layer:2": a record of that spelling validates (it was flagged as differing)
    spelt = EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={"observation": "layer:02"})
    assert validate(spelt, env=make(tiny_llama, observation="layer:02")).ok
    other = validate(record, env=make(tiny_llama))
    assert not other.ok and any("observation" in n for n in other.notes) and "cost" in other.mismatches
