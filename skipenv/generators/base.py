"""Skippable execution of a frozen Hugging Face generator.

A :class:`SkippableGenerator` wraps a loaded model and tokenizer (no weights are copied) and runs it along the
computation path of a :class:`~skipenv.plan.SkipPlan`:

- a skipped ``attention`` / ``ffn`` sublayer is not called at all: the residual stream passes through unchanged
  (for pre-LN layers the sublayer's norm is not computed either; for post-LN layers such as BART's, the
  ``LayerNorm(x + sublayer(x))`` block is replaced by ``x``);
- skipped ``tokens`` segments are removed from the input ids before the embedding, so every layer sees the
  shorter sequence;
- the plan holds for the whole episode: prefill and every decoding step with the KV cache. A layer whose attention
  is skipped stores no keys / values; :class:`~skipenv.generators.adapter.SkipAwareCache` answers sequence-length
  queries from a layer that does attend (transformers asks layer 0 by default).

Implementation: for the duration of one :meth:`~SkippableGenerator.generate` / :meth:`~SkippableGenerator.score`
call, each layer with a skipped sublayer runs a family-specific replacement body (see ``llama.py``, ``gpt2.py``,
``bart.py``, ``t5.py``) installed on the layer *instance*; what was there before is restored afterwards (see
:mod:`skipenv.generators.adapter`, the one module that knows transformers internals), so the model is untouched
between calls. Masks, positions and the cache are built by the model's own ``forward``. Calls on one model are
serialised by a re-entrant lock, so generators may be shared between threads.

This module holds the logic shared by every family: one greedy decoding loop, one teacher-forced scoring routine,
one length check. The architecture types only say how a batch is padded and run: ``decoder_only.py``
(:class:`DecoderOnlyGenerator`, and :class:`LayerStepper` for the layerwise env) and ``encoder_decoder.py``
(:class:`EncoderDecoderGenerator`).

Why this module is long: the SkippableGenerator contract (generate, score, the skipping context,
FLOPs, the first-layer observation) is one interface that both architecture modules implement.
"""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass
from typing import Callable, Sequence

import torch
from torch import nn

from ..inputs import PromptInput
from ..plan import PlanSpec, SkipPlan
from .adapter import (
    SkipAwareCache,
    UnsupportedModelError,
    cache_kwarg,
    check_replacement_layers,
    model_lock,
    replaced_forwards,
)
from .flops import FlopsBreakdown, FlopsModel

#: per-thread plan of the active :meth:`SkippableGenerator.skipping` block
_SKIPPING = threading.local()
#: per-thread (model, Bypasses) of the active :meth:`SkippableGenerator.bypassing` block
_BYPASSING = threading.local()

__all__ = [
    "SkippableGenerator",
    "GenerationOutput",
    "ScoreOutput",
    "SublayerModules",
    "SkipAwareCache",
    "UnsupportedModelError",
    "NonFiniteError",
]


class NonFiniteError(RuntimeError):
    """A forward pass produced NaN or inf (corrupt weights, or activations that overflowed the model's dtype).

    Raised by :meth:`SkippableGenerator.generate`, :meth:`~SkippableGenerator.score`,
    :meth:`~SkippableGenerator.observe` and :func:`~skipenv.generators.batched.score_plans` instead of returning
    tokens or log-probabilities computed from non-finite logits (an argmax over NaN is token 0, which every quality
    signal would then score). The message names the first layer whose output is non-finite (when the failing call
    can be re-run with hooks) and every parameter or buffer holding NaN / inf.

    Attributes:
        layer: qualified module name of the first layer with a non-finite output (``None`` if not located).
        parameters: names of the parameters / buffers holding non-finite values (empty: an overflow).
    """

    def __init__(self, message: str, layer: str | None = None, parameters: tuple[str, ...] = ()):
        super().__init__(message)
        self.layer, self.parameters = layer, tuple(parameters)


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (after the first layer)."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


@dataclass
class GenerationOutput:
    """Result of :meth:`SkippableGenerator.generate` for a batch of ``B`` inputs.

    Attributes:
        tokens: ``B`` lists of generated token ids (greedy; ends with EOS if EOS was produced; no padding).
        texts: ``B`` decoded strings (special tokens removed, stripped).
        prompt_lengths: ``B`` input lengths actually processed (after token skipping).
        num_generated: ``B`` counts of generated tokens (``len(tokens[i])``).
    """

    tokens: list[list[int]]
    texts: list[str]
    prompt_lengths: list[int]

    @property
    def num_generated(self) -> list[int]:
        return [len(t) for t in self.tokens]


