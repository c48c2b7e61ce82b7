"""SwitchDec environments: one NLP input per episode; the agent picks which sublayers / token segments of a
frozen generator to skip; the reward ranks quality first and FLOPs second.

- :class:`SwitchDecEnv` — one-shot (as in Switchable Decision, ICML 2024): observe the input, emit the whole
  plan as one ``MultiBinary`` action, get the reward; ``terminated=True`` after one step.
- :class:`SwitchDecLayerwiseEnv` — sequential MDP: one step for the token segments, then one ``Discrete(4)``
  step per layer (keep / skip attention / skip FFN / skip both) given the hidden state actually produced so far.

Both are thin Gymnasium shells over the stages in this package: the action codec (:mod:`.codec`), the
:class:`~skipenv.envs.evaluator.Evaluator` (which returns cached :class:`~skipenv.envs.evaluator.Outcome` objects),
and a :class:`~skipenv.envs.rewards.Reward`. Build them from strings (``gym.make`` / :func:`skipenv.make`) or from
an evaluator shared between several envs (``SwitchDecEnv(evaluator=ev, tau=0.05)``).

Why this module is long: the one-shot and the layerwise env share kwarg validation, the kwargs
documentation and the episode bookkeeping; each shell on its own would repeat them.
"""

from __future__ import annotations

import dataclasses
import math
import numbers
import warnings
from pathlib import Path
from typing import Any, Sequence

import gymnasium as gym
import numpy as np

from ..plan import SkipPlan
from .codec import CANDIDATE_KINDS, ActionCodec, LayerwiseCodec
from .evaluator import Evaluator, FullOutput, Outcome
from .quality import QualitySignal, get_signal
from .rewards import REWARD_MODES, Reward, check_tau, make_reward

__all__ = ["SwitchDecEnv", "SwitchDecLayerwiseEnv", "CANDIDATE_KINDS", "shared_generator"]

#: Observation features are clipped to ``[-OBS_BOUND, OBS_BOUND]`` so the Box is bounded.
OBS_BOUND = 100.0
RESET_OPTIONS = ("example_id", "index")

_GENERATORS: dict = {}


def _folder_stamp(model) -> tuple | None:
    """``(name, size, inode, mtime_ns, ctime_ns)`` of every file of a local model folder (or of a local model file),
    so a folder re-saved at the same path is noticed; ``None`` for a Hub id or the embedded default (whose files
    skipenv writes once). A file rewritten in place with the same size within the file system's timestamp
    resolution is not noticed (the fingerprint of the loaded weights still is what every cache keys on)."""
    from ..loading import is_embedded_model

    if is_embedded_model(model):
        return None
    path = Path(str(model)).expanduser()
    try:
        files = sorted(path.rglob("*")) if path.is_dir() else ([path] if path.exists() else [])
        return tuple((str(f.relative_to(path) if f != path else f.name), st.st_size, st.st_ino, st.st_mtime_ns,
                      st.st_ctime_ns) for f in files for st in (f.stat(),) if f.is_file())
    except OSError:
        return None


def shared_generator(model: str, device: str = "cpu", dtype: str = "float32"):
    """Load a generator once per process and share it between environments (one model copy serving N envs,
    e.g. inside a ``SyncVectorEnv``).

    Keyed by ``(model, device, dtype)`` and, for a local folder, by the names, sizes and modification times of its
    files: a folder re-saved at the same path (other weights) is loaded again, not served from memory. Envs built
    earlier keep the generator they were given.
    """
    from ..loading import load_generator

    key = (str(model), str(device), str(dtype))
    stamp = _folder_stamp(model)
    hit = _GENERATORS.get(key)
    if hit is None or hit[0] != stamp:
        _GENERATORS[key] = hit = (stamp, load_generator(model, device=device, dtype=dtype))
    return hit[1]


def _plain(v) -> bool:
    """A value ``env.spec`` may keep: str / int / float / bool / None, or lists, tuples and str-keyed dicts of
    those (e.g. ``formulation_kwargs``)."""
    if isinstance(v, (str, int, float, bool, type(None))):
        return True
    if isinstance(v, (list, tuple)):
        return all(_plain(x) for x in v)
    if isinstance(v, dict):
        return all(isinstance(k, str) and _plain(x) for k, x in v.items())
    return False


def _is_int(v) -> bool:
    return isinstance(v, (int, np.integer)) and not isinstance(v, bool)


def _check_int(name: str, v, low: int, allow_none: bool = True) -> None:
    if v is None and allow_none:
        return
    if not _is_int(v) or v < low:
        raise ValueError(f"{name} must be an integer >= {low}{' or None' if allow_none else ''}, got {v!r}")


