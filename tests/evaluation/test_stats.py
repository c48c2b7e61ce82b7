"""Comparison statistics (skipenv.evaluation.stats, rliable) and benchmarks/compare_algorithms.py's tables, against
independent numpy computations on hand-made scores: IQM, probability of improvement counted pair by pair,
bootstrap intervals, significance marks."""

from __future__ import annotations

import itertools
from types import SimpleNamespace

import numpy as np
import pandas as pd
import pytest

from skipenv.evaluation import stats


def numpy_iqm(x) -> float:
    """Mean of the middle half of the sorted values (sizes divisible by 4 here)."""
    x = np.sort(np.ravel(x))
    q = len(x) // 4
    return float(x[q: len(x) - q].mean())


def pairwise_poi(x, y) -> float:
    """P(X > Y) + 0.5 P(X = Y) per task by counting every pair of runs, averaged over tasks."""
    per_task = []
    for t in range(x.shape[1]):
        pairs = list(itertools.product(x[:, t], y[:, t]))
        per_task.append(np.mean([1.0 if a > b else 0.5 if a == b else 0.0 for a, b in pairs]))
    return float(np.mean(per_task))


X = np.array([[1.0, 2.0, 3.0], [2.0, 3.0, 4.0]])
Y = np.array([[0.0, 2.0, 5.0], [1.0, 1.0, 1.0], [3.0, 3.0, 3.0]])


def test_iqm_against_numpy():
    s = np.array([[0.1, 5.0, 0.3, 0.9], [0.4, -3.0, 0.7, 0.2]])  # 8 values: middle 4 are 0.2 0.3 0.4 0.7
    assert stats.iqm(s) == pytest.approx(numpy_iqm(s)) == pytest.approx((0.2 + 0.3 + 0.4 + 0.7) / 4)
    table = stats.interval_estimates({"s": s}, reps=500)
    row = table.iloc[0]
    assert row["iqm"] == pytest.approx(numpy_iqm(s)) and row["runs"] == 2 and row["tasks"] == 4
    assert row["ci_low"] <= row["iqm"] <= row["ci_high"] and row["ci_low"] < row["ci_high"]
    const = stats.interval_estimates({"c": np.full((3, 4), 0.7)}).iloc[0]
    assert const["iqm"] == const["ci_low"] == const["ci_high"] == 0.7
    with pytest.raises(ValueError, match="same tasks"):
        stats.interval_estimates({"a": np.zeros((2, 3)), "b": np.zeros((2, 4))})


def test_probability_of_improvement_hand_counted():
    # task 0: x {1, 2} vs y {0, 1, 3} -> (1 + 0.5 + 0 + 1 + 1 + 0) / 6 = 3.5 / 6; task 1: 4 / 6; task 2: 3.5 / 6
    assert pairwise_poi(X, Y) == pytest.approx(11 / 18)
    t = stats.probability_of_improvement({"x": X, "y": Y}, [("x", "y"), ("y", "x")], reps=500)
    assert t.loc[0, "poi"] == pytest.approx(11 / 18) and t.loc[1, "poi"] == pytest.approx(7 / 18)
    assert t.loc[0, "ci_low"] < 0.5 < t.loc[0, "ci_high"] and t.loc[0, "significant"] == ""
    # x above y on every task in every run: PoI 1 with a CI at 1, significant
    hi = stats.probability_of_improvement({"x": X + 10, "y": Y}, [("x", "y")], reps=200).iloc[0]
    assert hi["poi"] == hi["ci_low"] == 1.0 and hi["significant"] == "x > y"
    with pytest.raises(ValueError, match="no scores"):
        stats.probability_of_improvement({"x": X}, [("x", "z")])
    # two deterministic policies (1 run), better on one of 4 documents and tied on the others: PoI 0.625 by
    # counting; resampling runs only gives a zero-width interval, resampling the documents as well does not
    a, b = np.array([[1.0, 0.0, 0.0, 0.0]]), np.zeros((1, 4))
    assert pairwise_poi(a, b) == 0.625
    runs_only = stats.probability_of_improvement({"a": a, "b": b}, [("a", "b")], task_bootstrap=False).iloc[0]
    assert runs_only["ci_low"] == runs_only["ci_high"] == 0.625 and runs_only["significant"] == "a > b"
    docs = stats.probability_of_improvement({"a": a, "b": b}, [("a", "b")], reps=500).iloc[0]
    # resampled PoI = 0.5 + k / 8 with k ~ Binomial(4, 1/4) copies of document 0: P(k = 0) = 0.32 puts the 2.5 %
    # quantile at 0.5; P(k >= 3) = 0.051 and P(k = 4) = 0.004 put the 97.5 % quantile at k = 3, i.e. 0.875
    assert docs["poi"] == 0.625 and docs["ci_low"] == 0.5 and docs["ci_high"] == 0.875 and docs["significant"] == ""
    # different run counts (2 vs 3): the point estimate is the pairwise count, the interval contains it
    t3 = stats.probability_of_improvement({"x": X, "y": Y}, [("x", "y")], reps=300).iloc[0]
    assert t3["poi"] == pytest.approx(11 / 18) and t3["ci_low"] <= 11 / 18 <= t3["ci_high"]


