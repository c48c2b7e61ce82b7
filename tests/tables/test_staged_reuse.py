"""Staged prefix reuse of ``skipenv table build`` (skipenv.generators.reuse.StagedStates): a plan that skips
sublayers and drops tokens, scored from the stored state of the plan that skips the same sublayers on the whole
input, gives the same outcomes as the per-plan path of the live env and as the from-scratch model (within the 1e-4
reuse tolerance), on a tiny random-weight Llama and (marked ``assets``) on two real XSum documents."""

from __future__ import annotations

import numpy as np
import pytest

import skipenv  # noqa: F401  (registers the ids)
import skipenv.tables.build as build_mod
from skipenv.generators.reuse import StagedStates
from skipenv.tables.build import TableBuilder, table_config
from skipenv.tables.grammar import Grammar

from _tiny_local import write_tiny_assets

TOL = 1e-4  # the exactness bound of prefix reuse (skipenv.generators.reuse)

#: token drops x sublayer skips after layer 0 of the tiny 4-layer Llama, and an extra that combines all three kinds
GRAMMAR = Grammar(
    factors=(("drop segment 3", {"tokens": [3]}), ("drop segment 1", {"tokens": [1]}),
             ("skip attention 1", {"attention": [1]}), ("skip ffn 2", {"ffn": [2]})),
    extras=(("attention 1 + ffn 2 + drop segment 0", {"attention": [1], "ffn": [2], "tokens": [0]}),
            ("skip attention 0 + drop segment 2", {"attention": [0], "tokens": [2]})))


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = tmp_path_factory.mktemp("staged")
    model, data = write_tiny_assets(root, 6)
    cfg = table_config("SwitchDec-XSum-v1", model=model, task_source=data, max_input_tokens=96, max_new_tokens=6,
                       token_segments=4)
    return cfg, root


class _Recording(StagedStates):
    made: list = []

    def __init__(self, *a, **kw):
        super().__init__(*a, **kw)
        _Recording.made.append(self)


def _fresh(builder: TableBuilder) -> None:
    for env in builder.envs.values():
        env.evaluator.outcomes.clear()
    builder._memo.clear()
    builder.generator.prefix_store.clear()


def test_staged_rows_equal_the_per_plan_path_and_the_from_scratch_model(tiny, monkeypatch):
    from skipenv.envs.evaluator import Evaluator

    cfg, root = tiny
    monkeypatch.setattr(build_mod, "StagedStates", _Recording)
    _Recording.made.clear()
    b = TableBuilder(cfg, GRAMMAR, work_dir=root / "w")
    assert b.staged  # the build's default
    # from scratch: a fresh evaluator without any reuse, pair by pair (the unmodified model under each plan)
    scratch = Evaluator(b.generator, b.task, quality="probability", token_segments=4, max_new_tokens=6, reuse=False)
    for index in range(3):
        _fresh(b)
        staged = b.compute_row("train", index)
        assert b.generator.staged_states is None  # switched off again after the row: the live path is untouched
        _fresh(b)
        b.staged = False
        plain = b.compute_row("train", index)
        b.staged = True
        ex = b.examples("train")[index]
        ref = np.array([scratch.outcome(ex, p).quality for p in b.plans])
        for s in cfg["signals"]:
            np.testing.assert_allclose(staged[f"quality.{s}"], plain[f"quality.{s}"], rtol=0, atol=TOL)
            np.testing.assert_allclose(staged[f"quality_full.{s}"], plain[f"quality_full.{s}"], rtol=0, atol=TOL)
        np.testing.assert_allclose(staged["quality.probability"], ref, rtol=0, atol=TOL)
        for k in ("cost", "flops", "flops_prefill", "num_generated"):
            np.testing.assert_array_equal(staged[k], plain[k])
    # the staged path ran: one state per sublayer pattern (after layer 0) of a plan keeping every token, per
    # document and signal, and every token-dropping plan of such a pattern was served from one
    patterns = {(p.decoder_attention, p.decoder_ffn) for p in b.plans if not any(p.tokens) and not p.is_empty}
    served = [p for p in b.plans if any(p.tokens) and (p.decoder_attention, p.decoder_ffn) in patterns]
    assert len(patterns) == 3 and len(served) == 3 * 3 + 1
    # per document, one StagedStates per signal; the second signal's scores come from the first one's (memo)
    assert [r.captures for r in _Recording.made] == [3, 0] * 3
    assert [r.hits for r in _Recording.made] == [len(served), 0] * 3


