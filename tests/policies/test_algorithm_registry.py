"""Issue 19 leftover: ``ALGORITHMS`` is a :class:`~skipenv.util.registry.Registry` of :class:`SB3Algorithm`
entries (defaults + SB3 class), so make_sb3 / load_sb3 dispatch through it instead of a second dict."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest
import stable_baselines3 as sb3

from skipenv.policies.sb3 import ALGORITHMS, SB3Algorithm, load_sb3, make_sb3
from skipenv.util.registry import Registry, UnknownNameError


class _Bandit(gym.Env):
    """One-step env with a MultiBinary(3) action (a stand-in for a one-shot SwitchDec env: no model)."""

    observation_space = gym.spaces.Box(-1.0, 1.0, shape=(2,), dtype=np.float32)
    action_space = gym.spaces.MultiBinary(3)

    def reset(self, *, seed=None, options=None):
        super().reset(seed=seed)
        return np.zeros(2, np.float32), {}

    def step(self, action):
        return np.zeros(2, np.float32), float(np.sum(action)), True, False, {"quality": 1.0, "cost": 0.0,
                                                                            "constraint_satisfied": True}


def test_names_defaults_and_classes_unchanged():
    assert isinstance(ALGORITHMS, Registry) and sorted(ALGORITHMS) == ["a2c", "dqn", "ppo"]
    assert {n: a.sb3_class() for n, a in ALGORITHMS.items()} == {"ppo": sb3.PPO, "a2c": sb3.A2C, "dqn": sb3.DQN}
    assert dict(ALGORITHMS["ppo"]) == dict(n_steps=64, batch_size=32, n_epochs=10, learning_rate=1e-3, gamma=1.0,
                                           gae_lambda=1.0)
    with pytest.raises(ValueError, match="is registered already"):
        ALGORITHMS.register("ppo", SB3Algorithm("PPO"))
    with pytest.raises(UnknownNameError, match="ppo"):
        load_sb3("sac", "x.zip")


def test_a_registered_algorithm_is_built_and_loaded(monkeypatch, tmp_path):
    """A new entry (A2C under another name, other defaults) is what make_sb3 builds and load_sb3 reads back."""
    monkeypatch.setitem(ALGORITHMS, "a2c_long", SB3Algorithm("A2C", dict(n_steps=4, learning_rate=5e-4, gamma=1.0)))
    model = make_sb3("a2c_long", _Bandit(), total_timesteps=8)
    assert type(model) is sb3.A2C and model.n_steps == 4 and model.learning_rate == 5e-4
    model.save(tmp_path / "policy.zip")
    again = load_sb3("a2c_long", tmp_path / "policy.zip")
    assert type(again) is sb3.A2C and again.n_steps == 4
    with pytest.raises(ValueError, match="has no class 'Nope'"):
        SB3Algorithm("Nope").sb3_class()
