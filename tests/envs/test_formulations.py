"""Constraint formulations: dual-ascent arithmetic of the Lagrange multiplier against hand-computed values, the
wrappers' rewards against skipenv.envs.rewards on a scripted env, API checkers on a tiny-model env, and the metrics
against hand-computed numbers."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
from gymnasium import spaces
from gymnasium.utils.env_checker import check_env as gym_check_env
from stable_baselines3.common.env_checker import check_env as sb3_check_env

from skipenv.envs.rewards import LagrangeMultiplier
from skipenv.envs.wrappers import BudgetConditioned, ExpectedConstraint, make_formulation
from skipenv.evaluation.formulation_metrics import formulation_metrics, metrics_by_tau
from skipenv.envs.rewards import lexicographic_reward
import warnings
from skipenv.envs import SwitchDecEnv, SwitchDecLayerwiseEnv
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
import skipenv


class ScriptedEnv(gym.Env):
    """One-step episodes whose info carries the scripted (quality, cost) of each episode in turn."""

    observation_space = spaces.Box(-1.0, 1.0, shape=(3,), dtype=np.float32)
    action_space = spaces.Discrete(2)

    def __init__(self, outcomes):
        self.outcomes, self.t = list(outcomes), 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(3, np.float32), {}

    def step(self, action):
        q, c = self.outcomes[self.t % len(self.outcomes)]
        self.t += 1
        return np.zeros(3, np.float32), 123.0, True, False, {"quality": q, "quality_full": 1.0, "cost": c}


def run(env, n):
    out = []
    for _ in range(n):
        env.reset()
        out.append(env.step(0))
    return out


# ------------------------------------------------------------------------------------------ expected constraint
def test_dual_ascent_hand_computed():
    m = LagrangeMultiplier(0.1, lr=0.5, update_every=2)
    assert not m.observe(0.3) and m.value == 0.0  # buffer not full: no update
    assert m.observe(0.5)  # mean violation ((0.3-0.1) + (0.5-0.1)) / 2 = 0.3 -> 0 + 0.5 * 0.3
    assert m.value == pytest.approx(0.15)
    m.observe(0.0), m.observe(0.0)  # mean violation -0.1 -> 0.15 - 0.05
    assert m.value == pytest.approx(0.10)
    m.observe(0.0), m.observe(0.0)
    assert m.value == pytest.approx(0.05)
    m.observe(0.0), m.observe(0.0)  # 0.05 - 0.05 = 0
    assert m.value == pytest.approx(0.0, abs=1e-12)
    m.observe(0.0), m.observe(0.0)  # projected: stays at 0, never negative
    assert m.value == 0.0 and m.num_updates == 5


def test_multiplier_bounded_and_validated():
    m = LagrangeMultiplier(0.0, lr=10.0, update_every=1, lam_max=3.0)
    m.observe(1.0)
    assert m.value == 3.0
    with pytest.raises(ValueError, match="tau"):
        LagrangeMultiplier(-0.1)
    with pytest.raises(ValueError, match="update_every"):
        LagrangeMultiplier(0.1, update_every=0)


def test_expected_reward_uses_multiplier_before_update():
    # quality 0.7 (loss 0.3), cost 0.4; tau 0.1, lr 1, update after every episode
    env = ExpectedConstraint(ScriptedEnv([(0.7, 0.4)]), tau=0.1, lr=1.0, update_every=1)
    (_, r1, _, _, i1), (_, r2, _, _, i2) = run(env, 2)
    assert i1["lagrange_multiplier"] == 0.0 and r1 == pytest.approx(0.6)  # (1 - 0.4) - 0 * 0.2
    assert i2["lagrange_multiplier"] == pytest.approx(0.2)  # 0 + 1 * (0.3 - 0.1)
    assert r2 == pytest.approx(0.6 - 0.2 * 0.2)
    assert i2["constraint_violation"] == pytest.approx(0.2) and i2["reward"] == r2


def test_multiplier_rises_when_violated_and_falls_to_zero_with_slack():
    m = LagrangeMultiplier(0.1, lr=0.5, update_every=4)
    env = ExpectedConstraint(ScriptedEnv([(0.6, 0.5)]), tau=0.1, multiplier=m)  # loss 0.4 > tau
    run(env, 40)
    high = m.value
    assert high == pytest.approx(10 * 0.5 * 0.3)
    env = ExpectedConstraint(ScriptedEnv([(1.0, 1.0)]), tau=0.1, multiplier=m)  # loss 0: slack 0.1
    lams = [info["lagrange_multiplier"] for *_, info in run(env, 400)]
    assert all(b <= a for a, b in zip(lams, lams[1:])) and lams[-1] == 0.0


def test_frozen_multiplier_and_shared_tau_mismatch():
    m = LagrangeMultiplier(0.1, lam_init=2.0, update_every=1)
    env = ExpectedConstraint(ScriptedEnv([(0.5, 0.5)]), tau=0.1, multiplier=m, update=False)
    run(env, 5)
    assert m.value == 2.0
    with pytest.raises(ValueError, match="same tau"):
        ExpectedConstraint(ScriptedEnv([(1, 1)]), tau=0.2, multiplier=m)



def test_update_flag_and_step_size_validated():
    # update="false" (a string, e.g. from a config file via formulation_kwargs) used to read as True and keep
    # learning the multiplier; a negative lr was refused as "a quality tolerance"
    for bad in ("false", 0, None):
        with pytest.raises(ValueError, match="update must be True"):
            ExpectedConstraint(ScriptedEnv([(1, 1)]), tau=0.1, update=bad)
    with pytest.raises(ValueError, match=r"lr must be a finite number >= 0, got -0.1"):
        LagrangeMultiplier(0.1, lr=-0.1)
    with pytest.raises(ValueError, match="lam_init must be a finite number >= 0"):
        LagrangeMultiplier(0.1, lam_init=float("nan"))
    frozen = ExpectedConstraint(ScriptedEnv([(0.5, 0.5)]), tau=0.1, update=np.bool_(False), lr=1.0, update_every=1)
    run(frozen, 3)
    assert frozen.lam == 0.0


# ------------------------------------------------------------------------------------------ budget-conditioned
def test_budget_reward_is_lexicographic_at_episode_tau():
    env = BudgetConditioned(ScriptedEnv([(0.85, 0.6)]), tau_range=(0.0, 0.3))
    obs, info = env.reset(seed=0, options={"tau": 0.2})
    assert env.observation_space.shape == (4,) and obs[-1] == np.float32(0.2) and info["tau"] == 0.2
    _, r, *_, info = env.step(0)
    assert r == pytest.approx(1 + 0.4) and info["constraint_satisfied"]  # loss 0.15 <= 0.2
    env.reset(options={"tau": 0.1})
    _, r, *_, info = env.step(0)
    assert r == pytest.approx(lexicographic_reward(0.85, 1.0, 0.6, 0.1)) and r == pytest.approx(-0.05)
    with pytest.raises(ValueError, match="outside tau_range"):
        env.reset(options={"tau": 0.5})


def test_budget_draws_are_seeded_and_in_range():
    env = BudgetConditioned(ScriptedEnv([(1.0, 1.0)]), tau_range=(0.05, 0.25))
    draws = [env.reset(seed=s)[0][-1] for s in (3, 3, 4)]
    assert draws[0] == draws[1] != draws[2]
    taus = [env.reset()[1]["tau"] for _ in range(200)]
    assert 0.05 <= min(taus) and max(taus) <= 0.25 and np.std(taus) > 0.03
    with pytest.raises(ValueError, match="tau_range"):
        BudgetConditioned(ScriptedEnv([(1, 1)]), tau_range=(0.3, 0.1))


def test_make_formulation():
    base = ScriptedEnv([(1, 1)])
    assert make_formulation(base, "per_input") is base
    assert isinstance(make_formulation(base, "expected", tau=0.1), ExpectedConstraint)
    assert isinstance(make_formulation(base, "budget"), BudgetConditioned)
    with pytest.raises(ValueError, match="unknown formulation"):
        make_formulation(base, "weighted")


# ------------------------------------------------------------------------------------------ tiny-model env
@pytest.fixture(scope="module")
def tiny_env_factory(tiny_llama):
    from skipenv.envs import SwitchDecEnv

    return lambda: SwitchDecEnv("xsum", generator=tiny_llama, num_examples=3, max_new_tokens=6, max_input_tokens=96,
                                disk_cache=False)


@pytest.mark.filterwarnings("ignore:.*different from the unwrapped version")
def test_wrappers_pass_checkers(tiny_env_factory):
    for wrap in (lambda e: ExpectedConstraint(e, tau=0.1), lambda e: BudgetConditioned(e)):
        gym_check_env(wrap(tiny_env_factory()), skip_render_check=True)
        sb3_check_env(wrap(tiny_env_factory()), warn=True)


def test_budget_keeps_example_order_and_reward(tiny_env_factory):
    plain, wrapped = tiny_env_factory(), BudgetConditioned(tiny_env_factory())
    for seed in (0, 1):
        o1, i1 = plain.reset(seed=seed)
        o2, i2 = wrapped.reset(seed=seed)
        assert i1["example_id"] == i2["example_id"] and np.array_equal(o1, o2[:-1])
        a = np.ones(plain.action_space.n, dtype=np.int8)
        *_, info = plain.step(a)
        _, r, *_ = wrapped.step(a)
        assert r == pytest.approx(lexicographic_reward(info["quality"], info["quality_full"], info["cost"],
                                                       i2["tau"]))


# ------------------------------------------------------------------------------------------ metrics
def test_metrics_hand_computed():
    eps = {"quality": [1.0, 0.8, 0.95], "quality_full": [1.0, 1.0, 1.0], "cost": [1.0, 0.5, 0.7]}
    m = formulation_metrics(eps, tau=0.1)
    assert m["mean_quality"] == pytest.approx(0.9166667)
    assert m["mean_quality_loss"] == pytest.approx(0.25 / 3)
    assert m["constraint_met_rate"] == pytest.approx(2 / 3)
    assert m["mean_flops_saved"] == pytest.approx(0.8 / 3)
    assert m["mean_reward"] == pytest.approx((1.0 - 0.1 + 1.3) / 3)  # 1 + (1 - 1); (0.8 - 0.9) / 1; 1 + 0.3
    assert m["mean_constraint_holds"]
    assert m["quality_loss_ci_low"] <= m["mean_quality_loss"] <= m["quality_loss_ci_high"]
    # a 50/50 randomised choice on one document is the average of its two rows
    w = formulation_metrics({"quality": [1.0, 0.8], "quality_full": [1.0, 1.0], "cost": [1.0, 0.5],
                             "weight": [0.5, 0.5], "document": [0, 0]}, tau=0.1)
    assert w["num_documents"] == 1 and w["mean_flops_saved"] == pytest.approx(0.25)
    assert w["mean_quality_loss"] == pytest.approx(0.1) and w["mean_constraint_holds"]
    assert w["constraint_met_rate"] == pytest.approx(0.5)
    with pytest.raises(ValueError, match="cost"):
        formulation_metrics({"quality": [1.0], "quality_full": [1.0]}, tau=0.1)
    front = metrics_by_tau({**eps, "tau": [0.3, 0.1, 0.3]})
    assert list(front["tau"]) == [0.1, 0.3] and list(front["num_documents"]) == [1, 2]
    assert front.loc[1, "constraint_met_rate"] == 1.0  # losses 0 and 0.05 within 0.3
    assert front.loc[0, "mean_reward"] == pytest.approx(-0.1)  # only the 0.8-quality episode had tau 0.1
    with pytest.raises(ValueError, match="sum to 1"):
        formulation_metrics({**eps, "weight": [0.5, 1, 1]}, tau=0.1)


def test_unmodified_sb3_trains_on_the_wrappers(tiny_env_factory):
    from stable_baselines3 import PPO

    m = LagrangeMultiplier(0.0, lr=1.0, update_every=4)
    env = ExpectedConstraint(tiny_env_factory(), tau=0.0, multiplier=m)
    PPO("MlpPolicy", env, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu").learn(16)
    assert m.num_updates == 4  # 16 episodes, one dual update per 4
    budget = BudgetConditioned(tiny_env_factory())
    model = PPO("MlpPolicy", budget, n_steps=16, batch_size=16, n_epochs=1, seed=0, device="cpu").learn(16)
    obs, _ = budget.reset(seed=0, options={"tau": 0.05})
    assert budget.action_space.contains(model.predict(obs, deterministic=True)[0].astype(np.int8))


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


from _tiny_env import make  # noqa: E402  (the shared tiny env; its generator fixture: conftest.py)


@pytest.mark.hardening
@pytest.mark.assets
def test_expected_constraint_rewards_stay_finite_with_a_large_lam_max(generator):
    from skipenv.envs.wrappers import ExpectedConstraint

    with pytest.raises(ValueError, match="lam_max must be a finite number"):  # issue 20: inf gave -inf / NaN rewards
        ExpectedConstraint(make(generator), tau=0.0, lam_max=float("inf"))
    w = ExpectedConstraint(make(generator), tau=0.0, lam_max=1e6, lam_init=1.0, update_every=1, lr=1.0)
    w.reset(seed=0)
    for _ in range(3):
        w.reset()
        _, reward, *_, info = w.step(np.ones(w.action_space.n, dtype=np.int8))  # skip everything: big loss
        assert np.isfinite(reward) and reward == pytest.approx(
            (1 - info["cost"]) - info["lagrange_multiplier"] * info["constraint_violation"])


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("bad", [3, "multiplier"])
def test_expected_constraint_refuses_a_non_multiplier(bad, generator):
    from skipenv.envs.wrappers import ExpectedConstraint

    with pytest.raises(ValueError, match="LagrangeMultiplier"):
        ExpectedConstraint(make(generator), tau=0.1, multiplier=bad)


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("tau_range", [(0, 0.1, 0.2), 0.1, "ab", (float("nan"), 1), (0.2, 0.1), (-0.1, 0.1),
                                       (0, float("inf")), (True, 0.2)], ids=repr)
def test_budget_conditioned_bad_tau_range(tau_range, generator):
    from skipenv.envs.wrappers import BudgetConditioned

    with pytest.raises(ValueError, match="tau_range"):
        BudgetConditioned(make(generator), tau_range=tau_range)


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("options,named", [({"tau": "abc"}, "options\\['tau'\\]"), ({"tau": True}, "options"),
                                           ({"tau": [0.1]}, "options"), ({"tau": float("nan")}, "options"),
                                           ({"tau": 0.5}, "outside tau_range"), ([1], "dict")], ids=repr)
def test_budget_conditioned_bad_reset_options(options, named, generator):
    from skipenv.envs.wrappers import BudgetConditioned

    w = BudgetConditioned(make(generator), tau_range=(0.0, 0.3))
    with pytest.raises(ValueError, match=named):
        w.reset(seed=0, options=options)
    obs, info = w.reset(seed=0, options={"tau": 0.2, "index": 1})  # a good tau next to an env option
    assert obs[-1] == np.float32(0.2) and info["tau"] == 0.2 and w.unwrapped.example is w.unwrapped.examples[1]


scalars = st.one_of(st.none(), st.booleans(), st.integers(-3, 40), st.floats(allow_nan=True, allow_infinity=True),
                    st.text(max_size=3), st.lists(st.floats(0, 1), max_size=3))


@pytest.mark.hardening
@pytest.mark.assets
@settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture,
                                                                  HealthCheck.too_slow])
@given(kw=st.fixed_dictionaries({}, optional={"tau": scalars, "lr": scalars, "update_every": scalars,
                                              "lam_init": scalars, "lam_max": scalars}),
       tau_range=st.one_of(scalars, st.tuples(scalars, scalars)),
       options=st.one_of(st.none(), st.dictionaries(st.sampled_from(["tau", "index"]), scalars, max_size=2)))
def test_fuzz_formulations(generator, kw, tau_range, options):
    from skipenv.envs.wrappers import BudgetConditioned, ExpectedConstraint

    action = np.ones(16, dtype=np.int8)
    try:
        w = ExpectedConstraint(make(generator), **{"tau": 0.1, "update_every": 1, **kw})
    except ValueError:
        pass
    else:
        for _ in range(3):
            w.reset(seed=0)
            assert np.isfinite(w.step(action)[1])
    try:
        b = BudgetConditioned(make(generator), tau_range=tau_range)
    except ValueError:
        return
    try:
        obs, _ = b.reset(seed=0, options=options)
    except ValueError:
        return
    assert b.observation_space.contains(obs) and np.isfinite(b.step(action)[1])


# ----------------------------------------------------------------------------------------------------
# moved here from env options (tests/test_env_options.py, dissolved by issue 19)


SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
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


from _tiny_env import wrapper_chain as _chain  # noqa: E402  (the shared helper)


@pytest.mark.assets
@pytest.mark.usefixtures("one_thread")
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
