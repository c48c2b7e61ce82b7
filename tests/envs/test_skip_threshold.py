"""Real-valued skip scores (``skip_threshold=``, :class:`skipenv.envs.wrappers.ThresholdActions`) and the table id
that uses them, ``SwitchDec-XSum-Table-v1`` (issue 21: SB3's default PPO must not collapse)."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium.utils.env_checker import check_env as gym_check_env
from scipy.stats import norm
from stable_baselines3.common.env_checker import check_env as sb3_check_env

import skipenv  # noqa: F401  (registers the ids)
from skipenv.envs.wrappers import ThresholdActions


def _bits(c: int, n: int = 5) -> np.ndarray:
    return np.array([c >> i & 1 for i in range(n)], dtype=np.int8)


def test_v1_replays_v0_outcome_of_every_plan():
    """Scores above / below the threshold run the same tabulated plan as v0's bits: same plan, quality, cost and
    Lagrangian reward (fresh envs, multiplier at 0) on every factorial action, on a few documents."""
    for c in range(32):
        v0, v1 = gym.make("SwitchDec-XSum-Table-v0"), gym.make("SwitchDec-XSum-Table-v1")
        for i in (0, 5):
            o0, _ = v0.reset(options={"index": i})
            o1, _ = v1.reset(options={"index": i})
            assert np.array_equal(o0, o1)
            scores = np.where(_bits(c) == 1, 2.0 + 1e-3, 2.0).astype(np.float32)  # exactly 2.0: not skipped
            _, r0, *_, i0 = v0.step(_bits(c))
            _, r1, *_, i1 = v1.step(scores)
            assert i1["plan_index"] == i0["plan_index"] == c
            assert (i1["quality"], i1["cost"], r1) == (i0["quality"], i0["cost"], r0)


def test_action_space_and_action_of():
    env = gym.make("SwitchDec-XSum-Table-v1")
    assert env.action_space == gym.spaces.Box(-3.0, 3.0, (5,), np.float32)
    action_of = env.get_wrapper_attr("action_of")
    for c in range(32):
        env.reset(options={"index": 1})
        *_, info = env.step(action_of(_bits(c)))
        assert info["plan_index"] == c
    assert gym.make("SwitchDec-XSum-Table-v0").action_space == gym.spaces.MultiBinary(5)  # v0 unchanged
    assert "skip_threshold" not in gym.spec("SwitchDec-XSum-Table-v0").kwargs


def test_bad_input_is_refused():
    env = gym.make("SwitchDec-XSum-Table-v1")
    env.reset(seed=0)
    with pytest.raises(ValueError, match="action_of"):  # 0 / 1 bits would silently mean "skip nothing"
        env.step(np.ones(5, dtype=np.int8))
    with pytest.raises(ValueError, match="5 finite scores"):
        env.step(np.zeros(4, dtype=np.float32))
    with pytest.raises(ValueError, match="5 finite scores"):
        env.step(np.array([np.nan, 0, 0, 0, 0], dtype=np.float32))
    for bad in (float("nan"), True, "2"):
        with pytest.raises(ValueError, match="skip_threshold must be a finite number"):
            gym.make("SwitchDec-XSum-Table-v0", skip_threshold=bad)
    for bad in (-1, -0.5, 1e39):  # negative: the mean-0 action would skip every factor; huge: float32 bounds
        with pytest.raises(ValueError, match=r"skip_threshold must be in \[0, 1e6\]"):
            gym.make("SwitchDec-XSum-Table-v0", skip_threshold=bad)
    zero = gym.make("SwitchDec-XSum-Table-v0", skip_threshold=0)  # allowed: MultiBinary's 0.5 per factor
    zero.reset(seed=0)
    assert zero.step(np.zeros(5, dtype=np.float32))[4]["num_skipped"] == 0  # a score of 0 is not above 0
    with pytest.raises(ValueError, match="MultiBinary"):
        gym.make("SwitchDec-XSum-MenuTable-v0", skip_threshold=2.0)
    with pytest.raises(ValueError, match="0 / 1"):
        env.get_wrapper_attr("action_of")(np.full(5, 2))


def test_sb3_initial_policy_skips_little_and_the_multiplier_stays_low():
    """The cause of the collapse and its fix, measured on SB3's *untrained* default policy over its first rollout
    (its first 1,024 episodes; PPO's first update comes after 2,048): on v0 (``MultiBinary``, 0.5 per bit) the
    multiplier reaches its cap 100 (at episode 440 with seed 0); on v1 each factor is skipped with probability ``1 - Phi(2)`` (scipy's normal tail, 0.0228;
    within 4 binomial standard deviations), the deterministic action is skip nothing, and the multiplier stays
    below 5."""
    import torch
    from stable_baselines3 import PPO

    torch.set_num_threads(1)
    lam_end = {}
    for env_id in ("SwitchDec-XSum-Table-v0", "SwitchDec-XSum-Table-v1"):
        env = gym.make(env_id)
        model = PPO("MlpPolicy", env, seed=0, device="cpu")
        obs, _ = env.reset(seed=0)
        skipped, lams = [], []
        for _ in range(1024):
            a, _ = model.predict(obs, deterministic=False)
            *_, info = env.step(a)
            skipped.append(np.array([info["plan_index"] >> i & 1 for i in range(5)]))
            lams.append(info["lagrange_multiplier"])
            obs, _ = env.reset()
        rate = float(np.mean(skipped))
        lam_end[env_id] = max(lams)
        if env_id.endswith("v1"):
            p, n = norm.sf(2.0), 1024 * 5
            assert abs(rate - p) < 4 * np.sqrt(p * (1 - p) / n), rate
            for i in range(3):
                o, _ = env.reset(options={"index": i})
                env.step(model.predict(o, deterministic=True)[0])
                assert env.unwrapped._last.plan_index == 0  # skip nothing
        else:
            assert abs(rate - 0.5) < 0.03
    assert lam_end["SwitchDec-XSum-Table-v0"] == 100.0
    assert lam_end["SwitchDec-XSum-Table-v1"] < 5.0


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_live_env_with_threshold(tiny_xsum_env_factory):
    """On a live (tiny random-weight model) env: the wrapper passes Gymnasium's and SB3's checkers, and scores run
    the same plan as the bits on a plain env (same example, same quality and cost)."""
    def tiny_env_factory():
        return tiny_xsum_env_factory("train", 2)

    gym_check_env(ThresholdActions(tiny_env_factory(), 2.0), skip_render_check=True)
    sb3_check_env(ThresholdActions(tiny_env_factory(), 2.0), warn=True)
    plain, wrapped = tiny_env_factory(), ThresholdActions(tiny_env_factory(), 1.5)
    n = plain.action_space.n
    rng = np.random.default_rng(0)
    for seed in (0, 1):
        _, i1 = plain.reset(seed=seed)
        _, i2 = wrapped.reset(seed=seed)
        assert i1["example_id"] == i2["example_id"]
        bits = (rng.random(n) < 0.2).astype(np.int8)
        *_, a = plain.step(bits)
        *_, b = wrapped.step(wrapped.action_of(bits))
        assert (a["quality"], a["cost"], a["num_skipped"]) == (b["quality"], b["cost"], int(bits.sum()))


@pytest.mark.slow
def test_ppo_default_v1_learner_trains_on_the_shipped_table():
    """The ``ppo-default-v1`` learner (SB3's defaults on v1's scores; one rollout of 2,048 episodes) returns factorial
    plan indices on the shipped table's test documents, and every training episode's regret is >= 0."""
    from skipenv.tables.envs import load_table
    from skipenv.tables.learners import train_learner_on_table

    t = load_table("xsum-v1")
    res = train_learner_on_table("ppo-default-v1", t, episodes=64, seed=0, checkpoints=1)
    assert res["plans"].shape == (len(t.rows("test")),)
    assert ((0 <= res["plans"]) & (res["plans"] < 32)).all()
    assert len(res["log"]) >= 64 and (res["log"][:, 5] >= -1e-9).all()


@pytest.mark.slow
def test_snippet_benchmark_scores_the_test_documents():
    """``benchmarks/sb3_default_snippet.py`` (one seed, one SB3 rollout): the FLOPs saved and loss it reports for
    the deterministic policy equal the table's outcomes of the plans it chose, recomputed here from the test
    documents' rows; the multiplier stays below its cap."""
    from _scripts import load_benchmark

    mod = load_benchmark("sb3_default_snippet")
    r = mod.run_one({"id": "SwitchDec-XSum-Table-v1"}, seed=0, timesteps=64)
    a = gym.make("SwitchDec-XSum-Table-v1", split="test").unwrapped.outcome_arrays()
    d, plans = np.arange(len(a["cost"])), np.asarray(r["plans"])
    assert len(plans) == len(d) and r["tau"] == 0.01
    assert r["saved"] == pytest.approx(float(np.mean(1 - a["cost"][d, plans])))
    assert r["loss"] == pytest.approx(float(np.mean(a["quality_full"][d, plans] - a["quality"][d, plans])))
    assert len(r["lam_quarters"]) == 4 and all(x < 100 for x in r["lam_quarters"])
