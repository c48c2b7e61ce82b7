"""LagrangianTS (skipenv.tables.bandits), the ceiling analysis (skipenv.tables.ceiling) and
benchmarks/table_ceiling.py on a synthetic table with a planted answer: the shipped table's metadata (grammar,
plan names, configuration) with synthetic columns in which one aggressive plan is nearly free on "easy" documents
(a latent feature > 1, carried by 100 observation columns) and costly on the others, every other plan but skip nothing is far over tau. The
right contextual policy is therefore known by construction, and no model is loaded."""

from __future__ import annotations

import copy

import numpy as np
import pytest

import skipenv  # noqa: F401  (registers the ids)
from skipenv.tables.bandits import CostModel, FeatureMap, LagrangianTS
from skipenv.tables.ceiling import fit_loss_models, loss_r2, rule_result, supervised_policy, train_size_curve
from skipenv.tables.envs import load_table
from skipenv.tables.learners import _make_env, evaluate_plans, headroom_share, train_learner_on_table
from skipenv.tables.store import Table, write_table

from _scripts import load_benchmark

GOOD = 7  # the planted aggressive plan (3 token factors)


def _synthetic(folder, n_train=24, n_test=16, seed=0) -> Table:
    shipped = load_table("xsum-v1")
    meta = copy.deepcopy(shipped.meta)
    meta.pop("columns")
    D, P, n = n_train + n_test, shipped.num_plans, shipped.columns["observations"].shape[1]
    rng = np.random.default_rng(seed)
    obs = rng.standard_normal((D, n)).astype(np.float32)
    z = rng.standard_normal(D)
    obs[:, :100] = z[:, None] + 0.3 * obs[:, :100]  # the deciding feature: the first principal component (even
    # after the per-column standardisation of FeatureMap), carried by 100 of the pooled hidden state's columns
    obs[:, -2:] = rng.uniform(0.3, 1.0, (D, 2))  # the two length features
    loss = np.full((D, P), 0.5)
    loss[:, 0] = 0.0
    loss[:, GOOD] = 0.05 - 0.05 * z  # linear in the latent feature (negative: the skip helps, as on real tables)
    saved = np.tile(np.linspace(0.0, 0.4, P), (D, 1))
    saved[:, 0] = -0.03
    saved[:, GOOD] = 0.37
    qf = np.full((D, P), 0.9)
    full = np.full((D, P), 10 ** 9, dtype=np.int64)
    flops = np.round(full * (1 - saved)).astype(np.int64)
    arrays = {"observations": obs, "cost": 1.0 - saved, "flops": flops, "flops_full": full,
              "flops_prefill": flops // 2, "flops_decoding": flops - flops // 2,
              "flops_observation": np.zeros((D, P), np.int64), "num_generated": np.full((D, P), 8, np.int64)}
    for s in meta["config"]["signals"]:
        arrays[f"quality.{s}"] = qf - loss
        arrays[f"quality_full.{s}"] = qf.copy()
    meta["documents"] = {"ids": [f"syn-{i}" for i in range(D)], "splits": ["train"] * n_train + ["test"] * n_test}
    write_table(folder, meta, arrays)
    return Table.load(folder)


@pytest.fixture(scope="module")
def syn(tmp_path_factory):
    return _synthetic(tmp_path_factory.mktemp("bandits") / "table")


def _arrays(t):
    c = t.columns
    L = np.asarray(c["quality_full.probability"]) - np.asarray(c["quality.probability"])
    return np.asarray(c["observations"], dtype=np.float64), L, 1.0 - np.asarray(c["cost"])


def test_feature_map_whitens_on_the_fit_set_and_refuses_bad_input():
    rng = np.random.default_rng(1)
    X = rng.standard_normal((30, 12)) * np.arange(1, 13)
    fm = FeatureMap(X, components=4, passthrough=2)
    F = fm(X)
    assert F.shape == (30, 4 + 2 + 1) and fm.dim == 7
    np.testing.assert_allclose(F[:, :4].var(0, ddof=1), 1.0, rtol=1e-6)  # whitened principal components
    np.testing.assert_allclose(F[:, 4:6], (X[:, -2:] - X[:, -2:].mean(0)) / (X[:, -2:].std(0) + 1e-6), rtol=1e-9)
    assert (F[:, -1] == 1).all()
    with pytest.raises(ValueError, match=">= 2 observations"):
        FeatureMap(X[:1])
    with pytest.raises(ValueError, match="passthrough"):
        FeatureMap(X, passthrough=12)


def test_cost_model_recovers_a_linear_function_of_the_lengths():
    rng = np.random.default_rng(2)
    X = rng.standard_normal((20, 6))
    saved = np.stack([0.1 + 0.3 * X[:, -1], -0.02 + 0.0 * X[:, -1], 0.2 - 0.1 * X[:, -2] + 0.05 * X[:, -1]], 1)
    cm = CostModel(FeatureMap(X, components=2), X, saved)
    Xn = rng.standard_normal((5, 6))
    want = np.stack([0.1 + 0.3 * Xn[:, -1], np.full(5, -0.02), 0.2 - 0.1 * Xn[:, -2] + 0.05 * Xn[:, -1]], 1)
    np.testing.assert_allclose(cm(Xn), want, atol=1e-10)