def _check_kwargs(*, task, task_source, split, reward_mode, tau, token_segments, max_input_tokens, max_new_tokens, num_examples,
                  cost_weight, record_time, disk_cache, lru_size, model, reward) -> None:
    """Validate every constructor argument once, before anything is loaded (messages name the argument)."""
    from ..tasks.base import Task

    if not isinstance(task, (str, Task)):
        raise ValueError(f"task must be a task name such as 'xsum' or a skipenv Task, got {type(task).__name__}")
    if task_source is not None and not (isinstance(task_source, str) and task_source.strip()) \
            and not hasattr(task_source, "__fspath__"):
        raise ValueError(f"task_source must be 'embedded', 'hub' or a data file path, got {task_source!r}")
    if cost_weight is not None and reward is None and reward_mode != "weighted":
        raise ValueError(f"cost_weight (or lam) weighs the cost in reward_mode='weighted' only; it has no effect with "
                         f"reward_mode={reward_mode!r}: drop it or pass reward_mode='weighted'")
    if not isinstance(split, str):
        raise ValueError(f"split must be a string ('train', 'validation', 'test' or 'all'), got {split!r}")
    if reward is None and reward_mode not in REWARD_MODES:
        raise ValueError(f"unknown reward_mode {reward_mode!r}; choose one of {REWARD_MODES}")
    if reward is not None and not isinstance(reward, Reward):
        raise ValueError(f"reward must be a skipenv.envs.rewards.Reward, got {type(reward).__name__}")
    if tau is not None:
        check_tau(tau)
    if cost_weight is not None:
        if isinstance(cost_weight, bool) or not isinstance(cost_weight, numbers.Real) \
                or not math.isfinite(cost_weight) or cost_weight < 0:
            raise ValueError(f"cost_weight must be a finite number >= 0 (a negative weight rewards spending FLOPs), "
                             f"got {cost_weight!r}")
    _check_int("token_segments", token_segments, 0)
    _check_int("max_input_tokens", max_input_tokens, 8)
    _check_int("max_new_tokens", max_new_tokens, 1)
    _check_int("num_examples", num_examples, 1)
    _check_int("lru_size", lru_size, 0, allow_none=False)
    for name, v in (("record_time", record_time), ("disk_cache", disk_cache)):
        if not isinstance(v, (bool, np.bool_)):
            raise ValueError(f"{name} must be True or False, got {v!r}")
    if not isinstance(model, str) and not hasattr(model, "__fspath__"):
        raise ValueError(f"model must be a model name or path, got {type(model).__name__}")


