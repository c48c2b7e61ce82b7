"""benchmarks/budget_front.py --tiny end to end: its CSVs agree with an independent re-evaluation through a fresh env
(a saved policy replayed at fixed tolerances, static plans stepped by hand) and with the train split's outcomes."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest


def _load_script():
    from _scripts import load_benchmark

    return load_benchmark("budget_front")


@pytest.mark.assets
def test_budget_front_tiny_matches_an_independent_re_evaluation(tmp_path, one_thread, capsys):
    from stable_baselines3 import PPO

    from skipenv import BudgetConditioned
    from skipenv.envs import SwitchDecEnv
    from skipenv.envs.rewards import lexicographic_reward

    bf = _load_script()
    out = tmp_path / "front"
    assert bf.main(["--tiny", "--warm-start", "static", "--no-progress", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "best static (train)" in printed and "reward diff" in printed
    assert (out / "front.png").stat().st_size > 10_000
    cfg = json.loads((out / "config.json").read_text())
    points = pd.read_csv(out / "front.csv")
    by_tau = pd.read_csv(out / "by_tau.csv")
    taus, n_test = cfg["taus"], cfg["test_docs"]

    # a fresh env over a fresh copy of the same deterministic tiny model: nothing shared with the script's run
    env = SwitchDecEnv("xsum", generator=bf.tiny_generator(), split="test", num_examples=n_test,
                       **cfg["env_kwargs"])
    menu = bf.static_menu(env.plan_spec, lead=cfg["lead"], drop_segment=cfg["drop_segment"],
                          attention=cfg["attention"], every_other=cfg["every_other"])
    static = points[points["kind"] == "static"].set_index("policy")
    assert list(static.index) == list(menu)
    for name in ("skip nothing", "lead:2", "skip attention 2"):  # static plans stepped by hand on every test document
        q, saved = [], []
        for i in range(n_test):
            env.reset(options={"index": i})
            info = env.step(env.plan_to_action(menu[name]))[4]
            q.append(info["quality"])
            saved.append(1.0 - info["cost"])
        assert static.loc[name, "mean_quality"] == pytest.approx(np.mean(q), abs=1e-9)
        assert static.loc[name, "mean_flops_saved"] == pytest.approx(np.mean(saved), abs=1e-9)
    # the static front: a plan is on it when no other plan is at least as good on both axes and better on one
    xy = static[["mean_flops_saved", "mean_quality"]].to_numpy()
    for k, name in enumerate(static.index):
        dominated = any((xy[j] >= xy[k]).all() and (xy[j] > xy[k]).any() for j in range(len(xy)) if j != k)
        assert bool(static.loc[name, "on_static_front"]) == (not dominated), name

    # the saved policy replayed at two fixed tolerances through BudgetConditioned
    model = PPO.load(str(out / "ppo" / "policy.zip"), device="cpu")
    stats = np.load(out / "ppo" / "standardisation.npz")
    wrapped = BudgetConditioned(env, tau_range=tuple(cfg["tau_range"]))
    pol = points[points["kind"] == "policy"].set_index("tau")
    for tau in taus[1:]:
        q, saved, rewards = [], [], []
        for i in range(n_test):
            obs, _ = wrapped.reset(options={"tau": tau, "index": i})
            assert obs[-1] == pytest.approx(tau)
            z = ((obs - stats["mean"]) / stats["std"]).astype(np.float32)  # the policy's standardised input
            info = wrapped.step(model.predict(z, deterministic=True)[0])[4]
            q.append(info["quality"])
            saved.append(1.0 - info["cost"])
            rewards.append(lexicographic_reward(info["quality"], info["quality_full"], info["cost"], tau))
        assert pol.loc[tau, "mean_quality"] == pytest.approx(np.mean(q), abs=1e-9)
        assert pol.loc[tau, "mean_flops_saved"] == pytest.approx(np.mean(saved), abs=1e-9)
        assert pol.loc[tau, "mean_reward"] == pytest.approx(np.mean(rewards), abs=1e-9)
        row = by_tau.set_index("tau").loc[tau]
        assert row["reward diff"] == pytest.approx(row["policy reward"] - row["static reward"], abs=1e-9)
        assert row["ci low"] <= row["reward diff"] + 1e-9 <= row["ci high"] + 2e-9

    # the best static plan per tau is the train split's best mean lexicographic reward (from the stored outcomes)
    outcomes = pd.read_csv(out / "menu" / "outcomes.csv")
    train = outcomes[outcomes["split"] == "train"]
    best = points[points["kind"] == "best static (train)"].set_index("tau")
    for tau in taus:
        r = train.assign(r=[lexicographic_reward(a, b, c, tau) for a, b, c in
                            zip(train["quality"], train["quality_full"], train["cost"])]).groupby("plan")["r"].mean()
        assert best.loc[tau, "policy"] in set(r.index[np.isclose(r, r.max())])
        assert best.loc[tau, "mean_flops_saved"] == pytest.approx(static.loc[best.loc[tau, "policy"],
                                                                             "mean_flops_saved"])


@pytest.mark.parametrize("argv, match", [
    (["--env-kwargs", "[1, 2]"], "must be a JSON object"),
    (["--env-kwargs", '{"formulation": "expected"}'], "trains the budget formulation itself"),
    (["--tau-range", "0", "inf"], "finite 0 <= LOW <= HIGH"),
    (["--tau-range", "0", "nan"], "finite 0 <= LOW <= HIGH"),
    (["--learning-rate", "-1e-3"], "learning-rate"),
    (["--bc-steps", "0"], "bc-steps"),
    (["--every-other", "mlp"], "invalid choice"),
])
def test_budget_front_bad_arguments(argv, match, capsys):
    # before: a list of env kwargs or a formulation (silently dropped by .unwrapped) passed, an infinite tau range
    # and a negative learning rate or bc-steps reached the model; they now fail in argument parsing
    with pytest.raises(SystemExit) as e:
        _load_script().parse_args(argv)
    assert e.value.code == 2
    assert match in capsys.readouterr().err


@pytest.mark.assets
def test_budget_front_bad_static_plan_fails_before_the_full_outputs(tmp_path, one_thread, monkeypatch):
    from skipenv.envs import SwitchDecEnv

    monkeypatch.setattr(SwitchDecEnv, "prefetch", lambda *a, **k: pytest.fail("computed full outputs"))
    with pytest.raises(SystemExit, match=r"--attention 9: decoder layers are 0 to 3"):
        _load_script().main(["--tiny", "--attention", "9", "--out", str(tmp_path / "o"), "--no-progress"])
