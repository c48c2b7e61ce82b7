"""Episode records (skipenv.envs.records): replay validation against the env that made them (model,
version, settings, task, observation), tampered record files refused by name, and a hypothesis fuzz of
record files."""

from __future__ import annotations

import dataclasses
import json

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import skipenv
from skipenv.envs import SwitchDecEnv, SwitchDecLayerwiseEnv
from skipenv.envs.records import EpisodeRecord, validate
from skipenv.testing import tiny_generator

# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


from _tiny_env import KW, make  # noqa: E402  (the shared tiny env; its generator fixture: conftest.py)


@pytest.fixture(scope="module")
def record(generator):
    from skipenv.envs.records import EpisodeRecord

    env = make(generator, tau=0.3)
    env.reset(options={"index": 1})
    info = env.step(np.ones(env.action_space.n, dtype=np.int8))[4]
    return EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={**KW, "tau": 0.3})


TAMPERED = [("foo", 1, "unknown fields"), ("reward", "1.0", "reward"), ("reward", float("nan"), "reward"),
            ("cost", True, "cost"), ("env_kwargs", [1], "env_kwargs"), ("skipenv_version", None, "skipenv_version"),
            ("example_id", 5, "example_id")]


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("field,value,named", TAMPERED, ids=[f"{f}={v!r}" for f, v, _ in TAMPERED])
def test_tampered_record_json_is_refused_by_name(field, value, named, record):
    from skipenv.envs.records import EpisodeRecord

    d = json.loads(record.to_json())
    d[field] = value
    with pytest.raises(ValueError, match=named):
        EpisodeRecord.from_json(json.dumps(d))
    with pytest.raises(ValueError, match="JSON object"):
        EpisodeRecord.from_json("[1, 2]")


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("kw,note", [({}, "tau"), ({"tau": 0.3, "quality": "fidelity"}, "quality"),
                                     ({"tau": 0.3, "layer_block": 2}, "layer_block"),
                                     ({"tau": 0.3, "token_segments": 4}, "token_segments"),
                                     ({"tau": 0.3, "split": "all"}, "split")], ids=repr)
def test_record_does_not_validate_in_an_env_with_other_settings(kw, note, record, generator):
    """Skipping everything scores the same under several settings, so the numbers alone used to validate."""
    from skipenv.envs.records import validate

    assert validate(record, env=make(generator, tau=0.3))
    if "token_segments" in kw:  # the plan itself no longer fits: a named PlanError
        from skipenv.plan import PlanError

        with pytest.raises(PlanError):
            validate(record, env=make(generator, **kw))
        return
    result = validate(record, env=make(generator, **kw))
    assert not result and any(note in n for n in result.notes), result.notes


@pytest.mark.hardening
@pytest.mark.assets
def test_record_of_another_task_or_env_class_does_not_validate(record, generator):
    import dataclasses

    from skipenv.envs.records import validate

    result = validate(dataclasses.replace(record, env_id="SwitchDec-DisflQA-v0"), env=make(generator, tau=0.3))
    assert not result and any("task differs" in n for n in result.notes)
    overridden = dataclasses.replace(record, env_id="SwitchDec-DisflQA-v0", env_kwargs={**record.env_kwargs,
                                                                                      "task": "xsum"})
    assert validate(overridden, env=make(generator, tau=0.3))  # gym.make(id, task=...) overrode the id's task
    result = validate(dataclasses.replace(record, env_id="SwitchDec-XSum-Layerwise-v0"),
                      env=make(generator, tau=0.3))
    assert not result and any("SwitchDecLayerwiseEnv" in n for n in result.notes)


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=3), st.lists(st.floats(0, 1), max_size=3))


record_values = st.recursive(scalars, lambda inner: st.one_of(st.lists(inner, max_size=3),
                                                              st.dictionaries(st.text(max_size=3), inner,
                                                                              max_size=3)), max_leaves=5)


@pytest.mark.hardening
@pytest.mark.assets
@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(edits=st.dictionaries(st.sampled_from(["env_id", "split", "example_id", "plan", "reward", "quality",
                                              "quality_full", "cost", "model_fingerprint", "skipenv_version",
                                              "env_kwargs", "extra"]), record_values, max_size=3))
def test_fuzz_record_files(record, edits):
    from skipenv.envs.records import EpisodeRecord

    d = {**json.loads(record.to_json()), **edits}
    try:
        text = json.dumps(d)
    except ValueError:
        return
    try:
        again = EpisodeRecord.from_json(text)
    except ValueError:
        return
    assert all(isinstance(getattr(again, k), float) or isinstance(getattr(again, k), int)
               for k in ("reward", "quality", "quality_full", "cost"))


# ----------------------------------------------------------------------------------------------------
# moved here from the guarantees campaign (tests/test_guarantees.py, dissolved by issue 19)


def _record(env, action, env_id):
    env.reset(options={"index": 1})
    terminated = False
    for a in action:
        *_, terminated, _, info = env.step(a)
    assert terminated
    return EpisodeRecord.from_step(env, info, env_id=env_id, env_kwargs=KW)


@pytest.mark.hardening
@pytest.mark.assets
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


@pytest.mark.hardening
@pytest.mark.assets
def test_layerwise_record_validates(tiny_llama):
    lw = make(tiny_llama, SwitchDecLayerwiseEnv)
    rec = _record(lw, [2, 1, 0, 3, 2], "SwitchDec-XSum-Layerwise-v0")
    assert validate(rec, env=make(tiny_llama, SwitchDecLayerwiseEnv))
    assert not validate(dataclasses.replace(rec, cost=rec.cost * 0.5), env=make(tiny_llama, SwitchDecLayerwiseEnv))


# ----------------------------------------------------------------------------------------------------
# moved here from SwitchDec-XSum-v1 (tests/test_v1.py, dissolved by issue 19)


SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


@pytest.mark.usefixtures("one_thread")
def test_records_of_v1_replay_without_false_setting_notes(tiny_llama):
    from skipenv.envs.records import EpisodeRecord, validate

    env = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **SMALL)
    env.reset(seed=0)
    *_, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    rec = EpisodeRecord.from_step(env, info)
    result = validate(rec, env=skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **SMALL))
    assert result, result.notes
    other = validate(rec, env=skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **{**SMALL, "tau": 0.02}))
    assert not other and any("tau" in n for n in other.notes)


# ----------------------------------------------------------------------------------------------------
# moved here from env options (tests/test_env_options.py, dissolved by issue 19)


def make_small(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**SMALL, **kw})


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
def test_records_check_the_observation(tiny_llama):
    """A recorded episode's cost includes its observation's FLOPs: replaying it under another observation kind is
    flagged (a note naming the setting), under the same kind it validates."""
    from skipenv.envs.records import EpisodeRecord, validate

    env = make_small(tiny_llama, observation="layer:2")
    env.reset(options={"index": 0})
    _, _, _, _, info = env.step(np.zeros(env.action_space.n, dtype=np.int8))
    record = EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={"observation": "layer:2"})
    same = validate(record, env=make_small(tiny_llama, observation="layer:2"))
    assert same.ok, same.notes
    # the env accepts "layer:02" as "layer:2": a record of that spelling validates (it was flagged as differing)
    spelt = EpisodeRecord.from_step(env, info, env_id="SwitchDec-XSum-v0", env_kwargs={"observation": "layer:02"})
    assert validate(spelt, env=make_small(tiny_llama, observation="layer:02")).ok
    other = validate(record, env=make_small(tiny_llama))
    assert not other.ok and any("observation" in n for n in other.notes) and "cost" in other.mismatches
