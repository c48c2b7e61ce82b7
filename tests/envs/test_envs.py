"""SwitchDec environments on a tiny random-weight Llama with the embedded SmolLM2 tokenizer and real XSum rows:
API checkers, determinism, pickling, spaces, invalid actions, caching."""

from __future__ import annotations

import pickle

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import skipenv
from skipenv.envs.cache import CacheWarning, DiskCache
from skipenv.envs import SwitchDecEnv, SwitchDecLayerwiseEnv
from skipenv.testing import tiny_generator
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import math

pytestmark = pytest.mark.assets  # the embedded tokenizer and XSum rows


def make(generator, cls=SwitchDecEnv, tmp_cache=True, **kw):
    kw.setdefault("num_examples", 3)
    kw.setdefault("max_new_tokens", 6)
    kw.setdefault("max_input_tokens", 96)
    kw.setdefault("disk_cache", False)
    return cls("xsum", generator=generator, **kw)


def test_checkers_pass_one_shot(tiny_llama):
    env = make(tiny_llama)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(make(tiny_llama), warn=True)


def test_checkers_pass_layerwise(tiny_llama):
    env = make(tiny_llama, SwitchDecLayerwiseEnv)
    gym_check_env(env, skip_render_check=True)
    sb3_check_env(make(tiny_llama, SwitchDecLayerwiseEnv), warn=True)


def test_spaces_and_info(tiny_llama):
    env = make(tiny_llama)
    assert env.action_space.n == 2 * 4 + 8  # 4 layers x {attention, ffn} + 8 token segments
    assert env.observation_space.shape == (32 + 2,)
    obs, info = env.reset(seed=1)
    assert env.observation_space.contains(obs)
    _, reward, terminated, truncated, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    assert terminated and not truncated and isinstance(reward, float)
    for key in ("quality", "quality_full", "constraint_satisfied", "cost", "flops", "flops_full",
                "flops_breakdown", "plan", "example_id"):
        assert key in info
    # skip nothing: quality 1 and cost = 1 + observation overhead (first layer of 4 over the full prompt)
    assert info["quality"] == 1.0 and info["constraint_satisfied"]
    assert info["flops"] == info["flops_full"] + info["flops_breakdown"]["observation"]
    assert 1.0 < info["cost"] < 1.0 + 1 / 4
    assert "time_s" not in info


def test_more_skipping_costs_less(tiny_llama):
    env = make(tiny_llama)
    env.reset(seed=0)
    a = np.zeros(env.action_space.n, dtype=np.int8)
    costs = []
    # token segments first (they shrink every sublayer's work), then the sublayers one by one
    for bit in list(range(8, 16)) + list(range(8)):
        a[bit] = 1
        env.reset(options={"index": 0})
        costs.append(env.step(a)[4]["cost"])
    assert all(c2 < c1 for c1, c2 in zip(costs, costs[1:]))


def test_candidates_and_blocks(tiny_llama):
    env = make(tiny_llama, candidates=("attention",))
    assert env.action_space.n == 4
    plan = env.action_to_plan(np.array([1, 0, 0, 1]))
    assert plan.decoder_attention == (True, False, False, True) and not any(plan.decoder_ffn + plan.tokens)
    env = make(tiny_llama, layer_block=2, token_segments=4)
    assert env.action_space.n == 2 + 2 + 4
    assert env.action_labels[:2] == ["decoder.attention.0-1", "decoder.attention.2-3"]
    plan = env.action_to_plan(np.array([0, 1, 1, 0, 0, 0, 0, 1]))
    assert plan.decoder_attention == (False, False, True, True)
    assert plan.decoder_ffn == (True, True, False, False) and plan.tokens == (False, False, False, True)
    assert (env.plan_to_action(plan) == np.array([0, 1, 1, 0, 0, 0, 0, 1])).all()
    with pytest.raises(ValueError, match="candidate"):
        make(tiny_llama, candidates=("heads",))


