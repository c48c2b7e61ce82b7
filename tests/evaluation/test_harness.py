"""skipenv.evaluation (harness, stats) without a model: distinct episodes, bootstrap CI / IQM, the Pareto front and the
leaderboard table, on hand-made episode tables whose answers are computed by hand or independently; and the
leaderboard's progress bars on a tiny random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest

from skipenv.evaluation.harness import distinct_episodes, format_summary, summarize
from skipenv.evaluation.plots import pareto_front
from skipenv.evaluation.stats import bootstrap_ci, iqm

REWARDS = [0.97, 1.20, -0.30, 0.55, 1.41, -0.88, 0.12, 1.05]


def _episodes(policy: str, seed: int, rewards, plans=None) -> pd.DataFrame:
    n = len(rewards)
    plans = plans or [json.dumps({"tokens": [i % 3]}) for i in range(n)]
    return pd.DataFrame({
        "policy": policy, "seed": seed, "example_id": [f"ex{i}" for i in range(n)], "reward": rewards,
        "quality": np.linspace(0.5, 1.0, n), "quality_full": 1.0, "constraint_satisfied": [r > 0 for r in rewards],
        "cost": 0.8, "flops_saved": 0.2, "num_skipped": 1, "plan": plans})


def test_deterministic_policy_over_three_seeds_has_the_ci_of_one_seed():
    one = summarize(_episodes("lead:4", 0, REWARDS))
    three = summarize(pd.concat([_episodes("lead:4", s, REWARDS) for s in (0, 1, 2)], ignore_index=True))
    for col in ("episodes", "seeds", "reward_mean", "reward_std", "reward_ci_low", "reward_ci_high",
                "reward_iqm_over_seeds", "quality", "constraint_satisfied"):
        assert three.iloc[0][col] == pytest.approx(one.iloc[0][col]), col
    assert three.iloc[0]["episodes"] == 8 and three.iloc[0]["seeds"] == 1 and three.iloc[0]["seeds_run"] == 3
    # what counting the copies would have claimed: a visibly narrower interval from the same 8 numbers
    lo3, hi3 = bootstrap_ci(REWARDS * 3)
    assert hi3 - lo3 < 0.8 * (one.iloc[0]["reward_ci_high"] - one.iloc[0]["reward_ci_low"])


def test_stochastic_policy_keeps_every_seed_even_where_two_seeds_chose_the_same_plan():
    a = _episodes("random:0.01", 0, REWARDS, plans=["[]"] * 8)
    b = _episodes("random:0.01", 1, REWARDS[::-1], plans=["[]"] * 7 + ['[5]'])  # one example differs
    kept = distinct_episodes(pd.concat([a, b], ignore_index=True))
    assert len(kept) == 16
    s = summarize(pd.concat([a, b], ignore_index=True)).iloc[0]
    assert s["episodes"] == 16 and s["seeds"] == 2


def test_bootstrap_ci_is_the_percentile_bootstrap_of_the_mean():
    x = np.array(REWARDS)
    lo, hi = bootstrap_ci(x, resamples=4000, seed=1)
    # independent percentile bootstrap with numpy
    rng = np.random.default_rng(123)
    means = x[rng.integers(0, len(x), size=(20000, len(x)))].mean(1)
    ref_lo, ref_hi = np.quantile(means, [0.025, 0.975])
    assert lo == pytest.approx(ref_lo, abs=0.06) and hi == pytest.approx(ref_hi, abs=0.06)
    assert bootstrap_ci([]) != bootstrap_ci([])  # (nan, nan)
    assert bootstrap_ci([0.4] * 5) == (0.4, 0.4)


def test_iqm_hand_computed():
    assert iqm([1, 2, 3, 4, 5, 6, 7, 100]) == pytest.approx(4.5)  # middle 50 %: 3, 4, 5, 6
    assert iqm([0.9, 0.1, 0.5]) == pytest.approx(0.5)  # < 4 values: the mean
    from scipy.stats import trim_mean

    x = np.random.default_rng(0).normal(size=37)
    assert iqm(x) == pytest.approx(trim_mean(x, 0.25))


def test_pareto_front_hand_computed():
    names = ["skip-nothing", "ppo", "lead:4", "calibrated:4", "random:0.5", "every-other:attention", "broken"]
    pts = [(-0.030, 1.000), (-0.030, 1.000), (0.381, 0.809), (0.013, 0.799), (0.659, 0.010), (0.132, 0.021),
           (np.nan, 0.5)]
    # by hand: lead:4 dominates calibrated:4 (more saved, higher quality) and every-other (0.381 > 0.132,
    # 0.809 > 0.021); the two identical full-model points do not dominate each other; NaN is never on the front
    assert [names[i] for i in pareto_front(pts)] == ["skip-nothing", "ppo", "lead:4", "random:0.5"]
    assert pareto_front([(0.0, 1.0)]) == [0]
    assert pareto_front([(0.1, 0.5), (0.1, 0.6)]) == [1]  # same saving, better quality


def test_leaderboard_table_fits_in_120_columns():
    eps = pd.concat([_episodes(n, 0, REWARDS) for n in
                     ("skip-nothing", "every-other:attention", "calibrated:4", "ppo:a-very-long-run-folder-name-2026")],
                    ignore_index=True)
    eps["quality_rouge"], eps["quality_full_rouge"] = 0.15, 0.151
    text = format_summary(summarize(eps))
    assert max(map(len, text.splitlines())) <= 120, text
    header = text.splitlines()[0]
    for col in ("policy", "seeds", "episodes", "rouge", "rouge full", "constraint ok", "FLOPs saved", "95% CI"):
        assert col in header
    assert "every-other:attention" in text and "…" in text  # long names shortened, short ones kept


def test_leaderboard_bars_count_episodes_and_documents_and_name_the_seed(tmp_path, capsys, one_thread):
    """Bars say what they count (``episode``, ``document``, not ``it``), and a stochastic policy's bar per seed
    says which seed it is; a deterministic policy runs once, without a seed in its label."""
    from _tiny_local import tiny_env_kwargs, write_tiny_assets

    from skipenv.evaluation.harness import leaderboard

    model, data = write_tiny_assets(tmp_path, num_documents=3)
    capsys.readouterr()  # transformers' own bar while saving the model
    episodes, summary = leaderboard(["random:0.5", "skip-nothing"], split="all", episodes=2, seeds=(0, 1),
                                    progress=True, env_kwargs=tiny_env_kwargs(model, data, disk_cache=False))
    err = capsys.readouterr().err
    assert "eval random:0.5 seed 0:" in err and "eval random:0.5 seed 1:" in err
    assert "eval skip-nothing:" in err and "eval skip-nothing seed" not in err
    assert "episode/s" in err and "document/s" in err and "it/s" not in err
    assert sorted(set(zip(episodes["policy"], episodes["seed"]))) == [("random:0.5", 0), ("random:0.5", 1),
                                                                      ("skip-nothing", 0)]
    # the default id is v1: the summary reports its expected constraint, the mean quality loss against tau 0.01
    loss = (episodes["quality_full"] - episodes["quality"]).groupby(episodes["policy"]).mean()
    by_policy = summary.set_index("policy")
    assert by_policy["mean_quality_loss"].to_dict() == pytest.approx(loss.to_dict())
    assert (by_policy["tau"] == 0.01).all() and by_policy.loc["skip-nothing", "mean_loss_within_tau"]
    assert "mean loss" in format_summary(summary) and "yes (0.01)" in format_summary(summary)


def test_expected_formulation_summary_is_mean_loss_against_tau():
    """Under the expected constraint the table shows the mean loss, its CI and whether it is within tau, not the
    per-input reward (which ranked skip-nothing first on v1)."""
    eps = _episodes("lead:4", 0, REWARDS)  # quality linspace(0.5, 1, 8) against 1.0: mean loss 0.25
    s = summarize(eps, formulation="expected", tau=0.3).iloc[0]
    assert s["mean_quality_loss"] == pytest.approx(0.25) and s["mean_loss_within_tau"] and s["tau"] == 0.3
    assert s["mean_quality_loss_ci_low"] <= 0.25 <= s["mean_quality_loss_ci_high"]
    assert not summarize(eps, formulation="expected", tau=0.2).iloc[0]["mean_loss_within_tau"]
    text = format_summary(summarize(eps, formulation="expected", tau=0.2))
    assert "mean loss" in text and "0.2500" in text and "no (0.2)" in text and "IQM" not in text
    assert "IQM" in format_summary(summarize(eps))  # the per-input table is unchanged
    with pytest.raises(ValueError, match="needs tau"):
        summarize(eps, formulation="expected")


def test_saved_policy_specs_bare_or_prefixed_are_checked_before_anything_loads(tmp_path):
    from skipenv.evaluation.harness import leaderboard
    from skipenv.policies import check_policy_spec

    assert check_policy_spec("runs/ppo-xsum/policy.zip") == ("file", "runs/ppo-xsum/policy.zip")
    assert check_policy_spec("runs/pg/policy.pt") == ("file", "runs/pg/policy.pt")
    assert check_policy_spec("sb3:ppo:runs/ppo-xsum/policy.zip") == ("sb3", "ppo:runs/ppo-xsum/policy.zip")
    for spec in (str(tmp_path / "missing.zip"), f"sb3:ppo:{tmp_path / 'missing.zip'}", f"pg:{tmp_path / 'x.pt'}"):
        with pytest.raises(FileNotFoundError, match="no file"):  # raised before any env or model is built
            leaderboard([spec], env_id="NoSuch-v0")