def test_staged_states_serve_only_their_own_flags_and_model(tiny):
    from skipenv.plan import SkipPlan

    cfg, root = tiny
    b = TableBuilder(cfg, GRAMMAR, work_dir=root / "w2")
    spec = b.spec
    L = spec.num_decoder_layers

    def plan(att=(), ffn=(), tok=()):
        return SkipPlan(spec, decoder_attention=tuple(i in att for i in range(L)),
                        decoder_ffn=tuple(i in ffn for i in range(L)),
                        tokens=tuple(i in tok for i in range(spec.token_segments)))

    from skipenv.generators.reuse import PrefixState

    ids = tuple(range(10))
    base = PrefixState(ids, [None] * L, [None] * L, [None] * L)
    st = StagedStates(max_states=2)
    assert st.wants(base, list(ids), plan(att=[1]))
    assert not st.wants(base, list(ids)[:-1], plan(att=[1]))  # drops tokens: served, never captured
    assert not st.wants(base, list(ids), plan(att=[0]))  # layer 0: nothing reusable
    assert not st.wants(base, list(ids), plan())  # the full model: its state is the base
    kept = PrefixState(ids, [None] * L, [None] * L, [None] * L, plan(att=[1]).decoder_attention,
                       plan(att=[1]).decoder_ffn)
    st.bind("model-a")
    st.put(kept)
    assert st.get(ids, plan(att=[1], tok=[2])) is kept  # same flags, any tokens
    assert st.get(ids, plan(att=[1], ffn=[2])) is None  # other flags
    assert not st.wants(base, list(ids), plan(att=[1]))  # already kept
    st.bind("model-b")  # another model identity: nothing of model-a is served
    assert st.get(ids, plan(att=[1])) is None and len(st) == 0
    with pytest.raises(ValueError, match="max_states"):
        StagedStates(0)


@pytest.mark.assets
@pytest.mark.slow
def test_staged_equals_per_plan_on_two_real_documents():
    """Embedded SmolLM2 on two XSum train documents: the combined plans of ``xsum-v1``'s factorial (sublayer skips
    x token drops) scored through staged states equal the live per-plan path within 1e-4."""
    from skipenv.tables.grammar import default_grammar

    b = TableBuilder(table_config())
    ev = b.envs["probability"].evaluator
    g = default_grammar(b.spec)
    # skip attention 25 / ffn 21 / both, each alone (captured) and with token drops (served)
    picks = [0, 8, 9, 12, 16, 19, 24, 31]
    plans = [g.plans(b.spec)[i] for i in picks]
    for index in (0, 1):
        ex = b.examples("train")[index]
        ev.full_output(ex)
        got = {}
        for staged in (False, True):
            _fresh(b)
            b.generator.staged_states = StagedStates() if staged else None
            # as TableBuilder.compute_row does: the first sublayer plan already runs from (and keeps) a state
            b.generator.prefix_store.admit_after = 1 if staged else 2
            try:
                got[staged] = [ev.outcome(ex, p) for p in plans]
                if staged:
                    assert b.generator.staged_states.captures == 3 and b.generator.staged_states.hits == 4
            finally:
                b.generator.staged_states = None
                b.generator.prefix_store.admit_after = 2
        for a, c in zip(got[False], got[True]):
            assert abs(a.quality - c.quality) <= TOL and a.cost == c.cost and a.flops == c.flops


def test_max_documents_0_only_compacts_the_finished_shards(tiny, tmp_path, monkeypatch):
    """A split built into a scratch folder (shards shared through the work folder), then ``max_documents=0`` into
    the real table: its rows appear in table order without any row being computed."""
    from skipenv.tables.build import build_table
    from skipenv.tables.store import Table

    cfg, _ = tiny
    work = tmp_path / "work"
    build_table(tmp_path / "scratch", config=cfg, grammar=GRAMMAR, splits=("train",), limit=2, work_dir=work,
                progress=False)
    build_table(tmp_path / "t", config=cfg, grammar=GRAMMAR, splits=("validation",), limit=1, work_dir=work,
                progress=False)

    def refuse(self, split, index):
        raise AssertionError(f"row {split}-{index} computed by a compaction-only build")

    monkeypatch.setattr(TableBuilder, "compute_row", refuse)
    t = build_table(tmp_path / "t", config=cfg, grammar=GRAMMAR, splits=("validation", "train"), limit=2,
                    work_dir=work, progress=False, max_documents=0)
    scratch = Table.load(tmp_path / "scratch")
    assert list(t.document_splits) == ["validation", "train", "train"]
    assert list(t.document_ids[1:]) == list(scratch.document_ids)
    np.testing.assert_array_equal(np.asarray(t.columns["quality.probability"])[1:],
                                  np.asarray(scratch.columns["quality.probability"]))
    assert t.meta["coverage"]["validation"]["covered"] == 1 and t.meta["coverage"]["train"]["covered"] == 2