def test_invalid_actions_are_rejected(tiny_llama):
    env = make(tiny_llama)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="shape"):
        env.step(np.zeros(3))
    with pytest.raises(ValueError, match="0 or 1"):
        env.step(np.full(env.action_space.n, 2))
    lw = make(tiny_llama, SwitchDecLayerwiseEnv)
    lw.reset(seed=0)
    with pytest.raises(ValueError, match="Discrete"):
        lw.step(7)


def test_same_seed_same_episodes(tiny_llama):
    a, b = make(tiny_llama, num_examples=5), make(tiny_llama, num_examples=5)
    a.action_space.seed(3)
    b.action_space.seed(3)
    for i in range(6):
        oa, ia = a.reset(seed=11 if i == 0 else None)
        ob, ib = b.reset(seed=11 if i == 0 else None)
        assert ia == ib and np.array_equal(oa, ob)
        act = a.action_space.sample()
        assert np.array_equal(act, b.action_space.sample())
        ra, rb = a.step(act), b.step(act)
        assert ra[1] == rb[1] and ra[4] == rb[4]


def test_env_pickles(tiny_llama):
    env = make(tiny_llama)
    env.reset(seed=0)
    clone = pickle.loads(pickle.dumps(env))
    act = np.zeros(env.action_space.n, dtype=np.int8)
    act[1] = 1
    env.reset(options={"index": 1})
    clone.reset(options={"index": 1})
    assert env.step(act)[4] == clone.step(act)[4]


def test_layerwise_episode_matches_one_shot(tiny_llama):
    lw = make(tiny_llama, SwitchDecLayerwiseEnv, token_segments=4)
    one = make(tiny_llama, token_segments=4)
    obs, _ = lw.reset(options={"index": 0})
    assert obs[-1] == 1.0  # token step flag
    actions = [2, 1, 0, 3, 2]  # skip last 50% tokens, then layers: attn, keep, both, ffn
    for t, a in enumerate(actions):
        obs, reward, terminated, _, info = lw.step(a)
        assert terminated == (t == len(actions) - 1)
        if not terminated:
            assert reward == 0.0
    one.reset(options={"index": 0})
    plan = skipenv.SkipPlan.from_skips(one.plan_spec, attention=[0, 2], ffn=[2, 3], tokens=[2, 3])
    expected = one.step(one.plan_to_action(plan))[4]
    assert info["plan"] == expected["plan"] and info["reward"] == expected["reward"]


def test_layerwise_hidden_state_is_real(tiny_llama):
    """The layerwise observation after layer l equals the hidden state the model itself produces there."""
    import torch

    lw = make(tiny_llama, SwitchDecLayerwiseEnv, token_segments=4)
    lw.reset(options={"index": 0})
    obs, *_ = lw.step(0)  # keep all tokens
    obs, *_ = lw.step(0)  # layer 0 kept
    prompt = lw.prompt()
    with torch.inference_mode():
        hs = tiny_llama.model(input_ids=torch.tensor([prompt.input_ids]), output_hidden_states=True).hidden_states
    np.testing.assert_allclose(obs[:32], hs[1][0].mean(0).numpy(), atol=1e-5)


def test_quality_modes_and_reward_modes(tiny_llama):
    for quality in ("agreement", "rouge", "reference", "fidelity", "likelihood"):
        env = make(tiny_llama, quality=quality, reward_mode="vector")
        env.reset(seed=0)
        _, r, *_, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
        assert info["reward_vector"] == (info["quality"], info["cost"])
        assert info["quality"] == pytest.approx(info["quality_full"])
        if quality in ("rouge", "fidelity"):
            assert "text" in info
    env = make(tiny_llama, reward_mode="weighted", cost_weight=0.5)
    env.reset(seed=0)
    _, r, *_, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    assert r == pytest.approx(info["quality"] - 0.5 * info["cost"])
    with pytest.warns(DeprecationWarning, match="removed in skipenv 0.3; use cost_weight"):  # the old name of the weight still works
        old = make(tiny_llama, reward_mode="weighted", lam=0.25)
    old.reset(seed=0)
    _, r, *_, info = old.step(np.zeros(old.action_space.n, dtype=np.int8))
    assert r == pytest.approx(info["quality"] - 0.25 * info["cost"])
    with pytest.raises(ValueError, match="quality"):
        make(tiny_llama, quality="bleu")


