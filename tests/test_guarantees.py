"""Nothing silently wrong: full-output cache identity and integrity, constructor / reset / action validation, the
Gymnasium and stable-baselines3 contract, episode records, and a hypothesis fuzz of the env's inputs — on a tiny
random-weight Llama with the embedded SmolLM2 tokenizer and real XSum rows."""

from __future__ import annotations

import dataclasses
import json
import math
import shutil
import warnings
from collections import Counter

import gymnasium as gym
import numpy as np
import pytest
import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skipenv
from skipenv.envs import Evaluator, SwitchDecEnv, SwitchDecLayerwiseEnv, model_fingerprint
from skipenv.assets import CacheLocationError
from skipenv.envs.cache import CacheWarning, value_checksum
from skipenv.envs.records import EpisodeRecord, validate
from skipenv.testing import tiny_generator

pytestmark = pytest.mark.assets  # the embedded tokenizer and XSum rows


KW = {"num_examples": 2, "max_new_tokens": 6, "max_input_tokens": 96, "disk_cache": False}


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**KW, **kw})


def count_generate(generator, monkeypatch) -> Counter:
    calls: Counter = Counter()
    original = generator.generate

    def counted(*args, **kwargs):
        calls["generate"] += 1
        return original(*args, **kwargs)

    monkeypatch.setattr(generator, "generate", counted)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# full-output cache: identity


def test_cache_key_covers_input_budget_and_model(tiny_llama, smollm2_tokenizer, xsum_task, tmp_path, monkeypatch):
    from skipenv.tasks import make_task

    ex = xsum_task.examples("train")[0]
    first = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    calls = count_generate(tiny_llama, monkeypatch)
    assert Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex) == first
    assert calls["generate"] == 0  # same input, budget and model: read from disk
    other_instruction = make_task("xsum", max_input_tokens=96, instruction="Summarise the article in five words.")
    Evaluator(tiny_llama, other_instruction, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    assert calls["generate"] == 1  # a changed prompt is a new key
    Evaluator(tiny_llama, xsum_task, max_new_tokens=5, cache_root=tmp_path).full_output(ex)
    assert calls["generate"] == 2  # a changed budget is a new key
    edited = dataclasses.replace(ex, document="Breaking news. " + ex.document)  # the lead survives truncation
    Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(edited)  # same id, new text
    assert calls["generate"] == 3


def test_model_fingerprint_covers_every_weight_and_is_remembered(smollm2_tokenizer):
    a, b = tiny_generator("llama", smollm2_tokenizer), tiny_generator("llama", smollm2_tokenizer)
    assert model_fingerprint(a) == model_fingerprint(b)
    with torch.no_grad():  # a late layer only, embeddings untouched (the old fingerprint read the first 4096 numbers)
        b.model.model.layers[-1].mlp.down_proj.weight.neg_()
    assert model_fingerprint(a) != model_fingerprint(b)  # in-place edit noticed (tensor version counters)
    c = tiny_generator("llama", smollm2_tokenizer)
    with torch.no_grad():
        c.model.model.layers[-1].mlp.down_proj.weight.neg_()
    assert model_fingerprint(c) == model_fingerprint(b)


# ---------------------------------------------------------------------------------------------------------------
# full-output cache: integrity


def _stored_file(root):
    files = list((root / "full").glob("*/*.json"))
    assert len(files) == 1
    return files[0]


def _rewrite(path, edit, fix_checksum: bool):
    record = json.loads(path.read_text())
    edit(record["value"])
    if fix_checksum:
        record["sha256"] = value_checksum(record["value"])
    path.write_text(json.dumps(record))


def _set(key, value):
    return lambda v: v.__setitem__(key, value)


def _bump_first_token(v):
    v["tokens"][0] = (v["tokens"][0] + 1) % 100


BAD_ENTRIES = [
    ("empty tokens", _set("tokens", []), True, "non-empty"),
    ("token ids as strings", lambda v: v.__setitem__("tokens", [str(t) for t in v["tokens"]]), True, "token id"),
    ("negative token id", lambda v: v["tokens"].__setitem__(0, -5), True, "token id"),
    ("token id past the vocabulary", lambda v: v["tokens"].__setitem__(0, 10**9), True, "token id"),
    ("text not a string", _set("text", 3), True, "text"),
    ("score a string", _set("target_score", "high"), True, "target_score"),
    ("prompt length of another input", _set("prompt_length", 57), True, "prompt_length"),
    ("one token changed, checksum stale", _bump_first_token, False, "checksum"),
]


@pytest.mark.parametrize("name,edit,fix_checksum,reason", BAD_ENTRIES, ids=[b[0] for b in BAD_ENTRIES])
def test_bad_cache_entry_is_dropped_and_recomputed(name, edit, fix_checksum, reason, tiny_llama, xsum_task, tmp_path,
                                                   monkeypatch):
    ex = xsum_task.examples("train")[0]
    clean = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    _rewrite(_stored_file(tmp_path), edit, fix_checksum)
    calls = count_generate(tiny_llama, monkeypatch)
    with pytest.warns(CacheWarning, match=reason):
        again = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path).full_output(ex)
    assert again == clean and calls["generate"] == 1
    assert json.loads(_stored_file(tmp_path).read_text())["value"]["tokens"] == list(clean.tokens)  # repaired


