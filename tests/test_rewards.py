"""The lexicographic rule on hand-built (q, q_full, cost) cases, and the weighted sum."""

import itertools

import pytest

from skipenv.envs.rewards import constraint_satisfied, lexicographic_reward, weighted_reward


def test_constraint_met_reward_is_one_plus_savings():
    # q = 0.95 >= 1.0 - 0.1 -> 1 + (1 - 0.4) = 1.6
    assert lexicographic_reward(0.95, 1.0, 0.4, 0.1) == pytest.approx(1.6)
    # exactly at the threshold counts as kept: 0.9 >= 0.9
    assert lexicographic_reward(0.9, 1.0, 0.5, 0.1) == pytest.approx(1.5)


def test_violation_is_scaled_shortfall():
    # q = 0.5, q_full = 0.8, tau = 0.1 -> (0.5 - 0.7) / 0.8 = -0.25, whatever the cost
    assert lexicographic_reward(0.5, 0.8, 0.1, 0.1) == pytest.approx(-0.25)
    assert lexicographic_reward(0.5, 0.8, 0.9, 0.1) == pytest.approx(-0.25)
    # clipped at -1: (0 - 0.9) / 0.1... q_full = 0.1 tiny -> (0 - 0.05) / 0.1 = -0.5; q_full 0.2, q 0: -0.75
    assert lexicographic_reward(0.0, 0.2, 0.5, 0.05) == pytest.approx(-0.75)
    assert lexicographic_reward(0.0, 1.0, 0.5, 0.0) == pytest.approx(-1.0)
    assert lexicographic_reward(-5.0, 1.0, 0.5, 0.0) == -1.0


def test_every_kept_plan_outranks_every_violating_plan():
    qs, costs = [0.0, 0.3, 0.6, 0.85, 0.9, 0.95, 1.0], [0.05, 0.3, 0.7, 1.0, 1.03]
    kept, violating = [], []
    for q, c in itertools.product(qs, costs):
        r = lexicographic_reward(q, 1.0, c, 0.1)
        (kept if constraint_satisfied(q, 1.0, 0.1) else violating).append((r, q, c))
    assert min(r for r, _, _ in kept) > max(r for r, _, _ in violating)
    # among kept plans, reward decreases with cost only (quality does not matter)
    for (r1, q1, c1), (r2, q2, c2) in itertools.product(kept, kept):
        if c1 < c2:
            assert r1 > r2
        if c1 == c2:
            assert r1 == pytest.approx(r2)
    # among violating plans, higher quality is better regardless of cost
    for (r1, q1, _), (r2, q2, _) in itertools.product(violating, violating):
        if q1 > q2:
            assert r1 > r2


def test_bad_inputs_are_rejected():
    with pytest.raises(ValueError, match="tau"):
        lexicographic_reward(0.5, 1.0, 0.5, -0.1)
    with pytest.raises(ValueError, match="finite"):
        lexicographic_reward(float("nan"), 1.0, 0.5, 0.1)


def test_weighted():
    assert weighted_reward(0.8, 0.5, 0.4) == pytest.approx(0.8 - 0.2)
