"""Llama-family decoder-only generators (``LlamaForCausalLM``; covers SmolLM2). Pre-LN (RMSNorm) layers::

    h = h + self_attn(input_layernorm(h))          # attention sublayer
    h = h + mlp(post_attention_layernorm(h))       # FFN sublayer (SwiGLU: gate, up, down)

Skipping a sublayer drops its whole line (norm included): ``h`` passes through unchanged.
Source of the layer structure: ``transformers/models/llama/modeling_llama.py`` (``LlamaDecoderLayer``).
"""

from __future__ import annotations

from .base import SublayerModules
from .decoder_only import DecoderOnlyGenerator
from .flops import FlopsModel, StackCost


class LlamaGenerator(DecoderOnlyGenerator):
    """Skippable ``LlamaForCausalLM`` (grouped-query attention, SwiGLU FFN, rotary positions)."""

    family = "llama"
    architectures = ("LlamaForCausalLM",)

    def _decoder_layers(self):
        return self.model.model.layers[: self.config.num_hidden_layers]

    def _sublayers(self, stack, layer):
        return SublayerModules(attention=(layer.input_layernorm, layer.self_attn),
                               ffn=(layer.post_attention_layernorm, layer.mlp))

    def _layer_forward(self, stack, layer, skip_attention, skip_ffn):
        def forward(hidden_states, **kwargs):
            if not skip_attention:
                residual = hidden_states
                h, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
                hidden_states = residual + h
            if not skip_ffn:
                hidden_states = hidden_states + layer.mlp(layer.post_attention_layernorm(hidden_states))
            return hidden_states

        return forward

    def _build_flops_model(self) -> FlopsModel:
        c = self.config
        d, h = c.hidden_size, c.num_attention_heads
        hd = getattr(c, "head_dim", None) or d // h
        kv = c.num_key_value_heads
        return FlopsModel(
            decoder=StackCost(
                num_layers=c.num_hidden_layers,
                attn_proj=2 * d * (h * hd) * 2 + 2 * d * (kv * hd) * 2,  # q, o  +  k, v
                attn_pair=4 * h * hd,
                ffn=2 * 3 * d * c.intermediate_size,  # gate, up, down
            ),
            lm_head=2 * d * c.vocab_size,
        )