def test_score_matrix_and_profile(tmp_path):
    ep = pd.DataFrame({"policy": "p", "seed": [1, 1, 0, 0], "example_id": ["b", "a", "a", "b"],
                       "score": [4.0, 3.0, 1.0, 2.0]})
    np.testing.assert_array_equal(stats.score_matrix(ep, "p", "score"), [[1.0, 2.0], [3.0, 4.0]])
    with pytest.raises(ValueError, match="exactly one episode"):
        stats.score_matrix(pd.concat([ep, ep.iloc[:1]]), "p", "score")
    stats.performance_profile_figure({"x": X, "y": Y}, path=tmp_path / "pp.png", reps=100)
    assert (tmp_path / "pp.png").stat().st_size > 5000


def _compare_module():
    from _scripts import load_benchmark

    return load_benchmark("compare_algorithms")


def test_compare_algorithms_statistics_against_numpy():
    mod = _compare_module()
    docs = ["d0", "d1", "d2", "d3"]
    static = {"skip-nothing": [0.9, 0.9, 0.9, 0.9], "lead:4": [1.2, 0.5, 1.1, 1.0]}  # IQM 1.05 vs 0.9
    learned = {"ppo": [[0.9, 0.9, 0.9, 0.9], [0.9, 0.9, 0.9, 1.1]],
               "rloo": [[1.3, 0.6, 1.2, 1.1], [1.3, 0.4, 1.0, 1.1]]}
    rows = []
    for name, s in static.items():
        rows += [{"policy": name, "seed": 0, "example_id": d, "score": v} for d, v in zip(docs, s)]
    for name, runs in learned.items():
        for seed, s in enumerate(runs):
            rows += [{"policy": name, "seed": seed, "example_id": d, "score": v} for d, v in zip(docs, s)]
    ep = pd.DataFrame(rows).assign(quality=1.0, quality_full=1.0, quality_loss=0.0, constraint_satisfied=True,
                                   flops_saved=0.1, tau=0.1)
    args = SimpleNamespace(formulation="per_input", reps=300)
    summary, poi, scores = mod.statistics(ep, args, {"ppo": [1.0], "rloo": [2.0]}, {})
    s = summary.set_index("policy")
    assert s["best_static"].sum() == 1 and s.loc["lead:4", "best_static"]  # the higher IQM
    for name in ("lead:4", "rloo"):
        assert s.loc[name, "score_iqm"] == pytest.approx(numpy_iqm(scores[name]))
    lead = np.array([static["lead:4"]])
    for name in ("ppo", "rloo"):
        assert s.loc[name, "poi_vs_best_static"] == pytest.approx(pairwise_poi(np.array(learned[name]), lead))
    # rloo vs ppo (2 runs each): every pair of runs counted on each document
    assert s.loc["rloo", "poi_vs_ppo"] == pytest.approx(pairwise_poi(np.array(learned["rloo"]),
                                                                     np.array(learned["ppo"])))
    assert np.isnan(s.loc["ppo", "poi_vs_ppo"]) and np.isnan(s.loc["lead:4", "poi_vs_best_static"])
    printed = mod.table_for_print(summary)
    row = printed[printed["policy"] == "rloo"].iloc[0]
    mark = row["PoI vs PPO"].endswith("*")
    r = summary.set_index("policy").loc["rloo"]
    assert mark == (r["poi_vs_ppo_ci_low"] > 0.5 or r["poi_vs_ppo_ci_high"] < 0.5)
    assert printed["policy"].str.contains("(best static)", regex=False).sum() == 1


