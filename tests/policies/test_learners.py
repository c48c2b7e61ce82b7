"""The group-baseline learner (RLOO / GRPO) and the behaviour-cloning warm start: advantages against hand-computed
numbers, learning on a toy env whose answer is known, the formulation wrappers (shared tau, one Lagrange
multiplier per group), save/load, behaviour cloning into our policy and into SB3 PPO, and the probe-table targets
end to end on a tiny random-weight Llama."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest
import torch
from gymnasium import spaces

from skipenv.policies.pg import BernoulliPolicy, GroupPG, GroupPGConfig, group_advantages, load_agent
from skipenv.envs.wrappers import BudgetConditioned, ExpectedConstraint
from skipenv.policies.warm_start import behaviour_cloning, warm_start_targets

pytestmark = pytest.mark.usefixtures("one_thread")


class OneGoodBit(gym.Env):
    """One-step toy env: bit 0 is always good, the other bits always bad. ``reward = a_0 − Σ_{b>0} a_b``; the info
    carries quality / quality_full / cost like SwitchDec (quality drops 0.2 per bad bit, cost 1 − 0.3·a_0)."""

    n = 5
    observation_space = spaces.Box(-5.0, 5.0, shape=(3,), dtype=np.float32)
    action_space = spaces.MultiBinary(5)

    def __init__(self, num_docs: int = 6):
        self.examples = list(range(num_docs))
        self.features = np.random.default_rng(123).normal(size=(num_docs, 3)).astype(np.float32)
        self.doc = 0

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        self.doc = int((options or {}).get("index", self.np_random.integers(len(self.examples))))
        return self.features[self.doc], {"example_id": str(self.doc)}

    def step(self, action):
        a = np.asarray(action)
        quality = 1.0 - 0.2 * float(a[1:].sum())
        info = {"example_id": str(self.doc), "quality": quality, "quality_full": 1.0, "cost": 1.0 - 0.3 * a[0],
                "constraint_satisfied": quality >= 0.9}
        return self.features[self.doc], float(a[0] - a[1:].sum()), True, False, info


def test_group_advantages_hand_computed():
    r = [[1.0, 2.0, 3.0, 6.0], [0.5, 0.5, 0.5, 0.5]]
    # leave-one-out means: (2+3+6)/3, (1+3+6)/3, (1+2+6)/3, (1+2+3)/3
    expected = [[1 - 11 / 3, 2 - 10 / 3, 3 - 3, 6 - 2], [0, 0, 0, 0]]
    np.testing.assert_allclose(group_advantages(r), expected)
    std = np.sqrt(((1 - 3) ** 2 + (2 - 3) ** 2 + 0 + (6 - 3) ** 2) / 3)  # sample std (ddof 1) of group 0
    np.testing.assert_allclose(group_advantages(r, scale_by_std=True)[0], np.array(expected[0]) / (std + 1e-8))
    np.testing.assert_allclose(group_advantages(r, scale_by_std=True)[1], 0.0)  # equal rewards: no signal
    with pytest.raises(ValueError, match="G >= 2"):
        group_advantages([[1.0], [2.0]])


def test_group_learner_finds_the_good_bit_and_logs_the_group_advantages():
    env = OneGoodBit()
    agent = GroupPG(env, GroupPGConfig(init_skip_prob=0.3, lr=0.03), seed=0)
    hist = agent.learn(320, progress_bar=False)
    assert len(hist) == 320
    for doc in range(len(env.examples)):
        obs, _ = env.reset(options={"index": doc})
        np.testing.assert_array_equal(agent(obs), [1, 0, 0, 0, 0])
    # every group of 4 consecutive episodes shares a document, and its advantages are the leave-one-out ones
    groups = hist["reward"].to_numpy().reshape(-1, 4)
    assert (hist["document"].to_numpy().reshape(-1, 4) == hist["document"].to_numpy()[::4, None]).all()
    np.testing.assert_allclose(hist["advantage"].to_numpy().reshape(-1, 4), group_advantages(groups))
    # the seed fixes everything: a second agent repeats the first one's episodes
    again = GroupPG(OneGoodBit(), GroupPGConfig(init_skip_prob=0.3, lr=0.03), seed=0).learn(32, progress_bar=False)
    np.testing.assert_array_equal(again["reward"], hist["reward"][:32])


def test_budget_groups_share_document_and_tau():
    env = BudgetConditioned(OneGoodBit(), tau_range=(0.0, 0.3))
    agent = GroupPG(env, GroupPGConfig(init_skip_prob=0.3), seed=1)
    assert agent.obs_dim == 4  # the tolerance is observed
    hist = agent.learn(48, progress_bar=False)
    taus = hist["tau"].to_numpy().reshape(-1, 4)
    assert (taus == taus[:, :1]).all() and len(np.unique(taus[:, 0])) == len(taus)  # one fresh draw per group
    assert (hist["document"].to_numpy().reshape(-1, 4) == hist["document"].to_numpy()[::4, None]).all()


def test_expected_constraint_group_is_put_on_one_multiplier():
    # the multiplier moves after every episode (update_every=1), i.e. inside each group
    env = ExpectedConstraint(OneGoodBit(), tau=0.1, lr=2.0, update_every=1)
    agent = GroupPG(env, GroupPGConfig(init_skip_prob=0.3), seed=0)
    hist = agent.learn(40, progress_bar=False)
    lam = hist["lagrange_multiplier"].to_numpy().reshape(-1, 4)
    assert (lam != lam[:, :1]).any()  # it did change inside some group
    loss = (hist["quality_full"] - hist["quality"]).to_numpy().reshape(-1, 4)
    saved = 1.0 - hist["cost"].to_numpy().reshape(-1, 4)
    # each reward re-expressed at the group's first multiplier: (1 - cost) - lam_0 * (loss - tau)
    common = saved - lam[:, :1] * (loss - 0.1)
    np.testing.assert_allclose(hist["advantage"].to_numpy().reshape(-1, 4), group_advantages(common), atol=1e-9)


def test_save_load_round_trip(tmp_path):
    env = OneGoodBit()
    agent = GroupPG(env, GroupPGConfig(init_skip_prob=0.3, scale_by_std=True), seed=3)
    agent.learn(16, progress_bar=False)
    agent.save(tmp_path / "grpo" / "policy.pt")
    obs = np.random.default_rng(0).normal(size=(20, 3)).astype(np.float32)
    for loaded in (GroupPG.load(tmp_path / "grpo" / "policy.pt"), load_agent(tmp_path / "grpo" / "policy.pt", env)):
        assert loaded.name == "grpo" and loaded.config.scale_by_std
        np.testing.assert_array_equal(loaded.predict(obs)[0], agent.predict(obs)[0])
        for o in obs:
            np.testing.assert_array_equal(loaded(o), agent(o))
    with pytest.raises(ValueError, match="observations of 3 features"):
        GroupPG.load(tmp_path / "grpo" / "policy.pt", BudgetConditioned(env))



def test_bad_config_and_damaged_files_raise_clear_errors(tmp_path):
    # before: init_skip_prob 1.5 gave a NaN output bias (a NaN policy), 0 an infinite one, a float group_size was
    # truncated, scale_by_std="no" meant GRPO; a corrupt .pt / .json or ConstrainedPG weights of another env raised
    # unpickling / JSON / state-dict tracebacks
    from skipenv.policies.pg import ConstrainedPG

    for bad, match in ((dict(init_skip_prob=1.5), "init_skip_prob"), (dict(init_skip_prob=0.0), "init_skip_prob"),
                       (dict(group_size=2.5), "group_size"), (dict(group_size=1), "group_size"),
                       (dict(hidden=0), "hidden"), (dict(lr=float("nan")), "lr"), (dict(lr=-1.0), "lr"),
                       (dict(entropy_coef=float("nan")), "entropy_coef"), (dict(scale_by_std="no"), "scale_by_std")):
        with pytest.raises(ValueError, match=match):
            GroupPGConfig(**bad)
    env = OneGoodBit()
    GroupPG(env, GroupPGConfig(group_size=2), seed=0).save(tmp_path / "policy.pt")
    good_pt, good_json = (tmp_path / "policy.pt").read_bytes(), (tmp_path / "policy.json").read_text()
    for name, pt, meta, match in (("garbage", b"not a torch file", good_json, "cannot load the agent"),
                                  ("truncated", good_pt[: len(good_pt) // 2], good_json, "cannot load the agent"),
                                  ("badjson", good_pt, "{not json", "not valid JSON"),
                                  ("list", good_pt, "[1, 2]", "must hold a JSON object")):
        (tmp_path / f"{name}.pt").write_bytes(pt)
        (tmp_path / f"{name}.json").write_text(meta)
        with pytest.raises(ValueError, match=match):
            load_agent(tmp_path / f"{name}.pt", env)
    toy = type("WithTau", (OneGoodBit,), {"tau": 0.1})
    ConstrainedPG(toy()).save(tmp_path / "cpg.pt")
    wider = type("Wider", (toy,), {"action_space": spaces.MultiBinary(7)})
    with pytest.raises(ValueError, match="cannot load the agent.*size mismatch"):
        load_agent(tmp_path / "cpg.pt", wider())
    assert load_agent(tmp_path / "policy.pt", env).name == "rloo"  # the intact files still load


def _synthetic(n_obs=24, dim=8, bits=6, seed=0):
    x = np.random.default_rng(seed).normal(size=(n_obs, dim)).astype(np.float32)
    return x, (x[:, :bits] > 0.3).astype(np.int8)  # each bit a function of one feature


def test_behaviour_cloning_reproduces_targets():
    x, a = _synthetic()
    torch.manual_seed(0)
    policy = BernoulliPolicy(8, 6)
    before = (policy(torch.as_tensor(x)) > 0).numpy()
    assert not (before == a).all()
    nll = behaviour_cloning(policy, x, a, epochs=300)
    assert nll[-1] < nll[0]
    np.testing.assert_array_equal((policy(torch.as_tensor(x)) > 0).numpy().astype(np.int8), a)
    with pytest.raises(ValueError, match="same N"):
        behaviour_cloning(policy, x, a[:3])


def test_behaviour_cloning_refuses_nan_inputs_and_bad_counts():
    # a NaN / infinite weight or observation used to pass the checks and turn every weight of the policy into NaN
    x, a = _synthetic()
    policy = BernoulliPolicy(8, 6)
    before = [p.detach().clone() for p in policy.parameters()]
    w = np.ones(len(x))
    for bad_w in (np.where(np.arange(len(x)) == 0, np.nan, w), np.where(np.arange(len(x)) == 0, np.inf, w)):
        with pytest.raises(ValueError, match="finite non-negative"):
            behaviour_cloning(policy, x, a, weights=bad_w)
    x_nan = x.copy()
    x_nan[2, 3] = np.nan
    with pytest.raises(ValueError, match="1 NaN or infinite"):
        behaviour_cloning(policy, x_nan, a)
    for kw, match in ((dict(epochs=-1), "epochs"), (dict(epochs=2.5), "epochs"), (dict(batch_size=0), "batch_size")):
        with pytest.raises(ValueError, match=match):
            behaviour_cloning(policy, x, a, **kw)
    assert all(torch.equal(p, q) for p, q in zip(policy.parameters(), before))  # untouched
    assert all(np.isfinite(behaviour_cloning(policy, x, a, epochs=3, batch_size=5)))


def test_behaviour_cloning_into_sb3_ppo():
    from skipenv.policies.sb3 import make_sb3

    class Box8(gym.Env):
        observation_space = spaces.Box(-10.0, 10.0, shape=(8,), dtype=np.float32)
        action_space = spaces.MultiBinary(6)

        def reset(self, *, seed=None, options=None):
            return np.zeros(8, np.float32), {}

        def step(self, action):
            return np.zeros(8, np.float32), 0.0, True, False, {"quality": 1.0, "cost": 1.0,
                                                               "constraint_satisfied": True}

    x, a = _synthetic()
    model = make_sb3("ppo", Box8(), seed=0)
    assert not (model.predict(x, deterministic=True)[0] == a).all()  # starts near "skip nothing"
    value_before = [p.detach().clone() for p in model.policy.value_net.parameters()]
    behaviour_cloning(model, x, a, epochs=300)
    np.testing.assert_array_equal(model.predict(x, deterministic=True)[0], a)
    for p, q in zip(model.policy.value_net.parameters(), value_before):
        assert torch.equal(p, q)  # the value head is not touched


@pytest.fixture(scope="module")
def tiny_probe(tiny_xsum_env_factory):
    from skipenv.evaluation import probe

    make_env = tiny_xsum_env_factory
    return make_env, probe.evaluate_menu(make_env, num_train=6, num_test=2, progress=False)


def test_warm_start_from_the_oracle_on_a_tiny_model(tiny_probe, tmp_path):
    from skipenv.evaluation import probe
    from skipenv.policies import load_policy

    make_env, table = tiny_probe
    env = make_env("train", 6)
    t = warm_start_targets(table, 0.1, env=env, source="oracle")
    for bad in (float("nan"), -0.1, [0.1, float("nan")], []):  # NaN met no constraint: skip-nothing targets
        with pytest.raises(ValueError, match="tau"):
            warm_start_targets(table, bad, env=env, source="oracle", append_tau=True)
    m = table.matrices("train")
    chosen = probe.per_input_oracle(m["quality"], m["quality_full"], m["cost"], 0.1)
    assert t.plans == [table.plans[j] for j in chosen] and (t.weights == 1).all()
    # the targets are the oracle's plans, mapped through the env's own plan -> action encoding
    for doc, a in zip(t.documents, t.actions):
        env.reset(options={"index": int(doc)})
        info = env.step(a)[4]
        assert info["quality"] == pytest.approx(m["quality"][doc, chosen[doc]])
    agent = GroupPG(env, seed=0)
    behaviour_cloning(agent, t.observations, t.actions, epochs=300)
    for doc, a in zip(t.documents, t.actions):
        obs, _ = env.reset(options={"index": int(doc)})
        np.testing.assert_array_equal(agent(obs), a)
    agent.learn(8, progress_bar=False)  # RL continues from the clone
    agent.save(tmp_path / "policy.pt")
    loaded = load_policy(str(tmp_path / "policy.pt"), env)
    obs, _ = env.reset(options={"index": 0})
    np.testing.assert_array_equal(loaded(obs), agent(obs))
    # probe targets and budget-conditioned targets (tau appended; one target per document and tau)
    p = warm_start_targets(table, 0.1, env=env, source="probe")
    assert len(p) == 6 and set(p.plans) <= set(table.plans)
    b = warm_start_targets(table, [0.0, 0.2], env=BudgetConditioned(env), append_tau=True)
    assert b.observations.shape == (12, env.observation_space.shape[0] + 1)
    np.testing.assert_allclose(b.observations[:, -1], [0.0] * 6 + [0.2] * 6, rtol=1e-6)
    with pytest.raises(ValueError, match="append_tau"):
        warm_start_targets(table, [0.0, 0.2], env=env)
    with pytest.raises(ValueError, match="features"):
        warm_start_targets(table, 0.1, env=BudgetConditioned(env))
    # warm_start given to a learner that does not clone was silently ignored
    from skipenv.policies.learners import train_learner

    for name in ("rloo", "grpo", "ppo", "pg-lagrangian"):
        with pytest.raises(ValueError, match="warm_start would be ignored"):
            train_learner(name, env, total_timesteps=8, warm_start=t)


@pytest.mark.assets
def test_skipenv_train_with_the_group_learner(tmp_path, capsys):
    import json

    from _tiny_local import write_tiny_assets

    from skipenv.cli import main

    model_dir, _ = write_tiny_assets(tmp_path / "tiny")
    out = tmp_path / "run"
    code = main(["train", "--algo", "rloo", "--total-timesteps", "8", "--train-examples", "4", "--test-examples", "2",
                 "--model", model_dir, "--out", str(out), "--no-progress"])
    assert code == 0
    meta = json.loads((out / "summary.json").read_text())
    assert meta["algo"] == "rloo" and [r["policy"] for r in meta["summary"]][0] == "rloo"
    assert json.loads((out / "policy.json").read_text())["algorithm"] == "group-pg"
    assert len(pd.read_csv(out / "progress.csv")) == 8
    assert "policy.pt" in capsys.readouterr().out
    agent = load_agent(out / "policy.pt")
    assert isinstance(agent, GroupPG) and agent.name == "rloo"