def test_record_time_is_opt_in(tiny_llama):
    env = make(tiny_llama, record_time=True)
    env.reset(seed=0)
    assert env.step(np.zeros(env.action_space.n, dtype=np.int8))[4]["time_s"] >= 0


def test_full_reference_disk_cache_survives_corruption(tiny_llama, tmp_path, monkeypatch):
    monkeypatch.setenv("SKIPENV_CACHE", str(tmp_path))
    env = make(tiny_llama, disk_cache=True)
    env.reset(options={"index": 0})
    first = env.step(np.zeros(env.action_space.n, dtype=np.int8))[4]
    files = list((tmp_path / "full").glob("*/*.json"))
    assert len(files) == 1
    files[0].write_text("{not json")
    env2 = make(tiny_llama, disk_cache=True)
    env2.reset(options={"index": 0})
    with pytest.warns(CacheWarning, match="unreadable"):
        assert env2.step(np.zeros(env.action_space.n, dtype=np.int8))[4] == first
    cache = DiskCache("x", root=tmp_path)
    cache.put("k", [1, 2])
    assert cache.get("k") == [1, 2] and cache.get("other") is None


def test_reset_options(tiny_llama):
    env = make(tiny_llama)
    ex_id = env.examples[2].id
    assert env.reset(options={"example_id": ex_id})[1]["example_id"] == ex_id
    with pytest.raises(ValueError, match="not in split"):
        env.reset(options={"example_id": "nope"})
    with pytest.raises(ValueError, match="out of range"):
        env.reset(options={"index": 99})


def test_registered_ids():
    assert set(skipenv.OFFLINE_IDS) <= set(skipenv.ENV_IDS)
    for env_id in ("SwitchDec-XSum-v0", "SwitchDec-XSum-Layerwise-v0", "SwitchDec-CNNDM-v0", "SwitchDec-SQuAD-v0",
                   "SwitchDec-DisflQA-v0", "SwitchDec-SST2-v0", "SwitchDec-RottenTomatoes-v0"):
        assert env_id in gym.registry


@pytest.mark.parametrize("env_id", ["SwitchDec-CNNDM-v0", "SwitchDec-SQuAD-v0", "SwitchDec-SST2-v0"])
def test_hub_only_ids_fail_clearly_offline(env_id, tiny_llama, hf_offline, monkeypatch):
    monkeypatch.setenv("HF_DATASETS_OFFLINE", "1")
    from skipenv.tasks import DatasetUnavailableError

    with pytest.raises(DatasetUnavailableError, match="(?i)hub|offline|reach"):
        gym.make(env_id, generator=tiny_llama)


def test_encoder_decoder_env(tiny_bart_tokenizer):
    """The one-shot env drives an encoder-decoder generator (tiny BART): encoder and decoder candidates."""
    bart = tiny_generator("bart", tiny_bart_tokenizer)
    env = SwitchDecEnv("xsum", generator=bart, num_examples=2, max_new_tokens=5, max_input_tokens=64,
                       disk_cache=False, token_segments=4)
    assert env.action_space.n == 2 * 2 + 2 * 2 + 4
    assert env.action_labels[:4] == ["encoder.attention.0", "encoder.attention.1", "decoder.attention.0",
                                     "decoder.attention.1"]
    gym_check_env(env, skip_render_check=True)
    env.reset(seed=0)
    info = env.step(np.ones(env.action_space.n, dtype=np.int8) * 0)[4]
    assert info["quality"] == 1.0
    with pytest.raises(NotImplementedError, match="decoder-only"):
        SwitchDecLayerwiseEnv("xsum", generator=bart, num_examples=2, disk_cache=False)


def test_prefetch_batches_references(tiny_llama):
    env = make(tiny_llama, num_examples=4)
    assert env.prefetch(batch_size=3, progress=False) == 4
    assert env.prefetch(progress=False) == 0  # all cached now
    for ex in env.examples:
        single = tiny_llama.generate([env.prompt(ex)], None, max_new_tokens=env.max_new_tokens)
        assert list(env.full_output(ex).tokens) == single.tokens[0]


