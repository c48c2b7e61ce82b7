"""Encoder-decoder generators (BART, T5): right-padded encoder batches, the encoder run once per call, the decoder
started from ``decoder_start_token_id``. A single-input call whose plan removes no token and skips no encoder
sublayer takes the encoder output from :attr:`EncoderDecoderGenerator.prefix_store` (the full model's encoder
output on that input, kept after the first call: identical, as the encoder then runs unmodified)."""

from __future__ import annotations

import contextlib
import threading
from dataclasses import dataclass

import torch

from ..plan import SkipPlan
from .adapter import encoder_decoder_cache, self_attention_cache
from .base import SkippableGenerator, _right_pad
from ..inputs import PromptInput
from .reuse import PrefixStore

__all__ = ["EncoderDecoderGenerator", "EncoderState"]

#: the call running on this thread: (generator, full input ids) while reuse is on, and the active plan
_ACTIVE = threading.local()


@dataclass
class EncoderState:
    """The full model's encoder output on one input (what :attr:`EncoderDecoderGenerator.prefix_store` keeps).

    Attributes:
        ids: the input ids, ``T`` of them. output: the encoder's output (``last_hidden_state`` ``[1, T, d]``).
    """

    ids: tuple[int, ...]
    output: object

    @property
    def nbytes(self) -> int:
        h = self.output.last_hidden_state
        return h.numel() * h.element_size()


class _Seq2SeqDecoding:
    """Greedy decoding state of an encoder-decoder model: the encoder output (computed once), the decoder tokens so
    far and the decoder's KV cache (or none)."""

    def __init__(self, generator: "EncoderDecoderGenerator", ids, mask, plan: SkipPlan, use_cache: bool):
        self.generator, self.mask = generator, mask
        self.encoded = generator._encode(ids, mask, plan)
        self.cache = encoder_decoder_cache(plan.decoder_attention) if use_cache else None
        self.dec = self.new = torch.full((ids.shape[0], 1), generator.decoder_start_token_id, dtype=torch.long,
                                         device=ids.device)

    def next_logits(self) -> torch.Tensor:
        feed = self.new if self.cache is not None else self.dec
        return self.generator._decode(self.encoded, self.mask, feed, self.cache)[:, -1]

    def append(self, tokens: torch.Tensor) -> None:
        self.new = tokens[:, None]
        self.dec = torch.cat([self.dec, self.new], 1)


class EncoderDecoderGenerator(SkippableGenerator):
    """Encoder-decoder families (BART, T5): right-padded encoder batches, the decoder starts from
    ``config.decoder_start_token_id``; the decoder self-attention cache is a
    :class:`~skipenv.generators.adapter.SkipAwareCache` inside an :class:`transformers.EncoderDecoderCache`."""

    _decoder_start_tokens = 1

    def __init__(self, model, tokenizer):
        super().__init__(model, tokenizer)
        #: encoder outputs of the full model per input (``None``, the default of a bare generator = no reuse; an
        #: :class:`~skipenv.envs.Evaluator` attaches a store unless ``reuse=False`` or ``SKIPENV_REUSE=0``)
        self.prefix_store: PrefixStore | None = None

    @contextlib.contextmanager
    def _reusing(self, inputs, reuse: bool):
        active = (reuse and getattr(self, "prefix_store", None) is not None and isinstance(inputs, (list, tuple))
                  and len(inputs) == 1 and isinstance(inputs[0], PromptInput))
        previous = getattr(_ACTIVE, "value", None)
        _ACTIVE.value = (self, tuple(int(i) for i in inputs[0].input_ids)) if active else None
        try:
            yield
        finally:
            _ACTIVE.value = previous

    def generate(self, inputs, plan=None, *, max_new_tokens: int = 32, use_cache: bool = True, stop=None,
                 reuse: bool = True):
        with self._reusing(inputs, reuse):
            return super().generate(inputs, plan, max_new_tokens=max_new_tokens, use_cache=use_cache, stop=stop)

    generate.__doc__ = SkippableGenerator.generate.__doc__

    def score(self, inputs, targets, plan=None, *, reuse: bool = True):
        with self._reusing(inputs, reuse):
            return super().score(inputs, targets, plan)

    score.__doc__ = SkippableGenerator.score.__doc__

    def _encode(self, ids, mask, plan):
        """The encoder output for ``ids`` ``[B, T]``: from the store when one full input runs with no encoder
        sublayer skipped (then the encoder is the full model's), else computed."""
        value = getattr(_ACTIVE, "value", None)
        plan = plan if plan is not None else self._active_plan
        if (value is None or value[0] is not self or plan is None or ids.shape[0] != 1
                or any(plan.encoder_attention) or any(plan.encoder_ffn) or tuple(ids[0].tolist()) != value[1]):
            return self.model.get_encoder()(input_ids=ids, attention_mask=mask)
        state = self.prefix_store.get(value[1])
        if state is None:
            state = EncoderState(value[1], self.model.get_encoder()(input_ids=ids, attention_mask=mask))
            self.prefix_store.put(state)
        return state.output

    def _pad(self, seqs):
        return _right_pad(seqs, self.pad_token_id, self.device)

    def _decode(self, encoded, mask, dec_ids, cache) -> torch.Tensor:
        """One decoder call over ``dec_ids`` ``[B, t]`` given the encoder output; logits ``[B, t, V]``."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=dec_ids, **kwargs)
        if cache is not None:
            self_attention_cache(cache).advance(dec_ids.shape[1])
        self._check_finite(out.logits)  # NaN / inf in the encoder or decoder reach the logits
        return out.logits

    @property
    def decoder_start_token_id(self) -> int:
        start = getattr(self.config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("the model config has no decoder_start_token_id")
        return int(start)

    def _begin_decoding(self, ids, mask, plan, use_cache):
        return _Seq2SeqDecoding(self, ids, mask, plan, use_cache)

    def _target_logits(self, prompts, targets):
        ids, mask = self._pad(prompts)
        encoded = self._encode(ids, mask, None)
        start = self.decoder_start_token_id
        dec_ids, _ = self._pad([[start] + t[:-1] for t in targets])
        logits = self._decode(encoded, mask, dec_ids, None)
        return [logits[i, : len(t)] for i, t in enumerate(targets)]

    def _run_to_first_layer(self, ids, mask):
        self.model.get_encoder()(input_ids=ids, attention_mask=mask)
