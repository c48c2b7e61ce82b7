"""Plan menus and the choices over them (:mod:`skipenv.policies.menu`): the static-mixture LP and the oracles
against hand-solved examples, plan parsing and the default menu."""

from __future__ import annotations

import numpy as np
import pytest

from skipenv.policies import menu


def test_mixture_lp_hand_solved():
    # plans A (loss 0, saved 0), B (0.2, 0.3), C (0.05, 0.1); tau 0.1. Vertices of the feasible set: pure C
    # (saved 0.1), A/B at pi_B = 0.5 (0.15), C/B at 0.05 + 0.15 pi_B = 0.1 -> pi_B = 1/3 (0.1 + 0.2/3 = 1/6).
    pi = menu.mixture_lp([0.0, 0.2, 0.05], [0.0, 0.3, 0.1], 0.1)
    np.testing.assert_allclose(pi, [0.0, 1 / 3, 2 / 3], atol=1e-9)
    assert pi @ [0.0, 0.3, 0.1] == pytest.approx(1 / 6)
    # a loose tau takes the best plan outright
    np.testing.assert_allclose(menu.mixture_lp([0.0, 0.2, 0.05], [0.0, 0.3, 0.1], 0.5), [0, 1, 0], atol=1e-9)
    with pytest.raises(ValueError, match="no mixture"):
        menu.mixture_lp([0.2, 0.3], [0.1, 0.2], 0.1)


def test_expected_oracle_hand_solved():
    # doc 0 loses 0.1 for 0.4 saved, doc 1 loses 0.3 for 0.4: the budget 2 * 0.1 = 0.2 buys doc 0 fully and
    # 0.1 / 0.3 = 1/3 of doc 1
    loss = np.array([[0.0, 0.1], [0.0, 0.3]])
    saved = np.array([[0.0, 0.4], [0.0, 0.4]])
    x = menu.expected_oracle(loss, saved, 0.1)
    np.testing.assert_allclose(x, [[0, 1], [2 / 3, 1 / 3]], atol=1e-9)
    assert (x * saved).sum(1).mean() == pytest.approx((0.4 + 0.4 / 3) / 2)


def test_per_input_oracle_hand_computed():
    quality = np.array([[1.0, 0.95, 0.7], [1.0, 0.85, 0.95], [1.0, 0.5, 0.6]])
    cost = np.array([[1.0, 0.8, 0.5], [1.0, 0.6, 0.9], [1.0, 0.7, 0.4]])
    qf = np.ones_like(quality)
    # doc 0: plan 1 within tau (0.05 <= 0.1), plan 2 not -> 1; doc 1: plan 2 (loss 0.05) -> 2; doc 2: nothing -> 0
    np.testing.assert_array_equal(menu.per_input_oracle(quality, qf, cost, 0.1), [1, 2, 0])
    # with tau 0.3 the cheapest plan within it: doc 0 -> 2 (loss 0.3), doc 1 -> 1, doc 2 -> 0
    np.testing.assert_array_equal(menu.per_input_oracle(quality, qf, cost, 0.3), [2, 1, 0])


def test_parse_plan_and_default_menu():
    from skipenv.plan import PlanSpec, SkipPlan

    spec = PlanSpec("llama", num_encoder_layers=0, num_decoder_layers=30, token_segments=8)
    name, plan = menu.parse_plan("mid:attention=6;ffn=10-12;tokens=7", spec)
    assert name == "mid" and plan == SkipPlan.from_skips(spec, attention=[6], ffn=[10, 11, 12], tokens=[7])
    with pytest.raises(ValueError, match="KIND"):
        menu.parse_plan("x:layers=3", spec)
    plans = menu.default_menu(spec)
    assert list(plans) == ["skip nothing", "drop last 1/8 segments", "drop last 2/8 segments",
                          "drop last 3/8 segments", "drop last 4/8 segments", "drop segment 3", "drop segment 5",
                          "skip attention 6"]
    assert plans["drop last 2/8 segments"] == SkipPlan.from_skips(spec, tokens=[6, 7])


@pytest.mark.hardening
@pytest.mark.assets
def test_probe_plan_with_a_reversed_range_is_refused():
    from skipenv.plan import PlanSpec
    from skipenv.policies.menu import parse_plan

    spec = PlanSpec(model_type="llama", num_encoder_layers=0, num_decoder_layers=4, token_segments=8)
    assert parse_plan("x:tokens=1-3", spec)[1] == parse_plan("x:tokens=1,2,3", spec)[1]
    with pytest.raises(ValueError, match="empty range '3-1'.*1-3"):
        parse_plan("x:tokens=3-1", spec)  # was a plan that skips nothing
