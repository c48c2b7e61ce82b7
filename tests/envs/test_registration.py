"""The registered ids (skipenv.envs.registration): v1 = v0 with the measured defaults, unversioned ids,
``gym.make`` kwargs, and ``sharing()`` of one generator / evaluator between the envs a block builds."""

from __future__ import annotations

import json
import warnings

import gymnasium as gym
import numpy as np
import pytest

import skipenv
from skipenv.envs import SwitchDecEnv
from skipenv.envs.wrappers import ExpectedConstraint

# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


from _tiny_env import KW, make  # noqa: E402  (the shared tiny env; its generator fixture: conftest.py)


@pytest.mark.hardening
@pytest.mark.assets
def test_env_built_outside_the_sharing_thread_warns(generator, monkeypatch):
    import threading

    from skipenv.envs.registration import SHARING_ENV, sharing

    monkeypatch.delenv(SHARING_ENV, raising=False)
    seen: dict = {}

    def build_in_thread():
        with warnings.catch_warnings(record=True) as w:
            warnings.simplefilter("always")
            try:  # a model that cannot load: the warning comes before the load
                SwitchDecEnv("xsum", model="/no/such/model", **KW)
            except Exception as e:  # noqa: BLE001
                seen["error"] = type(e).__name__
        seen["warnings"] = [str(x.message) for x in w if "sharing()" in str(x.message)]

    with sharing(generator=generator):
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            assert make_plain(generator=None).generator is generator  # same thread: shared, no warning
        t = threading.Thread(target=build_in_thread)
        t.start()
        t.join()
    assert len(seen["warnings"]) == 1 and "'/no/such/model'" in seen["warnings"][0], seen
    import os

    assert SHARING_ENV not in os.environ  # closed again


@pytest.mark.hardening
@pytest.mark.assets
def test_env_in_a_process_started_inside_sharing_warns(generator, monkeypatch):
    from skipenv.envs.registration import SHARING_ENV

    monkeypatch.setenv(SHARING_ENV, "1")  # what a spawned worker inherits
    with pytest.warns(UserWarning, match="sharing"), pytest.raises(Exception):
        SwitchDecEnv("xsum", model="/no/such/model", **KW)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        make(generator)  # a generator of its own: nothing to warn about


def make_plain(**kw):
    return SwitchDecEnv("xsum", **{**KW, **kw})


# ----------------------------------------------------------------------------------------------------
# moved here from the guarantees campaign (tests/test_guarantees.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.assets
def test_generator_through_gym_make_kwargs_warns_and_stays_out_of_the_spec(tiny_llama):
    with pytest.warns(UserWarning, match=r"skipenv\.make"):
        env = gym.make("SwitchDec-XSum-v0", generator=tiny_llama, **KW)
    assert "generator" not in env.spec.kwargs  # the wrapper's spec deep-copies the base spec: no model in it
    assert json.loads(env.spec.to_json())["kwargs"]["num_examples"] == 2
    assert env.unwrapped.generator is tiny_llama
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # the supported way is silent (on the latest version: v0 is "out of date")
        # the latest version; its registered linear_rank (64) exceeds the tiny model's hidden size (32)
        shared = skipenv.make("SwitchDec-XSum-v2", generator=tiny_llama, linear_rank=16, **KW)
    assert shared.unwrapped.generator is tiny_llama and "generator" not in shared.spec.kwargs


# ----------------------------------------------------------------------------------------------------
# moved here from SwitchDec-XSum-v1 (tests/test_v1.py, dissolved by issue 19)


SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


from _tiny_env import wrapper_chain as _chain  # noqa: E402  (the shared helper)