@pytest.mark.parametrize("env_id", ["SwitchDec-XSum-v0", "SwitchDec-XSum-Layerwise-v0", "SwitchDec-DisflQA-v0",
                                    "SwitchDec-RottenTomatoes-v0", "SwitchDec-RottenTomatoes-v1"])
def test_every_offline_id_passes_both_checkers(env_id, tiny_llama):
    # RT-v1's 2-shot prompt alone takes 105 tokens
    kw = {"num_examples": 3, "max_new_tokens": 4, "max_input_tokens": 160 if env_id.endswith("Tomatoes-v1") else 96,
          "disk_cache": False}
    env = skipenv.make(env_id, generator=tiny_llama, **kw)
    assert env.spec.kwargs["num_examples"] == 3 and "generator" not in env.spec.kwargs
    gym_check_env(env.unwrapped, skip_render_check=True)
    sb3_check_env(skipenv.make(env_id, generator=tiny_llama, **kw).unwrapped, warn=True)


@pytest.mark.assets
def test_real_embedded_env_in_a_fresh_process():
    """Integration: the real SmolLM2 + XSum through ``gym.make("skipenv:...")`` in a new interpreter (no prior
    ``import skipenv``), both API checkers, and a real step."""
    import subprocess
    import sys

    code = """
import gymnasium as gym, numpy as np
from gymnasium.utils.env_checker import check_env
from stable_baselines3.common.env_checker import check_env as sb3_check
kw = dict(split="test", num_examples=2, max_input_tokens=160, max_new_tokens=12)
env = gym.make("skipenv:SwitchDec-XSum-v0", **kw)
assert env.unwrapped.generator.model.config.num_hidden_layers == 30
check_env(env.unwrapped, skip_render_check=True)
sb3_check(gym.make("skipenv:SwitchDec-XSum-v0", **kw).unwrapped)
obs, info = env.reset(seed=0)
a = np.zeros(env.action_space.n, dtype=np.int8)
_, r0, *_, i0 = env.step(a)
a[0] = 1  # attention of layer 0 is vital in SmolLM2
env.reset(options={"example_id": info["example_id"]})
_, r1, *_, i1 = env.step(a)
assert i0["quality"] == 1.0 and i1["quality"] < i0["quality"] and i1["cost"] < i0["cost"], (i0, i1)
print("OK", env.action_space, r0, r1)
"""
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0 and "OK MultiBinary(68)" in proc.stdout, proc.stdout[-2000:] + proc.stderr[-4000:]


def test_model_fingerprint_ignores_the_load_path_but_not_the_weights():
    from skipenv.envs.evaluator import model_fingerprint

    a, b, other = tiny_generator("llama"), tiny_generator("llama"), tiny_generator("llama", seed=1)
    b.model.config._name_or_path = "/some/other/cache/dir"
    assert model_fingerprint(a) == model_fingerprint(b) != model_fingerprint(other)


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


@pytest.fixture(scope="module")
def generator(smollm2_tokenizer):
    return tiny_generator("llama", smollm2_tokenizer)


KW = {"num_examples": 2, "max_new_tokens": 6, "max_input_tokens": 96, "disk_cache": False}


def make_small(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**KW, **kw})


MORE_BAD_KWARGS = [
    ({"task": 123}, "task must be"), ({"task": None}, "task must be"), ({"task_source": ""}, "task_source"),
    ({"cost_weight": 2.0}, "cost_weight"), ({"cost_weight": 2.0, "reward_mode": "vector"}, "cost_weight"),
    ({"token_segments": 0, "candidates": ("tokens",)}, "no action bits"),
]


@pytest.mark.hardening
@pytest.mark.parametrize("kw,match", MORE_BAD_KWARGS, ids=[repr(k) for k, _ in MORE_BAD_KWARGS])
def test_more_bad_constructor_arguments_are_named(kw, match, generator):
    task = kw.pop("task", "xsum")
    with pytest.raises(ValueError, match=match):
        SwitchDecEnv(task, generator=generator, **{**KW, **kw})


