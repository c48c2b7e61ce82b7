"""The lexicographic rule on hand-built (q, q_full, cost) cases, and the weighted sum."""

import itertools

import pytest

from skipenv.envs.rewards import constraint_satisfied, lexicographic_reward, weighted_reward
import numpy as np
from skipenv.envs.rewards import LagrangeMultiplier, default_dual_lr


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


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


BAD_MULTIPLIER = [
    ({"lam_max": float("nan"), "lam_init": 0.5}, "lam_max"), ({"lam_max": None}, "lam_max"),
    ({"update_every": 2.5}, "update_every"), ({"update_every": "8"}, "update_every"),
    ({"update_every": True}, "update_every"), ({"tau": "0.1"}, "tau"), ({"tau": True}, "tau"),
    ({"lr": float("inf")}, "lr"), ({"lam_init": -1.0}, "lam_init"),
]


@pytest.mark.hardening
@pytest.mark.assets
@pytest.mark.parametrize("kw,named", BAD_MULTIPLIER, ids=[repr(k) for k, _ in BAD_MULTIPLIER])
def test_lagrange_multiplier_arguments_are_checked(kw, named):
    from skipenv.envs.rewards import LagrangeMultiplier

    with pytest.raises(ValueError, match=named):
        LagrangeMultiplier(**{"tau": 0.1, **kw})


# ----------------------------------------------------------------------------------------------------
# moved here from SwitchDec-XSum-v1 (tests/test_v1.py, dissolved by issue 19)


@pytest.mark.usefixtures("one_thread")
def test_default_dual_step_scales_with_one_over_tau_squared():
    assert LagrangeMultiplier(0.1).lr == pytest.approx(0.5)  # v0's agreement tolerance: the old default
    assert LagrangeMultiplier(0.01).lr == pytest.approx(50.0) == default_dual_lr(0.0)
    assert LagrangeMultiplier(0.01, lr=0.3).lr == 0.3
    # scale invariance: losses and tau divided by 10 give the same multiplier trajectory in units of 1 / tau
    rng = np.random.default_rng(0)
    losses = rng.uniform(0.0, 0.3, 64)
    big, small = LagrangeMultiplier(0.1), LagrangeMultiplier(0.01)
    for x in losses:
        big.observe(x)
        small.observe(x / 10)
        assert small.value * 0.01 == pytest.approx(big.value * 0.1, rel=1e-9, abs=1e-12)
    assert big.num_updates == 8 and big.value > 0
    with pytest.raises(ValueError, match="tau"):
        default_dual_lr(float("nan"))