def test_bad_inputs_raise_clear_errors():
    """Inputs that gave a silent NaN, an empty table or a numpy/rliable traceback now fail naming the problem."""
    for bad in ([], [[1.0, np.nan]], [[np.inf]]):
        with pytest.raises(ValueError, match="iqm needs at least one score"):
            stats.iqm(bad)
    with pytest.raises(ValueError, match="non-empty mapping"):
        stats.interval_estimates({})
    with pytest.raises(ValueError, match="non-empty mapping"):
        stats.performance_profile_figure({})
    for kw, match in ((dict(reps=0), "reps"), (dict(reps=-3), "reps"), (dict(confidence=1.5), "confidence"),
                      (dict(confidence=0), "confidence")):
        with pytest.raises(ValueError, match=match):
            stats.interval_estimates({"x": X}, **kw)
        with pytest.raises(ValueError, match=match):
            stats.probability_of_improvement({"x": X, "y": Y}, [("x", "y")], **kw)
    for pairs in (("x", "y"), [("x",)], [("x", "y", "z")], "xy"):  # a bare pair was an unpacking error
        with pytest.raises(ValueError, match="list of \\(X, Y\\) policy-name pairs"):
            stats.probability_of_improvement({"x": X, "y": Y[:, :3]}, pairs)
    with pytest.raises(ValueError, match="thresholds"):
        stats.performance_profile_figure({"x": X}, thresholds=[])
    episodes = pd.DataFrame({"policy": ["p"] * 4, "seed": [0, 0, 1, 1], "example_id": ["a", "b", "a", "b"],
                             "reward": [1.0, 2.0, 3.0, np.nan]})
    with pytest.raises(ValueError, match="1 episodes have a NaN or infinite 'reward'"):
        stats.score_matrix(episodes, "p")
    assert stats.score_matrix(episodes.fillna(4.0), "p").tolist() == [[1.0, 2.0], [3.0, 4.0]]


# ----------------------------------------------------------------------------------------------------
# moved here from the v1 hardening campaign (tests/test_v1_hardening.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.usefixtures("one_thread")
def test_compare_algorithms_layerwise_envs_share_the_one_shot_tau(tmp_path, monkeypatch):
    """``--env SwitchDec-XSum-v1 --formulation per_input`` with another quality signal: the one-shot envs keep v1's
    registered tau (0.01); the layerwise envs DQN trains on must use that tau too, not their signal's default."""

    import skipenv
    from _tiny_local import write_tiny_assets

    from _scripts import load_benchmark

    C = load_benchmark("compare_algorithms")

    model_dir, _ = write_tiny_assets(tmp_path)
    made, make = [], skipenv.make

    def spy(env_id, **kw):
        env = make(env_id, **kw)
        made.append((env_id, env.unwrapped.tau, env.unwrapped.quality))
        return env

    monkeypatch.setattr(skipenv, "make", spy)
    C.main(["--env", "SwitchDec-XSum-v1", "--formulation", "per_input", "--algos", "dqn-layerwise", "--seeds", "0",
            "--timesteps", "1", "--train-examples", "2", "--test-examples", "2", "--reps", "10",
            "--out", str(tmp_path / "cmp"), "--env-kwargs",
            f'{{"model": "{model_dir}", "quality": "agreement", "max_new_tokens": 3, "max_input_tokens": 96, '
            f'"disk_cache": false}}'])
    assert made == [("SwitchDec-XSum-Layerwise-v0", 0.01, "agreement")] * 2


# ---------------------------------------------------------------------------------------------------------------
# one bootstrap_ci, one markdown_table (issue 19): the formulation metrics and the reports use these