@pytest.mark.hardening
def test_lam_with_the_lexicographic_reward_is_refused(generator):
    with pytest.warns(DeprecationWarning), pytest.raises(ValueError, match="reward_mode='weighted'"):
        make_small(generator, lam=0.5)


# ----------------------------------------------------------------------------------------------------
# moved here from the guarantees campaign (tests/test_guarantees.py, dissolved by issue 19)


BAD_KWARGS = [
    ("max_new_tokens", -5), ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("max_new_tokens", "8"),
    ("tau", float("nan")), ("tau", float("inf")), ("tau", -0.1), ("tau", "0.1"),
    ("cost_weight", float("nan")), ("lam", float("nan")), ("num_examples", -1), ("num_examples", 0),
    ("num_examples", 2.7), ("token_segments", 2.5), ("token_segments", -1), ("max_input_tokens", 4),
    ("max_input_tokens", 100.5), ("reward_mode", "best"), ("quality", "bleu"), ("candidates", ("heads",)),
    ("candidates", "attention"), ("layer_block", 0), ("layer_block", 1.5), ("lru_size", -1), ("split", 3),
    ("record_time", "yes"), ("disk_cache", None),
]


@pytest.mark.hardening
@pytest.mark.parametrize("name,value", BAD_KWARGS, ids=[f"{n}={v!r}" for n, v in BAD_KWARGS])
def test_bad_constructor_argument_is_named(name, value, tiny_llama):
    arg = "candidate" if name == "candidates" else name
    with pytest.raises(ValueError, match=arg):
        make_small(tiny_llama, **{name: value})


@pytest.mark.hardening
def test_arguments_are_checked_before_anything_loads():
    with pytest.raises(ValueError, match="tau"):  # would otherwise fail on loading the model
        SwitchDecEnv("xsum", model="/no/such/model", tau=float("nan"))


BAD_OPTIONS = [({"index": "abc"}, "index"), ({"index": 1.7}, "index"), ({"index": True}, "index"),
               ({"index": 99}, "index"), ({"example_id": 5}, "example_id"), ({"example_id": "nope"}, "example_id"),
               ({"idx": 0}, "idx"), ({"index": 0, "example_id": "x"}, "only one"), ([0], "dict")]


@pytest.mark.hardening
@pytest.mark.parametrize("options,match", BAD_OPTIONS, ids=[repr(o) for o, _ in BAD_OPTIONS])
@pytest.mark.parametrize("cls", [SwitchDecEnv, SwitchDecLayerwiseEnv], ids=["one-shot", "layerwise"])
def test_bad_reset_options_are_named(options, match, cls, tiny_llama):
    env = make_small(tiny_llama, cls)
    with pytest.raises(ValueError, match=match):
        env.reset(options=options)
    assert env.reset(options={"index": np.int64(1)})[1]["example_id"] == env.examples[1].id


@pytest.mark.hardening
@pytest.mark.parametrize("action", [np.array([None] * 16), np.zeros(3), np.full(16, 2), "abc", None,
                                    np.full(16, np.nan), [[0] * 16]], ids=lambda a: repr(a)[:30])
def test_bad_one_shot_actions(action, tiny_llama):
    env = make_small(tiny_llama)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


@pytest.mark.hardening
@pytest.mark.parametrize("action", [None, "1", 1.5, 7, -1, [1], np.array([1, 2]), True], ids=repr)
def test_bad_layerwise_actions(action, tiny_llama):
    env = make_small(tiny_llama, SwitchDecLayerwiseEnv)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Discrete"):
        env.step(action)


@pytest.mark.hardening
@pytest.mark.parametrize("cls", [SwitchDecEnv, SwitchDecLayerwiseEnv], ids=["one-shot", "layerwise"])
def test_step_after_termination_names_reset(cls, tiny_llama):
    env = make_small(tiny_llama, cls)
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(env.action_space.sample() * 0)
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.step(env.action_space.sample() * 0)
    env.reset()
    env.step(env.action_space.sample() * 0)  # fine again after reset


