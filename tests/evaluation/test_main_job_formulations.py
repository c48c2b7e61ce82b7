"""The main job (:func:`skipenv.evaluation.main_job.run_main_job`) under each registered formulation: v1's
expected constraint (warm start, multiplier, margins against the static mixture and front) and v0's per-input
comparison with the env's own reward, and its argument checks before anything loads (tiny models only; moved here
from the v1 campaign files by issue 19)."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

# ----------------------------------------------------------------------------------------------------
# moved here from SwitchDec-XSum-v1 (tests/test_v1.py, dissolved by issue 19)


ENV_KWARGS = dict(max_new_tokens=6, max_input_tokens=96, disk_cache=False)


@pytest.mark.usefixtures("one_thread")
def test_main_job_under_the_expected_formulation(tiny_model_dir, tmp_path):
    """``skipenv train`` on v1: the menu table, the warm start from the probe policy, the multiplier's start, and
    every reported margin recomputed here from the saved table and episodes."""
    from scipy.optimize import linprog

    from skipenv.evaluation.main_job import run_main_job
    from skipenv.evaluation.probe import ProbePolicy, ProbeTable

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


@pytest.mark.usefixtures("one_thread")
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


@pytest.mark.usefixtures("one_thread")
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


# ----------------------------------------------------------------------------------------------------
# moved here from the v1 hardening campaign (tests/test_v1_hardening.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
@pytest.mark.parametrize("kwargs, match", [
    # 1-3 menu documents: the probe policy behind the static baselines needs >= 4 (failed after loading the model)
    (dict(env_id="SwitchDec-XSum-v0", static_examples=1), "needs >= 4 train documents"),
    (dict(env_id="SwitchDec-XSum-v0", static_examples=3), "needs >= 4 train documents"),
    (dict(env_id="SwitchDec-XSum-v0", train_examples=2), "min\\(static_examples, train_examples\\) = 2"),
    (dict(algo="ppo", static_examples=2), "needs >= 4 train documents"),
    (dict(total_timesteps=0), "total_timesteps must be an integer >= 1"),
    (dict(train_examples=0, static_examples=0, algo="ppo"), "train_examples must be an integer >= 1"),
    (dict(test_examples=0), "test_examples must be an integer >= 1"),
    (dict(test_examples=2.5), "test_examples must be an integer >= 1"),
])
def test_main_job_refuses_menu_and_size_arguments_before_loading(kwargs, match, tmp_path):
    from skipenv.evaluation.main_job import run_main_job

    with pytest.raises(ValueError, match=match):
        run_main_job(tmp_path / "never", model="no-such-model-is-loaded", progress_bar=False, **kwargs)
    assert not (tmp_path / "never").exists()


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_expected_margins_pair_the_table_and_refuse_episodes_of_another_env(tiny_xsum_env_factory):
    """The margins pair the learned episodes with the table's test documents by example id; episodes from an env
    with another quality signal (same ids, other units) are refused instead of mixed into the differences."""
    import numpy as np
    import pandas as pd

    from skipenv.envs import SwitchDecEnv
    from skipenv.evaluation.main_job import expected_margins
    from skipenv.evaluation.probe import evaluate_menu

    table = evaluate_menu(tiny_xsum_env_factory, num_train=4, num_test=3, progress=False)
    te = table.matrices("test")
    j = table.plans.index("skip nothing")
    # "learned" = skip nothing, in reversed order with one extra document the table lacks
    learned = pd.DataFrame({"example_id": [*te["example_id"][::-1], "not-in-table"],
                            "quality": [*te["quality"][::-1, j], 0.0], "quality_full": [*te["quality_full"][::-1, j], 1.0],
                            "flops_saved": [*te["saved"][::-1, j], 0.5]})
    em = expected_margins(table, learned, 0.1)
    assert em["documents"] == 3
    assert em["learned"]["mean_quality_loss"] == pytest.approx(te["loss"][:, j].mean())
    assert em["learned"]["mean_flops_saved"] == pytest.approx(te["saved"][:, j].mean())
    # the same documents and plan, but scored by the probability signal: refused
    gen = tiny_xsum_env_factory("test", 3)._evaluator.generator
    other = SwitchDecEnv("xsum", generator=gen, split="test", num_examples=3, max_new_tokens=6, max_input_tokens=96,
                         disk_cache=False, quality="probability")
    rows = []
    for i in range(3):
        other.reset(options={"index": i})
        *_, info = other.step(np.zeros(other.action_space.n, dtype=np.int8))
        rows.append({k: info[k] for k in ("example_id", "quality", "quality_full", "flops_saved")})
    with pytest.raises(ValueError, match="disagree on the full model's quality of 3 of 3"):
        expected_margins(table, pd.DataFrame(rows), 0.1)


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_main_job_per_input_static_plan_follows_the_envs_reward(tmp_path):
    """Under per_input the best static plan is the menu plan with the highest mean train reward *of the env the
    learner trains on*: with ``reward_mode="weighted"`` and no cost weight that is the plan of highest quality,
    not the lexicographic choice (the cheapest plan within tau)."""
    import json

    import pandas as pd
    from _tiny_local import write_tiny_assets

    from skipenv.evaluation.main_job import run_main_job
    from skipenv.evaluation.probe import ProbeTable, _rewards

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    run_main_job(out, total_timesteps=4, train_examples=4, test_examples=2, model=model_dir,
                 env_id="SwitchDec-XSum-v0", progress_bar=False,
                 env_kwargs=dict(max_new_tokens=4, max_input_tokens=96, disk_cache=False, reward_mode="weighted",
                                 cost_weight=0.0))
    meta = json.loads((out / "summary.json").read_text())
    table = ProbeTable.load(out / "menu")
    o = table.outcomes[table.outcomes["split"] == "train"]
    tr = table.matrices("train")
    # the weighted reward recomputed from the outcomes, quality - 0 * cost, per plan
    weighted = pd.Series(tr["quality"].mean(0), index=table.plans)
    assert weighted.to_numpy() == pytest.approx(o.pivot(index="doc", columns="plan", values="reward")[table.plans]
                                                .mean(0).to_numpy())
    best = weighted.idxmax()
    lexicographic = pd.Series(_rewards(tr["quality"], tr["quality_full"], tr["cost"], meta["tau"]).mean(0),
                              index=table.plans).idxmax()
    assert best != lexicographic  # the two rewards choose differently here, so the check can fail
    assert meta["best_static"]["policy"] == f"best static: {best}"


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_main_job_reports_the_multiplier_constrainedpg_used(tmp_path):
    """pg-lagrangian enforces the mean constraint with its own handler and ignores ExpectedConstraint's reward: the
    multiplier in summary.json is its handler's (recomputed here from progress.csv), not the unused wrapper's."""
    import json

    import numpy as np
    import pandas as pd
    from _tiny_local import write_tiny_assets

    from skipenv.evaluation.main_job import run_main_job
    from skipenv.policies.pg import PGConfig

    model_dir, _ = write_tiny_assets(tmp_path)
    out = tmp_path / "run"
    run_main_job(out, algo="pg-lagrangian", static_examples=0, total_timesteps=32, train_examples=4,
                 test_examples=2, model=model_dir, progress_bar=False,
                 env_kwargs=dict(max_new_tokens=3, max_input_tokens=96, disk_cache=False))
    meta = json.loads((out / "summary.json").read_text())
    hist = pd.read_csv(out / "progress.csv")
    cfg = PGConfig()
    last = hist.iloc[-cfg.batch_size:]  # the last batch: its multiplier, then one dual step on its mean loss
    lam = max(0.0, last["lam"].iloc[0] + cfg.lagrangian_lr * ((last["quality_full"] - last["quality"]).mean() - 0.01))
    assert meta["lagrange_multiplier"] == {"handler": "lagrangian", "final": pytest.approx(lam)}
    assert np.all(last["lam"] == last["lam"].iloc[0])