def test_markdown_table():
    assert stats.markdown_table(pd.DataFrame({"a": [0.12345], "b": ["x"]})) == "| a | b |\n|---|---|\n| 0.123 | x |"


def test_bootstrap_ci_is_scipys_percentile_interval_and_one_value_rule():
    from scipy.stats import bootstrap

    x = np.array([0.1, 0.5, 0.2, 0.9, 0.4, 0.3])
    ref = bootstrap((x,), np.mean, n_resamples=500, confidence_level=0.9, method="percentile",
                    rng=np.random.default_rng(7)).confidence_interval
    assert stats.bootstrap_ci(x, confidence=0.9, resamples=500, seed=7) == (ref.low, ref.high)
    assert stats.bootstrap_ci(x, confidence=0.9, resamples=500, seed=7, one_value="nan") == (ref.low, ref.high)
    assert stats.bootstrap_ci([0.3]) == (0.3, 0.3)  # a per-policy report of one distinct episode
    assert np.isnan(stats.bootstrap_ci([0.3], one_value="nan")).all()  # one document: no interval
    assert stats.bootstrap_ci([0.3, 0.3], one_value="nan") == (0.3, 0.3)
    with pytest.raises(ValueError, match="one_value"):
        stats.bootstrap_ci(x, one_value="zero")


def test_formulation_metrics_ci_is_the_bootstrap_of_the_per_document_losses():
    from scipy.stats import bootstrap

    from skipenv.evaluation.formulation_metrics import formulation_metrics

    # two rows per document (weights 0.5 / 0.5): per-document losses 0.1, 0.25, 0.0, 0.4 by hand
    episodes = pd.DataFrame({"document": [0, 0, 1, 1, 2, 2, 3, 3], "weight": [0.5] * 8,
                             "quality_full": [1.0] * 8, "quality": [0.9, 0.9, 0.8, 0.7, 1.0, 1.0, 0.6, 0.6],
                             "cost": [0.5] * 8})
    m = formulation_metrics(episodes, tau=0.2, n_resamples=300, seed=4)
    ref = bootstrap((np.array([0.1, 0.25, 0.0, 0.4]),), np.mean, n_resamples=300, method="percentile",
                    rng=np.random.default_rng(4)).confidence_interval
    assert (m["quality_loss_ci_low"], m["quality_loss_ci_high"]) == pytest.approx((ref.low, ref.high), abs=1e-12)
    one = formulation_metrics(episodes[episodes["document"] == 3], tau=0.2)
    assert np.isnan(one["quality_loss_ci_low"]) and one["mean_quality_loss"] == pytest.approx(0.4)
    assert not one["mean_constraint_holds_ci"]  # no interval: the mean (0.4 > 0.2) decides


def test_poi_statistic_equals_rliables_and_gives_its_interval():
    """The vectorised statistic is rliable's (``scipy.stats.mannwhitneyu`` per task), on continuous, tied and
    identical scores, and the bootstrap interval built on it equals the one built on rliable's own function (same
    seed, hence the same resamples)."""
    from rliable import library, metrics

    rng = np.random.default_rng(3)
    cases = [(rng.normal(size=(10, 36)), rng.normal(size=(10, 36))),
             (rng.integers(0, 3, (7, 5)).astype(float), rng.integers(0, 3, (4, 5)).astype(float)),
             (np.tile(np.arange(5.0), (3, 1)), np.tile(np.arange(5.0), (3, 1)))]
    for x, y in cases:
        assert stats.poi_statistic(x, y) == pytest.approx(metrics.probability_of_improvement(x, y), abs=1e-12)
    x, y = cases[0]
    ours = stats.probability_of_improvement({"x": x, "y": y}, [("x", "y")], reps=60, seed=5).iloc[0]
    with stats._seeded(5):
        lo, hi = library.StratifiedBootstrap(x, y, task_bootstrap=True).conf_int(
            metrics.probability_of_improvement, reps=60, size=0.95, method="percentile")
    assert ours["ci_low"] == pytest.approx(float(np.min(lo)), abs=1e-12)
    assert ours["ci_high"] == pytest.approx(float(np.max(hi)), abs=1e-12)