def test_cache_folder_removed_mid_run_is_recreated(tiny_llama, xsum_task, tmp_path):
    ev = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path)
    a, b = xsum_task.examples("train")[:2]
    ev.full_output(a)
    shutil.rmtree(tmp_path / "full")
    ev.full_output(b)
    assert len(list((tmp_path / "full").glob("*/*.json"))) == 1


def test_read_only_cache_falls_back_to_memory_with_one_warning(tiny_llama, xsum_task, tmp_path, monkeypatch):
    import skipenv.envs.cache as cache_module

    def refuse(*args, **kwargs):
        raise PermissionError(13, "Permission denied")

    monkeypatch.setattr(cache_module.tempfile, "mkstemp", refuse)  # root ignores chmod: refuse writes instead
    ev = Evaluator(tiny_llama, xsum_task, max_new_tokens=6, cache_root=tmp_path)
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        for ex in xsum_task.examples("train")[:3]:
            ev.full_output(ex)
    assert [str(w.message) for w in seen if issubclass(w.category, CacheWarning)].__len__() == 1
    assert ev.disk.in_memory and not list(tmp_path.glob("full/*/*.json"))


def test_cache_path_that_is_a_file_is_one_clear_error(tiny_llama, tmp_path, monkeypatch):
    f = tmp_path / "not-a-folder"
    f.write_text("x")
    monkeypatch.setenv("SKIPENV_CACHE", str(f))
    with pytest.raises(CacheLocationError, match="SKIPENV_CACHE") as err:
        make(tiny_llama, disk_cache=True)
    assert "\n" not in str(err.value) and err.value.__cause__ is None


# ---------------------------------------------------------------------------------------------------------------
# constructor arguments, reset options, actions

BAD_KWARGS = [
    ("max_new_tokens", -5), ("max_new_tokens", 0), ("max_new_tokens", 2.5), ("max_new_tokens", "8"),
    ("tau", float("nan")), ("tau", float("inf")), ("tau", -0.1), ("tau", "0.1"),
    ("cost_weight", float("nan")), ("lam", float("nan")), ("num_examples", -1), ("num_examples", 0),
    ("num_examples", 2.7), ("token_segments", 2.5), ("token_segments", -1), ("max_input_tokens", 4),
    ("max_input_tokens", 100.5), ("reward_mode", "best"), ("quality", "bleu"), ("candidates", ("heads",)),
    ("candidates", "attention"), ("layer_block", 0), ("layer_block", 1.5), ("lru_size", -1), ("split", 3),
    ("record_time", "yes"), ("disk_cache", None),
]


@pytest.mark.parametrize("name,value", BAD_KWARGS, ids=[f"{n}={v!r}" for n, v in BAD_KWARGS])
def test_bad_constructor_argument_is_named(name, value, tiny_llama):
    arg = "candidate" if name == "candidates" else name
    with pytest.raises(ValueError, match=arg):
        make(tiny_llama, **{name: value})


def test_arguments_are_checked_before_anything_loads():
    with pytest.raises(ValueError, match="tau"):  # would otherwise fail on loading the model
        SwitchDecEnv("xsum", model="/no/such/model", tau=float("nan"))


BAD_OPTIONS = [({"index": "abc"}, "index"), ({"index": 1.7}, "index"), ({"index": True}, "index"),
               ({"index": 99}, "index"), ({"example_id": 5}, "example_id"), ({"example_id": "nope"}, "example_id"),
               ({"idx": 0}, "idx"), ({"index": 0, "example_id": "x"}, "only one"), ([0], "dict")]


@pytest.mark.parametrize("options,match", BAD_OPTIONS, ids=[repr(o) for o, _ in BAD_OPTIONS])
@pytest.mark.parametrize("cls", [SwitchDecEnv, SwitchDecLayerwiseEnv], ids=["one-shot", "layerwise"])
def test_bad_reset_options_are_named(options, match, cls, tiny_llama):
    env = make(tiny_llama, cls)
    with pytest.raises(ValueError, match=match):
        env.reset(options=options)
    assert env.reset(options={"index": np.int64(1)})[1]["example_id"] == env.examples[1].id


@pytest.mark.parametrize("action", [np.array([None] * 16), np.zeros(3), np.full(16, 2), "abc", None,
                                    np.full(16, np.nan), [[0] * 16]], ids=lambda a: repr(a)[:30])
def test_bad_one_shot_actions(action, tiny_llama):
    env = make(tiny_llama)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action"):
        env.step(action)


@pytest.mark.parametrize("action", [None, "1", 1.5, 7, -1, [1], np.array([1, 2]), True], ids=repr)
def test_bad_layerwise_actions(action, tiny_llama):
    env = make(tiny_llama, SwitchDecLayerwiseEnv)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="Discrete"):
        env.step(action)