class _SwitchDecBase(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 1}
    _spec = None

    def __init__(self, task: Any = "xsum", *, model: str = "smollm2-135m-instruct", split: str = "train",
                 reward_mode: str = "lexicographic", tau: float | None = None, quality: str | None = None,
                 token_segments: int | None = None, max_input_tokens: int | None = None,
                 max_new_tokens: int | None = None, device: str = "cpu", dtype: str = "float32",
                 task_source: str | None = None, num_examples: int | None = None, cost_weight: float | None = None,
                 lam: float | None = None, record_time: bool = False, disk_cache: bool = True,
                 lru_size: int = 4096, generator=None, evaluator: Evaluator | None = None,
                 reward: Reward | None = None, render_mode: str | None = None, observation: str | None = None,
                 segment_boundaries: str | None = None, skip_mode: str | None = None,
                 calibration_documents: int | None = None, linear_rank: int | None = None,
                 label_head: str | None = None):
        super().__init__()
        from .registration import shared_objects, sharing_elsewhere

        injected = shared_objects()
        if generator is None and evaluator is None and not injected and sharing_elsewhere():
            warnings.warn(f"a skipenv.sharing() block is open in another thread or in the process that started this "
                          f"one, but its objects do not reach this env (they do not cross threads or processes): it "
                          f"loads its own model {model!r}. Build the env in the block's thread, or pass generator= "
                          f"explicitly", UserWarning, stacklevel=2)
        generator = generator if generator is not None else injected.get("generator")
        evaluator = evaluator if evaluator is not None else injected.get("evaluator")
        reward = reward if reward is not None else injected.get("reward")
        if lam is not None:
            if isinstance(lam, bool) or not isinstance(lam, numbers.Real) or not math.isfinite(lam):
                raise ValueError(f"lam (deprecated name of cost_weight) must be a finite number, got {lam!r}")
            if cost_weight is not None:
                raise ValueError("pass cost_weight only (lam is its deprecated name)")
            warnings.warn("the env kwarg lam= is deprecated and will be removed in skipenv 0.3; use cost_weight= (the "
                          "weight of the cost in "
                          "reward_mode='weighted')", DeprecationWarning, stacklevel=2)
            cost_weight = lam
        _check_kwargs(task=task, task_source=task_source, split=split, reward_mode=reward_mode, tau=tau, token_segments=token_segments,
                      max_input_tokens=max_input_tokens, max_new_tokens=max_new_tokens, num_examples=num_examples,
                      cost_weight=cost_weight, record_time=record_time, disk_cache=disk_cache, lru_size=lru_size,
                      model=model, reward=reward)
        if segment_boundaries is not None:
            from ..tasks.units import check_segment_boundaries

            check_segment_boundaries(segment_boundaries)  # before anything loads
        if skip_mode is not None:
            from ..generators.bypass import check_skip_mode

            check_skip_mode(skip_mode)  # an unknown mode fails before anything loads
        if observation is not None:
            from .observations import parse_observation_kind

            parse_observation_kind(observation)  # an unknown kind fails before anything loads
            if not isinstance(self, SwitchDecEnv) and observation != "pooled":
                raise ValueError(f"observation={observation!r}: {type(self).__name__} has only the pooled "
                                 f"observation (its per-layer steps observe the pooled state); use SwitchDecEnv")
        if reward is not None and (tau is not None or cost_weight is not None):
            raise ValueError("pass tau / cost_weight to the Reward object, not next to reward=")
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            warnings.warn(f"render_mode={render_mode!r} is not supported by {type(self).__name__} (supported: "
                          f"{self.metadata['render_modes']}); rendering is disabled", UserWarning, stacklevel=2)
            render_mode = None
        self.render_mode = render_mode

        if evaluator is not None:
            if not isinstance(evaluator, Evaluator):
                raise ValueError(f"evaluator must be a skipenv.envs.Evaluator, got {type(evaluator).__name__}")
            if observation is not None and observation != evaluator.observation_kind:
                from .observations import check_observation_kind

                if check_observation_kind(observation, evaluator.generator) != evaluator.observation_kind:
                    raise ValueError(f"observation={observation!r} differs from the evaluator's "
                                     f"{evaluator.observation_kind!r} (its outcomes' cost includes that "
                                     f"observation's FLOPs): build an Evaluator(observation={observation!r})")
            if quality is not None:  # the evaluator's own signal may be named (e.g. an id's registered quality)
                if get_signal(quality).name != evaluator.quality:
                    raise ValueError(f"quality {quality!r} differs from the evaluator's {evaluator.quality!r} (the "
                                     f"evaluator measures the quality; an env id's registered quality counts as "
                                     f"given): share an evaluator of that signal, or pass quality=None")
                quality = None
            if segment_boundaries is not None and segment_boundaries != evaluator.segment_boundaries:
                raise ValueError(f"segment_boundaries={segment_boundaries!r} differs from the evaluator's "
                                 f"{evaluator.segment_boundaries!r} (its outcomes and observations are of those "
                                 f"segments): build an Evaluator(segment_boundaries={segment_boundaries!r})")
            if skip_mode is not None and skip_mode != evaluator.skip_mode:
                from ..generators.bypass import SkipModeError

                raise SkipModeError(f"skip_mode={skip_mode!r} differs from the evaluator's {evaluator.skip_mode!r} "
                                    f"(its outcomes were run under that mode): build an "
                                    f"Evaluator(skip_mode={skip_mode!r})")
            if calibration_documents is not None or linear_rank is not None:
                raise ValueError("calibration_documents / linear_rank are the evaluator's settings: do not pass them "
                                 "with evaluator=")
            given = {k: v for k, v in (("generator", generator), ("quality", quality),
                                       ("token_segments", token_segments), ("max_new_tokens", max_new_tokens),
                                       ("max_input_tokens", max_input_tokens), ("label_head", label_head))
                     if v is not None}
            if given:
                raise ValueError(f"{sorted(given)} are defined by the evaluator; do not pass them with evaluator=")
            if isinstance(task, str) and task.strip().lower().replace("-", "_") != evaluator.task.name:
                raise ValueError(f"task {task!r} differs from the evaluator's task {evaluator.task.name!r}")
            if not isinstance(task, str) and task is not evaluator.task:
                raise ValueError("task differs from the evaluator's task")
        else:
            signal = get_signal("agreement" if quality is None else quality)
            generator, task_obj = _build(generator, task, model, device, dtype, task_source, max_input_tokens,
                                         label_head)
            evaluator = Evaluator(generator, task_obj, quality=signal,
                                  token_segments=8 if token_segments is None else int(token_segments),
                                  max_new_tokens=max_new_tokens, disk_cache=bool(disk_cache), lru_size=int(lru_size),
                                  record_time=bool(record_time),
                                  observation="pooled" if observation is None else observation,
                                  segment_boundaries="tokens" if segment_boundaries is None else segment_boundaries,
                                  skip_mode="identity" if skip_mode is None else skip_mode,
                                  calibration_documents=calibration_documents, linear_rank=linear_rank)
        if not isinstance(self, SwitchDecEnv) and evaluator.observation_kind != "pooled":
            raise ValueError(f"{type(self).__name__} has only the pooled observation, but the shared evaluator charges "
                             f"observation {evaluator.observation_kind!r}; share an Evaluator(observation='pooled')")
        self._evaluator = evaluator
        self.reward = reward if reward is not None else make_reward(
            reward_mode, tau=evaluator.default_tau if tau is None else tau,
            cost_weight=0.5 if cost_weight is None else cost_weight)
        self.split = split
        self.examples = list(self.task.examples(split))
        reserved = set(evaluator.calibration_ids)
        if reserved and split in ("train", "all"):  # the calibration documents are never episodes
            self.examples = [ex for ex in self.examples if ex.id not in reserved]
        elif reserved:
            from .skip_modes import check_no_overlap

            check_no_overlap(evaluator.bypasses, [ex.id for ex in self.examples], split)
        if num_examples is not None:
            self.examples = self.examples[: int(num_examples)]
        if not self.examples:
            raise ValueError(f"task {self.task.name!r} has no examples in split {split!r}")
        self._by_id = {ex.id: ex for ex in self.examples}
        self.max_input_tokens = self.task.max_input_tokens
        self._order: np.ndarray | None = None
        self._cursor = 0
        self.example = None
        self._last_outcome: Outcome | None = None
        self._episode_over = False

    # ------------------------------------------------------------------ public front door
    @property
    def evaluator(self) -> Evaluator:
        """The (possibly shared) :class:`~skipenv.envs.evaluator.Evaluator`; read-only."""
        return self._evaluator

    @property
    def generator(self):
        return self._evaluator.generator

    @property
    def task(self):
        return self._evaluator.task

    @property
    def plan_spec(self):
        return self._evaluator.spec

    @property
    def tau(self) -> float:
        """Tolerance of the constraint ``q >= q_full - tau`` of this env's reward."""
        return self.reward.tau

    @property
    def quality(self) -> str:
        """Name of the quality signal (``"agreement"``, ``"reference"``, ...)."""
        return self._evaluator.quality

    @property
    def quality_signal(self) -> QualitySignal:
        return self._evaluator.signal

    @property
    def observation_kind(self) -> str:
        """The observation kind (``"pooled"``, ``"segments"``, ``"layer:m"``, ``"attention:m"``, ``"units"``; the
        evaluator's)."""
        return self._evaluator.observation_kind

    @property
    def segment_boundaries(self) -> str:
        """What the token segments are: ``"tokens"`` (equal token runs) or ``"sentences"`` (the evaluator's)."""
        return self._evaluator.segment_boundaries

    @property
    def skip_mode(self) -> str:
        """What a skipped sublayer adds: ``"identity"``, ``"mean"`` or ``"linear"`` (the evaluator's)."""
        return self._evaluator.skip_mode

    @property
    def max_new_tokens(self) -> int:
        return self._evaluator.max_new_tokens

    @property
    def fingerprint(self) -> str:
        """:func:`~skipenv.envs.cache.model_fingerprint` of the generator."""
        return self._evaluator.fingerprint

    @property
    def last_outcome(self) -> Outcome | None:
        """The :class:`Outcome` of the last finished episode (``None`` after ``reset``)."""
        return self._last_outcome

    def prompt(self, example=None):
        """The formatted input (:class:`~skipenv.inputs.PromptInput`) of ``example`` (default: the current one)."""
        return self._evaluator.prompt(self._example_or_current(example))

    def full_output(self, example=None) -> FullOutput:
        """The full model's output for ``example`` (default: the current one), cached."""
        return self._evaluator.full_output(self._example_or_current(example))

    def prefetch(self, examples=None, batch_size: int = 8, progress: bool = True) -> int:
        """Compute the full outputs of ``examples`` (default: the whole split) in batches; returns how many were
        computed (see :meth:`Evaluator.prefetch`)."""
        return self._evaluator.prefetch(self.examples if examples is None else examples, batch_size=batch_size,
                                        progress=progress)

    def outcome(self, plan: SkipPlan, example=None) -> Outcome:
        """The (cached) :class:`Outcome` of ``plan`` on ``example`` (default: the current one); no episode
        bookkeeping."""
        return self._evaluator.outcome(self._example_or_current(example), plan)

    def evaluate(self, plan: SkipPlan, example=None) -> dict[str, Any]:
        """What a terminal ``step`` returns as ``info`` for ``plan`` on ``example`` (default: the current one),
        without the reset / step bookkeeping. A fresh dict every call."""
        o = self.outcome(plan, example)
        return self._info(o)

    def _info(self, o: Outcome) -> dict[str, Any]:
        return {**o.to_info(), **self.reward.info(o)}

    def _example_or_current(self, example):
        if example is not None:
            return example
        if self.example is None:
            raise RuntimeError("no current example: call reset() first or pass example=")
        return self.example

    # ------------------------------------------------------------------ gym.make kwargs stay light
    @property
    def spec(self):
        return self._spec

    @spec.setter
    def spec(self, value) -> None:
        """Gymnasium stores (and deep-copies) ``gym.make`` kwargs in ``env.spec``: a generator, evaluator or other
        object passed that way is kept out of the spec, with a warning naming :func:`skipenv.make`."""
        if value is not None and getattr(value, "kwargs", None):
            heavy = {k for k, v in value.kwargs.items() if not _plain(v)}
            if heavy:
                warnings.warn(f"gym.make kwargs {sorted(heavy)} are objects: they are not stored in env.spec "
                              f"(gymnasium deep-copies the spec, e.g. a whole model for SB3's Monitor). To share a "
                              f"loaded generator or evaluator use skipenv.make(env_id, generator=...) or build the "
                              f"env class directly", UserWarning, stacklevel=3)
                value = dataclasses.replace(value, kwargs={k: v for k, v in value.kwargs.items() if k not in heavy})
        self._spec = value

    # ------------------------------------------------------------------ example order (seeded)
    def _next_example(self, options):
        if options is None:
            options = {}
        if not isinstance(options, dict):
            raise ValueError(f"reset options must be a dict such as {{'index': 0}} or None, got {options!r}")
        unknown = sorted(set(options) - set(RESET_OPTIONS), key=str)
        if unknown:
            raise ValueError(f"unknown reset option(s) {unknown}; known: {list(RESET_OPTIONS)}")
        if len(options) > 1:
            raise ValueError("pass only one of the reset options 'example_id' and 'index'")
        if "example_id" in options:
            ex_id = options["example_id"]
            if isinstance(ex_id, str) and ex_id in set(self._evaluator.calibration_ids):
                raise ValueError(f"reset option 'example_id' {ex_id!r} is a calibration document of this env's "
                                 f"skip mode (its bypasses were fitted on it), so it is never an episode; pick "
                                 f"another document, or use skip_mode='identity'")
            if not isinstance(ex_id, str) or ex_id not in self._by_id:
                raise ValueError(f"reset option 'example_id' {ex_id!r} is not in split {self.split!r} of "
                                 f"{self.task.name!r}")
            return self._by_id[ex_id]
        if "index" in options:
            i = options["index"]
            if not _is_int(i):
                raise ValueError(f"reset option 'index' must be an integer, got {i!r}")
            if not 0 <= i < len(self.examples):
                raise ValueError(f"reset option 'index' {i} out of range: split {self.split!r} has "
                                 f"{len(self.examples)} examples")
            return self.examples[int(i)]
        if self._order is None or self._cursor >= len(self._order):
            self._order = self.np_random.permutation(len(self.examples))
            self._cursor = 0
        ex = self.examples[int(self._order[self._cursor])]
        self._cursor += 1
        return ex

    def _start_episode(self, seed, options):
        super().reset(seed=seed)
        if seed is not None:
            self._order, self._cursor = None, 0
        self.example = self._next_example(options)
        self._last_outcome = None
        self._episode_over = False

    def _check_can_step(self):
        if self.example is None:
            raise RuntimeError("call reset() before step()")
        if self._episode_over:
            raise RuntimeError("the episode is over (terminated); call reset() before step()")

    def _finite(self, obs: np.ndarray) -> np.ndarray:
        """``obs`` if every entry is finite; else the generator produced NaN / inf hidden states (e.g. float16
        overflow or corrupt weights), which would give a policy garbage and the quality signals meaningless
        numbers."""
        if not np.isfinite(obs).all():
            raise RuntimeError(f"the observation of example {self.example.id!r} is not finite: the generator's hidden "
                               f"states hold NaN or inf (model dtype {self.generator.model.dtype}); load it in "
                               f"float32 (dtype='float32') or check its weights")
        return obs

    def _length_features(self, example) -> np.ndarray:
        p = self._evaluator.prompt(example)
        return np.array([len(p) / self.max_input_tokens, p.num_document_tokens / self.max_input_tokens],
                        dtype=np.float32)

    def render(self):
        """``render_mode="ansi"``: a text summary of the current episode (the last outcome once it ended)."""
        if self.render_mode != "ansi" or self.example is None:
            return None
        o = self._last_outcome
        if o is None:
            return f"example {self.example.id}: waiting for the action ({self.task.name}, split {self.split})"
        return (f"example {o.example_id}: quality {o.quality:.3f} (full {o.quality_full:.3f}), cost {o.cost:.3f}, "
                f"reward {self.reward(o):.3f}\nplan {o.plan!r}" + (f"\noutput: {o.text}" if o.text is not None else ""))


