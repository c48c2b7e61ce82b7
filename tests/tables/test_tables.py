"""Replay tables (skipenv.tables, issue 21): the builder, the store's refusals, the table envs against the live env,
and (marked ``assets``) a few rows of the shipped table recomputed live on the embedded SmolLM2.

The tiny tables are built from a random-weight Llama saved with ``save_pretrained`` and a local file of made-up
articles (tests/_tiny_local.py); every expected value comes from the live evaluator, recomputed here."""

from __future__ import annotations

import json
import shutil
import warnings

import gymnasium as gym
import numpy as np
import pytest

import skipenv  # noqa: F401  (registers the ids)
from skipenv.tables.build import TableBuilder, build_table, table_config
from skipenv.tables.envs import TableFactorialEnv, TableMenuEnv
from skipenv.tables.grammar import Grammar, GrammarError, default_grammar
from skipenv.tables.store import Table, TableError, write_table

from _tiny_local import write_tiny_assets

SPLITS = ("validation", "train")
LIMIT = 3  # documents per split: 2 validation (all the file has) + 3 train


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """``(config, table_dir, work_dir)`` of a table built once for this module."""
    root = tmp_path_factory.mktemp("tables")
    model, data = write_tiny_assets(root, 12)
    cfg = table_config("SwitchDec-XSum-v1", model=model, task_source=data, max_input_tokens=96, max_new_tokens=6,
                       token_segments=4)
    build_table(root / "table", config=cfg, splits=SPLITS, limit=LIMIT, work_dir=root / "work", progress=False)
    return cfg, root / "table", root / "work"


_EVALUATORS: dict = {}


def _live_env(cfg, formulation="per_input", quality="probability", **kw):
    """The live ``SwitchDec-XSum-v1`` env over the tiny model and file; one evaluator per signal is shared by the
    module's live envs (its outcome cache then serves every formulation and reward mode)."""
    from skipenv.envs.evaluator import Evaluator
    from skipenv.envs.switchdec import shared_generator
    from skipenv.tasks import make_task

    key = (cfg["model"], quality)
    if key not in _EVALUATORS:
        task = make_task("xsum", source=cfg["task_source"], max_input_tokens=96)
        _EVALUATORS[key] = Evaluator(shared_generator(cfg["model"]), task, quality=quality, token_segments=4,
                                     max_new_tokens=6)
    return skipenv.make("SwitchDec-XSum-v1", evaluator=_EVALUATORS[key], split="all", formulation=formulation,
                        quality=quality, **kw)


def test_build_covers_the_requested_documents_with_the_live_observation(tiny):
    cfg, folder, _ = tiny
    t = Table.load(folder)
    assert t.num_plans == 35 and t.plan_names[0] == "skip nothing"
    assert t.meta["coverage"]["validation"]["covered"] == 2 and t.meta["coverage"]["train"]["covered"] == LIMIT
    assert t.document_splits == ["validation"] * 2 + ["train"] * LIMIT
    live = _live_env(cfg).unwrapped
    for r, ex_id in enumerate(t.document_ids):
        obs, _ = live.reset(options={"example_id": ex_id})
        np.testing.assert_array_equal(np.asarray(t.columns["observations"][r]), obs)
    # the empty plan: quality == quality_full for probability, 1 == 1 for agreement
    np.testing.assert_array_equal(t.columns["quality.probability"][:, 0], t.columns["quality_full.probability"][:, 0])
    assert (np.asarray(t.columns["quality.agreement"][:, 0]) == 1).all()


def test_every_row_equals_the_live_evaluator(tiny):
    from skipenv.tables.cli import validate_table

    _, folder, _ = tiny
    t = Table.load(folder)
    res = validate_table(t, samples=t.num_documents * t.num_plans, progress=False)
    assert res["checked"] == t.num_documents * t.num_plans and res["mismatches"] == []


def test_validate_reports_an_edited_value(tiny, tmp_path):
    """A table whose one quality was changed (and re-checksummed, so it loads) fails validation on that pair."""
    from skipenv.tables.cli import validate_table

    _, folder, _ = tiny
    t = Table.load(folder)
    arrays = {k: np.array(v) for k, v in t.columns.items()}
    arrays["quality.probability"][1, 3] += 0.01
    meta = {k: v for k, v in t.meta.items() if k != "columns"}
    write_table(tmp_path / "edited", meta, arrays)
    bad = Table.load(tmp_path / "edited")
    res = validate_table(bad, samples=bad.num_documents * bad.num_plans, progress=False)
    assert [(m["document"], m["plan"]) for m in res["mismatches"]] == [(t.document_ids[1], t.plan_names[3])]