@pytest.mark.usefixtures("one_thread")
def test_v1_is_v0_with_the_measured_defaults(tiny_llama):
    v1 = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **SMALL)
    v0 = skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, **SMALL)
    wrappers = [w for w in _chain(v1) if isinstance(w, ExpectedConstraint)]
    assert len(wrappers) == 1 and wrappers[0].tau == 0.01
    assert type(v1.unwrapped) is SwitchDecEnv and v1.unwrapped.quality == "probability" and v1.unwrapped.tau == 0.01
    assert v0.unwrapped.quality == "agreement" and v0.unwrapped.tau == 0.1  # v0 unchanged
    assert not any(isinstance(w, ExpectedConstraint) for w in _chain(v0))
    assert "SwitchDec-XSum-v1" in skipenv.OFFLINE_IDS
    assert skipenv.envs.registration.DEFAULT_ENV_ID == "SwitchDec-XSum-v1"  # the default id of every tool
    # (the unversioned name resolves to the latest version, v2: tests/envs/test_v2.py)
    # same plan, same document: v1's info equals v0's built with v1's quality and tau (only defaults differ)
    ref = skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, quality="probability", tau=0.01, **SMALL)
    a = np.zeros(v1.action_space.n, dtype=np.int8)
    a[-1] = 1
    for env in (v1, ref):
        env.reset(seed=0, options={"index": 1})
    _, r1, *_, i1 = v1.step(a)
    _, r0, *_, i0 = ref.step(a)
    assert i1["quality"] == i0["quality"] and i1["cost"] == i0["cost"] and i1["env_reward"] == r0 == i0["reward"]
    assert i1["reward"] == r1 and i1["formulation"] == "expected" and i0["formulation"] == "per_input"
    loss = i1["quality_full"] - i1["quality"]
    assert r1 == pytest.approx((1 - i1["cost"]) - 0.0 * (loss - 0.01))  # Lagrangian reward, multiplier still 0
    # the per-input formulation is one kwarg away, and kwargs still override the registered defaults
    plain = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, formulation="per_input", tau=0.05, **SMALL)
    assert not _chain(plain) or not any(isinstance(w, ExpectedConstraint) for w in _chain(plain))
    assert plain.unwrapped.tau == 0.05


@pytest.mark.usefixtures("one_thread")
def test_v1_vectorises_through_gym_make(tiny_llama):
    """v1 has no native vector entry point (that env runs per-input only): make_vec wraps every copy instead."""
    assert gym.spec("SwitchDec-XSum-v1").vector_entry_point is None
    assert gym.spec("SwitchDec-XSum-v0").vector_entry_point is not None
    with skipenv.sharing(generator=tiny_llama):
        v = gym.make_vec("SwitchDec-XSum-v1", num_envs=2, vectorization_mode="sync", **SMALL)
        v.reset(seed=0)
        _, reward, *_, info = v.step(np.zeros((2, v.single_action_space.n), dtype=np.int8))
    assert np.allclose(reward, info["reward"]) and np.all(info["lagrange_multiplier"] == 0.0)


@pytest.mark.usefixtures("one_thread")
def test_unversioned_name_logs_nothing_but_old_versions_still_warn():
    """``gym.make("SwitchDec-XSum")`` used to print Gymnasium's "Using the latest versioned environment" on every
    call; ``import skipenv`` filters that one message for SwitchDec ids (a fresh process, warnings shown; the spec
    lookup of ``gym.make``, ``_find_spec``, is called without building the env)."""
    import subprocess
    import sys
    from pathlib import Path

    code = ("import warnings; warnings.simplefilter('always'); import gymnasium as gym, skipenv\n"
            "find = gym.envs.registration._find_spec\n"
            "find('SwitchDec-XSum'); find('SwitchDec-XSum'); find('SwitchDec-XSum-v0')")
    root = Path(__file__).resolve().parents[2]  # the repository root: this file is tests/envs/test_registration.py
    proc = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Using the latest versioned environment" not in proc.stderr
    assert "SwitchDec-XSum-v0 is out of date" in proc.stderr  # an old version named explicitly still warns


