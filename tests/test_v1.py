"""SwitchDec-XSum-v1 (the measured configuration: probability quality, tau 0.01, expected constraint), the
tau-scaled default dual step, and the main job under the expected formulation (tiny models only)."""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pandas as pd
import pytest

import skipenv
from skipenv.envs import SwitchDecEnv
from skipenv.envs.rewards import LagrangeMultiplier, default_dual_lr
from skipenv.envs.wrappers import ExpectedConstraint

pytestmark = pytest.mark.usefixtures("one_thread")

SMALL = dict(num_examples=3, max_new_tokens=5, max_input_tokens=96, disk_cache=False)


def _chain(env):
    out = []
    while isinstance(env, gym.Wrapper):
        out.append(env)
        env = env.env
    return out


def test_v1_is_v0_with_the_measured_defaults(tiny_llama):
    v1 = skipenv.make("SwitchDec-XSum-v1", generator=tiny_llama, **SMALL)
    v0 = skipenv.make("SwitchDec-XSum-v0", generator=tiny_llama, **SMALL)
    wrappers = [w for w in _chain(v1) if isinstance(w, ExpectedConstraint)]
    assert len(wrappers) == 1 and wrappers[0].tau == 0.01
    assert type(v1.unwrapped) is SwitchDecEnv and v1.unwrapped.quality == "probability" and v1.unwrapped.tau == 0.01
    assert v0.unwrapped.quality == "agreement" and v0.unwrapped.tau == 0.1  # v0 unchanged
    assert not any(isinstance(w, ExpectedConstraint) for w in _chain(v0))
    assert "SwitchDec-XSum-v1" in skipenv.OFFLINE_IDS
    # the unversioned name resolves to the latest version (Gymnasium's rule), the default id of every tool
    unversioned = skipenv.make("SwitchDec-XSum", generator=tiny_llama, **SMALL)
    assert unversioned.spec.id == "SwitchDec-XSum-v1" == skipenv.envs.registration.DEFAULT_ENV_ID
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


def test_v1_vectorises_through_gym_make(tiny_llama):
    """v1 has no native vector entry point (that env runs per-input only): make_vec wraps every copy instead."""
    assert gym.spec("SwitchDec-XSum-v1").vector_entry_point is None
    assert gym.spec("SwitchDec-XSum-v0").vector_entry_point is not None
    with skipenv.sharing(generator=tiny_llama):
        v = gym.make_vec("SwitchDec-XSum-v1", num_envs=2, vectorization_mode="sync", **SMALL)
        v.reset(seed=0)
        _, reward, *_, info = v.step(np.zeros((2, v.single_action_space.n), dtype=np.int8))
    assert np.allclose(reward, info["reward"]) and np.all(info["lagrange_multiplier"] == 0.0)


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


def test_default_dual_step_scales_with_one_over_tau_squared():
    assert LagrangeMultiplier(0.1).lr == pytest.approx(0.5)  # v0's agreement tolerance: the old default
    assert LagrangeMultiplier(0.01).lr == pytest.approx(50.0) == default_dual_lr(0.0)
    assert LagrangeMultiplier(0.01, lr=0.3).lr == 0.3
    # scale invariance: losses and tau divided by 10 give the same multiplier trajectory in units of 1 / tau
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.0, 0.3, 64)
    big, small = LagrangeMultiplier(0.1), LagrangeMultiplier(0.01)
    for x in losses:
        big.observe(x)
        small.observe(x / 10)
        assert small.value * 0.01 == pytest.approx(big.value * 0.1, rel=1e-9, abs=1e-12)
    assert big.num_updates == 8 and big.value > 0
    with pytest.raises(ValueError, match="tau"):
        default_dual_lr(float("nan"))


ENV_KWARGS = dict(max_new_tokens=6, max_input_tokens=96, disk_cache=False)