@dataclass
class ScoreOutput:
    """Teacher-forced scoring of one target under a plan (one forward pass).

    Attributes:
        logprobs: shape ``[m]`` float32, ``log p(target_t | input, target_<t)`` in nats.
        argmax: shape ``[m]`` int64, the most likely token at each target position.
        prompt_length: input tokens processed after token skipping.
    """

    logprobs: torch.Tensor
    argmax: torch.Tensor
    prompt_length: int


@dataclass(frozen=True)
class SublayerModules:
    """The submodules of one layer, per sublayer, in call order (returned by
    :meth:`SkippableGenerator.sublayer_modules`). A skipped sublayer calls none of its modules.

    Attributes:
        attention: the self-attention sublayer (its norm included).
        ffn: the FFN sublayer (its norm included).
        cross_attention: the cross-attention sublayer of an encoder-decoder decoder layer (never skipped); ``()``
            otherwise.
        outputs_stream: ``True`` if the last module of a sublayer outputs the residual stream itself (post-LN
            norms; T5's sublayer blocks add the residual inside); ``False`` if it outputs the update that is added
            to the sublayer's input (pre-LN layers).
    """

    attention: tuple[nn.Module, ...]
    ffn: tuple[nn.Module, ...]
    cross_attention: tuple[nn.Module, ...] = ()
    outputs_stream: bool = False


