"""Encoder-decoder generators (BART, T5): right-padded encoder batches, the encoder run once per call, the decoder
started from ``decoder_start_token_id``."""

from __future__ import annotations

import torch

from ..plan import SkipPlan
from .adapter import encoder_decoder_cache, self_attention_cache
from .base import SkippableGenerator, _right_pad

__all__ = ["EncoderDecoderGenerator"]


class _Seq2SeqDecoding:
    """Greedy decoding state of an encoder-decoder model: the encoder output (computed once), the decoder tokens so
    far and the decoder's KV cache (or none)."""

    def __init__(self, generator: "EncoderDecoderGenerator", ids, mask, plan: SkipPlan, use_cache: bool):
        self.generator, self.mask = generator, mask
        self.encoded = generator.model.get_encoder()(input_ids=ids, attention_mask=mask)
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

    def _pad(self, seqs):
        return _right_pad(seqs, self.pad_token_id, self.device)

    def _decode(self, encoded, mask, dec_ids, cache) -> torch.Tensor:
        """One decoder call over ``dec_ids`` ``[B, t]`` given the encoder output; logits ``[B, t, V]``."""
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        out = self.model(encoder_outputs=encoded, attention_mask=mask, decoder_input_ids=dec_ids, **kwargs)
        if cache is not None:
            self_attention_cache(cache).advance(dec_ids.shape[1])
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
        encoded = self.model.get_encoder()(input_ids=ids, attention_mask=mask)
        start = self.decoder_start_token_id
        dec_ids, _ = self._pad([[start] + t[:-1] for t in targets])
        logits = self._decode(encoded, mask, dec_ids, None)
        return [logits[i, : len(t)] for i, t in enumerate(targets)]

    def _run_to_first_layer(self, ids, mask):
        self.model.get_encoder()(input_ids=ids, attention_mask=mask)
