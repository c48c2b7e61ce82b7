"""SkipPlan / PlanSpec: layout, conversions (action ↔ plan ↔ dict / JSON), hashing, repr and error messages."""

from __future__ import annotations

import json

import numpy as np
import pytest

from skipenv import PlanError, PlanSpec, PromptInput, SkipPlan

DEC = PlanSpec("llama", 0, 4, token_segments=3)  # decoder-only: action size 2·4 + 3 = 11
ENC_DEC = PlanSpec("bart", 2, 3, token_segments=4)  # encoder-decoder: 2·2 + 2·3 + 4 = 14


@pytest.fixture(params=[DEC, ENC_DEC], ids=["decoder-only", "encoder-decoder"])
def spec(request) -> PlanSpec:
    return request.param


def random_actions(spec: PlanSpec, n: int = 20, seed: int = 0) -> list[np.ndarray]:
    rng = np.random.default_rng(seed)
    return [rng.integers(0, 2, spec.action_size) for _ in range(n)]


# ---------------------------------------------------------------------------------------------------- layout
def test_action_size_and_labels():
    assert DEC.action_size == 11 and not DEC.is_encoder_decoder
    assert ENC_DEC.action_size == 14 and ENC_DEC.is_encoder_decoder
    assert DEC.action_labels() == [
        "decoder.attention.0", "decoder.attention.1", "decoder.attention.2", "decoder.attention.3",
        "decoder.ffn.0", "decoder.ffn.1", "decoder.ffn.2", "decoder.ffn.3",
        "tokens.0", "tokens.1", "tokens.2",
    ]
    labels = ENC_DEC.action_labels()
    assert len(labels) == ENC_DEC.action_size
    assert labels[:4] == ["encoder.attention.0", "encoder.attention.1", "encoder.ffn.0", "encoder.ffn.1"]
    assert labels[4:7] == ["decoder.attention.0", "decoder.attention.1", "decoder.attention.2"]


def test_from_action_follows_documented_layout():
    # [enc attn ×2, enc ffn ×2, dec attn ×3, dec ffn ×3, tokens ×4]
    a = [1, 0, 0, 1, 0, 1, 0, 0, 0, 1, 1, 0, 0, 1]
    p = SkipPlan.from_action(a, ENC_DEC)
    assert p.encoder_attention == (True, False)
    assert p.encoder_ffn == (False, True)
    assert p.decoder_attention == (False, True, False)
    assert p.decoder_ffn == (False, False, True)
    assert p.tokens == (True, False, False, True)
    assert p.num_skipped == 6 and not p.is_empty
    assert p.sublayer_flags() == p.encoder_attention + p.encoder_ffn + p.decoder_attention + p.decoder_ffn


def test_empty_plan(spec):
    p = spec.empty_plan()
    assert p.is_empty and p.num_skipped == 0
    assert p.to_action().shape == (spec.action_size,) and p.to_action().dtype == np.int8
    assert p == SkipPlan.from_skips(spec)


# ---------------------------------------------------------------------------------------------------- round trips
def test_action_round_trip(spec):
    for a in random_actions(spec):
        p = SkipPlan.from_action(a, spec)
        np.testing.assert_array_equal(p.to_action(), a)
        assert SkipPlan.from_action(p.to_action(), spec) == p


def test_action_accepts_bools_and_2d():
    a = np.zeros((1, DEC.action_size), dtype=bool)
    a[0, 2] = True
    p = SkipPlan.from_action(a, DEC)
    assert p.decoder_attention == (False, False, True, False)


def test_dict_and_json_round_trip(spec):
    for a in random_actions(spec):
        p = SkipPlan.from_action(a, spec)
        d = p.to_dict()
        assert json.loads(json.dumps(d)) == d  # JSON-ready
        assert SkipPlan.from_dict(d) == p
        assert SkipPlan.from_dict(d, spec) == p
        s = p.to_json()
        assert SkipPlan.from_json(s) == p
        assert SkipPlan.from_json(s, spec) == p
        assert s == SkipPlan.from_json(s).to_json()  # canonical


def test_dict_stores_indices():
    p = SkipPlan.from_skips(ENC_DEC, attention=[2], ffn=[0, 1], tokens=[3], encoder_attention=[1])
    d = p.to_dict()
    assert d["decoder_attention"] == [2] and d["decoder_ffn"] == [0, 1] and d["tokens"] == [3]
    assert d["encoder_attention"] == [1] and d["encoder_ffn"] == []
    assert d["spec"] == {"model_type": "bart", "num_encoder_layers": 2, "num_decoder_layers": 3, "token_segments": 4}


def test_from_skips_matches_from_action():
    p = SkipPlan.from_skips(DEC, attention=[0, 3], ffn=[1], tokens=[2])
    assert p.to_action().tolist() == [1, 0, 0, 1, 0, 1, 0, 0, 0, 0, 1]


