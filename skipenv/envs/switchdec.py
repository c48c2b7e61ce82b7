"""SwitchDec environments: one NLP input per episode; the agent picks which sublayers / token segments of a
frozen generator to skip; the reward ranks quality first and FLOPs second.

- :class:`SwitchDecEnv` — one-shot (as in Switchable Decision, ICML 2024): observe the input, emit the whole
  plan as one ``MultiBinary`` action, get the reward; ``terminated=True`` after one step.
- :class:`SwitchDecLayerwiseEnv` — sequential MDP: one step for the token segments, then one ``Discrete(4)``
  step per layer (keep / skip attention / skip FFN / skip both) given the hidden state actually produced so far.
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import gymnasium as gym
import numpy as np
from gymnasium import spaces

from ..plan import SkipPlan
from .evaluator import EpisodeEvaluator

__all__ = ["SwitchDecEnv", "SwitchDecLayerwiseEnv", "CANDIDATE_KINDS"]

CANDIDATE_KINDS = ("attention", "ffn", "tokens")
#: Observation features are clipped to ``[-OBS_BOUND, OBS_BOUND]`` so the Box is bounded.
OBS_BOUND = 100.0


_GENERATORS: dict = {}


def shared_generator(model: str, device: str = "cpu", dtype: str = "float32"):
    """Load a generator once per process and share it between environments (one model copy serving N envs,
    e.g. inside a ``SyncVectorEnv``)."""
    from ..loading import load_generator

    key = (str(model), str(device), str(dtype))
    if key not in _GENERATORS:
        _GENERATORS[key] = load_generator(model, device=device, dtype=dtype)
    return _GENERATORS[key]


def _build(generator, task, model, device, dtype, task_source, max_input_tokens):
    """Resolve generator / task names into objects (lazily imported: keeps ``import skipenv`` light)."""
    from ..tasks import make_task

    if generator is None:
        generator = shared_generator(model, device, dtype)
    if isinstance(task, str):
        kw = {} if max_input_tokens is None else {"max_input_tokens": int(max_input_tokens)}
        task = make_task(task, source=task_source, **kw)
    return generator, task


class _SwitchDecBase(gym.Env):
    metadata = {"render_modes": ["ansi"], "render_fps": 1}

    def __init__(self, task: Any = "xsum", *, model: str = "smollm2-135m-instruct", split: str = "train",
                 reward_mode: str = "lexicographic", tau: float | None = None, quality: str = "agreement",
                 token_segments: int = 8, max_input_tokens: int | None = None, max_new_tokens: int | None = None,
                 device: str = "cpu", dtype: str = "float32", task_source: str | None = None,
                 num_examples: int | None = None, lam: float = 0.5, record_time: bool = False,
                 disk_cache: bool = True, generator=None, render_mode: str | None = None):
        super().__init__()
        if render_mode is not None and render_mode not in self.metadata["render_modes"]:
            raise ValueError(f"render_mode must be one of {self.metadata['render_modes']} or None")
        self.render_mode = render_mode
        self.generator, self.task = _build(generator, task, model, device, dtype, task_source, max_input_tokens)
        self.split = split
        self.examples = list(self.task.examples(split))
        if num_examples is not None:
            self.examples = self.examples[: int(num_examples)]
        if not self.examples:
            raise ValueError(f"task {self.task.name!r} has no examples in split {split!r}")
        self._by_id = {ex.id: ex for ex in self.examples}
        self.evaluator = EpisodeEvaluator(
            self.generator, self.task, quality=quality, reward_mode=reward_mode, tau=tau, lam=lam,
            token_segments=token_segments, max_new_tokens=max_new_tokens, disk_cache=disk_cache,
            record_time=record_time)
        self.plan_spec = self.evaluator.spec
        self.max_input_tokens = self.task.max_input_tokens
        self._order: np.ndarray | None = None
        self._cursor = 0
        self.example = None
        self._last_info: dict | None = None

    # ------------------------------------------------------------------ example order (seeded)
    def _next_example(self, options: dict | None):
        options = options or {}
        if "example_id" in options:
            ex_id = str(options["example_id"])
            if ex_id not in self._by_id:
                raise ValueError(f"example_id {ex_id!r} is not in split {self.split!r} of {self.task.name!r}")
            return self._by_id[ex_id]
        if "index" in options:
            i = int(options["index"])
            if not 0 <= i < len(self.examples):
                raise ValueError(f"index {i} out of range: split {self.split!r} has {len(self.examples)} examples")
            return self.examples[i]
        if self._order is None or self._cursor >= len(self._order):
            self._order = self.np_random.permutation(len(self.examples))
            self._cursor = 0
        ex = self.examples[int(self._order[self._cursor])]
        self._cursor += 1
        return ex

    def _length_features(self, example) -> np.ndarray:
        p = self.evaluator.prompt(example)
        return np.array([len(p) / self.max_input_tokens, p.num_document_tokens / self.max_input_tokens],
                        dtype=np.float32)

    def render(self):
        if self.render_mode != "ansi" or self._last_info is None:
            return None
        i = self._last_info
        return (f"example {i['example_id']}: quality {i['quality']:.3f} (full {i['quality_full']:.3f}), "
                f"cost {i['cost']:.3f}, reward {i['reward']:.3f}\nplan {SkipPlan.from_json(i['plan'])!r}"
                + (f"\noutput: {i['text']}" if "text" in i else ""))


class SwitchDecEnv(_SwitchDecBase):
    """One-shot skip-decision environment (Gymnasium API).

    Each episode is one example of ``task`` (split ``split``, a seeded permutation per pass). ``reset`` returns the
    observation; ``step(action)`` runs the plan on the frozen generator and ends the episode.

    Observation: ``Box(-100, 100, [d + 2], float32)`` — the mean-pooled hidden states after the generator's first
    layer over the full input (``d`` = hidden size, clipped to ±100), then the input length and the document length,
    each divided by ``max_input_tokens``. Computing it costs the first layer's FLOPs, charged in ``cost``.

    Action: ``MultiBinary(n)``, 1 = skip; blocks of bits in this order: attention (encoder layers, then decoder
    layers), FFN (same), token segments. ``candidates`` restricts the kinds (others are never skipped);
    ``layer_block`` groups consecutive layers so that one bit skips the sublayer in ``layer_block`` layers
    (``n = 2·ceil(L/layer_block) + K`` for a decoder-only model with all kinds).

    Reward: see :mod:`skipenv.rewards` and ``reward_mode``. ``info`` carries quality, quality_full,
    constraint_satisfied, cost, flops_saved, flops, flops_full, flops_breakdown, plan (JSON), example_id, num_skipped,
    reward, and ``text`` when a generation ran (``reward_vector`` in ``vector`` mode; ``time_s`` with
    ``record_time=True``).

    Args:
        task: task name (``"xsum"``, ``"disflqa"``, ``"rotten_tomatoes"``, … see :mod:`skipenv.tasks`) or a Task.
        model: generator name or path (default: the embedded SmolLM2-135M-Instruct).
        candidates: subset of ``("attention", "ffn", "tokens")``.
        layer_block: layers per action bit (``>= 1``).
        generator: an already-wrapped generator (overrides ``model``; not for ``gym.make`` kwargs in registries).
        (other kwargs: see :class:`~skipenv.envs.evaluator.EpisodeEvaluator`.)

    Reset ``options``: ``{"example_id": id}`` or ``{"index": i}`` to pick an example (evaluation).

    Raises:
        ValueError: unknown candidate kind, ``layer_block < 1``, an empty split, an invalid action.
    """

    def __init__(self, task: Any = "xsum", *, candidates: Sequence[str] = CANDIDATE_KINDS, layer_block: int = 1,
                 **kwargs):
        super().__init__(task, **kwargs)
        bad = [c for c in candidates if c not in CANDIDATE_KINDS]
        if bad or not candidates:
            raise ValueError(f"unknown candidate kinds {bad}; choose a non-empty subset of {CANDIDATE_KINDS}")
        if int(layer_block) < 1:
            raise ValueError(f"layer_block must be >= 1, got {layer_block}")
        self.candidates, self.layer_block = tuple(candidates), int(layer_block)
        self._groups = self._make_groups()
        self.action_space = spaces.MultiBinary(len(self._groups))
        d = self.generator.hidden_size
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(d + 2,), dtype=np.float32)

    def _make_groups(self) -> list[list[int]]:
        """For each action bit, the indices into the flat plan vector it sets (see :mod:`skipenv.plan`)."""
        s = self.plan_spec
        le, ld = s.num_encoder_layers, s.num_decoder_layers
        offsets = {"encoder.attention": 0, "encoder.ffn": le, "decoder.attention": 2 * le,
                   "decoder.ffn": 2 * le + ld}
        groups: list[list[int]] = []
        for kind in ("attention", "ffn"):
            if kind not in self.candidates:
                continue
            for stack, n in (("encoder", le), ("decoder", ld)):
                for start in range(0, n, self.layer_block):
                    groups.append([offsets[f"{stack}.{kind}"] + i for i in range(start, min(start + self.layer_block, n))])
        if "tokens" in self.candidates:
            groups += [[2 * le + 2 * ld + k] for k in range(s.token_segments)]
        return groups

    @property
    def action_labels(self) -> list[str]:
        """A readable name per action bit, e.g. ``"decoder.attention.4-5"``."""
        names = self.plan_spec.action_labels()
        out = []
        for g in self._groups:
            first, last = names[g[0]], names[g[-1]]
            out.append(first if len(g) == 1 else f"{first}-{last.rsplit('.', 1)[1]}")
        return out

    def action_to_plan(self, action) -> SkipPlan:
        """Expand an action (shape ``[n]``, 0/1) into a :class:`SkipPlan`.

        Raises:
            ValueError: wrong shape or values other than 0/1 (the message gives the expected shape).
        """
        a = np.asarray(action)
        if a.shape != (len(self._groups),):
            raise ValueError(f"action must have shape ({len(self._groups)},) for this env "
                             f"(MultiBinary({len(self._groups)})), got shape {a.shape}")
        if not np.all((a == 0) | (a == 1)):
            raise ValueError(f"action entries must be 0 or 1, got {np.unique(a).tolist()}")
        flat = np.zeros(self.plan_spec.action_size, dtype=np.int8)
        for bit, g in zip(a.astype(bool), self._groups):
            if bit:
                flat[g] = 1
        return SkipPlan.from_action(flat, self.plan_spec)

    def plan_to_action(self, plan: SkipPlan) -> np.ndarray:
        """Best action for ``plan``: a bit is set when all plan entries it covers are skipped."""
        flat = plan.to_action()
        return np.array([int(flat[g].all()) for g in self._groups], dtype=np.int8)

    def _observation(self) -> np.ndarray:
        h = np.clip(self.evaluator.observation_features(self.example), -OBS_BOUND, OBS_BOUND)
        return np.concatenate([h, self._length_features(self.example)]).astype(np.float32)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._order, self._cursor = None, 0
        self.example = self._next_example(options)
        self._last_info = None
        return self._observation(), {"example_id": self.example.id}

    def step(self, action):
        if self.example is None:
            raise RuntimeError("call reset() before step()")
        info = self.evaluator.evaluate(self.example, self.action_to_plan(action))
        self._last_info = info
        return self._observation(), float(info["reward"]), True, False, info


class SwitchDecLayerwiseEnv(_SwitchDecBase):
    """Sequential skip-decision environment: one decision per layer, on the hidden state actually produced.

    Steps of one episode (decoder-only generators):

    1. token step — ``Discrete(4)``: keep all document tokens / skip the last 25 % / 50 % / 75 % of the token
       segments (lead truncation at segment granularity);
    2. one step per layer ``l = 0 … L−1`` — ``Discrete(4)``: 0 keep, 1 skip attention, 2 skip FFN, 3 skip both.
       Layer ``l`` is then executed for real on the prefill (with the skips chosen so far); the next observation is
       its mean-pooled output.

    Observation: ``Box(-100, 100, [d + 5], float32)`` — the pooled hidden state (at the token step: after the first
    layer over the full input; before deciding layer ``l``: after layer ``l − 1`` of the chosen path, or the
    embeddings for ``l = 0``), then input length and document length / ``max_input_tokens``, ``l / L`` (0 at the
    token step), the prefill FLOPs spent so far / the full model's, and a token-step flag (1 only at the token step). Reward is 0 until the last step, then the
    episode's lexicographic reward (same ``info`` as :class:`SwitchDecEnv`).

    Raises:
        NotImplementedError: an encoder-decoder generator (its layerwise stepping is not implemented).
    """

    TOKEN_FRACTIONS = (0.0, 0.25, 0.5, 0.75)

    def __init__(self, task: Any = "xsum", **kwargs):
        super().__init__(task, **kwargs)
        if self.plan_spec.is_encoder_decoder:
            raise NotImplementedError("SwitchDecLayerwiseEnv supports decoder-only generators (Llama, GPT-2); use "
                                      "SwitchDecEnv for encoder-decoder models")
        self.num_layers = self.plan_spec.num_decoder_layers
        self.action_space = spaces.Discrete(4)
        d = self.generator.hidden_size
        self.observation_space = spaces.Box(-OBS_BOUND, OBS_BOUND, shape=(d + 5,), dtype=np.float32)
        self._stepper = None

    def _obs(self, pooled: np.ndarray) -> np.ndarray:
        token_step = self._layer < 0
        spent = 0.0 if token_step else self._spent_fraction()
        extra = [max(self._layer, 0) / self.num_layers, spent, float(token_step)]
        h = np.clip(pooled, -OBS_BOUND, OBS_BOUND)
        return np.concatenate([h, self._length_features(self.example), np.array(extra, np.float32)]).astype(np.float32)

    def _spent_fraction(self) -> float:
        plan = SkipPlan(self.plan_spec, (), (), tuple(self._attn), tuple(self._ffn), self._tokens)
        br = self.generator.flops(plan, self.evaluator.prompt(self.example), 0)
        done = sum(v for k, v in br.per_candidate.items()
                   if k.startswith("decoder.") and int(k.rsplit(".", 1)[1]) < self._layer)
        full = self.generator.flops(None, self.evaluator.prompt(self.example), 0).total
        return float(done / full)

    def reset(self, *, seed: int | None = None, options: dict | None = None):
        super().reset(seed=seed)
        if seed is not None:
            self._order, self._cursor = None, 0
        self.example = self._next_example(options)
        self._layer = -1
        self._attn = [True] * self.num_layers  # undecided layers: marked skipped while stepping
        self._ffn = [True] * self.num_layers
        self._tokens = (False,) * self.plan_spec.token_segments
        self._stepper = None
        self._last_info = None
        return self._obs(self.evaluator.observation_features(self.example)), {"example_id": self.example.id}

    def step(self, action):
        if self.example is None:
            raise RuntimeError("call reset() before step()")
        if self._layer >= self.num_layers:
            raise RuntimeError("the episode is over (every layer has been decided); call reset()")
        if np.ndim(action) != 0 or not float(action).is_integer() or not 0 <= int(action) <= 3:
            raise ValueError(f"action must be an integer in [0, 3] (Discrete(4)), got {action!r}")
        a = int(action)
        if self._layer < 0:
            k = self.plan_spec.token_segments
            n_skip = int(math.floor(self.TOKEN_FRACTIONS[a] * k))
            self._tokens = tuple([False] * (k - n_skip) + [True] * n_skip)
            self._stepper = self.generator.layer_stepper(self.evaluator.prompt(self.example), self._tokens)
            self._layer = 0
            return self._obs(self._stepper.pooled()), 0.0, False, False, {"example_id": self.example.id}
        l = self._layer
        self._attn[l], self._ffn[l] = a in (1, 3), a in (2, 3)
        pooled = self._stepper.step(l, skip_attention=self._attn[l], skip_ffn=self._ffn[l])
        self._layer += 1
        if self._layer < self.num_layers:
            return self._obs(pooled), 0.0, False, False, {"example_id": self.example.id}
        plan = SkipPlan(self.plan_spec, (), (), tuple(self._attn), tuple(self._ffn), self._tokens)
        info = self.evaluator.evaluate(self.example, plan)
        self._last_info = info
        return self._obs(pooled), float(info["reward"]), True, False, info
