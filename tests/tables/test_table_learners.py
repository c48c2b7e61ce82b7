"""Learners on replay tables (skipenv.tables.learners, benchmarks/compare_tables.py), on a tiny table built from a
random-weight Llama saved with ``save_pretrained`` (tests/_tiny_local.py). Expected values are computed here
independently: by hand (the fronts), from the table's own columns (the regret, the best plan)."""

from __future__ import annotations

import numpy as np
import pytest

import skipenv  # noqa: F401  (registers the ids)
from skipenv.tables.build import build_table, table_config
from skipenv.tables.learners import (ENV_OF, EpisodeRecorder, LEARNERS, front_saved, headroom_share, make_folds,
                                     train_learner_on_table, _make_env)
from skipenv.tables.store import Table, TableError

from _scripts import load_benchmark
from _tiny_local import write_tiny_assets


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("learners")
    model, data = write_tiny_assets(root, 12)
    cfg = table_config("SwitchDec-XSum-v1", model=model, task_source=data, max_input_tokens=96, max_new_tokens=6,
                       token_segments=4)
    build_table(root / "table", config=cfg, splits=("validation", "train"), limit=6, work_dir=root / "work",
                progress=False)
    return Table.load(root / "table")


def test_fronts_and_headroom_share_by_hand():
    # 3 documents x 3 plans; plan 1 is free on document 1 (worked out in the comments)
    loss = np.array([[0, .02, .1], [0, 0, .1], [0, .04, .1]])
    saved = np.array([[0, .3, .6]] * 3)
    st, orc = front_saved(loss, saved, 0.01)
    # static: plan 1 (15 saved per unit of loss beats plan 2's 6) at weight 0.5 -> 0.15
    # oracle: plan 1 on doc 1 (free), on doc 0 (0.02), a quarter of plan 1 on doc 2 (0.01) -> 0.675 / 3
    assert st == pytest.approx(0.15) and orc == pytest.approx(0.225)
    h = headroom_share(loss, saved, np.array([1, 1, 0]))
    # the policy saves 0.2 at mean loss 0.02/3; static there: plan 1 at 1/3 -> 0.1; oracle there: 0.6 / 3 = 0.2
    assert h["flops_saved"] == pytest.approx(0.2) and h["mean_loss"] == pytest.approx(0.02 / 3)
    assert h["static_at_loss"] == pytest.approx(0.1) and h["oracle_at_loss"] == pytest.approx(0.2)
    assert h["gain"] == pytest.approx(0.1) and h["share"] == pytest.approx(1.0)


def test_folds_cover_every_document_once_and_the_split_rule(tiny):
    folds, how = make_folds(tiny, min_train=40, folds=3, seed=1)
    assert "fallback" in how and len(folds) == 3
    tested = [e for f in folds for e in f.test_ids]
    assert sorted(tested) == sorted(tiny.document_ids)  # each document scored exactly once
    for f in folds:
        assert set(f.train_ids).isdisjoint(f.test_ids)
        assert [f.table.document_ids[r] for r in f.table.rows("test")] == f.test_ids
        assert [f.table.document_ids[r] for r in f.table.rows("train")] == f.train_ids
    assert tiny.document_splits.count("train") == 6  # the original table is unchanged
    with pytest.raises(TableError, match="needs at least"):
        make_folds(tiny, folds=5)
    # the table's own split when it has enough train documents (here: relabel validation -> test)
    relabelled = folds[0].table
    one, how = make_folds(relabelled, min_train=2)
    assert len(one) == 1 and how.startswith("the table's split") and one[0].test_ids == folds[0].test_ids