def test_with_tokens():
    p = SkipPlan.from_skips(DEC, attention=[1])
    q = p.with_tokens((True, False, True))
    assert q.tokens == (True, False, True) and q.decoder_attention == p.decoder_attention
    with pytest.raises(PlanError, match="tokens"):
        p.with_tokens((True,))


# ---------------------------------------------------------------------------------------------------- value semantics
def test_hashable_and_equal(spec):
    acts = random_actions(spec, 30, seed=1)
    plans = [SkipPlan.from_action(a, spec) for a in acts]
    again = [SkipPlan.from_action(a.copy(), spec) for a in acts]
    assert plans == again
    assert {hash(p) for p in plans} == {hash(p) for p in again}
    assert len(set(plans)) == len({tuple(a) for a in acts})
    table = {p: p.to_json() for p in plans}  # usable as dict keys (e.g. a cache of episode results)
    assert all(table[q] == q.to_json() for q in again)


def test_plans_of_different_specs_differ():
    a = np.zeros(DEC.action_size, dtype=int)
    other = PlanSpec("gpt2", 0, 4, token_segments=3)
    assert SkipPlan.from_action(a, DEC) != SkipPlan.from_action(a, other)


def test_immutable():
    p = DEC.empty_plan()
    with pytest.raises(AttributeError):
        p.tokens = (True, True, True)  # type: ignore[misc]


def test_repr_readable():
    p = SkipPlan.from_skips(DEC, attention=[0, 3], ffn=[1], tokens=[2])
    assert repr(p) == "SkipPlan(llama 4L: attn=[0, 3], ffn=[1], tokens=[2]/3)"
    q = SkipPlan.from_skips(ENC_DEC, attention=[1], encoder_ffn=[0])
    assert repr(q) == "SkipPlan(bart 2+3L: enc_attn=[], enc_ffn=[0], dec_attn=[1], dec_ffn=[], tokens=[]/4)"


# ---------------------------------------------------------------------------------------------------- errors
def test_wrong_action_length_names_sizes():
    with pytest.raises(PlanError, match=r"action has 10 entries .* needs 11"):
        SkipPlan.from_action(np.zeros(10), DEC)


@pytest.mark.parametrize("bad", [2, -1, 0.5])
def test_non_binary_action(bad):
    a = np.zeros(DEC.action_size)
    a[3] = bad
    with pytest.raises(PlanError, match="must be 0 or 1"):
        SkipPlan.from_action(a, DEC)


def test_wrong_flag_tuple_length_names_field():
    with pytest.raises(PlanError, match=r"decoder_ffn has 2 flags but the llama model has 4"):
        SkipPlan(DEC, (), (), (False,) * 4, (False,) * 2, (False,) * 3)


def test_non_binary_flag():
    with pytest.raises(PlanError, match="tokens flags must be 0/1"):
        SkipPlan(DEC, (), (), (False,) * 4, (False,) * 4, (0, 1, 7))


def test_index_out_of_range():
    with pytest.raises(PlanError, match=r"decoder attention index 4 out of range: the model has 4"):
        SkipPlan.from_skips(DEC, attention=[4])
    with pytest.raises(PlanError, match=r"tokens index -1 out of range"):
        SkipPlan.from_skips(DEC, tokens=[-1])
    with pytest.raises(PlanError, match=r"encoder_attention index 0 out of range: the model has 0"):
        SkipPlan.from_skips(DEC, encoder_attention=[0])


def test_wrong_model_spec():
    p = SkipPlan.from_skips(DEC, attention=[1])
    other = PlanSpec("llama", 0, 5, token_segments=3)
    with pytest.raises(PlanError, match="plan was made for .*num_decoder_layers=4.* but"):
        p.check(other)
    with pytest.raises(PlanError, match="plan was made for"):
        SkipPlan.from_json(p.to_json(), other)
    p.check(DEC)  # no error


def test_bad_serialised_plan():
    with pytest.raises(PlanError, match="not a serialised SkipPlan"):
        SkipPlan.from_dict({"decoder_attention": [1]})
    d = SkipPlan.from_skips(DEC).to_dict()
    d["decoder_ffn"] = [9]
    with pytest.raises(PlanError, match="index 9 out of range"):
        SkipPlan.from_dict(d)


def test_negative_spec_fields():
    with pytest.raises(PlanError, match="num_decoder_layers must be >= 0"):
        PlanSpec("llama", 0, -1)


# ---------------------------------------------------------------------------------------------------- token segments
def test_token_segments_of_prompt_input():
    inp = PromptInput(tuple(range(100, 112)), (2, 12), "ex")  # 10 document tokens in 3 segments: 4, 3, 3
    assert inp.segment_bounds(3) == [(2, 6), (6, 9), (9, 12)]
    assert inp.kept_positions((False, True, False)) == [0, 1, 2, 3, 4, 5, 9, 10, 11]
    assert inp.apply_token_skips((True, True, True)) == [100, 101]
    assert inp.apply_token_skips((False, False, False)) == list(inp.input_ids)
    with pytest.raises(ValueError, match="'bad'"):
        PromptInput((1, 2, 3), (1, 5), "bad")
