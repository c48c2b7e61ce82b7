"""Mixed traffic: one env whose episodes draw their input from several embedded tasks (``SwitchDec-Mix-v0``).

A deployed model serves mixed requests (a summary here, a sentiment label there, an answer next), and routing
benchmarks found most of a contextual policy's gain in such coarse structure (issue 23). :class:`SwitchDecMixEnv`
holds one :class:`~skipenv.envs.switchdec.SwitchDecEnv` per task, all on **one** generator (one model copy), and
each episode picks a task (probability ``weights``) and then an input of that task (a seeded permutation per task,
as in the single-task envs).

**One scale for every task.** A member's quality signal must be a *fraction of the full model's output that the plan
keeps*: a value in ``[0, 1]`` that is 1 for the full model — so the quality loss ``quality_full - quality`` is on
one scale (the share of the full output lost) whatever the task, and one ``tau`` and one reward rule serve all:

- ``xsum``: ``agreement`` (teacher-forced: the fraction of the full model's summary tokens that stay the plan's
  argmax);
- ``rotten_tomatoes_scored``: ``label_agreement`` (1 if the plan keeps the full model's calibrated label, else 0 —
  a one-"token" output);
- ``disflqa_span``: ``agreement`` on the full model's answer span tokens.

The reward is the single-task envs' lexicographic reward at that common ``tau`` (default 0.10, the agreement
default; :mod:`skipenv.envs.rewards`); ``formulation="expected"`` / ``"budget"`` wrap the mix like any one-shot env
(:func:`skipenv.envs.registration.make_env`). The FLOPs fraction ``cost`` is each input's own (plan FLOPs / full
FLOPs of that input), so it is unitless across tasks as well.

Observation: the member's pooled observation (``[d + 2]``, see :class:`~skipenv.envs.switchdec.SwitchDecEnv`) with a
one-hot task indicator appended: ``Box(-100, 100, [d + 2 + n_tasks])``. Action: the members' common
``MultiBinary`` plan (same generator, same ``token_segments``, so the same action space). ``info`` is the member's
step info plus ``task`` (the task name) and ``task_index``; ``reset`` returns ``{"example_id", "task",
"task_index"}``.
"""

from __future__ import annotations

from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from .switchdec import OBS_BOUND, SwitchDecEnv, shared_generator

__all__ = ["SwitchDecMixEnv", "MIX_TASKS", "MIX_SIGNALS"]

#: the tasks of ``SwitchDec-Mix-v0`` (the repaired embedded tasks, issue 23) and the quality signal of each: a
#: fraction of the full model's output kept (see the module docstring)
MIX_TASKS: tuple[str, ...] = ("xsum", "rotten_tomatoes_scored", "disflqa_span")
MIX_SIGNALS: dict[str, str] = {"xsum": "agreement", "rotten_tomatoes_scored": "label_agreement",
                               "disflqa_span": "agreement", "disflqa": "agreement", "rotten_tomatoes": "agreement",
                               "cnndm": "agreement", "squad": "agreement", "sst2": "agreement"}
#: the signals whose full-model value is 1 and whose values are fractions of the full output kept
_ONE_SCALE = ("agreement", "label_agreement", "fidelity", "label_probability")


def _check_weights(weights, tasks: tuple[str, ...]) -> np.ndarray:
    """The per-episode task probabilities of ``weights`` (``None``: uniform): shape ``(len(tasks),)``, summing to 1.
    Scaled by the largest weight before normalising, so weights near the float limit (``1e308``) do not overflow.

    Raises:
        ValueError: not one real number (int / float, not bool or string) per task, a negative / non-finite weight,
            or all zero.
    """
    import numbers

    n = len(tasks)
    if weights is None:
        return np.full(n, 1.0 / n)
    want = (f"weights must be {n} finite numbers >= 0 with a positive sum, one per task {list(tasks)} (e.g. "
            f"{[1.0] * n})")
    if isinstance(weights, (str, bytes, dict)) or not hasattr(weights, "__len__") or len(weights) != n:
        raise ValueError(f"{want}, got {weights!r}")
    bad = [w for w in weights if isinstance(w, (bool, np.bool_)) or not isinstance(w, numbers.Real)]
    if bad:
        raise ValueError(f"{want}, got {weights!r} ({bad[0]!r} is a {type(bad[0]).__name__}, not a number)")
    w = np.asarray([float(x) for x in weights], dtype=np.float64)
    if not np.isfinite(w).all() or (w < 0).any() or not (w > 0).any():
        raise ValueError(f"{want}, got {weights!r}")
    w = w / w.max()  # in (0, 1]: the sum below is at most n, never inf
    return w / w.sum()


