"""A native Gymnasium vector env over :class:`~skipenv.envs.switchdec.SwitchDecEnv`.

``gym.make_vec("SwitchDec-XSum-v0", num_envs=N, vectorization_mode="vector_entry_point")`` builds a
:class:`SwitchDecVectorEnv`: ``N`` one-shot envs in this process that share one generator, one
:class:`~skipenv.envs.evaluator.Evaluator` (full outputs, observations, outcome cache, the generator's prefix store)
and one reward. ``step`` evaluates the ``N`` plans together through the shared evaluator: a (document, plan) pair
that occurs in several rows is run once, and each row of a decoder-only generator starts from the full model's
stored computation on its document (:mod:`skipenv.generators.reuse`). By default the rows run one after another;
with ``batch_plans=True`` the rows of a teacher-forced quality (``"agreement"``, ``"probability"``,
``"likelihood"``) are scored in padded forward passes over several rows, each row still starting from its own
document's stored keys / values and residual stream and skipping its own sublayers
(:mod:`skipenv.generators.batched`). Both give the same outcomes; on a CPU the batched step was not faster (README
"Speed": a forward pass's fixed cost is ~30 tokens' work, less than the padding between documents of different
lengths costs), so it is off by default. Episodes are one step, so the env resets a finished row in the same
``step`` (Gymnasium's ``AutoresetMode.SAME_STEP``: the returned observation is the next episode's, the finished
one's is in ``infos["final_obs"]`` and its info in ``infos["final_info"]``).

Results equal ``N`` single envs reset with seeds ``seed, seed + 1, …`` and stepped with the same actions (tested).
For stable-baselines3 use :func:`skipenv.policies.sb3.sb3_vec_env`.

Episode statistics: Gymnasium 1.2.2's ``gymnasium.wrappers.vector.RecordEpisodeStatistics`` (the version the
``[ray]`` extra pins) assumes ``NEXT_STEP`` autoreset in ``step`` and so reports ``r`` 0 and ``l`` 0 for every episode
of a ``SAME_STEP`` env after the first (issue 20 M9; fixed upstream in Gymnasium PR #1624, after 1.2.2). Wrap this
env with :class:`RecordEpisodeStatistics` from this module instead: the same class, with ``step`` corrected for
``SAME_STEP``.
"""

from __future__ import annotations

from typing import Any, Sequence

import numpy as np
from gymnasium.vector import AutoresetMode, VectorEnv
from gymnasium.vector.utils import batch_space

__all__ = ["SwitchDecVectorEnv", "RecordEpisodeStatistics"]

#: kwargs that the shared evaluator / reward define (passed only to the first env)
_EVALUATOR_KWARGS = ("model", "device", "dtype", "task_source", "generator", "quality", "token_segments",
                     "max_input_tokens", "max_new_tokens", "record_time", "disk_cache", "lru_size", "reward_mode",
                     "tau", "cost_weight", "lam", "reuse", "observation", "segment_boundaries", "skip_mode",
                     "calibration_documents", "linear_rank")