@pytest.mark.parametrize("formulation", ["per_input", "expected", "budget"])
@pytest.mark.parametrize("reward_mode", ["lexicographic", "weighted"])
def test_table_env_reward_equals_live_env_reward(tiny, formulation, reward_mode):
    """Same documents, same plans, same formulation wrapper: same reward and the same info values (a tau small
    enough that some plans violate the constraint on this random model, so both branches are compared)."""
    cfg, folder, _ = tiny
    tau = 2e-7
    live = _live_env(cfg, formulation, tau=tau, reward_mode=reward_mode)
    table = gym.make("SwitchDec-XSum-Table-v0", table=str(folder), expect=None, split="all", tau=tau,
                     formulation=formulation, reward_mode=reward_mode)
    t, lu = table.unwrapped, live.unwrapped
    satisfied = set()
    for ex_id in t.example_ids:
        for c in range(0, 32, 3):
            plan = t.plans[c]
            # budget: the episode's tau judges the constraint (envs.wrappers), so give it the same tiny tau
            opts = {"example_id": ex_id, **({"tau": tau} if formulation == "budget" else {})}
            table.reset(options=opts)
            live.reset(options=opts)
            _, r_t, term, trunc, i_t = table.step(t.plan_to_action(c))
            _, r_l, _, _, i_l = live.step(lu.plan_to_action(plan))
            assert term and not trunc
            # qualities agree within the prefix-reuse round-off (~1e-12 here; bound 1e-4, skipenv.generators.reuse),
            # which the violated branch of the reward divides by q_full (~3e-5 on this random model)
            for k in ("quality", "quality_full"):
                assert i_t[k] == pytest.approx(i_l[k], rel=1e-6, abs=1e-12)
            assert r_t == pytest.approx(r_l, rel=1e-4, abs=1e-9)
            for k in ("cost", "flops", "flops_full", "plan", "num_skipped", "example_id", "constraint_satisfied"):
                assert i_t[k] == i_l[k], k
            for k in ("total", "prefill", "decoding", "observation"):
                assert i_t["flops_breakdown"][k] == i_l["flops_breakdown"][k]
            satisfied.add(i_t["constraint_satisfied"])
    assert satisfied == {True, False}  # both branches of the reward were compared


def test_menu_env_extras_and_quality_signals(tiny):
    cfg, folder, _ = tiny
    env = TableMenuEnv(str(folder), split="all", quality="agreement")
    live = _live_env(cfg, quality="agreement").unwrapped
    for p in (0, 32, 33, 34):  # the extras are reachable from the menu only
        env.reset(options={"index": 1})
        _, r, *_, info = env.step(p)
        want = live.evaluate(env.plans[p], live.examples[[e.id for e in live.examples].index(env.example_id)])
        assert info["quality"] == pytest.approx(want["quality"], abs=1e-12) and r == pytest.approx(want["reward"])
        assert info["plan_name"] == env.plan_names[p]
    with pytest.raises(TableError, match="quality signals"):
        TableMenuEnv(str(folder), quality="likelihood")


def test_actions_outside_the_table_are_refused(tiny):
    _, folder, _ = tiny
    menu, fact = TableMenuEnv(str(folder), split="all"), TableFactorialEnv(str(folder), split="all")
    for env, bad in ((menu, 35), (menu, -1), (menu, 1.5), (fact, [2, 0, 0, 0, 0]), (fact, [1, 0, 0]),
                     (fact, np.zeros(6, np.int8))):
        env.reset(seed=0)
        with pytest.raises(GrammarError, match="outside the table"):
            env.step(bad)
    g = fact.table.grammar
    with pytest.raises(GrammarError, match="not in the table's grammar"):
        g.index_of(skipenv.SkipPlan.from_skips(fact.table.spec, attention=[0, 1]), fact.table.spec)
    with pytest.raises(GrammarError, match="Discrete menu env only"):
        g.index_action(33)


def test_seeds_matter_and_each_pass_covers_every_document(tiny):
    _, folder, _ = tiny

    def order(seed, n=10):
        env = TableMenuEnv(str(folder), split="all")
        ids = [env.reset(seed=seed)[1]["example_id"]] + [env.reset()[1]["example_id"] for _ in range(n - 1)]
        return ids

    a, b = order(0), order(0)
    assert a == b
    assert any(order(s) != a for s in (1, 2, 3))
    assert sorted(a[:5]) == sorted(TableMenuEnv(str(folder), split="all").example_ids)
    assert len(TableMenuEnv(str(folder), split="train").example_ids) == LIMIT


def test_env_checker_passes(tiny):
    from gymnasium.utils.env_checker import check_env

    _, folder, _ = tiny
    for cls in (TableMenuEnv, TableFactorialEnv):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            check_env(cls(str(folder), split="all"), skip_render_check=True)


