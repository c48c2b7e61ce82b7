"""Decoder-only (causal LM) generators: left-padded batches, explicit position ids, a KV cache per call; and the
:class:`LayerStepper` that runs a prefill one layer at a time (for the layerwise env)."""

from __future__ import annotations

import contextlib
import threading
from typing import Sequence

import numpy as np
import torch

from ..inputs import PromptInput
from ..plan import SkipPlan
from .adapter import SkipAwareCache, replaced_forwards
from .base import SkippableGenerator, _left_pad, _positions, _StopForward
from .reuse import PrefixStore, capture_staged_state, compute_state, reused_forward

#: the call running on this thread: (generator, PrefixState) while it reuses, and the active plan
_ACTIVE = threading.local()

__all__ = ["DecoderOnlyGenerator", "LayerStepper"]


class _CausalDecoding:
    """Greedy decoding state of a decoder-only model: the sequence so far and its KV cache (or none)."""

    def __init__(self, generator: "DecoderOnlyGenerator", ids, mask, plan: SkipPlan, use_cache: bool):
        self.generator, self.ids, self.mask, self.new = generator, ids, mask, ids
        self.cache = SkipAwareCache(generator.config, plan.decoder_attention) if use_cache else None

    def next_logits(self) -> torch.Tensor:
        feed = self.new if self.cache is not None else self.ids
        return self.generator._forward(feed, self.mask, self.cache, logits_to_keep=1)[:, -1]

    def append(self, tokens: torch.Tensor) -> None:
        self.new = tokens[:, None]
        self.ids = torch.cat([self.ids, self.new], 1)
        self.mask = torch.cat([self.mask, torch.ones_like(self.new, dtype=self.mask.dtype)], 1)


class _ReusedDecoding(_CausalDecoding):
    """A :class:`_CausalDecoding` whose prefill was computed from a stored prefix state (see ``reuse.py``)."""

    def __init__(self, generator, ids, mask, plan, state):
        self.generator, self.ids, self.mask, self.new = generator, ids, mask, ids
        self._first, self.cache = reused_forward(generator, state, ids[0].tolist(), plan, num_logits=1)

    def next_logits(self) -> torch.Tensor:
        if self._first is not None:
            logits, self._first = self._first[:, -1], None
            return logits
        return super().next_logits()