def test_recorder_regret_against_the_per_document_oracle(tiny):
    env = EpisodeRecorder(_make_env("menu", tiny, split="all", formulation_kwargs={"lam_init": 3.0}),
                          tiny.num_plans)
    c = tiny.columns
    loss = np.asarray(c["quality_full.probability"]) - np.asarray(c["quality.probability"])
    saved = 1 - np.asarray(c["cost"])
    env.reset(seed=0)
    for plan in (0, 5, 33):
        env.reset(options={"index": 2})
        _, r, *_ = env.step(plan)
        _, _, l_, s_, lam, regret = env.log[-1]
        assert lam == 3.0  # lam_init: no dual update within the first update_every = 8 episodes
        row = tiny.row_of(env.unwrapped.example_id)
        best = np.max(saved[row] - lam * (loss[row] - 0.01))
        assert r == pytest.approx(saved[row, plan] - lam * (loss[row, plan] - 0.01))
        assert regret == pytest.approx(best - r) and regret >= -1e-12
    # the oracle's own plan has zero regret
    env.reset(options={"index": 2})
    lam = env.get_wrapper_attr("lam")
    assert lam == 3.0
    row = tiny.row_of(env.unwrapped.example_id)
    env.step(int(np.argmax(saved[row] - lam * (loss[row] - 0.01))))
    assert env.log[-1][5] == pytest.approx(0.0, abs=1e-12)


@pytest.mark.parametrize("name", ["eps-greedy", "linucb"])
def test_bandits_learn_the_best_plan(tiny, name):
    """On the random model every plan's loss is far below tau, so the multiplier falls to 0 and the reward is the
    FLOPs saved: the bandit must end on the plan that saves the most (computed from the table's cost column)."""
    folds, _ = make_folds(tiny, folds=2, seed=0)
    t = folds[0].table
    saved = 1 - np.asarray(t.columns["cost"])[t.rows("train")]
    best = int(saved.mean(0).argmax())
    assert saved.mean(0)[best] > np.sort(saved.mean(0))[-2]  # a unique best plan
    res = train_learner_on_table(name, t, episodes=600, seed=0, checkpoints=2)
    assert len(res["log"]) == 600 and (res["log"][:, 5] >= -1e-9).all()
    assert res["test_ids"] == folds[0].test_ids and len(res["curve"]) == 2
    if name == "eps-greedy":  # context-free: one plan for every document
        assert (res["plans"] == best).all()
    else:
        assert (res["plans"] == best).mean() >= 0.5


@pytest.mark.parametrize("name", [n for n in LEARNERS if n not in ("eps-greedy", "linucb", "ppo-default-v1")])
def test_every_learner_trains_and_acts_inside_its_env(tiny, name):
    folds, _ = make_folds(tiny, folds=2, seed=0)
    res = train_learner_on_table(name, folds[0].table, episodes=64, seed=1, checkpoints=2)
    reach = tiny.grammar.num_factorial if ENV_OF[name] == "factorial" else tiny.num_plans
    assert res["plans"].shape == (len(folds[0].test_ids),)
    assert ((0 <= res["plans"]) & (res["plans"] < reach)).all()
    assert len(res["log"]) >= 64 - 4 and (res["log"][:, 5] >= -1e-9).all()  # GroupPG rounds to whole groups


def test_unknown_learner_is_refused(tiny):
    with pytest.raises(ValueError, match="unknown learner"):
        train_learner_on_table("sac", tiny, episodes=8)


def test_compare_script_end_to_end(tiny, tmp_path, capsys):
    import pandas as pd

    mod = load_benchmark("compare_tables")
    assert mod.main(["--table", str(tiny.folder), "--learners", "eps-greedy", "rloo", "--seeds", "2",
                     "--episodes", "48", "--checkpoints", "2", "--workers", "1", "--reps", "100",
                     "--out", str(tmp_path)]) == 0
    text = capsys.readouterr().out
    assert "3-fold cross-validation over all 8 covered documents" in text and "| eps-greedy |" in text
    runs = pd.read_csv(tmp_path / "runs.csv")
    assert len(runs) == 4 and set(runs.learner) == {"eps-greedy", "rloo"}
    assert ((runs.gain - (runs.flops_saved - runs.static_at_loss)).abs() < 1e-12).all()
    assert len(pd.read_csv(tmp_path / "curves.csv")) == 8 and (tmp_path / "compare_tables.png").is_file()