class SwitchDecVectorEnv(VectorEnv):
    """``num_envs`` :class:`~skipenv.envs.switchdec.SwitchDecEnv` rows sharing one evaluator and reward.

    Args:
        num_envs: rows (integer ``>= 1``).
        task, **kwargs: as :class:`~skipenv.envs.switchdec.SwitchDecEnv` (``evaluator=`` / ``generator=`` /
            ``reward=`` objects may be given; a ``reuse`` flag sets the evaluator's prefix reuse).
        batch_plans: score the rows' plans in padded batches (see above; default ``False``: row by row).

    Attributes:
        envs: the ``N`` single envs (row ``i`` is reset with seed ``seed + i``).
        last_infos: the per-row ``info`` dicts of the last ``step`` (finished episodes), as the single envs return them.

    Raises:
        ValueError: ``num_envs < 1``, a ``batch_plans`` that is not a bool, or a bad env kwarg (as
            :class:`SwitchDecEnv`).
    """

    metadata = {"autoreset_mode": AutoresetMode.SAME_STEP, "render_modes": []}

    def __init__(self, num_envs: int = 1, task: Any = "xsum", *, batch_plans: bool = False, **kwargs):
        from .registration import sharing
        from .switchdec import SwitchDecEnv

        if isinstance(num_envs, bool) or not isinstance(num_envs, (int, np.integer)) or num_envs < 1:
            raise ValueError(f"num_envs must be an integer >= 1, got {num_envs!r}")
        if not isinstance(batch_plans, (bool, np.bool_)):
            raise ValueError(f"batch_plans must be True or False, got {batch_plans!r}")
        self.batch_plans = bool(batch_plans)
        kwargs.pop("max_episode_steps", None)
        formulation = kwargs.pop("formulation", "per_input")
        if formulation != "per_input" or kwargs.pop("formulation_kwargs", None):
            raise ValueError(f"the native vector env (vectorization_mode='vector_entry_point') has the per_input "
                             f"formulation only, got formulation={formulation!r} / formulation_kwargs; use "
                             f"gym.make_vec(..., vectorization_mode='sync') (each copy is wrapped by gym.make) or "
                             f"wrap it yourself")
        reuse = kwargs.pop("reuse", None)
        first = SwitchDecEnv(task, **kwargs)  # takes objects shared by skipenv.make / sharing() too
        if reuse is not None:
            first.evaluator.reuse = bool(reuse)
        rest = {k: v for k, v in kwargs.items() if k not in _EVALUATOR_KWARGS and k not in ("evaluator", "reward")}
        with sharing():  # the other rows take the first row's evaluator and reward, nothing else shared
            self.envs = [first] + [SwitchDecEnv(task, evaluator=first.evaluator, reward=first.reward, **rest)
                                   for _ in range(int(num_envs) - 1)]
        self.num_envs = int(num_envs)
        self.single_observation_space = first.observation_space
        self.single_action_space = first.action_space
        self.observation_space = batch_space(self.single_observation_space, self.num_envs)
        self.action_space = batch_space(self.single_action_space, self.num_envs)
        self.render_mode = None
        self.last_infos: list[dict] = [{} for _ in range(self.num_envs)]
        self._obs = np.zeros((self.num_envs,) + self.single_observation_space.shape, dtype=np.float32)

    # ------------------------------------------------------------------ shared objects
    @property
    def evaluator(self):
        return self.envs[0].evaluator

    @property
    def generator(self):
        return self.envs[0].generator

    @property
    def reward(self):
        return self.envs[0].reward

    # ------------------------------------------------------------------ Gymnasium VectorEnv API
    def reset(self, *, seed: int | Sequence[int | None] | None = None, options: dict | None = None):
        """Reset every row. ``seed``: an int (row ``i`` gets ``seed + i``), a list of ``N`` seeds, or ``None``.
        ``options``: passed to every row's ``reset``. Returns ``(observations [N, n], infos)`` (``n`` = the single
        env's observation size)."""
        if seed is None or isinstance(seed, (int, np.integer)):
            seeds = [None if seed is None else int(seed) + i for i in range(self.num_envs)]
        else:
            seeds = list(seed)
            if len(seeds) != self.num_envs:
                raise ValueError(f"got {len(seeds)} seeds for {self.num_envs} envs")
        infos: list[dict] = []
        for i, (env, s) in enumerate(zip(self.envs, seeds)):
            self._obs[i], info = env.reset(seed=s, options=options)
            infos.append(info)
        return self._obs.copy(), self._merge(infos)

    def step(self, actions):
        """Run the ``N`` plans (``actions`` ``[N, n]``), reward them, reset every row (same step).

        Returns:
            ``(observations [N, n] of the next episodes, rewards [N], terminated [N] (all True),
            truncated [N] (all False), infos)``; ``infos`` holds the finished episodes' values as arrays (Gymnasium
            vector convention) plus ``final_obs`` / ``final_info`` (row ``i``: the single env's observation / info).
        """
        actions = np.asarray(actions)
        if actions.shape[0] != self.num_envs:
            raise ValueError(f"expected {self.num_envs} actions (one row per env), got shape {actions.shape}")
        for env in self.envs:
            env._check_can_step()
        plans = [env.codec.decode(a) for env, a in zip(self.envs, actions)]
        outcomes = self.evaluate_together([env.example for env in self.envs], plans)
        rewards = np.zeros(self.num_envs, dtype=np.float64)
        final_obs = np.zeros_like(self._obs)
        infos: list[dict] = []
        for i, (env, o) in enumerate(zip(self.envs, outcomes)):
            env._last_outcome, env._episode_over = o, True
            info = env._info(o)
            rewards[i] = float(info["reward"])
            final_obs[i] = env._observation()
            infos.append(info)
            self._obs[i], _ = env.reset()
        self.last_infos = infos
        merged = self._merge(infos)
        merged["final_obs"] = final_obs
        merged["final_info"] = np.array(infos, dtype=object)
        merged["_final_obs"] = merged["_final_info"] = np.ones(self.num_envs, dtype=bool)
        terminated = np.ones(self.num_envs, dtype=bool)
        return self._obs.copy(), rewards, terminated, np.zeros(self.num_envs, dtype=bool), merged

    def evaluate_together(self, examples, plans):
        """Outcomes of ``N`` (example, plan) pairs through the shared evaluator; a pair that occurs in several rows
        is run once (the outcome cache); batched with :attr:`batch_plans`
        (:meth:`~skipenv.envs.evaluator.Evaluator.outcomes_together`)."""
        return self.evaluator.outcomes_together(examples, plans, batch=self.batch_plans)

    @staticmethod
    def _merge(infos: list[dict]) -> dict:
        """Per-row info dicts → Gymnasium's vector info: one array per key plus a ``_key`` mask."""
        keys = list(dict.fromkeys(k for info in infos for k in info))
        out: dict[str, Any] = {}
        for k in keys:
            values = [info.get(k) for info in infos]
            mask = np.array([k in info for info in infos])
            if all(isinstance(v, (bool, np.bool_)) for v, m in zip(values, mask) if m):
                arr = np.array([bool(v) if m else False for v, m in zip(values, mask)])
            elif all(isinstance(v, (int, float, np.number)) and not isinstance(v, bool)
                     for v, m in zip(values, mask) if m):
                arr = np.array([v if m else 0 for v, m in zip(values, mask)])
            else:
                arr = np.empty(len(infos), dtype=object)
                arr[:] = values
            out[k], out["_" + k] = arr, mask
        return out

    def close_extras(self, **kwargs):
        for env in getattr(self, "envs", ()):  # () when the constructor failed
            env.close()

    def __repr__(self) -> str:
        return f"SwitchDecVectorEnv(num_envs={self.num_envs}, {self.envs[0].task.name}, {self.generator!r})"