def _build(generator, task, model, device, dtype, task_source, max_input_tokens, label_head=None):
    """Resolve generator / task names into objects (lazily imported: keeps ``import skipenv`` light)."""
    from ..tasks import make_task

    if generator is None:
        generator = shared_generator(model, device, dtype)
    if isinstance(task, str):
        kw = {} if max_input_tokens is None else {"max_input_tokens": int(max_input_tokens)}
        if label_head is not None:  # a head-scored task (RT-v2) with another model's head file
            from ..tasks import TASKS

            defaults = TASKS[task].defaults if task in TASKS else {}
            if "span_head" in defaults:
                raise ValueError(f"label_head= is the label head of a head-scored classification id (SwitchDec-"
                                 f"RottenTomatoes-v2); task {task!r} reads a span head: pass "
                                 f"task=skipenv.tasks.make_task({task!r}, span_head=PATH) instead")
            if "head" not in defaults:
                raise ValueError(f"label_head= is a setting of head-scored classification ids (SwitchDec-"
                                 f"RottenTomatoes-v2, task 'rotten_tomatoes_head'); task {task!r} has no label "
                                 f"head: drop it")
            kw["head"] = label_head
        task = make_task(task, source=task_source, **kw)
    elif label_head is not None:
        raise ValueError("label_head= is a setting of a task given by name; with a Task object, pass "
                         "make_task(..., head=...) instead")
    return generator, task