class DecoderOnlyGenerator(SkippableGenerator):
    """Decoder-only (causal LM) families: left-padded batches, explicit position ids, a
    :class:`~skipenv.generators.adapter.SkipAwareCache` per call.

    Attributes:
        prefix_store: the :class:`~skipenv.generators.reuse.PrefixStore` of the full model's computation per input
            that single-input :meth:`generate` / :meth:`score` calls start from. ``None`` (the default of a bare
            generator: every call runs from scratch, so its executed FLOPs are the plan's) = no reuse; an
            :class:`~skipenv.envs.Evaluator` attaches a 2 GiB store unless ``reuse=False`` or ``SKIPENV_REUSE=0``.
        staged_states: a :class:`~skipenv.generators.reuse.StagedStates` while a table build scores a document's
            plans (single-input teacher-forced scoring from the prefix store then also reuses the state of the plan
            that skips the same sublayers on the whole input); ``None`` (the default, the live env's path) = off.
    """

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        self.prefix_store: PrefixStore | None = None
        self.staged_states = None

    @contextlib.contextmanager
    def _reusing(self, inputs, reuse: bool, use_cache: bool = True, target=None, plan=None):
        """While active (one input, reuse on, a store), this thread's model calls start from the stored prefix state
        of the input (computed now over the input, followed by ``target`` when scoring, on the store's
        ``admit_after``-th request; a full-model generation never computes one: it would gain nothing)."""
        store = getattr(self, "prefix_store", None)
        if not (reuse and use_cache and store is not None and isinstance(inputs, (list, tuple))
                and len(inputs) == 1 and isinstance(inputs[0], PromptInput)
                and (plan is None or isinstance(plan, SkipPlan))
                and (target is None or isinstance(target, (list, tuple)))):
            yield
            return
        key = tuple(int(i) for i in inputs[0].input_ids)
        full_ids = key + tuple(int(i) for i in (target or ()))
        limit = self._max_positions()
        if limit is not None and len(full_ids) > limit:
            yield  # the from-scratch path raises the length error
            return
        with self._lock:
            state = store.get(key)
            if state is None:
                worth = target is not None or (plan is not None and not plan.is_empty)
                if not (worth and store.admit(key)):
                    yield
                    return
                with torch.inference_mode():
                    state = compute_state(self, full_ids)
                state = store.put(state, key)
            previous = getattr(_ACTIVE, "value", None)
            _ACTIVE.value = (self, state)
            try:
                yield
            finally:
                _ACTIVE.value = previous

    def _active_state(self):
        value = getattr(_ACTIVE, "value", None)
        return value[1] if value is not None and value[0] is self else None

    def generate(self, inputs, plan=None, *, max_new_tokens: int = 32, use_cache: bool = True, stop=None,
                 reuse: bool = True):
        with self._reusing(inputs, reuse, use_cache, plan=plan):
            return super().generate(inputs, plan, max_new_tokens=max_new_tokens, use_cache=use_cache, stop=stop)

    generate.__doc__ = SkippableGenerator.generate.__doc__

    def score(self, inputs, targets, plan=None, *, reuse: bool = True):
        with self._reusing(inputs, reuse, target=targets[0] if len(targets) == 1 else None):
            return super().score(inputs, targets, plan)

    score.__doc__ = SkippableGenerator.score.__doc__

    def _pad(self, seqs):
        return _left_pad(seqs, self.pad_token_id, self.device)

    def _forward(self, ids, mask, cache, *, logits_to_keep: int = 0) -> torch.Tensor:
        """One model call over ``ids`` ``[B, t]`` (the last ``t`` positions of ``mask`` ``[B, T]``); logits
        ``[B, logits_to_keep or t, V]``."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        from_start = cache is None or cache.get_seq_length() == 0
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)[:, -ids.shape[1]:],
                         **kwargs)
        if cache is not None:
            cache.advance(ids.shape[1])
        # NaN / inf anywhere in the pass reach these logits (attention mixes every earlier position)
        self._check_finite(out.logits, ids if from_start and ids.shape[1] == mask.shape[1] else None, mask)
        return out.logits

    def _begin_decoding(self, ids, mask, plan, use_cache):
        state = self._active_state()
        if state is not None and use_cache and ids.shape[0] == 1:
            return _ReusedDecoding(self, ids, mask, plan, state)
        return _CausalDecoding(self, ids, mask, plan, use_cache)

    def _target_logits(self, prompts, targets):
        state = self._active_state()
        if state is not None and len(prompts) == 1 and self._active_plan is not None:
            m = len(targets[0])
            ids, plan = prompts[0] + targets[0], self._active_plan
            staged = getattr(self, "staged_states", None)  # StagedStates while a table build runs; else None
            if staged is not None:
                staged.bind(getattr(self.prefix_store, "identity", None))
                if staged.wants(state, ids, plan):
                    logits, kept = capture_staged_state(self, state, ids, plan, num_logits=m + 1)
                    staged.put(kept)
                    return [logits[0, :m]]
                state = staged.get(state.ids, plan) or state
            logits, _ = reused_forward(self, state, ids, plan, num_logits=m + 1, need_cache=False)
            return [logits[0, :m]]
        ids, mask = self._pad([p + t for p, t in zip(prompts, targets)])
        # logits only where targets are predicted: the last max(m)+1 columns (skips the LM head over the prompt)
        logits = self._forward(ids, mask, None, logits_to_keep=max(len(t) for t in targets) + 1)
        total = logits.shape[1]
        # target token j sits at (kept) column total - m + j and is predicted by the column before it
        return [logits[i, total - len(t) - 1: total - 1] for i, t in enumerate(targets)]

    def layer_stepper(self, inp: PromptInput, token_flags: Sequence[bool]) -> "LayerStepper":
        """A :class:`LayerStepper` over the prefill of ``inp`` with the given token segments removed."""
        return LayerStepper(self, inp, token_flags)

    def _run_to_first_layer(self, ids, mask):
        self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)


class LayerStepper:
    """Runs the prefill of one input layer by layer, so a sequential agent can decide each layer's skips on the
    hidden state actually produced so far (used by :class:`~skipenv.envs.SwitchDecLayerwiseEnv`).

    The embedding and the layer arguments (mask, positions) are produced by the model's own forward, run with
    every layer passing its input through and stopped at the last one (so each layer's own arguments are kept:
    Gemma 3's sliding-window and full layers get different masks and rotary tables); each :meth:`step` then calls
    one layer (with the same replacement bodies as
    :meth:`SkippableGenerator.generate`). Holds the model's lock while it runs, so it may share the generator with
    other threads.

    Args:
        generator: a decoder-only generator.
        inp: the input.
        token_flags: skipped token segments (applied before the embedding).

    Attributes:
        hidden: the current hidden states ``[1, T, d]`` (may be reassigned to re-run a layer).
        num_tokens: ``T``, the processed input length.
    """

    def __init__(self, generator: DecoderOnlyGenerator, inp: PromptInput, token_flags: Sequence[bool]):
        self.generator = generator
        seqs = [inp.apply_token_skips(tuple(token_flags))]
        generator._check_length(seqs, 0, [inp])
        ids, mask = generator._pad(seqs)
        layers = generator._decoder_layers()
        self._kwargs: list[dict] = []  # per layer: the keyword arguments the model's forward passed to it

        def record(i):
            def body(hidden_states, **kwargs):
                self._kwargs.append(kwargs)
                if i == len(layers) - 1:
                    raise _StopForward(hidden_states)
                return hidden_states  # passed through: the embedding reaches every layer unchanged
            return body

        with generator._lock, replaced_forwards([(layer, record(i)) for i, layer in enumerate(layers)]):
            try:
                with torch.inference_mode():
                    generator._run_to_first_layer(ids, mask)
            except _StopForward as stop:
                self.hidden = stop.hidden
        self.num_tokens = ids.shape[1]

    def pooled(self) -> np.ndarray:
        """Mean over positions of the current hidden states: float32 ``[d]``."""
        return self.hidden[0].float().mean(0).cpu().numpy()

    @torch.inference_mode()
    def step(self, layer_idx: int, skip_attention: bool = False, skip_ffn: bool = False) -> np.ndarray:
        """Run decoder layer ``layer_idx`` (skipping the flagged sublayers) and return the pooled output ``[d]``."""
        gen = self.generator
        layer = gen._decoder_layers()[layer_idx]
        body = [(layer, gen._layer_forward("decoder", layer, skip_attention, skip_ffn))] \
            if skip_attention or skip_ffn else []
        with gen._lock, replaced_forwards(body):
            out = layer(self.hidden, **self._kwargs[layer_idx])
        self.hidden = out[0] if isinstance(out, tuple) else out
        return self.pooled()
