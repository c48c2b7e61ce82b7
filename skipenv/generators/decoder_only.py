"""Decoder-only (causal LM) generators: left-padded batches, explicit position ids, a KV cache per call; and the
:class:`LayerStepper` that runs a prefill one layer at a time (for the layerwise env)."""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from ..inputs import PromptInput
from ..plan import SkipPlan
from .adapter import SkipAwareCache, replaced_forwards
from .base import SkippableGenerator, _left_pad, _positions, _StopForward

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


class DecoderOnlyGenerator(SkippableGenerator):
    """Decoder-only (causal LM) families: left-padded batches, explicit position ids, a
    :class:`~skipenv.generators.adapter.SkipAwareCache` per call."""

    def _pad(self, seqs):
        return _left_pad(seqs, self.pad_token_id, self.device)

    def _forward(self, ids, mask, cache, *, logits_to_keep: int = 0) -> torch.Tensor:
        """One model call over ``ids`` ``[B, t]`` (the last ``t`` positions of ``mask`` ``[B, T]``); logits
        ``[B, logits_to_keep or t, V]``."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        out = self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)[:, -ids.shape[1]:],
                         **kwargs)
        if cache is not None:
            cache.advance(ids.shape[1])
        return out.logits

    def _begin_decoding(self, ids, mask, plan, use_cache):
        return _CausalDecoding(self, ids, mask, plan, use_cache)

    def _target_logits(self, prompts, targets):
        ids, mask = self._pad([p + t for p, t in zip(prompts, targets)])
        # logits only where targets are predicted: the last max(m)+1 columns (skips the LM head over the prompt)
        logits = self._forward(ids, mask, None, logits_to_keep=max(len(t) for t in targets) + 1)
        total = logits.shape[1]
        # target token j sits at (kept) column total - m + j and is predicted by the column before it
        return [logits[i, total - len(t) - 1: total - 1] for i, t in enumerate(targets)]

    def _run_to_first_layer(self, ids, mask):
        self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)


class LayerStepper:
    """Runs the prefill of one input layer by layer, so a sequential agent can decide each layer's skips on the
    hidden state actually produced so far (used by :class:`~skipenv.envs.SwitchDecLayerwiseEnv`).

    The embedding and the layer arguments (mask, positions) are produced by the model's own forward, stopped just
    before the first layer; each :meth:`step` then calls one layer (with the same replacement bodies as
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
        captured = {}

        def hook(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopForward(args[0] if args else kwargs["hidden_states"])

        with generator._lock:
            handle = generator._decoder_layers()[0].register_forward_pre_hook(hook, with_kwargs=True)
            try:
                with torch.inference_mode():
                    generator._run_to_first_layer(ids, mask)
            except _StopForward as stop:
                self.hidden = stop.hidden
            finally:
                handle.remove()
        self._kwargs = dict(captured["kwargs"])
        self._kwargs.pop("hidden_states", None)
        self._extra_args = tuple(captured["args"][1:])
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
            out = layer(self.hidden, *self._extra_args, **self._kwargs)
        self.hidden = out[0] if isinstance(out, tuple) else out
        return self.pooled()
