"""Qwen3 decoder-only generators (``Qwen3ForCausalLM``: Qwen3 dense models, e.g. Qwen3-0.6B / 1.7B / 4B / 8B).
Pre-LN (RMSNorm) layers with per-head RMSNorm on queries and keys inside the attention module::

    q, k = q_norm(q_proj(x)), k_norm(k_proj(x))    # per head, before RoPE (inside self_attn)
    h = h + self_attn(input_layernorm(h))          # attention sublayer (GQA, no q / k / v bias)
    h = h + mlp(post_attention_layernorm(h))       # FFN sublayer (SwiGLU: gate, up, down)

Skipping a sublayer drops its whole line (norm included; the q / k norms are part of ``self_attn``).
Source: ``transformers/models/qwen3/modeling_qwen3.py`` (``Qwen3DecoderLayer``, ``Qwen3Attention``). Sliding-window
layers (``use_sliding_window``) are handled as in ``qwen2.py``. MoE variants (``Qwen3MoeForCausalLM``) are not
supported.

FLOPs coefficients are Llama's (the q / k norms are not matrix products and are not counted):
``attn_proj = 2·d·(H·d_head)·2 + 2·d·(H_kv·d_head)·2``, ``attn_pair = 4·H·d_head``, ``ffn = 2·3·d·d_ff``;
Qwen3 sets ``head_dim`` explicitly (128), so ``H·d_head`` may differ from ``d``.
"""

from __future__ import annotations

from .llama import LlamaGenerator


class Qwen3Generator(LlamaGenerator):
    """Skippable ``Qwen3ForCausalLM`` (the layer body, module map and FLOPs model of :class:`LlamaGenerator`)."""

    family = "qwen3"
    architectures = ("Qwen3ForCausalLM",)