_ENV_ARGS_DOC = """
    Args:
        task: task name (``"xsum"``, ``"disflqa"``, ``"rotten_tomatoes"``, … see :mod:`skipenv.tasks`) or a Task.
        model: generator name or path (default: the embedded SmolLM2-135M-Instruct); loaded once per process and
            shared (see :func:`shared_generator`).
        split: ``"train"`` (default), ``"validation"``, ``"test"`` or ``"all"``.
        reward_mode: ``"lexicographic"`` (default), ``"weighted"`` (``quality - cost_weight · cost``) or
            ``"vector"`` (lexicographic scalar plus ``info["reward_vector"] = (quality, cost)``).
        tau: quality tolerance of the constraint ``q >= q_full - tau`` (finite, ``>= 0``; in the quality's unit);
            default: the quality signal's ``default_tau`` (0.1 for agreement, 0.02 for reference).
        quality: quality signal name — ``"agreement"`` (default), ``"probability"``, ``"reference"`` (alias
            ``"rouge"``), ``"fidelity"``, ``"likelihood"`` — or a :class:`~skipenv.envs.quality.QualitySignal`
            instance.
        token_segments: ``K`` document segments (integer ``>= 0``, default 8).
        label_head: (head-scored tasks, ``SwitchDec-RottenTomatoes-v2``) the path of a
            :class:`~skipenv.tasks.heads.LabelHead` JSON file fitted on *this* model
            (:func:`skipenv.envs.label_head.fit_label_head`); default: the task's shipped head, which is refused for
            any model but the embedded SmolLM2.
        segment_boundaries: what the ``K`` segments are: ``"tokens"`` (default: near-equal token runs, a cut may
            fall inside a word) or ``"sentences"`` (runs of whole sentences of the document text, never cut inside
            a word; :mod:`skipenv.tasks.units` says how short, long and unpunctuated documents are handled; needs a
            fast tokenizer). With ``evaluator=`` it is the evaluator's.
        max_input_tokens: token budget of the formatted input (integer ``>= 8``; default: the task's, 512).
        max_new_tokens: generation budget in tokens (integer ``>= 1``; default: the task's).
        device: ``"cpu"`` (default), ``"cuda"``, ``"auto"`` (of the loaded generator).
        dtype: ``"float32"`` (default), ``"bfloat16"``, ``"float16"`` (of the loaded generator).
        task_source: ``"embedded"``, ``"hub"`` or a data file path (default: the task's).
        num_examples: use only the first ``num_examples`` examples of the split (integer ``>= 1``; default all).
        cost_weight: weight of the cost in ``reward_mode="weighted"`` (finite; default 0.5). ``lam`` is its
            deprecated name.
        record_time: put wall-clock seconds in ``info["time_s"]`` (default False: infos stay reproducible).
        disk_cache: keep full-model outputs on disk under ``$SKIPENV_CACHE`` (default True).
        lru_size: in-memory (example, plan) → outcome cache entries (integer ``>= 0``, default 4096).
        generator: an already-wrapped generator (overrides ``model``). Do not pass it through ``gym.make`` kwargs
            (gymnasium deep-copies spec kwargs): use :func:`skipenv.make` or build the class directly.
        evaluator: an :class:`~skipenv.envs.evaluator.Evaluator` to share (it defines generator, task, quality,
            token_segments and max_new_tokens; its caches serve every env built on it). ``disk_cache``,
            ``lru_size`` and ``record_time`` are the evaluator's then.
        reward: a :class:`~skipenv.envs.rewards.Reward` object (instead of ``reward_mode`` / ``tau`` /
            ``cost_weight``).
        render_mode: ``"ansi"`` or ``None``; other modes warn and disable rendering (as Gymnasium's envs do).
        skip_mode: what a skipped attention / FFN sublayer adds to the residual stream: ``"identity"`` (default:
            nothing), ``"mean"`` (its mean update) or ``"linear"`` (a low-rank least-squares map of its normalised
            input); calibrated on the task's first ``calibration_documents`` (default 16) train documents, which a
            train / all split then leaves out of its episodes (:mod:`skipenv.envs.skip_modes`); charged its FLOPs.
            Decoder-only models only. With ``evaluator=`` it is the evaluator's.
        calibration_documents: train documents the calibrated modes are fitted on (integer ``>= 2``).
        linear_rank: rank of the linear bypasses (default 64 on every model; ``>= d/2`` = the full map).
        observation: observation kind of the one-shot env (:mod:`skipenv.envs.observations`; default ``"pooled"``, see
            the class docstring); the layerwise env accepts only ``"pooled"``. With ``evaluator=`` it is the
            evaluator's.

    ``gym.make`` / :func:`skipenv.make` also take ``formulation`` and ``formulation_kwargs`` (they wrap the env; see
    :func:`skipenv.envs.registration.make_env`).
"""