# ----------------------------------------------------------------------------------------------------
# moved here from the v1 hardening campaign (tests/test_v1_hardening.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_unversioned_id_resolves_to_the_latest_version_in_the_tools(tmp_path):
    """``gym.make("SwitchDec-XSum")`` builds the latest version (v2); ``skipenv train`` / ``probe`` / compare_algorithms read the id's
    registered kwargs (gym.spec, which has no unversioned lookup) and said "No registered env" for it."""
    import gymnasium as gym

    from skipenv.envs.registration import resolve_env_id
    from skipenv.evaluation.main_job import run_main_job
    from skipenv.evaluation.probe import run_probe

    assert resolve_env_id("SwitchDec-XSum") == "SwitchDec-XSum-v2"
    assert resolve_env_id("SwitchDec-XSum-v0") == "SwitchDec-XSum-v0"
    with pytest.raises(gym.error.Error, match="doesn.t exist"):
        resolve_env_id("SwitchDec-Nope")
    # the default learner under v1's expected formulation (ppo-bc) is chosen, then refused before loading
    with pytest.raises(ValueError, match="ppo-bc clones the probe policy"):
        run_main_job(tmp_path / "never", env_id="SwitchDec-XSum-v1", static_examples=2, model="no-such-model")
    with pytest.raises(ValueError, match="formulation"):  # the probe got past the id to its own checks
        run_probe("SwitchDec-XSum", env_kwargs={"formulation": "expected"}, out_dir=tmp_path / "never")
    assert not (tmp_path / "never").exists()


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_v1_envs_share_an_evaluator(tiny_llama):
    """v1 registers quality="probability": envs built on a shared evaluator of that signal (skipenv.make(...,
    evaluator=), sharing(), make_vec) used to be refused as if the caller had passed quality; another signal's
    evaluator is still refused."""
    import gymnasium as gym
    import numpy as np

    import skipenv
    from skipenv.envs import Evaluator

    small = dict(max_new_tokens=5, max_input_tokens=96, disk_cache=False)
    first = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, num_examples=3, **small)
    ev = first.unwrapped.evaluator
    second = skipenv.make("SwitchDec-XSum-v1", evaluator=ev, num_examples=3)
    assert second.unwrapped.evaluator is ev and second.unwrapped.quality == "probability"
    assert second.unwrapped.tau == 0.01
    a = np.zeros(first.action_space.n, dtype=np.int8)
    a[-2:] = 1
    infos = []
    for env in (first, second):
        env.reset(options={"index": 2})
        infos.append(env.step(a)[-1])
    assert infos[0]["quality"] == infos[1]["quality"] and infos[0]["cost"] == infos[1]["cost"]
    with skipenv.sharing(evaluator=ev):
        v = gym.make_vec("SwitchDec-XSum-v1", num_envs=2, vectorization_mode="sync", num_examples=3)
    assert all(e.unwrapped.evaluator is ev for e in v.envs)
    agreement = Evaluator(tiny_llama, ev.task, quality="agreement", max_new_tokens=5, disk_cache=False)
    with pytest.raises(ValueError, match="quality 'probability' differs from the evaluator's 'agreement'"):
        skipenv.make("SwitchDec-XSum-v1", evaluator=agreement, num_examples=3)
    assert skipenv.make("SwitchDec-XSum-v1", evaluator=agreement, quality=None, num_examples=3).unwrapped.quality == \
        "agreement"


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_make_without_objects_keeps_an_enclosing_sharing_block(tiny_llama):
    """``skipenv.make(id)`` with no objects inside ``with sharing(generator=g)`` used to open its own empty block,
    which hid ``g``: the env loaded the default model instead (or failed on a shape mismatch)."""
    import skipenv

    with skipenv.sharing(generator=tiny_llama):
        env = skipenv.make("SwitchDec-XSum-v0", num_examples=2, max_new_tokens=5, max_input_tokens=96,
                           disk_cache=False)
    assert env.unwrapped.generator is tiny_llama
