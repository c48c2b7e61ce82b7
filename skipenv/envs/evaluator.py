"""Evaluate plans: formatted inputs, observations, the full model's output per input, and the tau- and
reward-independent :class:`Outcome` of running a plan — with the caches that make RL affordable on a CPU.

Data flow of one step: action → :mod:`~skipenv.envs.codec` → plan → :class:`Evaluator` (→ quality signal of
:mod:`~skipenv.envs.quality`) → :class:`Outcome` (cached) → :class:`~skipenv.envs.rewards.Reward` → reward, info.

Words: the *gold target* is the dataset's answer for an example; the *full output* is the full model's greedy
output for it (:class:`FullOutput`).

Why this module is long: the Evaluator, its outcome cache key and the batched paths (prefetch,
``outcomes_together``) must agree on one key and one FLOPs accounting; keeping them together keeps that visible.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import contextlib
import math
import threading
import time
from dataclasses import dataclass
from typing import Any, Iterator, Mapping

import numpy as np

from ..inputs import PromptInput
from ..plan import PlanError, SkipPlan
from .cache import LRU, DiskCache, identity_scope, identity_token, model_fingerprint
from .quality import DEFAULT_TAU, QUALITY_MODES, QualitySignal, get_signal

__all__ = ["Evaluator", "Outcome", "FullOutput", "QUALITY_MODES", "DEFAULT_TAU",
           "model_fingerprint", "STOP_RULE_VERSION"]

#: Version of the generation stop rule (EOS or ``Task.output_complete``); part of the full-output cache key.
STOP_RULE_VERSION = 2


@dataclass(frozen=True)
class FullOutput:
    """The full model's greedy output for one input (what every plan is compared with).

    Attributes:
        tokens: generated token ids, shape ``[num_generated]`` (EOS included when produced; at least one token).
        text: the decoded output.
        prompt_length: tokens of the formatted input.
        target_score: the task metric of ``text`` against the gold target (fraction in [0, 1]).
        target_logprob: mean log-probability of the tokenised gold target under the full model (nats / token);
            ``None`` until a signal needs it.
        output_probability: ``mean_t p_full(tokens_t | input, tokens_<t)``, the full model's mean probability of
            its own output (a fraction in [0, 1]; the ``quality_full`` of the ``"probability"`` signal); ``None``
            until a signal needs it.

    On disk both optional values are stored next to the tokens they were computed from, in the entry keyed by the
    input, generation budget, stop rule, task, EOS and target (:meth:`Evaluator._disk_key`) under the model
    fingerprint: an entry written before a field existed lacks it and reads as ``None`` (computed and stored on
    first use), so no entry can serve a value computed for other tokens or another model.
    """

    tokens: tuple[int, ...]
    text: str
    prompt_length: int
    target_score: float
    target_logprob: float | None = None
    output_probability: float | None = None

    @property
    def num_generated(self) -> int:
        return len(self.tokens)

    def to_json(self) -> dict:
        return {"tokens": list(self.tokens), "text": self.text, "prompt_length": self.prompt_length,
                "target_score": self.target_score, "target_logprob": self.target_logprob,
                "output_probability": self.output_probability}

    @classmethod
    def from_json(cls, d: dict) -> "FullOutput":
        return cls(tuple(int(t) for t in d["tokens"]), d["text"], int(d["prompt_length"]), float(d["target_score"]),
                   None if d.get("target_logprob") is None else float(d["target_logprob"]),
                   None if d.get("output_probability") is None else float(d["output_probability"]))


def _full_output_problem(value, vocab_size: int | None, prompt_length: int) -> str | None:
    """Schema check of a stored :class:`FullOutput` (``None`` = fine, else the reason)."""
    if not isinstance(value, dict):
        return f"expected an object, got {type(value).__name__}"
    tokens = value.get("tokens")
    if not isinstance(tokens, list) or not tokens:
        return "'tokens' must be a non-empty list"
    for t in tokens:
        if isinstance(t, bool) or not isinstance(t, int) or t < 0 or (vocab_size is not None and t >= vocab_size):
            return f"bad token id {t!r}"
    if not isinstance(value.get("text"), str):
        return "'text' must be a string"
    if value.get("prompt_length") != prompt_length:
        return f"'prompt_length' {value.get('prompt_length')!r} differs from the input's {prompt_length}"
    for k in ("target_score", "target_logprob", "output_probability"):
        v = value.get(k)
        if v is None and k != "target_score":
            continue
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not math.isfinite(v):
            return f"{k!r} must be a finite number, got {v!r}"
    p = value.get("output_probability")
    if p is not None and not 0.0 <= p <= 1.0 + 1e-6:
        return f"'output_probability' must lie in [0, 1], got {p!r}"
    return None


class FrozenMapping(Mapping):
    """A read-only, picklable mapping (what an :class:`Outcome` holds instead of a dict)."""

    __slots__ = ("_d",)

    def __init__(self, data: Mapping):
        object.__setattr__(self, "_d", dict(data))

    def __getitem__(self, key):
        return self._d[key]

    def __iter__(self) -> Iterator:
        return iter(self._d)

    def __len__(self) -> int:
        return len(self._d)

    def __getstate__(self):
        return self._d

    def __setstate__(self, state):
        object.__setattr__(self, "_d", state)

    def __repr__(self) -> str:
        return f"FrozenMapping({self._d!r})"


@dataclass(frozen=True)
class Outcome:
    """The result of running one plan on one input: independent of ``tau`` and of the reward rule (so it is what the
    evaluator caches, and one outcome can be rewarded under any rule).

    Attributes:
        example_id: id of the input.
        plan: the plan that ran.
        quality, quality_full: the quality signal's value for the plan and for the full model.
        cost: ``flops / flops_full`` (observation included).
        flops: FLOPs of the plan's run plus the observation.
        flops_full: FLOPs of the full model's run (no observation).
        flops_breakdown: read-only mapping: ``total``, ``prefill``, ``decoding``, ``observation`` and
            ``per_candidate`` (see :class:`skipenv.generators.flops.FlopsBreakdown`).
        num_generated: output tokens the cost was computed for.
        text: the plan's output when a generation ran, else ``None``.
        time_s: wall-clock seconds of the evaluation (``record_time=True`` only).
    """

    example_id: str
    plan: SkipPlan
    quality: float
    quality_full: float
    cost: float
    flops: int
    flops_full: int
    flops_breakdown: Mapping[str, Any]
    num_generated: int
    text: str | None = None
    time_s: float | None = None

    @property
    def flops_saved(self) -> float:
        return 1.0 - self.cost

    def to_info(self) -> dict[str, Any]:
        """A fresh ``info`` dict (no object shared with the cache): example_id, quality, quality_full, cost,
        flops_saved, flops, flops_full, flops_breakdown (dict), plan (JSON), num_skipped, and text / time_s when
        present."""
        fb = dict(self.flops_breakdown)
        fb["per_candidate"] = dict(fb["per_candidate"])
        info: dict[str, Any] = {
            "example_id": self.example_id, "quality": float(self.quality), "quality_full": float(self.quality_full),
            "cost": float(self.cost), "flops_saved": float(self.flops_saved), "flops": int(self.flops),
            "flops_full": int(self.flops_full), "flops_breakdown": fb, "plan": self.plan.to_json(),
            "num_skipped": self.plan.num_skipped,
        }
        if self.text is not None:
            info["text"] = self.text
        if self.time_s is not None:
            info["time_s"] = self.time_s
        return info


class Evaluator:
    """Runs plans on examples of one task with one generator and returns :class:`Outcome` objects (cached).

    One evaluator can serve several environments (one-shot and layerwise, several rewards and ``tau``): build them
    with ``SwitchDecEnv(evaluator=...)`` / ``skipenv.make(env_id, evaluator=...)``.

    Args:
        generator: the wrapped frozen model (:class:`~skipenv.generators.SkippableGenerator`).
        task: a :class:`skipenv.tasks.Task`.
        quality: a :class:`~skipenv.envs.quality.QualitySignal` or its name (``"agreement"``, ``"reference"`` /
            ``"rouge"``, ``"fidelity"``, ``"likelihood"``, ``"probability"``).
        token_segments: ``K`` document segments (``>= 0``).
        max_new_tokens: generation budget in tokens (``>= 1``; default: the task's).
        disk_cache: keep full outputs on disk (``$SKIPENV_CACHE/full/<model fingerprint>``).
        cache_root: folder of the disk cache (default ``$SKIPENV_CACHE``).
        lru_size: entries of the in-memory (example, plan) → :class:`Outcome` cache (``>= 0``; 0 disables it).
        record_time: put wall-clock seconds in the outcome (off by default: makes infos irreproducible).
        reuse: start each plan from the full model's stored computation on the input (decoder-only: KV cache and
            residual stream of the prefix shared with the full input, see :mod:`skipenv.generators.reuse`;
            encoder-decoder: the encoder output): same outcomes, several times faster for plans that remove late
            tokens or skip late sublayers; FLOPs are still charged as if the plan ran from scratch. Attaches a
            :class:`~skipenv.generators.reuse.PrefixStore` (2 GiB cap) to the generator if it has none. ``False``
            runs every plan from scratch; ``SKIPENV_REUSE=0`` turns the default off process-wide.
        observation: the agent's observation kind (:mod:`skipenv.envs.observations`: ``"pooled"`` (default),
            ``"segments"``, ``"layer:m"``, ``"attention:m"``). Its FLOPs (:func:`skipenv.envs.observations.
            observation_flops`) are charged in every outcome's ``cost``, so it belongs to the evaluator (and keys
            its outcome cache); :meth:`observation` computes it.
        segment_boundaries: what the ``K`` token segments are: ``"tokens"`` (default) ``K`` near-equal token runs
            of the document, ``"sentences"`` ``K`` runs of whole sentences (:mod:`skipenv.tasks.units`; needs a fast
            tokenizer). Part of the outcome cache key (the same plan removes other tokens); the full outputs (no
            token removed) are the same under both.
        skip_mode: what a skipped attention / FFN sublayer adds to the residual stream
            (:mod:`skipenv.generators.bypass`): ``"identity"`` (default: nothing, the paper's skip), ``"mean"`` (its
            mean update over calibration tokens) or ``"linear"`` (a low-rank least-squares map of its normalised
            input). Calibrated modes are computed once per (model fingerprint, task, settings) on the task's first
            ``calibration_documents`` train documents and cached on disk (:mod:`skipenv.envs.skip_modes`); their
            digest is part of the outcome cache key and their FLOPs are charged in every outcome's ``cost``. The
            full outputs (nothing skipped) do not depend on the mode, so their disk key does not name it.
        calibration_documents: train documents the bypasses are calibrated on (default 16).
        linear_rank: rank of the linear bypasses (default
            :data:`~skipenv.envs.skip_modes.DEFAULT_LINEAR_RANK`; ``>= d/2`` = the full map; above the hidden
            size ``d``: ``SkipModeError``).
        bypasses: precomputed :class:`~skipenv.generators.bypass.Bypasses` of ``skip_mode`` (checked against
            the model and task instead of calibrating).

    Raises:
        ValueError: an unknown quality or observation kind (or one the generator cannot compute),
            ``max_new_tokens < 1``, ``token_segments < 0``, ``lru_size < 0`` or an unknown ``segment_boundaries``.
        ~skipenv.generators.bypass.SkipModeError: an unknown ``skip_mode``, a calibrated mode on an
            encoder-decoder model, ``bypasses`` of another mode, model or task.
    """

    def __init__(self, generator, task, *, quality: str | QualitySignal = "agreement", token_segments: int = 8,
                 max_new_tokens: int | None = None, disk_cache: bool = True, cache_root=None, lru_size: int = 4096,
                 record_time: bool = False, reuse: bool | None = None, observation: str = "pooled",
                 segment_boundaries: str = "tokens", skip_mode: str = "identity",
                 calibration_documents: int | None = None, linear_rank: int | None = None, bypasses=None):
        from ..generators.bypass import check_skip_mode
        from ..tasks.units import check_segment_boundaries
        from .observations import check_observation_kind

        self._segment_boundaries = check_segment_boundaries(segment_boundaries)
        self._skip_mode = check_skip_mode(skip_mode)

        self.signal = get_signal(quality)
        if reuse is None:
            from ..generators.reuse import reuse_enabled_by_default

            reuse = reuse_enabled_by_default()
        if not isinstance(reuse, bool):
            raise ValueError(f"reuse must be True, False or None (= unless SKIPENV_REUSE=0), got {reuse!r}")
        self.reuse = reuse
        if reuse and hasattr(generator, "prefix_store") and generator.prefix_store is None:
            from ..generators.reuse import PrefixStore

            generator.prefix_store = PrefixStore()
        for name, v, low in (("token_segments", token_segments, 0), ("lru_size", lru_size, 0),
                             ("max_new_tokens", max_new_tokens, 1)):
            if v is None and name == "max_new_tokens":
                continue
            if isinstance(v, bool) or not isinstance(v, (int, np.integer)) or v < low:
                raise ValueError(f"{name} must be an integer >= {low}, got {v!r}")
        self.generator, self.task = generator, task
        self._check_label_scoring()
        self._check_span_head_scoring(generator)
        self._observation_kind = check_observation_kind(observation, generator)
        self.spec = generator.plan_spec(int(token_segments))
        self.max_new_tokens = int(max_new_tokens if max_new_tokens is not None else task.max_new_tokens)
        if self.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {self.max_new_tokens} (from the task)")
        self.record_time = bool(record_time)
        self._fingerprint = model_fingerprint(generator)
        self._token = identity_token(generator)  # fingerprint and change epoch: the key of the memos
        self._cache_root, self._disk_cache = cache_root, bool(disk_cache)
        self._identity_lock = threading.Lock()
        self._vocab_size = getattr(generator.config, "vocab_size", None)
        self.disk = DiskCache(f"full/{self._fingerprint}", root=cache_root) if disk_cache else None
        if getattr(task, "label_head_scoring", False):  # a head fitted on another model's features: refuse before any use
            task.head.check_model(self._fingerprint, "the evaluator's model")
        self.identity_changes = 0
        self._prompts: dict[str, PromptInput] = {}
        self._observations: dict[str, np.ndarray] = {}
        self._env_observations: dict[str, np.ndarray] = {}
        self._full: dict[str, FullOutput] = {}
        self.outcomes = LRU(lru_size)
        self._prescored: dict = {}  # (example id, target, plan) -> ScoreOutput, filled by outcomes_together
        self.bypasses = self._skip_mode_bypasses(bypasses, calibration_documents, linear_rank)

    def _skip_mode_bypasses(self, bypasses, documents, rank):
        """The calibrated bypasses of :attr:`skip_mode` (``None`` for identity); see the ``skip_mode`` argument."""
        from ..generators.bypass import SkipModeError
        from .skip_modes import DEFAULT_CALIBRATION_DOCUMENTS, check_bypasses_for, load_or_calibrate

        if bypasses is not None:
            if bypasses.mode != self._skip_mode:
                raise SkipModeError(f"bypasses of skip mode {bypasses.mode!r} given with skip_mode="
                                    f"{self._skip_mode!r}: pass skip_mode={bypasses.mode!r}")
            check_bypasses_for(bypasses, self.generator, self.task)
            return bypasses
        if self._skip_mode == "identity":
            if documents is not None or rank is not None:
                raise SkipModeError(f"calibration_documents={documents!r} / linear_rank={rank!r} set with "
                                    f"skip_mode='identity' (which needs no calibration): pass skip_mode='mean' or "
                                    f"'linear', or drop them (an id that registers them, such as SwitchDec-XSum-v2: "
                                    f"pass calibration_documents=None, linear_rank=None)")
            return None
        if rank is not None and self._skip_mode != "linear":
            raise SkipModeError(f"linear_rank is a setting of skip_mode='linear', not {self._skip_mode!r}: drop it "
                                f"(an id that registers it, such as SwitchDec-XSum-v2: pass linear_rank=None)")
        return load_or_calibrate(self.generator, self.task, self._skip_mode,
                                 documents=DEFAULT_CALIBRATION_DOCUMENTS if documents is None else documents,
                                 rank=rank, prompt=self.prompt, cache_root=self._cache_root,
                                 disk_cache=self._disk_cache)

    @property
    def skip_mode(self) -> str:
        """``"identity"``, ``"mean"`` or ``"linear"`` (read-only; see the class docstring)."""
        return getattr(self, "_skip_mode", "identity")  # (evaluators pickled before it existed: identity)

    @property
    def skip_mode_tag(self) -> str:
        """``"identity"`` or ``"<mode>:<calibration digest>"``: what records and tables keep of the skip mode."""
        from .skip_modes import skip_mode_tag

        return skip_mode_tag(getattr(self, "bypasses", None))

    @property
    def calibration_ids(self) -> tuple[str, ...]:
        """Ids of the train documents the bypasses were calibrated on (``()`` for identity); an env leaves them out
        of its episodes."""
        from .skip_modes import calibration_ids

        return calibration_ids(getattr(self, "bypasses", None))

    @property
    def label_scoring(self) -> bool:
        """Whether the task reads its label by verbalizer scoring (one forward pass, no generation; see
        :class:`skipenv.tasks.ClassificationTask`): then the full output is the chosen verbalizer's one token."""
        return bool(getattr(self.task, "label_scoring", False))

    @property
    def span_scoring(self) -> bool:
        """Whether the task decodes its answer as a passage span (extractive QA with ``scoring="pointer"``,
        :func:`skipenv.envs.spans.pointer_decode`) instead of generating freely, for the full model and every plan."""
        return bool(getattr(self.task, "span_scoring", False))

    @property
    def span_head_scoring(self) -> bool:
        """Whether the task reads its answer with a span head (``QATask(scoring="head")``: one forward pass, no
        decoding; :func:`skipenv.envs.span_head.head_decode`)."""
        return bool(getattr(self.task, "span_head_scoring", False))

    def _check_span_head_scoring(self, generator) -> None:
        """A span-head task needs a generating signal (the head's span is the output; there are no decoded tokens
        to teacher-force), a decoder-only model, and a head fitted on this very model (fingerprint)."""
        if not self.span_head_scoring:
            return
        if not self.signal.generates:
            raise ValueError(f"task {self.task.name!r} reads its answer with a span head (no decoding); quality "
                             f"{self.signal.name!r} teacher-forces decoded tokens — use 'fidelity' (token F1 to the "
                             f"full model's span) or 'reference' (SQuAD F1 to the gold answers)")
        if generator.num_encoder_layers:
            raise ValueError(f"task {self.task.name!r}: span heads read a decoder-only model's passage states")
        from .cache import model_fingerprint

        self.task.load_span_head().check_model(model_fingerprint(generator))

    def head_flops(self, example, plan: SkipPlan | None) -> int:
        """FLOPs of the span head on ``example`` under ``plan`` (0 unless :attr:`span_head_scoring`): scoring the
        passage tokens the plan keeps and choosing the span (:meth:`skipenv.tasks.span_head.SpanHead.flops`)."""
        if not self.span_head_scoring:
            return 0
        prompt = self.prompt(example)
        a, b = prompt.document_span
        tokens = plan.tokens if plan is not None else (False,) * self.spec.token_segments
        kept = sum(1 for p in prompt.kept_positions(tokens) if a <= p < b)
        return self.task.load_span_head().flops(kept)

    def _pointer(self, example, plan: SkipPlan | None) -> tuple[list[int], str]:
        from .spans import pointer_decode

        if self.span_head_scoring:
            from .span_head import head_decode

            head = self.task.load_span_head()
            head.check_model(self._fingerprint)  # the model may have changed since the evaluator was built
            tokens, text, _ = head_decode(self.generator, self.prompt(example), plan, head, example.question or "")
            return tokens, text

        return pointer_decode(self.generator, self.prompt(example), plan, max_new_tokens=self.max_new_tokens,
                              reuse=self.reuse, exclude_start_words=self.task.start_exclusions(example),
                              eos_bias=self.task.eos_bias)

    def _check_label_scoring(self) -> None:
        label_signal = bool(getattr(self.signal, "label_signal", False))
        if self.label_scoring and not label_signal:
            from .quality import LABEL_SIGNALS

            raise ValueError(f"task {self.task.name!r} scores its label with verbalizers (no generation); quality "
                             f"{self.signal.name!r} needs generated text or output tokens — use one of "
                             f"{LABEL_SIGNALS}")
        if label_signal and not self.label_scoring:
            raise ValueError(f"quality {self.signal.name!r} needs a classification task with scoring='verbalizer' "
                             f"(e.g. task 'rotten_tomatoes_scored'), got task "
                             f"{getattr(self.task, 'name', self.task)!r}")

    def label_margin(self, example, plan: SkipPlan | None) -> float:
        """``log p(v_pos) - log p(v_neg)`` (nats) at the answer position (the last input token) under ``plan``
        (``None`` = full model), for a task with verbalizer scoring: the first tokens of the two verbalizers
        (:meth:`~skipenv.tasks.ClassificationTask.verbalizer_ids`) scored after the formatted input.

        Both log-probabilities come from the logits of the same position of the same forward pass; they are read
        with two teacher-forced calls of one target token each, whose FLOPs are charged once (the outcome charges
        one prefill, ``num_generated = 1``), as one pass that reads two logits costs.
        """
        if getattr(self.task, "label_head_scoring", False):
            return float(self.task.head.logit(self.label_features(example, plan)))
        pos, neg = self.task.verbalizer_ids(self.generator.tokenizer)
        a = self.score(example, [pos], plan).logprobs
        b = self.score(example, [neg], plan).logprobs
        return float(a[0]) - float(b[0])

    def label_features(self, example, plan: SkipPlan | None) -> np.ndarray:
        """The final (normed) hidden state ``[d]`` (float64) at the answer position (the last input token) under
        ``plan`` (``None`` = full model): the input of the LM head where the next token is predicted, read by a
        forward hook on the model's output embedding during one teacher-forced pass (:meth:`score` of one token;
        the hidden state at the last input position does not depend on that token, the model being causal).

        For a task with ``scoring="head"`` the model must be the one the task's head was fitted on.

        Raises:
            LabelHeadError: (head scoring) the generator's model is not the head's (:meth:`LabelHead.check_model`).
        """
        if self.generator.num_encoder_layers:
            raise ValueError("label features are read from decoder-only models only (the last input position's "
                             "final hidden state); this generator is an encoder-decoder")
        import torch

        got = []
        gen = self.generator
        lm_head = gen.model.get_output_embeddings()

        def hook(module, args, output):  # the LM head's input [1, 1, d]: the last position's final hidden state
            got.append(args[0][0, -1].detach().double().cpu().numpy().copy())

        with self._checked():
            head = getattr(self.task, "head", None)
            if head is not None:
                head.check_model(self._fingerprint, "the evaluator's model")
            plan, seqs = gen._prepare([self.prompt(example)], plan, 0)
            ids, mask = gen._pad(seqs)
            handle = lm_head.register_forward_hook(hook)
            try:
                with gen.skipping(plan), torch.inference_mode():
                    gen._forward(ids, mask, None, logits_to_keep=1)  # one pass from position 0, no prefix reuse
            finally:
                handle.remove()
        if len(got) != 1:
            raise RuntimeError(f"the LM head ran {len(got)} times in one scoring pass; label features need one")
        return got[0]

    def charge_label_head(self, breakdown):
        """For head scoring (``scoring="head"``): charge the head's ``2 · d`` FLOPs in place of the LM head's row
        in a one-position :class:`~skipenv.generators.flops.FlopsBreakdown` (``num_generated = 1``), in place;
        ``per_candidate["lm_head"]`` becomes 0 and ``per_candidate["label_head"]`` the head's FLOPs. Other tasks:
        unchanged. Returns ``breakdown``."""
        head = getattr(self.task, "head", None)
        if head is not None and getattr(self.task, "label_head_scoring", False):
            lm = self.generator.flops_model.lm_head
            breakdown.prefill += head.flops - lm
            breakdown.per_candidate["lm_head"] = 0
            breakdown.per_candidate["label_head"] = head.flops
        return breakdown

    def _scored_full(self, example) -> FullOutput:
        """The full output of a verbalizer-scored task: the chosen label's verbalizer token, its text, and the
        calibrated probability of that label in ``output_probability``."""
        margin = self.label_margin(example, None)
        label = self.task.label_of_margin(margin)
        pos, neg = self.task.verbalizer_ids(self.generator.tokenizer)
        full = FullOutput((pos if label == "positive" else neg,), label, len(self.prompt(example)),
                          float(self.task.score(label, example)),
                          output_probability=self.task.label_probability(margin, label))
        return full

    @property
    def quality(self) -> str:
        """Name of the quality signal."""
        return self.signal.name

    # ------------------------------------------------------------------ model identity
    @property
    def fingerprint(self) -> str:
        """The :func:`~skipenv.envs.cache.model_fingerprint` of the generator's model *now* (the identity every
        cache of this evaluator is keyed by; checking it drops the caches of older weights)."""
        with self._checked():
            return self._fingerprint

    def _sync_identity(self) -> None:
        """Drop every in-memory memo (full outputs, observations, outcomes, pre-scored rows) when the model changed
        since they were computed (:func:`~skipenv.envs.cache.identity_token`), and point the disk cache at
        ``full/<fingerprint>`` when the fingerprint changed."""
        token = identity_token(self.generator)
        if token == self._token:
            return
        with self._identity_lock:
            if token == self._token:
                return
            self._full.clear()
            self._observations.clear()
            self._env_observations.clear()
            self.outcomes.clear()
            if getattr(self, "_prescored", None):
                self._prescored.clear()
            fingerprint = token.split("/")[0]
            if self._disk_cache and fingerprint != self._fingerprint:
                self.disk = DiskCache(f"full/{fingerprint}", root=self._cache_root)
            self._fingerprint, self._token = fingerprint, token
            self.identity_changes += 1

    @contextlib.contextmanager
    def _checked(self):
        """The block runs with every cache of this evaluator (and the generator's prefix store) keyed by the model's
        current fingerprint, checked once on entry (:func:`~skipenv.envs.cache.identity_scope`; nested calls do not
        check again)."""
        with identity_scope(self.generator), self.generator.bypassing(getattr(self, "bypasses", None)):
            self._sync_identity()
            yield

    def __setstate__(self, state: dict) -> None:  # evaluators pickled before the identity attributes existed
        if "fingerprint" in state:
            state["_fingerprint"] = state.pop("fingerprint")
        state.setdefault("_cache_root", None)
        state.setdefault("_disk_cache", state.get("disk") is not None)
        state.setdefault("identity_changes", 0)
        state.setdefault("_token", None)
        self.__dict__.update(state)
        self._identity_lock = threading.Lock()

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        state.pop("_identity_lock", None)
        return state

    @property
    def default_tau(self) -> float:
        return self.signal.default_tau

    @property
    def observation_kind(self) -> str:
        """The observation kind whose FLOPs every outcome's ``cost`` includes (read-only; canonical spelling)."""
        return self._observation_kind

    @property
    def segment_boundaries(self) -> str:
        """What the token segments are: ``"tokens"`` or ``"sentences"`` (read-only; see the class docstring)."""
        return getattr(self, "_segment_boundaries", "tokens")  # (evaluators pickled before it existed: tokens)

    # ------------------------------------------------------------------ per-example, plan-independent
    def prompt(self, example) -> PromptInput:
        """The formatted input of ``example`` (memoised)."""
        p = self._prompts.get(example.id)
        if p is None:
            p = self.task.format(example, self.generator.tokenizer,
                                 encoder_decoder=self.generator.num_encoder_layers > 0)
            if self.segment_boundaries == "sentences":
                from ..tasks.units import with_sentence_units

                p = with_sentence_units(p, example.document, self.generator.tokenizer, self.spec.token_segments)
            self._prompts[example.id] = p
        return p

    def observation_features(self, example) -> np.ndarray:
        """Pooled first-layer hidden states ``[d]`` (float32, memoised; a read-only array) of the full input."""
        with self._checked():
            obs = self._observations.get(example.id)
            if obs is None:
                obs = self.generator.observe([self.prompt(example)])[0].numpy().astype(np.float32)
                obs.setflags(write=False)
                self._observations[example.id] = obs
            return obs

    def observation(self, example) -> np.ndarray:
        """The one-shot env's observation of ``example`` for :attr:`observation_kind`, unclipped (float32, read-only,
        memoised per example id; length :func:`skipenv.envs.observations.observation_size`): the pooled first-layer
        state and the two lengths for ``"pooled"``; see :func:`skipenv.envs.observations.env_observation` for the
        others."""
        with self._checked():
            obs = self._env_observations.get(example.id)
            if obs is None:
                from .observations import env_observation

                obs = env_observation(self.generator, self.prompt(example), self._observation_kind,
                                      pooled=self.observation_features(example),
                                      token_segments=self.spec.token_segments,
                                      max_input_tokens=self.task.max_input_tokens, example=example)
                obs.setflags(write=False)
                self._env_observations[example.id] = obs
            return obs

    def observation_flops(self, example) -> int:
        """FLOPs charged for computing the observation of ``example`` (see
        :func:`skipenv.envs.observations.observation_flops`)."""
        from .observations import observation_flops

        return observation_flops(self.generator, self.prompt(example), self._observation_kind)

    def _disk_key(self, example) -> str:
        """What determines the full output: formatted input ids, generation budget, stop rule (its version and the
        task's post-processing), EOS id, and the gold target (it enters ``target_score`` / ``target_logprob``)."""
        ids = hashlib.sha256(json.dumps(list(self.prompt(example).input_ids)).encode()).hexdigest()
        target = hashlib.sha256(json.dumps([example.reference, getattr(example, "label", None),
                                            list(getattr(example, "answers", ()) or ())]).encode()).hexdigest()
        return json.dumps({"input_ids": ids, "max_new_tokens": self.max_new_tokens, "stop_rule": STOP_RULE_VERSION,
                           "task": f"{type(self.task).__module__}.{type(self.task).__qualname__}/{self.task.metric}"
                                   + (f"/{tag}" if (tag := getattr(self.task, "cache_tag", lambda: "")()) else ""),
                           "eos": self.generator.eos_token_id, "target": target}, sort_keys=True)

    def _cached_full(self, example) -> FullOutput | None:
        if self.disk is None:
            return None
        prompt_length = len(self.prompt(example))
        value = self.disk.get(self._disk_key(example),
                              validate=lambda v: _full_output_problem(v, self._vocab_size, prompt_length))
        return None if value is None else FullOutput.from_json(value)

    def _store_full(self, example, full: FullOutput) -> FullOutput:
        if self.disk is not None:
            self.disk.put(self._disk_key(example), full.to_json())
        self._full[example.id] = full
        return full

    def _new_full(self, example, tokens, text) -> FullOutput:
        full = FullOutput(tuple(int(t) for t in tokens), text, len(self.prompt(example)),
                          float(self.task.score(text, example)))
        if self.signal.needs_target_logprob:
            full = dataclasses.replace(full, target_logprob=self.target_logprob(example, None))
        if self.signal.needs_output_probability:
            full = dataclasses.replace(full, output_probability=self.output_probability(example, full.tokens))
        return full

    def full_output(self, example) -> FullOutput:
        """The full model's greedy output for ``example``: from memory, from disk, or computed once."""
        with self._checked():
            full = self._full.get(example.id)
            if full is None:
                full = self._cached_full(example)
                if full is None and self.label_scoring:
                    full = self._store_full(example, self._scored_full(example))
                if full is None and self.span_scoring:
                    full = self._store_full(example, self._new_full(example, *self._pointer(example, None)))
                if full is None:
                    out = self.generator.generate([self.prompt(example)], None, max_new_tokens=self.max_new_tokens,
                                                  stop=self.task.output_complete, **self._reuse_kwargs())
                    full = self._store_full(example, self._new_full(example, out.tokens[0], out.texts[0]))
                self._full[example.id] = full
            if self.signal.needs_target_logprob and full.target_logprob is None:  # cached by another signal
                full = self._store_full(example, dataclasses.replace(
                    full, target_logprob=self.target_logprob(example, None)))
            if self.signal.needs_output_probability and full.output_probability is None \
                    and not self.label_scoring:  # cached by another signal
                full = self._store_full(example, dataclasses.replace(
                    full, output_probability=self.output_probability(example, full.tokens)))
            return full

    def prefetch(self, examples, batch_size: int = 8, progress: bool = True) -> int:
        """Compute the missing full outputs of ``examples`` in batches (inputs of similar length together,
        left-padded), store them, and return how many were computed.

        Batched greedy decoding is several times faster per input on a CPU than one input at a time. Results equal
        the one-at-a-time outputs up to float round-off (a near-tie between two tokens can in rare cases resolve
        differently); they are cached, so every later episode sees the same full output.
        """
        with self._checked():
            from tqdm import tqdm

            todo = []
            for ex in examples:
                if ex.id in self._full:
                    continue
                cached = self._cached_full(ex)
                if cached is None and (self.label_scoring or self.span_scoring):  # one input at a time
                    self.full_output(ex)
                elif cached is None:
                    todo.append(ex)
                else:
                    self._full[ex.id] = cached
            todo.sort(key=lambda ex: len(self.prompt(ex)))
            bar = tqdm(total=len(todo), desc="full-model outputs", unit="document", disable=not progress or not todo,
                       leave=False)
            for i in range(0, len(todo), batch_size):
                chunk = todo[i: i + batch_size]
                out = self.generator.generate([self.prompt(ex) for ex in chunk], None,
                                              max_new_tokens=self.max_new_tokens, stop=self.task.output_complete)
                for j, ex in enumerate(chunk):
                    self._store_full(ex, self._new_full(ex, out.tokens[j], out.texts[j]))
                bar.update(len(chunk))
            bar.close()
            return len(todo)

    # ------------------------------------------------------------------ generator helpers used by the signals
    def generate(self, example, plan: SkipPlan) -> tuple[str, int]:
        """Greedy output of ``plan`` on ``example``: ``(text, tokens generated)`` (a passage span decoded by
        :func:`~skipenv.envs.spans.pointer_decode` when :attr:`span_scoring`)."""
        if self.span_scoring:
            tokens, text = self._pointer(example, plan)
            return text, len(tokens)
        out = self.generator.generate([self.prompt(example)], plan, max_new_tokens=self.max_new_tokens,
                                      stop=self.task.output_complete, **self._reuse_kwargs())
        return out.texts[0], out.num_generated[0]

    def _reuse_kwargs(self) -> dict:
        return {} if self.reuse else {"reuse": False}

    def score(self, example, target_ids, plan: SkipPlan | None):
        """Teacher-forced scoring of ``target_ids`` after ``example``'s input under ``plan`` (``ScoreOutput``)."""
        if getattr(self, "_prescored", None):  # (an evaluator pickled before this attribute existed has none)
            hit = self._prescored.pop((example.id, tuple(int(t) for t in target_ids), plan), None)
            if hit is not None:
                return hit
        return self.generator.score([self.prompt(example)], [list(target_ids)], plan, **self._reuse_kwargs())[0]

    def target_ids(self, example) -> list[int]:
        """The tokenised gold target followed by EOS."""
        ids = self.generator.tokenizer(example.reference, add_special_tokens=False)["input_ids"]
        eos = self.generator.eos_token_id
        return list(ids) + ([eos] if eos is not None else [])

    def target_logprob(self, example, plan: SkipPlan | None) -> float:
        """Mean log-probability (nats / token) of the gold target under ``plan`` (``None`` = full model)."""
        s = self.score(example, self.target_ids(example), plan)
        return float(s.logprobs.mean()) if len(s.logprobs) else 0.0

    def output_probability(self, example, tokens, plan: SkipPlan | None = None) -> float:
        """``mean_t p(tokens_t | input, tokens_<t)`` (a fraction) under ``plan`` (``None`` = full model), teacher
        forced in one forward pass (see :func:`~skipenv.envs.quality.mean_probability`)."""
        from .quality import mean_probability

        return mean_probability(self.score(example, tokens, plan).logprobs)

    # ------------------------------------------------------------------ plans
    def _outcome_key(self, example_id, plan: SkipPlan) -> tuple:
        """Key of the outcome cache (one place, so that :meth:`_prescore` skips exactly the pairs it holds): the
        observation kind is part of it because an outcome's cost includes the observation's FLOPs, the segment
        boundaries because the same plan removes other tokens under them (appended when not ``"tokens"``, so the
        key of token segments keeps its form)."""
        key = (example_id, plan, self._observation_kind)
        key = key if self.segment_boundaries == "tokens" else (*key, self.segment_boundaries)
        # the calibrated skip mode's statistics (appended when not identity, so the other keys keep their form)
        return key if getattr(self, "bypasses", None) is None else (*key, self.skip_mode_tag)

    def outcome(self, example, plan: SkipPlan) -> Outcome:
        """Run ``plan`` on ``example`` (or take the cached outcome).

        Raises:
            PlanError: a plan made for another model / segment count.
        """
        with self._checked():
            if plan.spec != self.spec:
                raise PlanError(f"plan was made for {plan.spec} but this evaluator needs {self.spec}")
            key = self._outcome_key(example.id, plan)
            hit = self.outcomes.get(key)
            if hit is not None:
                return hit
            t0 = time.perf_counter()
            prompt = self.prompt(example)
            full = self.full_output(example)
            m = self.signal.measure(self, example, plan, full)
            n_gen = full.num_generated if m.num_generated is None else m.num_generated
            if self.span_head_scoring:  # one prefill (LM head on one position), no decoding, plus the head itself
                n_gen = 0
            flops = self.charge_label_head(self.generator.flops(plan, prompt, n_gen, observation=True,
                                                                bypasses=getattr(self, "bypasses", None)))
            if self._observation_kind != "pooled":
                flops.observation = self.observation_flops(example)
            flops_full = self.charge_label_head(self.generator.flops(
                None, prompt, 0 if self.span_head_scoring else full.num_generated)).total
            if self.span_head_scoring:
                head = self.head_flops(example, plan)
                flops.prefill += head
                flops.per_candidate["span_head"] = head
                flops_full += self.head_flops(example, None)
            breakdown = flops.to_dict()
            breakdown["per_candidate"] = FrozenMapping(breakdown["per_candidate"])
            out = Outcome(example_id=example.id, plan=plan, quality=float(m.quality),
                          quality_full=float(m.quality_full),
                          cost=float(flops.total / flops_full), flops=int(flops.total), flops_full=int(flops_full),
                          flops_breakdown=FrozenMapping(breakdown), num_generated=int(n_gen), text=m.text,
                          time_s=(time.perf_counter() - t0) if self.record_time else None)
            for name in ("quality", "quality_full", "cost"):
                if not math.isfinite(getattr(out, name)):
                    raise ValueError(f"quality signal {self.signal!r} gave a non-finite {name} on {example.id!r}")
            self.outcomes.put(key, out)
            return out

    def outcomes_together(self, examples, plans, *, batch: bool = True) -> list[Outcome]:
        """:meth:`outcome` of ``N`` (example, plan) pairs, the same outcomes as calling it pair by pair.

        With ``batch`` (and a decoder-only generator and a teacher-forced signal: ``"agreement"``, ``"probability"``,
        ``"likelihood"``), the pairs that are not in the outcome cache and skip something are scored together by
        :func:`skipenv.generators.batched.score_plans` (padded forward passes over several rows, each row from its
        input's stored prefix state) before their outcomes are built; otherwise (generating signals,
        encoder-decoder models, ``batch=False``) pair by pair. The FLOPs charged are the same either way; with
        ``record_time`` a batched outcome's ``time_s`` leaves out its share of the batched forward pass.

        Raises:
            ValueError: ``examples`` and ``plans`` of different lengths. PlanError: as :meth:`outcome`.
        """
        with self._checked():
            examples, plans = list(examples), list(plans)
            if len(examples) != len(plans):
                raise ValueError(f"got {len(examples)} examples but {len(plans)} plans")
            self._prescored = {}
            if batch and len(examples) > 1 and not self.generator.num_encoder_layers \
                    and hasattr(self.generator, "prefix_store"):
                self._prescore(examples, plans)
            try:
                return [self.outcome(ex, plan) for ex, plan in zip(examples, plans)]
            finally:
                self._prescored.clear()

    def _prescore(self, examples, plans) -> None:
        """Fill :attr:`_prescored` with the teacher-forced scores that :meth:`outcome` will ask for."""
        from ..generators.batched import score_plans

        rows, seen = [], set()
        for ex, plan in zip(examples, plans):
            if not isinstance(plan, SkipPlan) or plan.spec != self.spec:
                continue  # outcome() raises its error in order
            if plan.is_empty or (ex.id, plan) in seen \
                    or self.outcomes.get(self._outcome_key(ex.id, plan)) is not None:  # cached: nothing to score
                continue
            target = self.signal.scored_target(self, ex, self.full_output(ex))
            if target is None:
                return  # a generating signal: nothing to batch
            seen.add((ex.id, plan))
            rows.append((ex, tuple(int(t) for t in target), plan))
        if len(rows) < 2:
            return
        try:
            scores = score_plans(self.generator, [self.prompt(ex) for ex, _, _ in rows], [t for _, t, _ in rows],
                                 [plan for _, _, plan in rows], reuse=self.reuse)
        except ValueError:
            return  # a row that cannot run (e.g. its plan removes every token): pair by pair raises it in order
        for (ex, target, plan), score in zip(rows, scores):
            self._prescored[(ex.id, target, plan)] = score
