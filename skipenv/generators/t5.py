"""T5 encoder-decoder generators (``T5ForConditionalGeneration``; covers T5 v1.0 and gated v1.1 / Flan-T5).
Pre-LN (RMS-style ``T5LayerNorm``) blocks; ``T5Block.layer`` holds the sublayers.

Encoder block::

    h = h + SelfAttention(layer_norm(h), position_bias)      # layer[0]  T5LayerSelfAttention: attention sublayer
    h = h + DenseReluDense(layer_norm(h))                    # layer[-1] T5LayerFF: FFN sublayer

Decoder block::

    h = h + SelfAttention(layer_norm(h), position_bias)      # layer[0]  attention sublayer (causal, KV cache)
    h = h + EncDecAttention(layer_norm(h), enc)              # layer[1]  cross-attention: always kept
    h = h + DenseReluDense(layer_norm(h))                    # layer[-1] FFN sublayer: wi, wo (ReLU / GELU)
                                                             #           or wi_0, wi_1, wo (gated, ``is_gated_act``)

A block returns ``(h, self_attn_position_bias, cross_attn_position_bias)``; the stack hands both biases to the next
block. Block 0's self-attention owns the relative position bias (``has_relative_attention_bias``) and computes it
when it receives ``position_bias=None``; later blocks reuse it. If block 0's attention is skipped, the bias is still
produced with block 0's ``compute_bias`` (an embedding look-up, no matmul) exactly as ``T5Attention.forward`` would,
so every other block computes exactly what it computes in the unmodified model. (In transformers 5.x the attention
mask is passed to every block separately and is not folded into the bias.)

Skipping a sublayer drops its whole line (norm included). Source: ``transformers/models/t5/modeling_t5.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SublayerModules
from .encoder_decoder import EncoderDecoderGenerator
from .flops import FlopsModel, StackCost


def _clamp_fp16(h: torch.Tensor) -> torch.Tensor:
    """The fp16 overflow clamp ``T5Block`` applies after each sublayer (a no-op for other dtypes)."""
    if h.dtype == torch.float16:
        clamp_value = torch.where(torch.isinf(h).any(), torch.finfo(h.dtype).max - 1000, torch.finfo(h.dtype).max)
        h = torch.clamp(h, min=-clamp_value, max=clamp_value)
    return h


def _position_bias(attn: nn.Module, hidden_states: torch.Tensor, cache) -> torch.Tensor:
    """The self-attention position bias ``T5Attention.forward`` builds when it receives ``position_bias=None``.

    Shape ``[1, H, q, past + q]`` (``past`` = tokens already in this layer's self-attention cache): the relative
    position bias for a module with ``has_relative_attention_bias``, zeros otherwise.
    """
    q = hidden_states.shape[1]
    past = cache.get_seq_length(attn.layer_idx) if cache is not None else 0
    past = past.clone() if isinstance(past, torch.Tensor) else past
    key_length = past + q
    if not attn.has_relative_attention_bias:
        return torch.zeros((1, attn.n_heads, q, key_length), device=hidden_states.device, dtype=hidden_states.dtype)
    return attn.compute_bias(q, key_length, device=hidden_states.device, past_seen_tokens=past)


class T5Generator(EncoderDecoderGenerator):
    """Skippable ``T5ForConditionalGeneration`` (relative position bias, ReLU / gated-GELU FFN, pre-LN blocks).

    T5 has no absolute position limit, so inputs are not length-checked against a context size.
    """

    family = "t5"
    architectures = ("T5ForConditionalGeneration",)

    def _encoder_layers(self):
        return self.model.encoder.block

    def _decoder_layers(self):
        return self.model.decoder.block

    def _sublayers(self, stack, layer):
        # each T5Layer* block holds its norm and adds the residual itself
        return SublayerModules(attention=(layer.layer[0],), cross_attention=(layer.layer[1],) if layer.is_decoder else (),
                               ffn=(layer.layer[-1],), outputs_stream=True)

    def _layer_forward(self, stack, layer, skip_attention, skip_ffn):
        def forward(hidden_states, attention_mask=None, position_bias=None, encoder_hidden_states=None,
                    encoder_attention_mask=None, encoder_decoder_position_bias=None, cache=None, **kwargs):
            if skip_attention:
                self_bias = position_bias
                if self_bias is None:  # block 0: later blocks need the bias it would have computed
                    self_bias = _position_bias(layer.layer[0].SelfAttention, hidden_states, cache)
            else:
                hidden_states, self_bias, _ = layer.layer[0](hidden_states, attention_mask=attention_mask,
                                                             position_bias=position_bias, cache=cache, **kwargs)
                hidden_states = _clamp_fp16(hidden_states)
            cross_bias = None
            if layer.is_decoder and encoder_hidden_states is not None:  # cross-attention is never skipped
                hidden_states, cross_bias, _ = layer.layer[1](
                    hidden_states, key_value_states=encoder_hidden_states, attention_mask=encoder_attention_mask,
                    position_bias=encoder_decoder_position_bias, cache=cache, **kwargs)
                hidden_states = _clamp_fp16(hidden_states)
            if not skip_ffn:
                hidden_states = _clamp_fp16(layer.layer[-1](hidden_states))
            return hidden_states, self_bias, cross_bias

        return forward

    def _build_flops_model(self) -> FlopsModel:
        c = self.config
        d, inner = c.d_model, c.num_heads * c.d_kv
        proj = 2 * d * inner  # one d→inner (q, k, v) or inner→d (o) projection per token
        ffn = (3 if c.is_gated_act else 2) * 2 * d * c.d_ff  # (wi_0, wi_1 | wi) + wo
        pair = 4 * inner  # QKᵀ + AV over all heads: 2·2·H·d_kv
        return FlopsModel(
            encoder=StackCost(num_layers=c.num_layers, attn_proj=4 * proj, attn_pair=pair, ffn=ffn),
            decoder=StackCost(num_layers=c.num_decoder_layers, attn_proj=4 * proj, attn_pair=pair, ffn=ffn,
                              cross_proj_q_o=2 * proj, cross_proj_k_v=2 * proj, cross_pair=pair),
            lm_head=2 * d * c.vocab_size,
        )
