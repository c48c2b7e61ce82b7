"""``SwitchDec-XSum-v2`` (issue 22 item 4, issue 21): v1 with the linear skip mode and real-valued
skip scores; the unversioned ``SwitchDec-XSum`` resolves to it, the tools' default id stays v1."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from scipy.stats import norm

import skipenv
from skipenv.envs.registration import DEFAULT_ENV_ID, LATEST_XSUM_ID, resolve_env_id
from skipenv.envs.wrappers import ExpectedConstraint, ThresholdActions, action_for_bits
from skipenv.plan import SkipPlan

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)
#: v2's registered env kwargs other than the task's (what v1 must be given to compute the same outcomes)
V2_ONLY = dict(segment_boundaries="tokens", skip_mode="linear", linear_rank=64, calibration_documents=16)
#: the tiny model's hidden size (32) is below v2's registered rank 64, which is refused: built here at rank 16
TINY_RANK = dict(linear_rank=16)
V2_MAKE = {**V2_ONLY, **TINY_RANK}


from _tiny_env import wrapper_chain as _chain  # noqa: E402  (the shared helper)


def test_v2_is_registered_as_the_latest_version_and_v1_stays():
    v1, v2 = gym.spec("SwitchDec-XSum-v1").kwargs, gym.spec("SwitchDec-XSum-v2").kwargs
    assert v2 == {**v1, **V2_ONLY, "skip_threshold": 3.0}
    assert v1 == {"task": "xsum", "task_source": "embedded", "quality": "probability", "tau": 0.01,
                  "formulation": "expected"}  # v1 unchanged
    assert resolve_env_id("SwitchDec-XSum") == "SwitchDec-XSum-v2" == LATEST_XSUM_ID
    assert DEFAULT_ENV_ID == "SwitchDec-XSum-v1"  # the tools (and the main job) stay on v1's 0 / 1 bits
    assert "SwitchDec-XSum-v2" in skipenv.OFFLINE_IDS
    assert gym.spec("SwitchDec-XSum-v2").vector_entry_point is None  # expected formulation: no native vector env


def test_v2_steps_exactly_like_v1_with_v2s_kwargs(tiny_llama):
    v2 = skipenv.make("SwitchDec-XSum", generator=tiny_llama, **SMALL, **TINY_RANK)
    assert v2.spec.id == "SwitchDec-XSum-v2"
    base = v2.unwrapped
    n = base.action_space.n
    assert v2.action_space == gym.spaces.Box(-4.0, 4.0, (n,), np.float32)
    assert any(isinstance(w, ThresholdActions) for w in _chain(v2))
    assert [w.tau for w in _chain(v2) if isinstance(w, ExpectedConstraint)] == [0.01]
    assert (base.quality, base.evaluator.skip_mode, base.evaluator.segment_boundaries) == \
        ("probability", "linear", "tokens")
    # SB3's initial Box policy (unit Gaussian, mean 0) skips a factor with probability 1 - Phi(3)
    assert 1 - norm.cdf(v2.get_wrapper_attr("threshold")) == pytest.approx(0.00135, abs=1e-5)
    # the 16 calibration documents are never episodes
    calib = set(base.evaluator.calibration_ids)
    assert len(calib) == 16 and not calib & {ex.id for ex in base.examples}
    with pytest.raises(ValueError, match="calibration document"):
        v2.reset(options={"example_id": sorted(calib)[0]})

    v1 = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **V2_MAKE, **SMALL)
    assert v1.action_space == gym.spaces.MultiBinary(n)
    spec = base.plan_spec
    plan = SkipPlan.from_skips(spec, attention=[0], ffn=[1], tokens=[spec.token_segments - 1])
    bits = base.plan_to_action(plan)
    scores = action_for_bits(v2, bits)
    assert scores.dtype == np.float32 and np.array_equal(scores > 3.0, bits == 1)
    assert action_for_bits(v1, bits) is bits  # a MultiBinary env takes the bits themselves
    for i in (0, 2):
        o2, _ = v2.reset(options={"index": i})
        o1, _ = v1.reset(options={"index": i})
        assert np.array_equal(o1, o2)
        _, r2, *_, i2 = v2.step(scores)
        _, r1, *_, i1 = v1.step(bits)
        assert i2["example_id"] == i1["example_id"]
        assert (i2["quality"], i2["quality_full"], i2["cost"], r2) == (i1["quality"], i1["quality_full"],
                                                                       i1["cost"], r1)
        assert i2["num_skipped"] == 3
    with pytest.raises(ValueError, match="action_of"):  # 0 / 1 bits would silently mean "skip nothing"
        v2.step(bits)


def test_the_probe_steps_v2_with_its_plan_bits(tiny_llama):
    """The probe turns menu plans into 0 / 1 bits (``plan_to_action``); on v2 they go through ``action_for_bits``
    and give exactly v1's outcomes under v2's kwargs (instead of being refused as integer scores)."""
    from skipenv.evaluation.probe import evaluate_menu

    def maker(env_id, **extra):
        return lambda split, n: skipenv.make(env_id, generator=tiny_llama, formulation="per_input", split=split,
                                             **{**SMALL, "num_examples": n}, **extra)

    spec = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **V2_MAKE, **SMALL).unwrapped.plan_spec
    k = spec.token_segments
    menu = {"skip nothing": spec.empty_plan(), "drop last": SkipPlan.from_skips(spec, tokens=[k - 1]),
            "ffn 1 + drop last": SkipPlan.from_skips(spec, ffn=[1], tokens=[k - 1])}
    t2 = evaluate_menu(maker("SwitchDec-XSum-v2", **TINY_RANK), menu, num_train=2, num_test=2, progress=False)
    t1 = evaluate_menu(maker("SwitchDec-XSum-v1", **V2_MAKE), menu, num_train=2, num_test=2, progress=False)
    cols = ["split", "example_id", "plan", "quality", "quality_full", "cost", "reward"]
    assert t2.outcomes[cols].equals(t1.outcomes[cols])
    assert (t2.outcomes.groupby("plan")["cost"].mean()["ffn 1 + drop last"]
            < t2.outcomes.groupby("plan")["cost"].mean()["drop last"])  # the sublayer skip ran