def test_lagrangian_ts_learns_the_planted_contextual_policy(syn):
    X, L, S = _arrays(syn)
    te = syn.rows("test")
    env = _make_env("menu", syn)
    agent = LagrangianTS(env, seed=0).learn(1500)
    _, plans = evaluate_plans(agent, "menu", syn)
    assert set(plans.tolist()) == {0, GOOD}  # the 36 plans that lose 0.5 are never chosen
    h = headroom_share(L[te], S[te], plans)
    assert h["mean_loss"] <= 0.02  # tau 0.01 is met on the train documents; the test documents differ a little
    # a context-free policy gets only a small mixture of GOOD (its mean loss is 0.05); the learner gets most of
    # the oracle's headroom at its own loss
    assert h["gain"] > 0.05 and h["share"] > 0.6
    # GOOD goes to the documents where it loses least (the latent feature is high)
    assert X[te][plans == GOOD, :100].mean() > X[te][plans == 0, :100].mean()
    # the multiplier schedule ran once per batch within its bounds; the plans were explored
    assert len(agent.lam_trace) == int(np.ceil(1500 / 32)) and 0.1 <= min(agent.lam_trace) <= max(agent.lam_trace) <= 1000
    assert len({p for (_, p) in agent._sum}) >= 10


def test_lagrangian_ts_refuses_the_factorial_env(syn):
    with pytest.raises(ValueError, match="menu env"):
        LagrangianTS(_make_env("factorial", syn))


def test_ceiling_pieces_on_the_planted_table(syn):
    X, L, S = _arrays(syn)
    te = syn.rows("test")
    # the rule on the true losses is the deterministic oracle: the whole headroom (the LP may split one document)
    h = rule_result(L[te], S[te], L[te], S[te], 0.01)
    assert h["share"] == pytest.approx(1.0, abs=0.02) and h["mean_loss"] <= 0.01 + 1e-9
    r2 = loss_r2(X, L, components=4, folds=5)
    assert np.isnan(r2[0]) and np.isnan(r2[1])  # constant losses: no R^2
    assert r2[GOOD] > 0.5  # a step in the dominant feature, linear models capture most of it
    m = fit_loss_models(X[te], L[te], components=4)
    ins = rule_result(m(X[te]), S[te], L[te], S[te], 0.01)
    assert ins["share"] > 0.8  # the in-sample bound of the class
    pol = supervised_policy(X[syn.rows("train")], L[syn.rows("train")], S[syn.rows("train")], 0.01, components=4)
    hs = headroom_share(L[te], S[te], pol(X[te]))
    assert hs["share"] > 0.6 and hs["mean_loss"] <= 0.02
    rows = train_size_curve(X, L, S, [8, 24], repeats=2, components=4)
    assert [r["train_docs"] for r in rows] == [8, 8, 24, 24]
    assert all(np.isfinite(r["gain"]) and r["headroom"] > 0 for r in rows)
    with pytest.raises(ValueError, match="train size"):
        train_size_curve(X, L, S, [38])


@pytest.mark.slow  # two scripts end to end: ~30 s idle, ~90 s at load average 12 on 2 cores
def test_compare_and_ceiling_scripts_run_lagrangian_ts(syn, tmp_path, capsys):
    import pandas as pd

    mod = load_benchmark("compare_tables")
    assert mod.main(["--table", str(syn.folder), "--learners", "lagrangian-ts", "eps-greedy", "--seeds", "2",
                     "--episodes", "400", "--checkpoints", "2", "--workers", "1", "--reps", "100",
                     "--out", str(tmp_path / "cmp")]) == 0
    text = capsys.readouterr().out
    assert "the table's split: 24 train / 16 test documents" in text and "| lagrangian-ts |" in text
    runs = pd.read_csv(tmp_path / "cmp" / "runs.csv")
    assert len(runs) == 4 and set(runs.learner) == {"lagrangian-ts", "eps-greedy"}
    assert runs[runs.learner == "lagrangian-ts"].gain.mean() > runs[runs.learner == "eps-greedy"].gain.mean()
    g = np.load(tmp_path / "cmp" / "gains.npz")
    assert g["lagrangian-ts"].shape == (2, 16)
    np.testing.assert_allclose(g["lagrangian-ts"].mean(1), runs[runs.learner == "lagrangian-ts"].gain, atol=1e-9)
    ceil = load_benchmark("table_ceiling")
    assert ceil.main(["--table", str(syn.folder), "--components", "4", "--sizes", "8", "24", "--repeats", "2",
                      "--out", str(tmp_path / "ceil")]) == 0
    text = capsys.readouterr().out
    assert "## Per-plan R^2" in text and "in-sample bound" in text and "fully informed learner" in text
    assert len(pd.read_csv(tmp_path / "ceil" / "curve.csv")) == 4