class SwitchDecMixEnv(gym.Env):
    """Mixed-traffic one-shot env: each episode's input comes from one of several tasks (module docstring).

    Args:
        tasks: registered task names (:data:`skipenv.tasks.TASKS`), at least one, no repeats
            (default :data:`MIX_TASKS`).
        weights: the probability of each task per episode (default uniform); non-negative, summing to > 0
            (normalised).
        split: ``"train"``, ``"validation"``, ``"test"`` or ``"all"`` (every task's split of that name).
        num_examples: the first ``num_examples`` inputs of each task's split (``None``: all).
        tau: the common quality tolerance (fraction of the full output lost; default 0.10).
        model, device, dtype: the generator (loaded once, :func:`~skipenv.envs.switchdec.shared_generator`), unless
            ``generator=`` is given or a :func:`skipenv.sharing` block provides one.
        generator: an already-loaded generator shared by every member.
        **kwargs: passed to every member :class:`SwitchDecEnv` (``token_segments``, ``max_input_tokens``,
            ``max_new_tokens``, ``disk_cache``, ``lru_size``, ``reward_mode``, ``record_time``, ...), except
            ``quality`` (fixed per task by :data:`MIX_SIGNALS`), ``task`` and ``evaluator``.

    Reset ``options``: ``{"index": i}`` picks the ``i``-th input of :attr:`examples` (the tasks' inputs concatenated
    in the order of ``tasks``), ``{"task": name}`` draws an input of that task, ``{"example_id": id, "task": name}``
    picks one input.

    Raises:
        ValueError: an empty / repeated / unknown task list, weights of the wrong length or sign, ``quality`` /
            ``task`` / ``evaluator`` in ``kwargs``, a task with no signal on the common scale, members whose action
            spaces differ, bad reset options.
        RuntimeError: ``step`` before ``reset`` or after the episode ended.
    """

    metadata = {"render_modes": [], "render_fps": 1}
    #: ``**kwargs`` go to every member env, not to ``gym.Env``: what ``gym.make``'s kwarg check
    #: (:func:`skipenv.envs.registration.env_class_keywords`) accepts besides this class's own arguments
    kwargs_forwarded_to = SwitchDecEnv

    def __init__(self, tasks: Sequence[str] = MIX_TASKS, *, weights: Sequence[float] | None = None,
                 split: str = "train", num_examples: int | None = None, tau: float | None = None,
                 model: str = "smollm2-135m-instruct", device: str = "cpu", dtype: str = "float32", generator=None,
                 **kwargs: Any):
        super().__init__()
        from ..tasks import TASKS
        from .registration import shared_objects

        if isinstance(tasks, str) or not tasks:
            raise ValueError(f"tasks must be a non-empty list of task names such as {list(MIX_TASKS)}, got {tasks!r}")
        tasks = tuple(str(t).strip().lower().replace("-", "_") for t in tasks)
        if len(set(tasks)) != len(tasks):
            raise ValueError(f"tasks must not repeat, got {list(tasks)} (use weights= to draw one task more often)")
        unknown = [t for t in tasks if t not in TASKS or t not in MIX_SIGNALS]
        if unknown:
            raise ValueError(f"unknown task(s) {unknown} for the mix; known: {sorted(set(TASKS) & set(MIX_SIGNALS))}")
        fixed = sorted({"quality", "task", "evaluator"} & set(kwargs))
        if fixed:
            raise ValueError(f"{fixed} are fixed per task in the mix (quality: "
                             f"{ {t: MIX_SIGNALS[t] for t in tasks} }); do not pass them")
        self.weights = _check_weights(weights, tasks)
        self.tasks = tasks
        if generator is None:
            generator = shared_objects().get("generator")
        if generator is None:
            generator = shared_generator(model, device, dtype)
        self.members: list[SwitchDecEnv] = []
        try:
            for t in tasks:
                quality = MIX_SIGNALS[t]
                assert quality in _ONE_SCALE
                self.members.append(SwitchDecEnv(t, generator=generator, split=split, num_examples=num_examples,
                                                 quality=quality, tau=0.10 if tau is None else tau, **kwargs))
        except Exception:
            for m in self.members:
                m.close()
            raise
        first = self.members[0]
        for t, m in zip(tasks, self.members):
            if m.action_space != first.action_space or m.plan_spec != first.plan_spec:
                raise ValueError(f"task {t!r} has action space {m.action_space}, task {tasks[0]!r} "
                                 f"{first.action_space}: the mix needs one plan for all")
        self.split = split
        self.action_space = first.action_space
        n = first.observation_space.shape[0] + len(tasks)
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(n,), dtype=np.float32)
        #: ``(task index, example)`` of every input, tasks in order
        self.examples = [(i, ex) for i, m in enumerate(self.members) for ex in m.examples]
        self._orders: list[np.ndarray | None] = [None] * len(tasks)
        self._cursors = [0] * len(tasks)
        self._current: int | None = None

    # ------------------------------------------------------------------ the members' common parts
    @property
    def generator(self):
        """The generator every member runs."""
        return self.members[0].generator

    @property
    def plan_spec(self):
        """The common :class:`~skipenv.plan.PlanSpec`."""
        return self.members[0].plan_spec

    @property
    def tau(self) -> float:
        """The common tolerance (fraction of the full model's output lost)."""
        return self.members[0].tau

    @property
    def action_labels(self) -> list[str]:
        return self.members[0].action_labels

    def action_to_plan(self, action):
        return self.members[0].action_to_plan(action)

    def plan_to_action(self, plan) -> np.ndarray:
        return self.members[0].plan_to_action(plan)

    @property
    def member(self) -> SwitchDecEnv:
        """The member env of the current episode."""
        if self._current is None:
            raise RuntimeError("no current episode: call reset() first")
        return self.members[self._current]

    @property
    def task(self):
        """The current episode's :class:`~skipenv.tasks.Task`."""
        return self.member.task

    # ------------------------------------------------------------------ episodes
    def _indicator(self, obs: np.ndarray) -> np.ndarray:
        onehot = np.zeros(len(self.tasks), dtype=np.float32)
        onehot[self._current] = 1.0
        return np.concatenate([np.asarray(obs, dtype=np.float32), onehot])

    def _task_index(self, name) -> int:
        key = str(name).strip().lower().replace("-", "_")
        if key not in self.tasks:
            raise ValueError(f"reset option 'task' {name!r} is not in this mix's tasks {list(self.tasks)}")
        return self.tasks.index(key)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._orders, self._cursors = [None] * len(self.tasks), [0] * len(self.tasks)
        options = {} if options is None else options
        if not isinstance(options, dict):
            raise ValueError(f"reset options must be a dict such as {{'index': 0}} or None, got {options!r}")
        unknown = sorted(set(options) - {"index", "task", "example_id"}, key=str)
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: ['index', 'task', 'example_id']")
        if "index" in options:
            if len(options) > 1:
                raise ValueError("reset option 'index' picks the task as well: pass it alone")
            i = options["index"]
            if isinstance(i, bool) or not isinstance(i, (int, np.integer)) or not 0 <= i < len(self.examples):
                raise ValueError(f"reset option 'index' must be an integer in [0, {len(self.examples)}), got {i!r}")
            t, ex = self.examples[int(i)]
            sub = {"example_id": ex.id}
        elif "example_id" in options:
            if "task" not in options:
                raise ValueError("reset option 'example_id' needs 'task' too (ids are unique within a task only)")
            t, sub = self._task_index(options["task"]), {"example_id": options["example_id"]}
        else:
            t = self._task_index(options["task"]) if "task" in options else \
                int(self.np_random.choice(len(self.tasks), p=self.weights))
            m = self.members[t]
            if self._orders[t] is None or self._cursors[t] >= len(self._orders[t]):
                self._orders[t], self._cursors[t] = self.np_random.permutation(len(m.examples)), 0
            sub = {"index": int(self._orders[t][self._cursors[t]])}
            self._cursors[t] += 1
        self._current = t
        obs, info = self.members[t].reset(options=sub)
        return self._indicator(obs), {**info, "task": self.tasks[t], "task_index": t}

    def step(self, action):
        if self._current is None:
            raise RuntimeError("call reset() before step()")
        obs, reward, terminated, truncated, info = self.member.step(action)
        info = {**info, "task": self.tasks[self._current], "task_index": self._current}
        return self._indicator(obs), reward, terminated, truncated, info

    def close(self):
        for m in self.members:
            m.close()
        super().close()