def test_main_job_under_the_expected_formulation(tiny_model_dir, tmp_path):
    """``skipenv train`` on v1: the menu table, the warm start from the probe policy, the multiplier's start, and
    every reported margin recomputed here from the saved table and episodes."""
    from scipy.optimize import linprog

    from skipenv.evaluation.probe import ProbePolicy, ProbeTable
    from skipenv.evaluation.main_job import run_main_job

    out = tmp_path / "run"
    summary = run_main_job(out, total_timesteps=16, train_examples=8, test_examples=5, model=tiny_model_dir,
                           env_kwargs=ENV_KWARGS, progress_bar=False)
    meta = json.loads((out / "summary.json").read_text())
    assert (meta["env_id"], meta["formulation"], meta["algo"]) == ("SwitchDec-XSum-v1", "expected", "ppo-bc")
    assert (meta["quality"], meta["tau"]) == ("probability", 0.01)
    assert (out / "policy.zip").exists() and (out / "quality_vs_flops.png").exists()
    table = ProbeTable.load(out / "menu")
    tr, te = table.matrices("train"), table.matrices("test")
    assert tr["loss"].shape == (8, len(table.plans)) and te["loss"].shape == (5, len(table.plans))
    # the main job's menu: the default menu's 7 token-segment plans (8 segments), without its sublayer plan
    assert table.plans == ["skip nothing"] + [f"drop last {n}/8 segments" for n in range(1, 5)] + \
        ["drop segment 3", "drop segment 5"]
    # the multiplier starts at the probe rule's, refitted here
    probe = ProbePolicy(empty=table.plans.index("skip nothing")).fit(tr["X"], tr["loss"], tr["saved"],
                                                                        tr["quality_full"], 0.01)
    assert meta["lagrange_multiplier"]["initial"] == pytest.approx(probe.expected_multiplier())
    # the best static plan: the cheapest menu plan whose mean train loss is within tau
    ok = [j for j in range(len(table.plans)) if tr["loss"][:, j].mean() <= 0.01 + 1e-12]
    best = max(ok, key=lambda j: tr["saved"][:, j].mean())
    assert meta["best_static"]["policy"] == f"best static: {table.plans[best]}"
    episodes = pd.read_csv(out / "episodes.csv", float_precision="round_trip")
    static_rows = episodes[episodes["policy"] == meta["best_static"]["policy"]]
    assert np.allclose(static_rows["flops_saved"], te["saved"][:, best])  # evaluate_policy == evaluate_menu
    # margins, recomputed: the train mixture from scipy's LP, the learned policy's outcomes from episodes.csv
    em = meta["expected_constraint"]
    lp = linprog(-tr["saved"].mean(0), A_ub=[tr["loss"].mean(0)], b_ub=[0.01], A_eq=[np.ones(len(table.plans))],
                 b_eq=[1.0], bounds=(0, None))
    mix_saved = float(te["saved"].mean(0) @ lp.x)
    assert em["best_static_mixture"]["mean_flops_saved"] == pytest.approx(mix_saved, abs=1e-6)
    learned = episodes[episodes["policy"] == "ppo-bc"]
    assert em["learned"]["mean_flops_saved"] == pytest.approx(learned["flops_saved"].mean())
    loss = (learned["quality_full"] - learned["quality"]).mean()
    assert em["learned"]["mean_quality_loss"] == pytest.approx(loss)
    assert em["learned"]["mean_constraint_holds"] == bool(loss <= 0.01)
    vs_mix = next(m for m in em["margins"] if m["policy"] == "learned" and m["baseline"].startswith("best static"))
    assert vs_mix["flops_saved"] == pytest.approx(learned["flops_saved"].mean() - mix_saved, abs=1e-6)
    assert vs_mix["flops_saved_ci"][0] <= vs_mix["flops_saved"] <= vs_mix["flops_saved_ci"][1]
    det = probe.plan_probabilities(te["X"], "expected", deterministic=True).argmax(1)
    assert em["probe_deterministic"]["mean_flops_saved"] == pytest.approx(te["saved"][np.arange(5), det].mean())
    assert em["probe_deterministic"]["mean_quality_loss"] == pytest.approx(te["loss"][np.arange(5), det].mean())
    assert set(summary["policy"]) == {"ppo-bc", "random:0.5", "skip-nothing", meta["best_static"]["policy"]}
    assert "quality_rouge" not in episodes  # ROUGE-L (one generation per episode) only with rouge=True


def test_main_job_per_input_id_keeps_the_lexicographic_comparison(tiny_model_dir, tmp_path):
    from skipenv.evaluation.main_job import run_main_job

    out = tmp_path / "run0"
    run_main_job(out, total_timesteps=8, train_examples=6, test_examples=4, model=tiny_model_dir,
                 env_id="SwitchDec-XSum-v0", env_kwargs=ENV_KWARGS, progress_bar=False, rouge=True)
    meta = json.loads((out / "summary.json").read_text())
    assert (meta["formulation"], meta["algo"], meta["quality"]) == ("per_input", "ppo", "agreement")
    episodes = pd.read_csv(out / "episodes.csv", float_precision="round_trip")
    a = episodes[episodes["policy"] == "ppo"].set_index("example_id")
    b = episodes[episodes["policy"] == meta["best_static"]["policy"]].set_index("example_id")
    assert meta["margin_over_best_static"]["reward"] == pytest.approx((a["reward"] - b.loc[a.index, "reward"]).mean())
    assert "expected_constraint" not in meta
    assert episodes["quality_rouge"].between(0, 1).all() and episodes["quality_full_rouge"].notna().all()


