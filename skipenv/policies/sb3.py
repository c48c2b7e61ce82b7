"""stable-baselines3 training with skipenv's logging conventions, shared by ``agents/ppo.py``, ``agents/a2c.py``,
``agents/dqn_layerwise.py`` and the main job.

Logging: a ``Monitor`` CSV (``monitor.csv``: per-episode reward, length, quality, cost, constraint_satisfied —
the ``info_keywords`` that make env metrics visible to callbacks), TensorBoard event files, and SB3's progress bar.
"""

from __future__ import annotations

from pathlib import Path

from ..util.registry import Registry

__all__ = ["ALGORITHMS", "SB3Algorithm", "make_sb3", "train_sb3", "load_sb3", "monitor_curve", "sb3_vec_env"]

class SB3Algorithm(dict):
    """One entry of :data:`ALGORITHMS`: the default hyper-parameters (this ``dict``, passed to the SB3 constructor)
    and the name of the stable-baselines3 class that takes them (``class_name``, e.g. ``"PPO"``).

    Args:
        class_name: an attribute of the ``stable_baselines3`` package (``"PPO"``, ``"A2C"``, ``"DQN"``, ``"SAC"``).
        defaults: constructor keyword arguments (SB3's names and units: ``n_steps`` env steps, ``learning_rate``).
    """

    def __init__(self, class_name: str, defaults: dict | None = None):
        super().__init__(defaults or {})
        self.class_name = class_name

    def sb3_class(self):
        """The stable-baselines3 class (imported now: SB3 loads only when an algorithm is built).

        Raises:
            ValueError: the installed stable-baselines3 has no such class.
        """
        import stable_baselines3 as sb3

        cls = getattr(sb3, self.class_name, None)
        if cls is None:
            raise ValueError(f"stable_baselines3 {sb3.__version__} has no class {self.class_name!r}")
        return cls

    def __repr__(self):
        return f"SB3Algorithm({self.class_name!r}, {dict(self)!r})"


#: name → :class:`SB3Algorithm`: default hyper-parameters for one-step / short episodes on a small CPU budget, and
#: the SB3 class (a :class:`~skipenv.util.registry.Registry`: ``ALGORITHMS.register("sac", SB3Algorithm("SAC",
#: {...}))`` makes ``make_sb3("sac", ...)`` / ``load_sb3`` / ``sb3:sac:PATH`` work; a second entry of one name is
#: an error)
ALGORITHMS: Registry = Registry("algorithm", {
    "ppo": SB3Algorithm("PPO", dict(n_steps=64, batch_size=32, n_epochs=10, learning_rate=1e-3, gamma=1.0,
                                    gae_lambda=1.0)),
    "a2c": SB3Algorithm("A2C", dict(n_steps=8, learning_rate=1e-3, gamma=1.0, gae_lambda=1.0)),
    "dqn": SB3Algorithm("DQN", dict(learning_rate=1e-3, buffer_size=20_000, learning_starts=64, batch_size=32,
                                    train_freq=4, target_update_interval=250, exploration_fraction=0.5,
                                    exploration_final_eps=0.05, gamma=1.0)),
})


def make_sb3(algo: str, env, *, seed: int = 0, device: str = "cpu", out_dir: str | Path | None = None,
             init_skip_prob: float | None = 0.02, total_timesteps: int | None = None, **overrides):
    """Wrap ``env`` in a ``Monitor`` and build an SB3 ``algo`` (``"ppo"``, ``"a2c"``, ``"dqn"``) with ``MlpPolicy``.

    Args:
        init_skip_prob: for ``MultiBinary`` actions (one-shot env), the initial probability of each skip bit: the
            bias of SB3's action head is set to ``logit(init_skip_prob)``. SB3's default (0.5 per bit) skips half of
            SmolLM2 at random: agreement is then 0 on nearly every input, every reward is the same −0.9, and the
            policy gradient is zero. Starting near "skip nothing" (0.02 ≈ 1.4 of 68 bits) gives informative
            rewards. ``None`` keeps SB3's initialisation.
        total_timesteps: if smaller than the rollout length ``n_steps`` (PPO / A2C), ``n_steps`` (and PPO's
            ``batch_size``) are lowered to it so that a tiny budget still performs an update.

    Raises:
        ValueError: an unknown algorithm.
    """
    from stable_baselines3.common.monitor import Monitor

    if algo not in ALGORITHMS:
        raise ValueError(f"unknown algorithm {algo!r}; choose one of {sorted(ALGORITHMS)}")
    out = Path(out_dir) if out_dir is not None else None
    if out is not None:
        out.mkdir(parents=True, exist_ok=True)
    menv = Monitor(env, filename=str(out / "monitor.csv") if out is not None else None,
                   info_keywords=("quality", "cost", "constraint_satisfied"))
    cls = ALGORITHMS[algo].sb3_class()
    kwargs = {**ALGORITHMS[algo], **overrides}
    if total_timesteps is not None and "n_steps" in kwargs and kwargs["n_steps"] > total_timesteps:
        kwargs["n_steps"] = max(int(total_timesteps), 2)
        if "batch_size" in kwargs:
            kwargs["batch_size"] = min(kwargs["batch_size"], kwargs["n_steps"])
    model = cls("MlpPolicy", menv, seed=seed, device=device, verbose=0,
                tensorboard_log=str(out / "tensorboard") if out is not None else None, **kwargs)
    from gymnasium import spaces

    if init_skip_prob is not None and isinstance(env.action_space, spaces.MultiBinary):
        import math

        import torch

        with torch.no_grad():
            model.policy.action_net.bias.fill_(math.log(init_skip_prob / (1 - init_skip_prob)))
    return model


