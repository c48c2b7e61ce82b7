"""BART encoder-decoder generators (``BartForConditionalGeneration``). Post-LN (LayerNorm after the residual add).

Encoder layer (``BartEncoderLayer``)::

    h = self_attn_layer_norm(h + self_attn(h))                 # attention sublayer
    h = final_layer_norm(h + fc2(act(fc1(h))))                 # FFN sublayer

Decoder layer (``BartDecoderLayer``)::

    h = self_attn_layer_norm(h + self_attn(h))                 # attention sublayer (causal self-attention, KV cache)
    h = encoder_attn_layer_norm(h + encoder_attn(h, enc))      # cross-attention: always kept
    h = final_layer_norm(h + fc2(act(fc1(h))))                 # FFN sublayer

Skipping a sublayer replaces its whole line by ``h`` (the post-LN norm is skipped too): the residual stream passes
through unchanged and nothing of the sublayer is computed. A decoder layer whose self-attention is skipped stores
no keys / values in the self-attention cache; its cross-attention keys / values are still cached.
Decoder positions come from ``cache.get_seq_length()`` (answered by :class:`~skipenv.generators.adapter.SkipAwareCache`).
Source of the layer structure: ``transformers/models/bart/modeling_bart.py``.
"""

from __future__ import annotations

import torch
from torch import nn

from .base import SublayerModules
from .encoder_decoder import EncoderDecoderGenerator
from .flops import FlopsModel, StackCost


def _clamp_fp16(h: torch.Tensor) -> torch.Tensor:
    """The fp16 overflow clamp of ``BartEncoderLayer`` (a no-op for other dtypes)."""
    if h.dtype == torch.float16 and not torch.isfinite(h).all():
        clamp_value = torch.finfo(h.dtype).max - 1000
        h = torch.clamp(h, min=-clamp_value, max=clamp_value)
    return h


class BartGenerator(EncoderDecoderGenerator):
    """Skippable ``BartForConditionalGeneration`` (learned positions, GELU FFN, post-LN layers)."""

    family = "bart"
    architectures = ("BartForConditionalGeneration",)

    def _encoder_layers(self):
        return self.model.model.encoder.layers

    def _decoder_layers(self):
        return self.model.model.decoder.layers

    @staticmethod
    def _ffn(layer: nn.Module, hidden_states: torch.Tensor) -> torch.Tensor:
        """``final_layer_norm(h + fc2(act(fc1(h))))``, with the layer's dropouts (inactive in eval mode)."""
        residual = hidden_states
        h = layer.activation_fn(layer.fc1(hidden_states))
        h = nn.functional.dropout(h, p=layer.activation_dropout, training=layer.training)
        h = layer.fc2(h)
        h = nn.functional.dropout(h, p=layer.dropout, training=layer.training)
        return layer.final_layer_norm(residual + h)

    def _sublayers(self, stack, layer):
        cross = (layer.encoder_attn, layer.encoder_attn_layer_norm) if stack == "decoder" else ()
        return SublayerModules(attention=(layer.self_attn, layer.self_attn_layer_norm), cross_attention=cross,
                               ffn=(layer.fc1, layer.fc2, layer.final_layer_norm), outputs_stream=True)

    def _layer_forward(self, stack, layer, skip_attention, skip_ffn):
        if stack == "encoder":

            def forward(hidden_states, attention_mask=None, **kwargs):
                if not skip_attention:
                    h, _ = layer.self_attn(hidden_states, attention_mask=attention_mask, **kwargs)
                    h = nn.functional.dropout(h, p=layer.dropout, training=layer.training)
                    hidden_states = layer.self_attn_layer_norm(hidden_states + h)
                if not skip_ffn:
                    hidden_states = self._ffn(layer, hidden_states)
                return _clamp_fp16(hidden_states)

            return forward

        def forward(hidden_states, attention_mask=None, encoder_hidden_states=None, encoder_attention_mask=None,
                    cache=None, use_cache=True, **kwargs):
            if not skip_attention:
                h, _ = layer.self_attn(hidden_states, cache=cache, attention_mask=attention_mask, **kwargs)
                h = nn.functional.dropout(h, p=layer.dropout, training=layer.training)
                hidden_states = layer.self_attn_layer_norm(hidden_states + h)
            if encoder_hidden_states is not None:  # cross-attention is never skipped
                h, _ = layer.encoder_attn(hidden_states, key_value_states=encoder_hidden_states,
                                          attention_mask=encoder_attention_mask, cache=cache, **kwargs)
                h = nn.functional.dropout(h, p=layer.dropout, training=layer.training)
                hidden_states = layer.encoder_attn_layer_norm(hidden_states + h)
            if not skip_ffn:
                hidden_states = self._ffn(layer, hidden_states)
            return hidden_states

        return forward

    def _build_flops_model(self) -> FlopsModel:
        c = self.config
        d = c.d_model
        proj = 2 * d * d  # one d×d projection (q, k, v or out_proj) per token
        return FlopsModel(
            encoder=StackCost(
                num_layers=c.encoder_layers,
                attn_proj=4 * proj,  # q, k, v, out
                attn_pair=4 * d,  # QKᵀ + AV over all heads: 2·2·H·d_head
                ffn=2 * 2 * d * c.encoder_ffn_dim,  # fc1 + fc2
            ),
            decoder=StackCost(
                num_layers=c.decoder_layers,
                attn_proj=4 * proj,
                attn_pair=4 * d,
                ffn=2 * 2 * d * c.decoder_ffn_dim,
                cross_proj_q_o=2 * proj,  # encoder_attn q, out per decoder token
                cross_proj_k_v=2 * proj,  # encoder_attn k, v once per source token
                cross_pair=4 * d,
            ),
            lm_head=2 * d * c.vocab_size,
        )