try:  # gymnasium >= 1.0
    from gymnasium.wrappers.vector import RecordEpisodeStatistics as _GymRecordEpisodeStatistics
except ImportError:  # pragma: no cover - depends on the install
    _GymRecordEpisodeStatistics = None


if _GymRecordEpisodeStatistics is not None:
    class RecordEpisodeStatistics(_GymRecordEpisodeStatistics):
        """``gymnasium.wrappers.vector.RecordEpisodeStatistics`` that also counts ``SAME_STEP`` autoreset envs
        right (:class:`SwitchDecVectorEnv`): ``infos["episode"]`` = ``{"r": [N] returns, "l": [N] lengths (steps),
        "t": [N] seconds}`` for the rows whose episode ended in this step (0 elsewhere), ``infos["_episode"]`` the
        mask, and the ``return_queue`` / ``length_queue`` / ``time_queue`` of the parent class.

        Gymnasium 1.2.2's ``step`` zeroes a row's return on the step after it finished, which under ``SAME_STEP``
        is the step of the next episode, so every later episode reported ``r`` 0, ``l`` 0 (issue 20 M9; Gymnasium
        PR #1624 fixed it upstream). Envs of ``NEXT_STEP`` / ``DISABLED`` autoreset use the parent's ``step``.
        """

        def step(self, actions):
            from gymnasium.vector import AutoresetMode as _Mode

            if self.env.metadata.get("autoreset_mode") != _Mode.SAME_STEP:
                return super().step(actions)
            import time

            observations, rewards, terminations, truncations, infos = self.env.step(actions)
            self.episode_returns += rewards
            self.episode_lengths += 1
            dones = np.logical_or(terminations, truncations)
            self.prev_dones = dones
            if dones.any():
                if self._stats_key in infos or f"_{self._stats_key}" in infos:
                    raise ValueError(f"Attempted to add episode stats with key '{self._stats_key}' but this key "
                                     f"already exists in info: {list(infos.keys())}")
                now = time.perf_counter()
                seconds = np.round(now - self.episode_start_times, 6)
                infos[self._stats_key] = {"r": np.where(dones, self.episode_returns, 0.0),
                                          "l": np.where(dones, self.episode_lengths, 0),
                                          "t": np.where(dones, seconds, 0.0)}
                infos[f"_{self._stats_key}"] = dones
                self.episode_count += int(dones.sum())
                self.time_queue.extend(seconds[dones])
                self.return_queue.extend(self.episode_returns[dones])
                self.length_queue.extend(self.episode_lengths[dones])
                self.episode_returns[dones] = 0.0  # the row's next episode started in this same step
                self.episode_lengths[dones] = 0
                self.episode_start_times[dones] = now
            return observations, rewards, terminations, truncations, infos