@pytest.mark.hardening
@pytest.mark.parametrize("cls", [SwitchDecEnv, SwitchDecLayerwiseEnv], ids=["one-shot", "layerwise"])
def test_render_ansi(cls, tiny_llama):
    env = make_small(tiny_llama, cls, render_mode="ansi")
    assert env.render() is None  # nothing to show before the first reset
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and env.example.id in text
    terminated = False
    while not terminated:
        _, reward, terminated, _, _ = env.step(env.action_space.sample() * 0)
    assert f"reward {reward:.3f}" in env.render()


@pytest.mark.hardening
def test_sb3_make_vec_env_rgb_array_warns_and_runs(tiny_llama):
    from stable_baselines3.common.env_util import make_vec_env

    with skipenv.envs.registration.sharing(generator=tiny_llama):
        with pytest.warns(UserWarning, match="render_mode='rgb_array'"):
            venv = make_vec_env("SwitchDec-XSum-v0", n_envs=2, env_kwargs=KW)
    obs = venv.reset()
    assert obs.shape == (2, 34)
    _, rewards, dones, infos = venv.step(np.zeros((2, 16), dtype=np.int8))
    assert dones.all() and np.isfinite(rewards).all() and "quality" in infos[0]


DOCUMENTED = (ValueError, RuntimeError)  # PlanError is a ValueError


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=3))


actions = st.one_of(
    scalars,
    st.lists(st.integers(-1, 2), min_size=0, max_size=20).map(np.array),
    st.lists(st.sampled_from([0, 1]), min_size=16, max_size=16).map(lambda v: np.array(v, dtype=np.int8)),
    st.lists(st.sampled_from([0.0, 1.0, 0.5, float("nan")]), min_size=16, max_size=16).map(np.array),
    st.lists(scalars, min_size=16, max_size=16).map(lambda v: np.array(v, dtype=object)),
)


options = st.one_of(st.none(), st.dictionaries(st.sampled_from(["index", "example_id", "seed", "x"]), scalars,
                                               max_size=2), st.lists(scalars, max_size=2))


kwargs = st.fixed_dictionaries({}, optional={
    "tau": scalars, "max_new_tokens": scalars, "num_examples": scalars, "token_segments": scalars,
    "cost_weight": scalars, "reward_mode": st.sampled_from(["lexicographic", "weighted", "vector", "other"]),
    "quality": st.sampled_from(["agreement", "rouge", "reference", "fidelity", "likelihood", "x"]),
    "layer_block": scalars})


def _check_step(env, action):
    try:
        out = env.step(action)
    except DOCUMENTED:
        return None
    reward, info = out[1], out[4]
    assert math.isfinite(reward)
    return info


@pytest.mark.hardening
@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(kw=kwargs, opts=options, action=actions)
def test_fuzz_one_shot(tiny_llama, kw, opts, action):
    try:
        env = make_small(tiny_llama, **{"max_new_tokens": 4, "num_examples": 2, **kw})
    except DOCUMENTED:
        return
    try:
        env.reset(seed=0, options=opts)
    except DOCUMENTED:
        env.reset(seed=0)
    info = _check_step(env, action)
    if info is not None:
        replay = dict(info)
        info["flops_breakdown"]["total"] = -1
        info["quality"] = float("nan")
        env.reset(options={"example_id": replay["example_id"]})
        again = env.step(action)[4]
        assert again["flops_breakdown"]["total"] == replay["flops"] and again["quality"] == replay["quality"]


@pytest.mark.hardening
@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(steps=st.lists(st.one_of(st.integers(-1, 4), scalars), min_size=1, max_size=8), opts=options)
def test_fuzz_layerwise(tiny_llama, steps, opts):
    env = make_small(tiny_llama, SwitchDecLayerwiseEnv, max_new_tokens=4)
    try:
        env.reset(seed=0, options=opts)
    except DOCUMENTED:
        env.reset(seed=0)
    for a in steps:
        try:
            _, reward, terminated, _, _ = env.step(a)
        except DOCUMENTED:
            continue
        assert math.isfinite(reward)
