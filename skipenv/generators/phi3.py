"""Phi-3 decoder-only generators (``Phi3ForCausalLM``: Phi-3-mini / -medium, Phi-3.5-mini, Phi-4-mini). Pre-LN
(RMSNorm) layers with fused projections::

    h = h + resid_attn_dropout(self_attn(input_layernorm(h)))      # attention sublayer (fused qkv_proj, o_proj)
    h = h + resid_mlp_dropout(mlp(post_attention_layernorm(h)))    # FFN sublayer (fused gate_up_proj, down_proj)

Skipping a sublayer drops its whole line (norm and dropout included). Source:
``transformers/models/phi3/modeling_phi3.py`` (``Phi3DecoderLayer``, ``Phi3Attention``, ``Phi3MLP``). A set
``sliding_window`` (Phi-3-mini-4k: 2047) applies to every layer (one sliding-window mask, every KV-cache layer keeps
the last ``sliding_window - 1`` positions). LongRoPE models (``rope_type="longrope"``, the 128k variants) change
every rotary frequency once a call's sequence passes ``original_max_position_embeddings``, so the length check caps
inputs there (see :meth:`LlamaGenerator._max_positions`).

FLOPs coefficients: the fused ``qkv_proj`` is one ``d × (H + 2·H_kv)·d_head`` product and ``gate_up_proj`` one
``d × 2·d_ff`` product, so the totals equal Llama's: ``attn_proj = 2·d·(H·d_head)·2 + 2·d·(H_kv·d_head)·2``,
``attn_pair = 4·H·d_head``, ``ffn = 2·3·d·d_ff``, LM head ``2·d·V``.
"""

from __future__ import annotations

from .base import SublayerModules
from .llama import LlamaGenerator


class Phi3Generator(LlamaGenerator):
    """Skippable ``Phi3ForCausalLM`` (fused q / k / v and gate / up projections; FLOPs model of
    :class:`LlamaGenerator`)."""

    family = "phi3"
    architectures = ("Phi3ForCausalLM",)

    def _sublayers(self, stack, layer):
        return SublayerModules(attention=(layer.input_layernorm, layer.self_attn, layer.resid_attn_dropout),
                               ffn=(layer.post_attention_layernorm, layer.mlp, layer.resid_mlp_dropout))

    def _layer_forward(self, stack, layer, skip_attention, skip_ffn):
        def forward(hidden_states, **kwargs):
            if not skip_attention:
                h, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
                hidden_states = hidden_states + layer.resid_attn_dropout(h)
            else:
                hidden_states = self._bypassed(stack, layer, "attention", hidden_states)
            if not skip_ffn:
                h = layer.mlp(layer.post_attention_layernorm(hidden_states))
                hidden_states = hidden_states + layer.resid_mlp_dropout(h)
            else:
                hidden_states = self._bypassed(stack, layer, "ffn", hidden_states)
            return hidden_states

        return forward
