"""Mistral decoder-only generators (``MistralForCausalLM``: Mistral-7B v0.1-v0.3, Mistral-Nemo, Codestral-style
dense models). Pre-LN (RMSNorm) layers, the Llama layer with an optional sliding window on every layer::

    h = h + self_attn(input_layernorm(h))          # attention sublayer (GQA, RoPE; window config.sliding_window)
    h = h + mlp(post_attention_layernorm(h))       # FFN sublayer (SwiGLU: gate, up, down)

Skipping a sublayer drops its whole line (norm included). Source: ``transformers/models/mistral/modeling_mistral.py``
(``MistralDecoderLayer``; ``MistralModel`` builds one sliding-window causal mask when ``sliding_window`` is set).
A set ``sliding_window`` (v0.1: 4096) makes every KV-cache layer keep the last ``sliding_window - 1`` positions,
which the FLOPs model counts for decoding steps; v0.2+ set it to ``None`` (full attention).

FLOPs coefficients are Llama's: ``attn_proj = 2·d·(H·d_head)·2 + 2·d·(H_kv·d_head)·2``, ``attn_pair = 4·H·d_head``,
``ffn = 2·3·d·d_ff``, LM head ``2·d·V``.
"""

from __future__ import annotations

from .llama import LlamaGenerator


class MistralGenerator(LlamaGenerator):
    """Skippable ``MistralForCausalLM`` (the layer body, module map and FLOPs model of :class:`LlamaGenerator`)."""

    family = "mistral"
    architectures = ("MistralForCausalLM",)