class SwitchDecEnv(_SwitchDecBase):
    __doc__ = """One-shot skip-decision environment (Gymnasium API).

    Each episode is one example of ``task`` (split ``split``, a seeded permutation per pass). ``reset`` returns the
    observation; ``step(action)`` runs the plan on the frozen generator and ends the episode (``step`` again
    before ``reset`` raises ``RuntimeError``).

    Observation (``observation=``; every value clipped to ±100; computing it is charged in ``cost``):

    - ``"pooled"`` (default): ``Box(-100, 100, [d + 2], float32)`` — the mean-pooled hidden states after the
      generator's first layer over the full input (``d`` = hidden size), then the input length and the document
      length, each divided by ``max_input_tokens``. Costs the first layer's FLOPs.
    - ``"segments"``: ``[d + 2 + (K + 1) d + 2 K]`` — the pooled observation, then the first-layer state pooled
      per document segment and over the rest of the prompt, segment lengths, and each segment's cosine to the
      last position (:class:`skipenv.envs.observations.SegmentObservation`). Costs the first layer.
    - ``"layer:m"``: ``[d + 2]`` — as pooled, after ``m`` layers. Costs ``m`` layers.
    - ``"attention:m"``: ``[d + 2 K + 3]`` — the pooled state after ``m`` layers, the attention mass the last 8
      input positions give each segment and the rest of the prompt in layer ``m``, segment lengths, the two
      lengths (:func:`skipenv.envs.observations.attention_features`). Costs ``m`` layers.

    - ``"units"``: ``[d + 2 + 3 K]`` — the pooled observation, then per token unit (segment) its position in the
      document, its length in tokens / ``max_input_tokens`` and its word-count cosine to the document's first
      sentence (the question for QA) (:func:`skipenv.envs.observations.unit_features`). Costs the first layer.

    Decoder-only generators only, except ``"pooled"`` and ``"units"``. Memoised per example id.

    Action: ``MultiBinary(n)``, 1 = skip (see :class:`~skipenv.envs.codec.ActionCodec`): blocks of bits for
    attention (encoder layers, then decoder layers), FFN (same), token segments. ``candidates`` restricts the
    kinds; ``layer_block`` groups consecutive layers per bit (``n = 2·ceil(L/layer_block) + K`` for a decoder-only
    model with all kinds).

    Reward: ``reward`` / ``reward_mode`` (see :mod:`skipenv.envs.rewards`). ``info`` carries quality,
    quality_full, constraint_satisfied, cost, flops_saved, flops, flops_full, flops_breakdown, plan (JSON),
    example_id, num_skipped, reward (the returned reward), formulation and reward_rule (which rule computed it; a
    formulation wrapper replaces them, see :mod:`skipenv.envs.rewards`), and ``text`` when a generation ran (``reward_vector`` in ``vector`` mode;
    ``time_s`` with ``record_time=True``). Every info is a fresh object.
""" + _ENV_ARGS_DOC + """        candidates: subset of ``("attention", "ffn", "tokens")`` (default all).
        layer_block: layers per action bit (integer ``>= 1``, default 1).

    Reset ``options``: ``{"example_id": id}`` or ``{"index": i}`` (an integer) to pick an example (evaluation).

    Raises:
        ValueError: a bad constructor argument (named in the message), an empty split, bad reset options, an
            invalid action.
        RuntimeError: ``step`` before ``reset`` or after the episode ended.
    """

    def __init__(self, task: Any = "xsum", *, candidates: Sequence[str] = CANDIDATE_KINDS, layer_block: int = 1,
                 **kwargs):
        super().__init__(task, **kwargs)
        self.codec = ActionCodec(self.plan_spec, candidates, layer_block)
        self.candidates, self.layer_block = self.codec.candidates, self.codec.layer_block
        self.action_space = self.codec.space
        from .observations import observation_size

        n = observation_size(self.observation_kind, self.generator.hidden_size, self.plan_spec.token_segments)
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(n,), dtype=np.float32)

    @property
    def action_labels(self) -> list[str]:
        """A readable name per action bit, e.g. ``"decoder.attention.4-5"``."""
        return self.codec.labels

    def action_to_plan(self, action) -> SkipPlan:
        """Expand an action (shape ``[n]``, 0/1) into a :class:`SkipPlan` (see :meth:`ActionCodec.decode`)."""
        return self.codec.decode(action)

    def plan_to_action(self, plan: SkipPlan) -> np.ndarray:
        """Best action for ``plan``: a bit is set when all plan entries it covers are skipped."""
        return self.codec.encode(plan)

    def _observation(self) -> np.ndarray:
        if self.observation_kind != "pooled":
            return self._finite(np.clip(self._evaluator.observation(self.example), -OBS_BOUND, OBS_BOUND))
        h = np.clip(self._evaluator.observation_features(self.example), -OBS_BOUND, OBS_BOUND)
        return self._finite(np.concatenate([h, self._length_features(self.example)]).astype(np.float32))

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start_episode(seed, options)
        return self._observation(), {"example_id": self.example.id}

    def step(self, action):
        self._check_can_step()
        plan = self.codec.decode(action)
        with self._evaluator._checked():  # one model-identity check for the outcome and the next observation
            o = self._evaluator.outcome(self.example, plan)
            self._last_outcome, self._episode_over = o, True
            info = self._info(o)
            return self._observation(), float(info["reward"]), True, False, info