class SkippableGenerator:
    """Base class: a frozen Hugging Face generator that runs along a :class:`SkipPlan`.

    Build one with :func:`skipenv.generators.wrap`; subclasses exist per model family. All methods run under
    ``torch.inference_mode()``; the model is put in eval mode and never modified between calls. Calls on one model
    (from any generator wrapping it, from any thread) are serialised by a re-entrant lock.

    Args:
        model: a loaded ``*ForCausalLM`` / ``*ForConditionalGeneration`` model (any device / dtype).
        tokenizer: its tokenizer (needs ``eos_token_id``; ``pad_token_id`` falls back to EOS).

    Raises:
        UnsupportedModelError: the replacement layer bodies do not reproduce the model's layers with nothing skipped
            (a transformers version outside the supported range), or a layer has an instance-level ``forward``
            that is not an accelerate hook (see :mod:`skipenv.generators.adapter`).

    Attributes:
        flops_model: the analytic :class:`~skipenv.generators.flops.FlopsModel` of this model.
    """

    family: str = ""
    #: Hugging Face architecture classes (names) this wrapper supports.
    architectures: tuple[str, ...] = ()
    #: decoder tokens used before the first generated one (1 for the decoder start token of encoder-decoders)
    _decoder_start_tokens: int = 0

    def __init__(self, model: nn.Module, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self._lock = model_lock(model)
        self._cache_kw = cache_kwarg(model)
        self.flops_model = self._build_flops_model()
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = getattr(model.generation_config, "eos_token_id", None) or getattr(self.config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        self.eos_token_id = eos
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (eos if eos is not None else 0)
        check_replacement_layers(self)

    def __getstate__(self) -> dict:
        state = dict(self.__dict__)
        del state["_lock"]  # a lock cannot be pickled; the copy gets its model's lock back on load
        return state

    def __setstate__(self, state: dict) -> None:
        if "prefix_store" in state:  # pickled before prefix_store became a property
            state["_prefix_store"] = state.pop("prefix_store")
        self.__dict__.update(state)
        self._lock = model_lock(self.model)

    # ------------------------------------------------------------------ model identity
    @property
    def fingerprint(self) -> str:
        """:func:`skipenv.envs.cache.model_fingerprint` of the model now (16 hex chars; a cheap check per call,
        the full digest again only after a weight edit)."""
        from ..envs.cache import model_fingerprint

        return model_fingerprint(self)

    @property
    def prefix_store(self):
        """The :class:`~skipenv.generators.reuse.PrefixStore` of the full model's computation per input (``None``:
        no reuse; the default of a bare generator). Reading it binds the store to the model's current
        :attr:`fingerprint` (:meth:`PrefixStore.bind <skipenv.generators.reuse.PrefixStore.bind>`), so after any
        weight edit (``load_state_dict``, in-place ops, ``.data = ...``, a new Parameter) the states of the old
        weights are dropped before anything reads them (:func:`skipenv.envs.cache.identity_token`)."""
        store = self.__dict__.get("_prefix_store")
        if store is not None:
            from ..envs.cache import identity_token

            store.bind(identity_token(self))
        return store

    @prefix_store.setter
    def prefix_store(self, store) -> None:
        self.__dict__["_prefix_store"] = store

    # ------------------------------------------------------------------ per-family hooks
    def _encoder_layers(self) -> Sequence[nn.Module]:
        return ()

    def _decoder_layers(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def _layer_forward(self, stack: str, layer: nn.Module, skip_attention: bool, skip_ffn: bool) -> Callable:
        """Return a replacement ``forward(hidden_states, **kwargs)`` for ``layer`` that skips the flagged
        sublayers. ``stack`` is ``"encoder"`` or ``"decoder"``. Keyword arguments are those the model's own
        forward passes to the layer, by name (see :func:`~skipenv.generators.adapter.layer_arguments`)."""
        raise NotImplementedError

    def _sublayers(self, stack: str, layer: nn.Module) -> SublayerModules:
        raise NotImplementedError

    def _build_flops_model(self) -> FlopsModel:
        raise NotImplementedError

    # ------------------------------------------------------------------ per-architecture hooks
    def _pad(self, seqs: Sequence[Sequence[int]]) -> tuple[torch.Tensor, torch.Tensor]:
        """``B`` id lists → ids ``[B, T]`` and a 0/1 attention mask ``[B, T]`` on the model's device."""
        raise NotImplementedError

    def _begin_decoding(self, ids: torch.Tensor, mask: torch.Tensor, plan: SkipPlan, use_cache: bool):
        """A decoding state with ``next_logits() -> [B, V]`` and ``append(tokens [B])``."""
        raise NotImplementedError

    def _target_logits(self, prompts: list[list[int]], targets: list[list[int]]) -> list[torch.Tensor]:
        """Teacher-forced logits ``[m_i, V]`` predicting each target token (one forward pass for the batch)."""
        raise NotImplementedError

    def _run_to_first_layer(self, ids: torch.Tensor, mask: torch.Tensor) -> None:
        """Run the model's own forward far enough that the first layer is called (a hook stops it there)."""
        raise NotImplementedError

    # ------------------------------------------------------------------ model structure
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_encoder_layers(self) -> int:
        return len(self._encoder_layers())

    @property
    def num_decoder_layers(self) -> int:
        return len(self._decoder_layers())

    @property
    def hidden_size(self) -> int:
        """Width ``d`` of the residual stream (size of the observation vector)."""
        return int(self.config.get_text_config().hidden_size if hasattr(self.config, "get_text_config")
                   else self.config.hidden_size)

    def sublayer_modules(self, stack: str, index: int) -> SublayerModules:
        """Which submodules of layer ``index`` of ``stack`` (``"encoder"`` / ``"decoder"``) form its attention,
        cross-attention and FFN sublayers (the family's module map).

        Raises:
            ValueError: an unknown stack; IndexError: no such layer.
        """
        layers = {"encoder": self._encoder_layers, "decoder": self._decoder_layers}.get(stack)
        if layers is None:
            raise ValueError(f"unknown stack {stack!r}; use 'encoder' or 'decoder'")
        return self._sublayers(stack, layers()[index])

    # ------------------------------------------------------------------ plan handling
    def plan_spec(self, token_segments: int = 8) -> PlanSpec:
        """The candidate layout of this model with ``token_segments`` document segments."""
        return PlanSpec(self.config.model_type, self.num_encoder_layers, self.num_decoder_layers, token_segments)

    def empty_plan(self, token_segments: int = 8) -> SkipPlan:
        return self.plan_spec(token_segments).empty_plan()

    def _check_plan(self, plan: SkipPlan | None, token_segments: int = 8) -> SkipPlan:
        if plan is None:
            return self.empty_plan(token_segments)
        if not isinstance(plan, SkipPlan):
            raise TypeError(f"expected a SkipPlan, got {type(plan).__name__}; build one with SkipPlan.from_action")
        plan.check(self.plan_spec(plan.spec.token_segments))
        return plan

    @contextlib.contextmanager
    def skipping(self, plan: SkipPlan | None):
        """Context manager: while active, the model's layers skip the sublayers flagged in ``plan`` and this thread
        holds the model's lock. Layers with nothing skipped keep their own ``forward``.

        Token skipping is not applied here (it changes the inputs; see :meth:`prepare_ids`).
        """
        plan = self._check_plan(plan)
        replacements = [
            (layer, self._layer_forward(stack, layer, a, f))
            for stack, layers, attn, ffn in (
                ("encoder", self._encoder_layers(), plan.encoder_attention, plan.encoder_ffn),
                ("decoder", self._decoder_layers(), plan.decoder_attention, plan.decoder_ffn),
            )
            for layer, a, f in zip(layers, attn, ffn) if a or f
        ]
        with self._lock, replaced_forwards(replacements):
            previous = getattr(_SKIPPING, "plan", None)
            _SKIPPING.plan = plan  # read by the prefix-reuse paths (:attr:`_active_plan`)
            try:
                yield plan
            finally:
                _SKIPPING.plan = previous

    @contextlib.contextmanager
    def bypassing(self, bypasses):
        """Context manager: while active (on this thread), a skipped decoder sublayer adds the calibrated bypass of
        ``bypasses`` (a :class:`~skipenv.generators.bypass.Bypasses` of skip mode ``"mean"`` / ``"linear"``)
        instead of nothing; ``None`` = skip mode ``"identity"`` (the residual stream passes unchanged). Applies to
        every path that runs a plan: :meth:`generate` (prefill and KV-cached decoding), :meth:`score`, prefix
        reuse, :func:`~skipenv.generators.batched.score_plans` and the :class:`LayerStepper`. Charge its FLOPs
        with :meth:`flops` ``(..., bypasses=...)``.

        Raises:
            ~skipenv.generators.bypass.SkipModeError: bypasses for an encoder-decoder model, or calibrated on a
                model with another fingerprint (the message names both).
        """
        if bypasses is not None:
            from .bypass import SkipModeError

            if self.num_encoder_layers:
                raise SkipModeError(f"skip_mode {bypasses.mode!r} is not supported for encoder-decoder models "
                                    f"({type(self.model).__name__}); use skip_mode='identity'")
            if bypasses.fingerprint != self.fingerprint:
                raise SkipModeError(f"the {bypasses.mode} bypasses were calibrated on model {bypasses.fingerprint}, "
                                    f"not on this model ({self.fingerprint}): recalibrate them on this model "
                                    f"(skipenv.envs.skip_modes.load_or_calibrate)")
        previous = getattr(_BYPASSING, "value", None)
        _BYPASSING.value = (self.model, bypasses)
        try:
            yield
        finally:
            _BYPASSING.value = previous

    @property
    def _active_bypasses(self):
        """The :class:`~skipenv.generators.bypass.Bypasses` of this thread's :meth:`bypassing` block (``None``:
        identity)."""
        value = getattr(_BYPASSING, "value", None)
        return value[1] if value is not None and value[0] is self.model else None

    def _layer_index(self, stack: str, layer: nn.Module) -> int:
        index = self.__dict__.get("_layer_indices")
        if index is None:
            index = self.__dict__["_layer_indices"] = {
                (s, id(m)): i for s, ls in (("encoder", self._encoder_layers()), ("decoder", self._decoder_layers()))
                for i, m in enumerate(ls)}
        return index[(stack, id(layer))]

    def _bypassed(self, stack: str, layer: nn.Module, kind: str, hidden_states: torch.Tensor,
                  rows: Sequence[int] | None = None) -> torch.Tensor:
        """``hidden_states`` ``[B, T, d]`` after skipping sublayer ``kind`` (``"attention"`` / ``"ffn"``) of
        ``layer``: unchanged under skip mode identity, plus the active bypass otherwise (only on batch ``rows``
        when given). Called by the family layer bodies and the batched per-row bodies."""
        bypasses = self._active_bypasses
        if bypasses is None or (rows is not None and not rows):
            return hidden_states
        i = self._layer_index(stack, layer)
        mods = self._sublayers(stack, layer)
        norm = (mods.attention if kind == "attention" else mods.ffn)[0]
        label = f"{stack}.{kind}.{i}"
        if rows is None or len(rows) == hidden_states.shape[0]:
            return hidden_states + bypasses.update(label, hidden_states, norm)
        index = torch.tensor(list(rows), dtype=torch.long, device=hidden_states.device)
        sub = hidden_states.index_select(0, index)
        return hidden_states.index_copy(0, index, sub + bypasses.update(label, sub, norm))

    @property
    def _active_plan(self) -> SkipPlan | None:
        """The plan of the :meth:`skipping` block this thread is in (``None`` outside one)."""
        return getattr(_SKIPPING, "plan", None)

    @staticmethod
    def prepare_ids(inputs: Sequence[PromptInput], plan: SkipPlan) -> list[list[int]]:
        """Token ids of each input after removing the plan's skipped segments (``[T_i']`` each)."""
        return [inp.apply_token_skips(plan.tokens) for inp in inputs]

    def _max_positions(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", None)

    def _check_length(self, seqs: Sequence[Sequence[int]], decoder_tokens: int,
                      inputs: Sequence[PromptInput]) -> None:
        """Raise ``ValueError`` naming the example if a processed input is empty or does not fit the model's
        positions together with ``decoder_tokens`` (new tokens of a decoder-only model share the prompt's positions;
        an encoder-decoder's decoder has its own)."""
        limit = self._max_positions()
        for s, inp in zip(seqs, inputs):
            if len(s) == 0:
                raise ValueError(f"example {inp.example_id!r}: the plan removes every input token")
            if limit is None:
                continue
            if self.num_encoder_layers:
                over, what = len(s) > limit or decoder_tokens > limit, \
                    f"{len(s)} input tokens or {decoder_tokens} decoder tokens exceed"
            else:
                over, what = len(s) + decoder_tokens > limit, f"{len(s)} input tokens + {decoder_tokens} new tokens exceed"
            if over:
                raise ValueError(f"example {inp.example_id!r}: {what} the model's context of {limit} positions; lower "
                                 f"the task's max_input_tokens or max_new_tokens")

    def _prepare(self, inputs: Sequence[PromptInput], plan: SkipPlan | None, new_tokens: int
                 ) -> tuple[SkipPlan, list[list[int]]]:
        plan = self._check_plan(plan)
        seqs = self.prepare_ids(inputs, plan)
        self._check_length(seqs, new_tokens + self._decoder_start_tokens, inputs)
        return plan, seqs

    # ------------------------------------------------------------------ FLOPs
    def flops(self, plan: SkipPlan | None, inp: PromptInput | int, num_generated: int,
              observation: bool = False, bypasses=None) -> FlopsBreakdown:
        """Analytic FLOPs of generating ``num_generated`` tokens for ``inp`` under ``plan`` (see ``flops.py``).

        Args:
            plan: the plan (``None`` = full model).
            inp: the input (token skipping is applied) or directly the processed prompt length.
            num_generated: tokens generated, EOS included.
            observation: also charge the observation overhead (first layer over the *full* input).
            bypasses: the :class:`~skipenv.generators.bypass.Bypasses` the plan runs with (``None``: skip mode
                identity); each skipped sublayer is charged its bypass's FLOPs per processed token.
        """
        plan = self._check_plan(plan)
        if isinstance(inp, PromptInput):
            n_full = len(inp)
            n = len(inp.kept_positions(plan.tokens))
        else:
            n = n_full = int(inp)
        out = self.flops_model.generation(plan, n, num_generated,
                                          bypass_per_token=0 if bypasses is None else bypasses.flops_per_token)
        if observation:
            out.observation = self.flops_model.first_layer(n_full)
        return out

    # ------------------------------------------------------------------ operations
    @torch.inference_mode()
    def generate(self, inputs: Sequence[PromptInput], plan: SkipPlan | None = None, *, max_new_tokens: int = 32,
                 use_cache: bool = True, stop: Callable[[str], bool] | None = None,
                 reuse: bool = True) -> GenerationOutput:
        """Greedy generation for a batch under one plan (token segments are removed per input).

        Args:
            inputs: ``B`` formatted inputs.
            plan: the plan (``None`` = full model); one plan for the whole batch.
            max_new_tokens: generation stops at EOS or after this many tokens.
            use_cache: decode with the KV cache (default) or recompute the whole sequence every step; both give
                the same tokens.
            stop: optional stop rule on the decoded text so far (e.g. :meth:`skipenv.tasks.Task.output_complete`);
                a row stops after the token that makes it true.
            reuse: decoder-only models, one input: start the prefill from the full model's stored computation on
                the input (:mod:`skipenv.generators.reuse`; same tokens, less work). Ignored otherwise.

        Returns:
            :class:`GenerationOutput`.

        Raises:
            ValueError: no inputs, an input that does not fit the model's context, or a plan that removes every
                token. TypeError: an input that is not a :class:`PromptInput`, or a plan that is not a
                :class:`SkipPlan`. :class:`~skipenv.plan.PlanError`: a plan made for another model.
        """
        _check_inputs(inputs)
        plan, seqs = self._prepare(inputs, plan, max_new_tokens)
        ids, mask = self._pad(seqs)
        with self.skipping(plan):  # layers patched once for the whole call
            tokens = self._greedy(self._begin_decoding(ids, mask, plan, use_cache), ids.shape[0], max_new_tokens,
                                  stop)
        texts = [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        return GenerationOutput(tokens=tokens, texts=texts, prompt_lengths=[len(s) for s in seqs])

    def _greedy(self, decoding, batch_size: int, max_new_tokens: int, stop) -> list[list[int]]:
        """The greedy loop shared by both architecture types: argmax of the last position's logits, finished rows
        padded, stop at EOS / ``stop`` / ``max_new_tokens``. Returns ``B`` token lists without padding."""
        generated: list[torch.Tensor] = []
        finished = [False] * batch_size
        lengths: list[int | None] = [None] * batch_size
        for step in range(1, max_new_tokens + 1):
            nxt = decoding.next_logits().argmax(-1)
            if any(finished):
                nxt = torch.where(torch.tensor(finished, device=nxt.device), self.pad_token_id, nxt)
            generated.append(nxt)
            rows = torch.stack(generated, 1).tolist() if stop is not None else None
            for i, token in enumerate(nxt.tolist()):
                if finished[i]:
                    continue
                done = self.eos_token_id is not None and token == self.eos_token_id
                if not done and stop is not None:
                    done = bool(stop(self.tokenizer.decode(rows[i], skip_special_tokens=True)))
                if done:
                    finished[i], lengths[i] = True, step
            if all(finished):
                break
            decoding.append(nxt)
        rows = torch.stack(generated, 1).tolist() if generated else [[] for _ in range(batch_size)]
        return [row if n is None else row[:n] for row, n in zip(rows, lengths)]

    def _greedy_logits(self, ids: Sequence[int], steps: int) -> list[torch.Tensor]:
        """Logits ``[1, V]`` of ``steps`` greedy decoding calls (prefill first) for one input with the KV cache and
        whatever layer bodies are installed (used by the self-check at :func:`~skipenv.generators.wrap`)."""
        tensor, mask = self._pad([list(ids)])
        decoding = self._begin_decoding(tensor, mask, self.empty_plan(), True)
        out = []
        for _ in range(steps):
            logits = decoding.next_logits()
            out.append(logits.clone())
            decoding.append(logits.argmax(-1))
        return out

    @torch.inference_mode()
    def score(self, inputs: Sequence[PromptInput], targets: Sequence[Sequence[int]],
              plan: SkipPlan | None = None, *, reuse: bool = True) -> list[ScoreOutput]:
        """Teacher-forced scoring under ``plan``: one forward pass over the batch (decoder-only: ``input + target``;
        encoder-decoder: the encoder once, the decoder over ``[start] + target[:-1]``).

        Args:
            inputs: ``B`` formatted inputs.
            targets: ``B`` target token-id lists (e.g. the full model's greedy output, or a tokenised reference).
            plan: the plan (``None`` = full model).
            reuse: decoder-only models, one input: start from the full model's stored computation on the input
                (:mod:`skipenv.generators.reuse`; same results up to float round-off, less work). Ignored otherwise.

        Returns:
            ``B`` :class:`ScoreOutput` (log-probabilities and argmax at the ``m_i`` target positions).

        Raises:
            ValueError: as :meth:`generate`, or a number of targets different from the number of inputs.
        """
        _check_inputs(inputs)
        if len(targets) != len(inputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(targets)} targets")
        targets = [[int(x) for x in t] for t in targets]
        plan, prompts = self._prepare(inputs, plan, max(len(t) for t in targets))
        with self.skipping(plan):
            rows = self._target_logits(prompts, targets)
        out = []
        for p, t, logits in zip(prompts, targets, rows):
            logp = torch.log_softmax(logits.float(), dim=-1)
            tgt = torch.tensor(t, dtype=torch.long, device=logp.device)
            out.append(ScoreOutput(logprobs=logp.gather(-1, tgt[:, None]).squeeze(-1).cpu(),
                                   argmax=logp.argmax(-1).cpu(), prompt_length=len(p)))
        return out

    @torch.inference_mode()
    def observe(self, inputs: Sequence[PromptInput]) -> torch.Tensor:
        """Mean-pooled hidden states after the first layer (the first *encoder* layer of an encoder-decoder) over
        each *full* input (nothing skipped).

        Returns:
            float32 tensor ``[B, d]`` on the CPU. Costs :meth:`FlopsModel.first_layer` FLOPs per input.
        """
        _check_inputs(inputs)
        seqs = [list(inp.input_ids) for inp in inputs]
        self._check_length(seqs, 0, inputs)
        ids, mask = self._pad(seqs)

        def hook(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        with self._lock:
            handle = self._first_layer().register_forward_hook(hook)
            try:
                self._run_to_first_layer(ids, mask)
            except _StopForward as stop:
                hidden = stop.hidden
            else:  # pragma: no cover - the hook always fires
                raise RuntimeError("the first layer was never called")
            finally:
                handle.remove()
        if not bool(torch.isfinite(hidden[mask.bool()]).all()):
            raise self._nonfinite_error("the first layer's output (the observation)", ids, mask)
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float().cpu()

    # ------------------------------------------------------------------ non-finite values
    def _check_finite(self, logits: torch.Tensor, ids: torch.Tensor | None = None,
                      mask: torch.Tensor | None = None) -> None:
        """Raise :class:`NonFiniteError` if ``logits`` hold NaN / inf. ``ids`` ``[B, T]`` / ``mask`` ``[B, T]``: the
        whole sequences of the failing call, when it ran from position 0 (then they are re-run with hooks to locate
        the first layer with a non-finite output). One float32 sum of the logits per model call
        (``benchmarks/bench_identity.py`` measures its cost).

        The test is a float32 sum of the logits (one reduction pass, no temporary): NaN / inf make it non-finite;
        a finite sum proves every entry finite. A non-finite sum is confirmed entry by entry (``isfinite``, about 40x
        slower on a CPU), so an overflow of the sum itself raises nothing."""
        if bool(torch.isfinite(logits.sum(dtype=torch.float32))) or bool(torch.isfinite(logits).all()):
            return
        raise self._nonfinite_error("the logits", ids, mask)

    def _nonfinite_error(self, what: str, ids: torch.Tensor | None = None,
                         mask: torch.Tensor | None = None) -> NonFiniteError:
        """The :class:`NonFiniteError` for non-finite ``what``: the first non-finite layer output (re-running ``ids``
        with hooks, under the layer bodies installed now) and the parameters / buffers holding NaN / inf."""
        with self._lock:  # the re-run installs hooks on the shared model
            layer = self._first_nonfinite_layer(ids, mask) if ids is not None else None
        bad = []
        with torch.no_grad():
            for name, t in [*self.model.named_parameters(), *self.model.named_buffers()]:
                if t.is_floating_point() or t.is_complex():
                    n = int((~torch.isfinite(t)).sum())
                    if n:
                        bad.append(f"{name} ({n} of {t.numel()} values)")
        plan = self._active_plan
        where = f" under the plan skipping {plan.num_skipped} candidates" if plan is not None and plan.num_skipped \
            else " of the full model"
        msg = f"{what} of a forward pass{where} are not finite (NaN or inf) ({type(self.model).__name__}, " \
              f"{self.model.dtype})"
        if layer is not None:
            msg += f"; the first layer whose output is non-finite: {layer}"
        if bad:
            msg += (f"; parameters holding NaN / inf: {', '.join(bad[:5])}{' ...' if len(bad) > 5 else ''}. Fix: "
                    f"reload the model or repair those weights")
        else:
            msg += (f"; no parameter or buffer holds NaN / inf, so the activations overflowed {self.model.dtype}. "
                    f"Fix: load the model in float32 (dtype='float32') or bfloat16")
        return NonFiniteError(msg, layer, tuple(b.split(" (")[0] for b in bad))

    def _first_nonfinite_layer(self, ids: torch.Tensor, mask: torch.Tensor | None) -> str | None:
        """Re-run ``ids`` ``[B, T]`` (no KV cache) with a forward hook on every layer and return the qualified name
        of the first layer whose output is non-finite at an unpadded position (``"the embedding"`` if the first
        layer's input already is); ``None`` if none is (or the re-run fails)."""
        names = {id(m): n for n, m in self.model.named_modules()}
        stacks = [("encoder", list(self._encoder_layers()))] if self.num_encoder_layers else \
            [("decoder", list(self._decoder_layers()))]
        found: list[str] = []
        keep = None if mask is None else mask.bool()

        def finite(h) -> bool:
            h = h[0] if isinstance(h, tuple) else h
            if keep is not None and h.dim() == 3 and h.shape[:2] == keep.shape:
                h = h[keep]
            return bool(torch.isfinite(h).all())

        def pre(module, args, kwargs):
            if not found and not finite(args[0] if args else kwargs["hidden_states"]):
                found.append("the embedding (the input of the first layer)")

        def post(label):
            def hook(module, args, output):
                if not found and not finite(output):
                    found.append(label)
            return hook

        handles = []
        try:
            for stack, layers in stacks:
                handles.append(layers[0].register_forward_pre_hook(pre, with_kwargs=True))
                for i, layer in enumerate(layers):
                    label = f"{stack} layer {i} ({names.get(id(layer), '?')})"
                    handles.append(layer.register_forward_hook(post(label)))
            try:
                m = torch.ones_like(ids) if mask is None else mask
                if self.num_encoder_layers:
                    self.model.get_encoder()(input_ids=ids, attention_mask=m)
                else:
                    self.model(input_ids=ids, attention_mask=m, position_ids=_positions(m), use_cache=False)
            except Exception:  # noqa: BLE001 - a diagnosis only; the NonFiniteError is raised either way
                pass
        finally:
            for h in handles:
                h.remove()
        if found:
            return found[0]
        return None

    def _first_layer(self) -> nn.Module:
        enc = self._encoder_layers()
        return enc[0] if len(enc) else self._decoder_layers()[0]

    def layer_stepper(self, inp: PromptInput, token_flags: Sequence[bool]):
        """A :class:`~skipenv.generators.decoder_only.LayerStepper` over the prefill of ``inp`` with the given token
        segments removed; defined by :class:`~skipenv.generators.decoder_only.DecoderOnlyGenerator`.

        Raises:
            NotImplementedError: this generator is not decoder-only (layerwise stepping walks decoder layers).
        """
        raise NotImplementedError(f"{type(self).__name__} cannot step layer by layer: the layerwise env and "
                                  "richer observations need a decoder-only generator (Llama, GPT-2)")

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, layers="
                f"{self.num_encoder_layers}+{self.num_decoder_layers}, d={self.hidden_size})")


def _pad_batch(seqs: Sequence[Sequence[int]], pad_id: int, device, left: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """Pad ``B`` id lists (on the left or the right) to ``[B, T]`` ids and a ``[B, T]`` 0/1 attention mask."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            cols = slice(t - len(s), t) if left else slice(0, len(s))
            ids[i, cols] = torch.tensor(list(s), dtype=torch.long)
            mask[i, cols] = 1
    return ids.to(device), mask.to(device)


def _left_pad(seqs, pad_id, device):
    return _pad_batch(seqs, pad_id, device, left=True)


def _right_pad(seqs, pad_id, device):
    return _pad_batch(seqs, pad_id, device, left=False)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, T]`` for a left-padded 0/1 mask (0 on padding), as transformers' ``generate`` uses."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _check_inputs(inputs: Sequence[PromptInput]) -> None:
    if len(inputs) == 0:
        raise ValueError("no inputs given: pass a non-empty sequence of PromptInput")
    for inp in inputs:
        if not isinstance(inp, PromptInput):
            raise TypeError(f"expected PromptInput (from Task.format), got {type(inp).__name__}")