def test_resume_after_a_killed_build_recomputes_only_what_is_missing(tiny, tmp_path, monkeypatch):
    """A build stopped after 3 documents, with the third shard torn (truncated) and a stray temporary file, resumes:
    it computes the torn one and the rest (3 rows, not 5) and writes the same table as an uninterrupted build."""
    cfg, folder, _ = tiny
    work = tmp_path / "work"
    build_table(tmp_path / "t", config=cfg, splits=SPLITS, limit=LIMIT, work_dir=work, progress=False,
                max_documents=3)
    partial = Table.load(tmp_path / "t")
    assert partial.num_documents == 3  # an interrupted build leaves a usable table of the documents done
    shards = sorted(work.glob("*.npz"))
    assert len(shards) == 3
    data = shards[2].read_bytes()
    shards[2].write_bytes(data[: len(data) // 2])
    (work / "train-00002.npz.tmp-999").write_bytes(b"half a row")
    calls = []
    orig = TableBuilder.compute_row
    monkeypatch.setattr(TableBuilder, "compute_row", lambda self, s, i: calls.append((s, i)) or orig(self, s, i))
    with pytest.warns(RuntimeWarning, match="unreadable"):
        t = build_table(tmp_path / "t", config=cfg, splits=SPLITS, limit=LIMIT, work_dir=work, progress=False)
    assert len(calls) == 3 and not list(work.glob("*.tmp-*"))
    full = Table.load(folder)
    assert t.document_ids == full.document_ids
    for k in full.columns:
        np.testing.assert_allclose(np.asarray(t.columns[k]), np.asarray(full.columns[k]), rtol=0, atol=1e-12)


def test_corrupt_truncated_or_missing_files_are_refused(tiny, tmp_path):
    _, folder, _ = tiny
    cases = {}
    for name in ("truncated", "edited", "missing", "nometa"):
        d = tmp_path / name
        shutil.copytree(folder, d)
        cases[name] = d
    p = cases["truncated"] / "cost.npy"
    p.write_bytes(p.read_bytes()[:-8])
    p = cases["edited"] / "quality.probability.npy"
    b = bytearray(p.read_bytes())
    b[-1] ^= 1
    p.write_bytes(bytes(b))
    (cases["missing"] / "flops.npy").unlink()
    (cases["nometa"] / "meta.json").unlink()
    for name, pattern in (("truncated", "cost.npy does not match its checksum"),
                          ("edited", "quality.probability.npy does not match its checksum"),
                          ("missing", "flops.npy is missing"), ("nometa", "no replay table .*skipenv table build")):
        with pytest.raises(TableError, match=pattern):
            Table.load(cases[name])


def test_another_configuration_or_model_is_refused(tiny, tmp_path):
    import torch

    from skipenv.loading import load_generator
    from skipenv.tables.cli import validate_table
    from skipenv.tables.store import table_fingerprint

    cfg, folder, _ = tiny
    with pytest.raises(TableError, match="token_segments: table 4 vs this env id 8"):
        gym.make("SwitchDec-XSum-Table-v0", table=str(folder))  # the id expects SwitchDec-XSum-v1's configuration
    with pytest.raises(TableError, match="another configuration .*max_new_tokens: 6 there, 5 here"):
        build_table(folder, config=dict(cfg, max_new_tokens=5), splits=SPLITS, limit=1, work_dir=tmp_path / "w",
                    progress=False)
    t = Table.load(folder)
    gen = load_generator(cfg["model"])
    with torch.no_grad():
        next(gen.model.parameters()).add_(1e-3)  # one edited weight
    with pytest.raises(TableError, match="fingerprint"):
        t.check_fingerprint(table_fingerprint(gen))
    gen.model.save_pretrained(str(tmp_path / "edited"))
    gen.tokenizer.save_pretrained(str(tmp_path / "edited"))
    with pytest.raises(TableError, match="fingerprint"):
        validate_table(t, samples=1, model=str(tmp_path / "edited"), progress=False)


def test_missing_table_of_an_id_names_the_build_command(tmp_path):
    with pytest.raises(TableError, match="skipenv table build"):
        gym.make("SwitchDec-XSum-MenuTable-v0", table=str(tmp_path / "nowhere"))


def test_grammar_round_trip_and_default_on_smollm2_spec():
    spec = skipenv.PlanSpec("llama", 0, 30, 8)
    g = default_grammar(spec)
    assert g.num_factorial == 32 and g.num_plans == 38
    assert Grammar.from_dict(json.loads(json.dumps(g.to_dict()))) == g
    from skipenv.evaluation.probe import default_menu

    held = set(g.plans(spec))
    assert set(default_menu(spec).values()) <= held  # the probe's whole menu, its attention plan included
    for c in range(32):
        assert g.action_index(g.index_action(c)) == c
    with pytest.raises(GrammarError, match="overlaps"):
        Grammar((("a", {"tokens": [1]}), ("b", {"tokens": [1, 2]})))


@pytest.mark.assets
def test_shipped_table_rows_recomputed_live():
    """Three sampled rows of the shipped table, recomputed live on the embedded SmolLM2 (and gym.make of the
    registered ids works on it without arguments)."""
    from skipenv.tables.cli import validate_table

    t = Table.load("xsum-v1")
    env = gym.make("SwitchDec-XSum-Table-v0")
    obs, info = env.reset(seed=0)
    assert obs.shape == env.observation_space.shape and info["example_id"] in t.document_ids
    assert gym.make("SwitchDec-XSum-MenuTable-v0").action_space.n == t.num_plans
    res = validate_table(t, samples=3, seed=1, progress=False)
    assert res["checked"] == 3 and res["mismatches"] == []


@pytest.mark.slow
def test_parallel_build_equals_the_serial_one(tiny, tmp_path):
    """Two spawned worker processes (each loads the model) write the same table as the one-process build."""
    cfg, folder, _ = tiny
    t = build_table(tmp_path / "t", config=cfg, splits=SPLITS, limit=LIMIT, work_dir=tmp_path / "w", workers=2,
                    threads=1, progress=False)
    full = Table.load(folder)
    assert t.document_ids == full.document_ids
    for k in full.columns:
        np.testing.assert_allclose(np.asarray(t.columns[k]), np.asarray(full.columns[k]), rtol=0, atol=1e-12)


@pytest.mark.slow
def test_kill_9_then_rerun_resumes(tiny, tmp_path):
    """``skipenv table build`` killed with SIGKILL once its first shard exists; the same command then finishes
    with the uninterrupted build's table."""
    import os
    import signal
    import subprocess
    import sys
    import time

    cfg, folder, _ = tiny
    work = tmp_path / "w"
    cmd = [sys.executable, "-m", "skipenv", "table", "build", str(tmp_path / "t"), "--model", cfg["model"],
           "--task-source", cfg["task_source"], "--max-input-tokens", "96", "--max-new-tokens", "6",
           "--token-segments", "4", "--splits", ",".join(SPLITS), "--limit", str(LIMIT), "--work-dir", str(work)]
    env = dict(os.environ, OMP_NUM_THREADS="1")
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 240
    while not list(work.glob("*.npz")) and time.time() < deadline and proc.poll() is None:
        time.sleep(0.05)
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    done = len(list(work.glob("*.npz")))
    assert 1 <= done < 5
    subprocess.run(cmd, env=env, check=True, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    t, full = Table.load(tmp_path / "t"), Table.load(folder)
    assert t.document_ids == full.document_ids
    for k in full.columns:
        np.testing.assert_allclose(np.asarray(t.columns[k]), np.asarray(full.columns[k]), rtol=0, atol=1e-12)


def test_a_committed_table_is_a_checkpoint(tiny, tmp_path, monkeypatch):
    """Without the shard folder (a fresh clone), a build into the folder of a partial table of the same key takes
    its rows instead of recomputing them."""
    cfg, folder, _ = tiny
    build_table(tmp_path / "t", config=cfg, splits=SPLITS, limit=LIMIT, work_dir=tmp_path / "w1", progress=False,
                max_documents=2)
    calls = []
    orig = TableBuilder.compute_row
    monkeypatch.setattr(TableBuilder, "compute_row", lambda self, s, i: calls.append((s, i)) or orig(self, s, i))
    t = build_table(tmp_path / "t", config=cfg, splits=SPLITS, limit=LIMIT, work_dir=tmp_path / "w2",
                    progress=False)
    assert len(calls) == 3
    full = Table.load(folder)
    for k in full.columns:
        np.testing.assert_allclose(np.asarray(t.columns[k]), np.asarray(full.columns[k]), rtol=0, atol=1e-12)


def test_table_config_takes_the_ids_skip_mode():
    """A table of SwitchDec-XSum-v2 is configured with v2's linear mode and its calibration settings, never a
    silent identity under v2's name; v1's configuration keeps identity and no calibration keys (its key as
    before)."""
    from skipenv.tables.build import table_config

    v2 = table_config("SwitchDec-XSum-v2")
    assert (v2["skip_mode"], v2["linear_rank"], v2["calibration_documents"]) == ("linear", 64, 16)
    v1 = table_config("SwitchDec-XSum-v1")
    assert v1["skip_mode"] == "identity" and "linear_rank" not in v1 and "calibration_documents" not in v1
