"""One registry of the one-shot learners, so ``skipenv train --algo NAME`` and ``benchmarks/compare_algorithms.py
--algos NAME ...`` train them the same way.

=================  ================================================================================================
name               learner
=================  ================================================================================================
``ppo``, ``a2c``   stable-baselines3 with :data:`skipenv.policies.sb3.ALGORITHMS` defaults (``policy.zip``)
``pg-lagrangian``  :class:`~skipenv.policies.pg.ConstrainedPG`, Lagrangian handler (``policy.pt``)
``pg-barrier``     :class:`~skipenv.policies.pg.ConstrainedPG`, dynamic-barrier handler
``rloo``           :class:`~skipenv.policies.pg.GroupPG`, G plans per document, leave-one-out baseline
``grpo``           :class:`~skipenv.policies.pg.GroupPG` with the advantage divided by the group's std
``rloo-bc``        ``rloo`` after a behaviour-cloning warm start (:mod:`skipenv.policies.warm_start`)
``ppo-bc``         ``ppo`` after a behaviour-cloning warm start of its action distribution
=================  ================================================================================================

The ``-bc`` learners need :class:`~skipenv.policies.warm_start.WarmStartTargets` (from a probe table of the train
documents, :func:`skipenv.policies.warm_start.warm_start_targets`).
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["LEARNERS", "WARM_STARTED", "train_learner"]

#: name → one-line description (see the module docstring)
LEARNERS = {
    "ppo": "stable-baselines3 PPO (MlpPolicy)",
    "a2c": "stable-baselines3 A2C (MlpPolicy)",
    "pg-lagrangian": "REINFORCE with a Lagrangian constraint handler (ConstrainedPG)",
    "pg-barrier": "REINFORCE with a dynamic-barrier constraint handler (ConstrainedPG)",
    "rloo": "group-baseline policy gradient, leave-one-out baseline over G plans per document (GroupPG)",
    "grpo": "GroupPG with the group advantage divided by the group's standard deviation",
    "rloo-bc": "rloo after behaviour cloning of oracle / probe plans",
    "ppo-bc": "ppo after behaviour cloning of oracle / probe plans",
}
#: learners that start from behaviour cloning
WARM_STARTED = ("rloo-bc", "ppo-bc")


def train_learner(name: str, env, *, total_timesteps: int, seed: int = 0, out_dir: str | Path | None = None,
                  warm_start=None, bc_epochs: int = 300, progress_bar: bool = False, device: str = "cpu"):
    """Train learner ``name`` on ``env`` (one-shot, possibly wrapped by a formulation) for ``total_timesteps``
    episodes and return ``(policy, curve)``.

    Args:
        warm_start: :class:`~skipenv.policies.warm_start.WarmStartTargets` for the ``-bc`` learners.
        bc_epochs: behaviour-cloning epochs.
        out_dir: where the policy is saved (``policy.zip`` for SB3, ``policy.pt`` + ``.json`` for the repository's
            agents) with the training log (``monitor.csv`` / ``progress.csv``).

    Returns:
        ``policy`` — a callable ``observation -> action`` with a ``name`` (an :class:`~skipenv.policies.baselines.SB3Policy`
        or the agent); ``curve`` — DataFrame ``timestep, reward`` of the training episodes.

    Raises:
        ValueError: an unknown name, a ``-bc`` learner without ``warm_start``, or ``warm_start`` given to a learner
            that does not clone it (it was ignored; use the ``-bc`` variant).
    """
    import pandas as pd

    from .pg import ConstrainedPG, GroupPG, GroupPGConfig, PGConfig
    from .baselines import SB3Policy
    from .sb3 import make_sb3, monitor_curve

    if name not in LEARNERS:
        raise ValueError(f"unknown learner {name!r}; choose one of {sorted(LEARNERS)}")
    if name in WARM_STARTED and warm_start is None:
        raise ValueError(f"{name} needs warm_start targets (skipenv.policies.warm_start.warm_start_targets of a probe table)")
    if name not in WARM_STARTED and warm_start is not None:
        raise ValueError(f"{name} does not start from behaviour cloning, so warm_start would be ignored; use one of "
                         f"{list(WARM_STARTED)} or leave warm_start out")
    out = Path(out_dir) if out_dir is not None else None
    if name in ("ppo", "a2c", "ppo-bc"):
        algo = name.split("-")[0]
        model = make_sb3(algo, env, seed=seed, device=device, out_dir=out, total_timesteps=total_timesteps)
        if warm_start is not None and name.endswith("-bc"):
            from .warm_start import behaviour_cloning

            behaviour_cloning(model, warm_start.observations, warm_start.actions, weights=warm_start.weights,
                              epochs=bc_epochs, seed=seed)
        model.learn(total_timesteps=total_timesteps, progress_bar=progress_bar)
        curve = pd.DataFrame(columns=["timestep", "reward"])
        if out is not None:
            model.save(out / "policy.zip")
            curve = monitor_curve(out / "monitor.csv")
        return SB3Policy(model, name), curve
    if name.startswith("pg-"):
        agent = ConstrainedPG(env, PGConfig(handler=name[3:]), seed=seed, device=device)
    else:
        agent = GroupPG(env, GroupPGConfig(scale_by_std=name == "grpo"), seed=seed, device=device)
        if name.endswith("-bc"):
            from .warm_start import behaviour_cloning

            behaviour_cloning(agent, warm_start.observations, warm_start.actions, weights=warm_start.weights,
                              epochs=bc_epochs, seed=seed)
    history = agent.learn(total_timesteps, progress_bar=progress_bar)
    agent.name = name
    if out is not None:
        agent.save(out / "policy.pt")
        history.to_csv(out / "progress.csv", index=False)
    return agent, history[["timestep", "reward"]]