@pytest.mark.parametrize("kwargs, match", [
    (dict(algo="ppo-bc", static_examples=2), "needs >= 4"),
    (dict(algo="nope"), "unknown learner"),
    (dict(env_kwargs={"formulation": "budget"}), "set by the main job"),
    (dict(env_kwargs={"split": "test"}), "set by the main job"),
    (dict(static_examples=-1), "static_examples"),
])
def test_main_job_refuses_bad_arguments_before_loading(kwargs, match, tmp_path):
    from skipenv.evaluation.main_job import run_main_job

    with pytest.raises(ValueError, match=match):
        run_main_job(tmp_path / "never", model="no-such-model-is-loaded", **kwargs)
    assert not (tmp_path / "never").exists()


def test_probe_deterministic_expected_rule_is_the_best_single_rule_within_tau(tiny_xsum_env_factory):
    """The deterministic rule re-derived by hand from out-of-fold predictions: the single lam of the grid with the
    most train FLOPs saved among those whose train mean loss is within tau; its plan per document is
    argmax S^ - lam L^; the warm-start targets of the expected formulation are exactly those plans."""
    from sklearn.model_selection import KFold, cross_val_predict

    from skipenv.evaluation import probe
    from skipenv.policies.warm_start import warm_start_targets

    make_env = tiny_xsum_env_factory
    table = probe.evaluate_menu(make_env, num_train=10, num_test=2, progress=False)
    m = table.matrices("train")
    D, P = m["loss"].shape
    tau = float(np.quantile(m["loss"][:, 1:].mean(0), 0.5))  # some plans meet it on average, some do not
    pol = probe.ProbePolicy(empty=0, seed=3).fit(m["X"], m["loss"], m["saved"], m["quality_full"], tau)
    oof = cross_val_predict(pol._model(D - int(np.ceil(D / 5)), m["X"].shape[1]), m["X"],
                            np.hstack([m["loss"], m["saved"]]), cv=KFold(5, shuffle=True, random_state=3))
    l_hat, s_hat = oof[:, :P].copy(), oof[:, P:]
    l_hat[:, 0] = 0.0
    best = None
    for lam in pol.lams:
        c = l_hat.argmin(1) if np.isinf(lam) else (s_hat - lam * l_hat).argmax(1)
        loss, saved = m["loss"][np.arange(D), c].mean(), m["saved"][np.arange(D), c].mean()
        if loss <= tau + 1e-12 and (best is None or saved > best[1]):
            best = (lam, saved)
    assert best is not None and pol.lam_deterministic == best[0]
    assert pol.expected_multiplier() == (best[0] if np.isfinite(best[0]) else 1000.0)
    W = pol.plan_probabilities(m["X"], "expected", deterministic=True)
    lt, st = pol.predict_outcomes(m["X"])
    expected_choice = lt.argmin(1) if np.isinf(best[0]) else (st - best[0] * lt).argmax(1)
    np.testing.assert_array_equal(W.argmax(1), expected_choice)
    assert set(np.unique(W)) <= {0.0, 1.0}
    targets = warm_start_targets(table, tau, env=make_env("train", 10), source="probe", formulation="expected",
                                 seed=3)
    assert targets.plans == [table.plans[j] for j in expected_choice] and (targets.weights == 1).all()


@pytest.mark.parametrize("env_id, kwargs", [("SwitchDec-XSum-v1", {}), ("SwitchDec-XSum-v0", {}),
                                            ("SwitchDec-XSum-v0", {"quality": "probability"}),
                                            ("SwitchDec-XSum-v1", {"tau": 0.05}),
                                            ("SwitchDec-XSum-v1", {"quality": "agreement"}),
                                            ("SwitchDec-XSum-v0", {"quality": "rouge"})])
def test_probe_reads_the_env_tau_without_building_the_env(env_id, kwargs, tiny_llama):
    """The probe's default tau (no model load) equals the tau of the env gym.make builds."""
    from skipenv.envs.registration import env_tau

    built = skipenv.make(env_id, generator=tiny_llama, **SMALL, **kwargs).unwrapped.tau
    assert env_tau(env_id, kwargs) == built


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
    root = Path(__file__).resolve().parents[1]
    proc = subprocess.run([sys.executable, "-c", code], env={**__import__("os").environ, "PYTHONPATH": str(root)},
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "Using the latest versioned environment" not in proc.stderr
    assert "SwitchDec-XSum-v0 is out of date" in proc.stderr  # an old version named explicitly still warns