class SwitchDecLayerwiseEnv(_SwitchDecBase):
    __doc__ = """Sequential skip-decision environment: one decision per layer, on the hidden state actually produced.

    Steps of one episode (decoder-only generators; see :class:`~skipenv.envs.codec.LayerwiseCodec`):

    1. token step — ``Discrete(4)``: keep all document tokens / skip the last 25 % / 50 % / 75 % of the token
       segments (lead truncation at segment granularity);
    2. one step per layer ``l = 0 … L−1`` — ``Discrete(4)``: 0 keep, 1 skip attention, 2 skip FFN, 3 skip both.
       Layer ``l`` is then executed for real on the prefill (with the skips chosen so far); the next observation is
       its mean-pooled output.

    Observation: ``Box(-100, 100, [d + 5], float32)`` — the pooled hidden state (at the token step: after the first
    layer over the full input; before deciding layer ``l``: after layer ``l − 1`` of the chosen path, or the
    embeddings for ``l = 0``), then input length and document length / ``max_input_tokens``, ``l / L`` (0 at the
    token step), the prefill FLOPs spent so far / the full model's, and a token-step flag (1 only at the token
    step). Reward is 0 until the last step, then the episode's reward (same ``info`` as :class:`SwitchDecEnv`).
""" + _ENV_ARGS_DOC + """
    Raises:
        NotImplementedError: an encoder-decoder generator (its layerwise stepping is not implemented).
        ValueError / RuntimeError: as :class:`SwitchDecEnv`.
    """

    TOKEN_FRACTIONS = LayerwiseCodec.TOKEN_FRACTIONS

    def __init__(self, task: Any = "xsum", **kwargs):
        super().__init__(task, **kwargs)
        self.codec = LayerwiseCodec(self.plan_spec)
        self.num_layers = self.codec.num_layers
        self.action_space = self.codec.space
        d = self.generator.hidden_size
        self.observation_space = gym.spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(d + 5,), dtype=np.float32)
        self._stepper = None

    def plan_to_actions(self, plan: SkipPlan) -> list[int]:
        """The ``L + 1`` step actions that produce ``plan`` (see :meth:`LayerwiseCodec.encode`)."""
        return self.codec.encode(plan)

    def _obs(self, pooled: np.ndarray) -> np.ndarray:
        token_step = self._layer < 0
        spent = 0.0 if token_step else self._spent_fraction()
        extra = [max(self._layer, 0) / self.num_layers, spent, float(token_step)]
        h = np.clip(pooled, -OBS_BOUND, OBS_BOUND)
        return self._finite(np.concatenate([h, self._length_features(self.example),
                                            np.array(extra, np.float32)]).astype(np.float32))

    def _spent_fraction(self) -> float:
        plan = self.codec.plan(self._tokens, self._attn, self._ffn)
        prompt = self._evaluator.prompt(self.example)
        br = self.generator.flops(plan, prompt, 0, bypasses=self._evaluator.bypasses)  # a bypass's FLOPs are spent
        done = sum(v for k, v in br.per_candidate.items()
                   if k.startswith("decoder.") and int(k.rsplit(".", 1)[1]) < self._layer)
        full = self.generator.flops(None, prompt, 0).total
        return float(done / full)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        self._start_episode(seed, options)
        self._layer = -1
        self._attn = [True] * self.num_layers  # undecided layers: marked skipped while stepping
        self._ffn = [True] * self.num_layers
        self._tokens = (False,) * self.plan_spec.token_segments
        self._stepper = None
        return self._obs(self._evaluator.observation_features(self.example)), {"example_id": self.example.id}

    def step(self, action):
        self._check_can_step()
        a = self.codec.decode_step(action)
        if self._layer < 0:
            self._tokens = self.codec.token_flags(a)
            self._stepper = self.generator.layer_stepper(self._evaluator.prompt(self.example), self._tokens)
            self._layer = 0
            return self._obs(self._stepper.pooled()), 0.0, False, False, {"example_id": self.example.id}
        l = self._layer
        self._attn[l], self._ffn[l] = self.codec.layer_flags(a)
        with self.generator.bypassing(self._evaluator.bypasses):  # the hidden state the plan's run produces
            pooled = self._stepper.step(l, skip_attention=self._attn[l], skip_ffn=self._ffn[l])
        self._layer += 1
        if self._layer < self.num_layers:
            return self._obs(pooled), 0.0, False, False, {"example_id": self.example.id}
        o = self._evaluator.outcome(self.example, self.codec.plan(self._tokens, self._attn, self._ffn))
        self._last_outcome, self._episode_over = o, True
        self._stepper = None
        info = self._info(o)
        return self._obs(pooled), float(info["reward"]), True, False, info