# ---------------------------------------------------------------------------------------------------------------
# Gymnasium / stable-baselines3 contract


@pytest.mark.parametrize("cls", [SwitchDecEnv, SwitchDecLayerwiseEnv], ids=["one-shot", "layerwise"])
def test_step_after_termination_names_reset(cls, tiny_llama):
    env = make(tiny_llama, cls)
    env.reset(seed=0)
    terminated = False
    while not terminated:
        _, _, terminated, _, _ = env.step(env.action_space.sample() * 0)
    with pytest.raises(RuntimeError, match=r"reset\(\)"):
        env.step(env.action_space.sample() * 0)
    env.reset()
    env.step(env.action_space.sample() * 0)  # fine again after reset


@pytest.mark.parametrize("cls", [SwitchDecEnv, SwitchDecLayerwiseEnv], ids=["one-shot", "layerwise"])
def test_render_ansi(cls, tiny_llama):
    env = make(tiny_llama, cls, render_mode="ansi")
    assert env.render() is None  # nothing to show before the first reset
    env.reset(seed=0)
    text = env.render()
    assert isinstance(text, str) and env.example.id in text
    terminated = False
    while not terminated:
        _, reward, terminated, _, _ = env.step(env.action_space.sample() * 0)
    assert f"reward {reward:.3f}" in env.render()


def test_sb3_make_vec_env_rgb_array_warns_and_runs(tiny_llama):
    from stable_baselines3.common.env_util import make_vec_env

    with skipenv.envs.registration.sharing(generator=tiny_llama):
        with pytest.warns(UserWarning, match="render_mode='rgb_array'"):
            venv = make_vec_env("SwitchDec-XSum-v0", n_envs=2, env_kwargs=KW)
    obs = venv.reset()
    assert obs.shape == (2, 34)
    _, rewards, dones, infos = venv.step(np.zeros((2, 16), dtype=np.int8))
    assert dones.all() and np.isfinite(rewards).all() and "quality" in infos[0]


def test_generator_through_gym_make_kwargs_warns_and_stays_out_of_the_spec(tiny_llama):
    with pytest.warns(UserWarning, match=r"skipenv\.make"):
        env = gym.make("SwitchDec-XSum-v0", generator=tiny_llama, **KW)
    assert "generator" not in env.spec.kwargs  # the wrapper's spec deep-copies the base spec: no model in it
    assert json.loads(env.spec.to_json())["kwargs"]["num_examples"] == 2
    assert env.unwrapped.generator is tiny_llama
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the supported way is silent (on the latest version: v0 is "out of date")
        shared = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **KW)
    assert shared.unwrapped.generator is tiny_llama and "generator" not in shared.spec.kwargs


# ---------------------------------------------------------------------------------------------------------------
# records


def _record(env, action, env_id):
    env.reset(options={"index": 1})
    terminated = False
    for a in action:
        *_, terminated, _, info = env.step(a)
    assert terminated
    return EpisodeRecord.from_step(env, info, env_id=env_id, env_kwargs=KW)


def test_records_validate_only_for_the_same_model_and_a_known_version(tiny_llama, smollm2_tokenizer):
    env = make(tiny_llama)
    a = np.zeros(env.action_space.n, dtype=np.int8)
    a[[1, 9]] = 1
    rec = _record(env, [a], "SwitchDec-XSum-v0")
    assert validate(rec, env=make(tiny_llama))
    other = tiny_generator("llama", smollm2_tokenizer, seed=1)
    result = validate(rec, env=make(other))
    assert not result and any("fingerprint" in n for n in result.notes)
    for version in ("99.0.0", "abc", ""):
        result = validate(dataclasses.replace(rec, skipenv_version=version), env=make(tiny_llama))
        assert not result and result.notes


def test_layerwise_record_validates(tiny_llama):
    lw = make(tiny_llama, SwitchDecLayerwiseEnv)
    rec = _record(lw, [2, 1, 0, 3, 2], "SwitchDec-XSum-Layerwise-v0")
    assert validate(rec, env=make(tiny_llama, SwitchDecLayerwiseEnv))
    assert not validate(dataclasses.replace(rec, cost=rec.cost * 0.5), env=make(tiny_llama, SwitchDecLayerwiseEnv))


# ---------------------------------------------------------------------------------------------------------------
# property-based fuzzing: documented exceptions only, finite rewards, independent infos

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


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(kw=kwargs, opts=options, action=actions)
def test_fuzz_one_shot(tiny_llama, kw, opts, action):
    try:
        env = make(tiny_llama, **{"max_new_tokens": 4, "num_examples": 2, **kw})
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


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(steps=st.lists(st.one_of(st.integers(-1, 4), scalars), min_size=1, max_size=8), opts=options)
def test_fuzz_layerwise(tiny_llama, steps, opts):
    env = make(tiny_llama, SwitchDecLayerwiseEnv, max_new_tokens=4)
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
