"""Llama-family decoder-only generators (``LlamaForCausalLM``; covers SmolLM2). Pre-LN (RMSNorm) layers::

    h = h + self_attn(input_layernorm(h))          # attention sublayer
    h = h + mlp(post_attention_layernorm(h))       # FFN sublayer (SwiGLU: gate, up, down)

Skipping a sublayer drops its whole line (norm included): ``h`` passes through unchanged.
Source of the layer structure: ``transformers/models/llama/modeling_llama.py`` (``LlamaDecoderLayer``).
"""

from __future__ import annotations

from .adapter import sliding_windows
from .base import SublayerModules
from .decoder_only import DecoderOnlyGenerator
from .flops import FlopsModel, StackCost


class LlamaGenerator(DecoderOnlyGenerator):
    """Skippable ``LlamaForCausalLM`` (grouped-query attention, SwiGLU FFN, rotary positions; Llama 2, Llama 3.x
    with ``rope_type="llama3"``, SmolLM2). The base of the families with the same layer contract (Qwen2, Qwen3,
    Mistral, Phi-3, Gemma 3: ``qwen2.py``, ``qwen3.py``, ``mistral.py``, ``phi3.py``, ``gemma3.py``)."""

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
            else:
                hidden_states = self._bypassed(stack, layer, "attention", hidden_states)
            if not skip_ffn:
                hidden_states = hidden_states + layer.mlp(layer.post_attention_layernorm(hidden_states))
            else:
                hidden_states = self._bypassed(stack, layer, "ffn", hidden_states)
            return hidden_states

        return forward

    def _max_positions(self) -> int | None:
        """The context limit of the length check: ``max_position_embeddings``, or with LongRoPE (``rope_type
        "longrope"``, Phi-3 long-context models) its ``original_max_position_embeddings``: past it transformers
        switches every rotary frequency for the whole call (``modeling_rope_utils.dynamic_rope_update``), so keys
        cached before the switch would no longer match a from-scratch pass (cache ≠ no cache, reuse ≠ scratch)."""
        limit = super()._max_positions()
        rope = getattr(self.config, "rope_parameters", None) or {}
        if rope.get("rope_type") == "longrope" and rope.get("original_max_position_embeddings"):
            original = int(rope["original_max_position_embeddings"])
            limit = original if limit is None else min(limit, original)
        return limit

    def _build_flops_model(self) -> FlopsModel:
        c = self.config
        d, h = c.hidden_size, c.num_attention_heads
        hd = getattr(c, "head_dim", None) or d // h
        kv = c.num_key_value_heads
        windows = sliding_windows(c)
        return FlopsModel(
            decoder=StackCost(
                num_layers=c.num_hidden_layers,
                # q, o  +  k, v (Phi-3's fused qkv_proj has the same d x (h + 2 kv) hd weights; biases, as
                # Qwen2's q/k/v have, are added by addmm and not counted)
                attn_proj=2 * d * (h * hd) * 2 + 2 * d * (kv * hd) * 2,
                attn_pair=4 * h * hd,  # QK^T and AV over all h query heads (k / v repeated per group)
                ffn=2 * 3 * d * c.intermediate_size,  # gate, up, down (Phi-3: fused gate_up_proj, down_proj)
                sliding_windows=windows if any(w is not None for w in windows) else (),
            ),
            lm_head=2 * d * c.vocab_size,
        )