def train_sb3(algo: str, env, *, total_timesteps: int, seed: int = 0, device: str = "cpu",
              out_dir: str | Path | None = None, progress_bar: bool = True, **overrides):
    """Build with :func:`make_sb3`, learn for ``total_timesteps`` env steps, save ``policy.zip`` in ``out_dir``."""
    model = make_sb3(algo, env, seed=seed, device=device, out_dir=out_dir, total_timesteps=total_timesteps,
                     **overrides)
    model.learn(total_timesteps=total_timesteps, progress_bar=progress_bar)
    if out_dir is not None:
        model.save(Path(out_dir) / "policy.zip")
    return model


def load_sb3(algo: str, path: str | Path, device: str = "cpu"):
    """Load a saved SB3 model (``policy.zip``) of registered algorithm ``algo`` (:data:`ALGORITHMS`).

    Raises:
        skipenv.util.registry.UnknownNameError: an unknown ``algo`` (the message lists the registered ones).
    """
    return ALGORITHMS[algo].sb3_class().load(str(path), device=device)


def monitor_curve(path: str | Path):
    """Read a ``monitor.csv`` into a DataFrame with ``timestep`` (cumulative episode length) and ``reward``."""
    import pandas as pd

    df = pd.read_csv(path, skiprows=1)
    return pd.DataFrame({"timestep": df["l"].cumsum(), "reward": df["r"],
                         **{k: df[k] for k in ("quality", "cost") if k in df}})


def sb3_vec_env(vector_env, *, seed: int | None = None, monitor: str | Path | None = None):
    """An SB3 ``VecEnv`` over a :class:`~skipenv.envs.vector.SwitchDecVectorEnv` (its ``step`` evaluates the ``N``
    plans together), wrapped in SB3's ``VecMonitor`` (episode reward / length and quality, cost,
    constraint_satisfied; a CSV when ``monitor`` is a path). Use it as ``PPO("MlpPolicy", sb3_vec_env(vec))``.

    Args:
        vector_env: e.g. ``gym.make_vec("SwitchDec-XSum-v0", num_envs=8, vectorization_mode="vector_entry_point")``.
        seed: seed of the first reset (row ``i`` gets ``seed + i``); SB3's ``VecEnv.seed`` works as well.

    Raises:
        TypeError: ``vector_env`` is not a :class:`~skipenv.envs.vector.SwitchDecVectorEnv`.
    """
    from stable_baselines3.common.vec_env import VecMonitor

    from ..envs.vector import SwitchDecVectorEnv

    if not isinstance(vector_env, SwitchDecVectorEnv):
        raise TypeError(f"expected a SwitchDecVectorEnv (gym.make_vec(..., vectorization_mode='vector_entry_point'))"
                        f", got {type(vector_env).__name__}")
    env = _SB3VectorAdapter(vector_env)
    if seed is not None:
        env.seed(seed)
    return VecMonitor(env, filename=None if monitor is None else str(monitor),
                      info_keywords=("quality", "cost", "constraint_satisfied"))


def _sb3_vec_env_class():
    from stable_baselines3.common.vec_env import VecEnv

    class SB3VectorAdapter(VecEnv):
        """SB3 ``VecEnv`` API over a :class:`~skipenv.envs.vector.SwitchDecVectorEnv` (same-step autoreset: SB3's
        convention, ``terminal_observation`` in each finished row's info)."""

        def __init__(self, vector_env):
            self.vector_env = vector_env
            self._actions = None
            super().__init__(vector_env.num_envs, vector_env.single_observation_space,
                             vector_env.single_action_space)

        def reset(self):
            seeds = self._seeds if any(s is not None for s in self._seeds) else None
            options = self._options[0] or None
            obs, _ = self.vector_env.reset(seed=seeds, options=options)
            self.reset_infos = [{"example_id": env.example.id} for env in self.vector_env.envs]
            self._reset_seeds()
            self._reset_options()
            return obs

        def step_async(self, actions):
            self._actions = actions

        def step_wait(self):
            obs, rewards, terminated, truncated, infos = self.vector_env.step(self._actions)
            out = []
            for i, info in enumerate(self.vector_env.last_infos):
                info = dict(info)
                info["terminal_observation"] = infos["final_obs"][i]
                info["TimeLimit.truncated"] = bool(truncated[i] and not terminated[i])
                out.append(info)
            return obs, rewards.astype("float32"), terminated | truncated, out

        def close(self):
            self.vector_env.close()

        def _rows(self, indices):
            return [self.vector_env.envs[i] for i in self._get_indices(indices)]

        def get_attr(self, attr_name, indices=None):
            return [getattr(env, attr_name) for env in self._rows(indices)]

        def set_attr(self, attr_name, value, indices=None):
            for env in self._rows(indices):
                setattr(env, attr_name, value)

        def env_method(self, method_name, *method_args, indices=None, **method_kwargs):
            return [getattr(env, method_name)(*method_args, **method_kwargs) for env in self._rows(indices)]

        def env_is_wrapped(self, wrapper_class, indices=None):
            return [isinstance(env, wrapper_class) for env in self._rows(indices)]

    return SB3VectorAdapter


def _SB3VectorAdapter(vector_env):
    return _sb3_vec_env_class()(vector_env)
