"""Qwen2 decoder-only generators (``Qwen2ForCausalLM``: Qwen2, Qwen2.5, Qwen2.5-Instruct / -Coder / -Math).
Pre-LN (RMSNorm) layers, the Llama layer with biased q / k / v projections::

    h = h + self_attn(input_layernorm(h))          # attention sublayer (q, k, v with bias; o without; GQA, RoPE)
    h = h + mlp(post_attention_layernorm(h))       # FFN sublayer (SwiGLU: gate, up, down)

Skipping a sublayer drops its whole line (norm included): ``h`` passes through unchanged.
Source: ``transformers/models/qwen2/modeling_qwen2.py`` (``Qwen2DecoderLayer``, ``Qwen2Attention``).

With ``use_sliding_window=True`` the layers from ``max_window_layers`` on attend within ``sliding_window`` tokens
(``config.layer_types``); their KV cache keeps the last ``sliding_window - 1`` positions, which the FLOPs model
counts (:attr:`~skipenv.generators.flops.StackCost.sliding_windows`). Prefix reuse and batched scoring work for
both layer kinds.

FLOPs coefficients (2 per multiply-accumulate; biases are added inside ``addmm`` and not counted) are Llama's:
``attn_proj = 2·d·(H·d_head)·2 + 2·d·(H_kv·d_head)·2`` (q, o + k, v), ``attn_pair = 4·H·d_head``,
``ffn = 2·3·d·d_ff``, LM head ``2·d·V``.
"""

from __future__ import annotations

from .llama import LlamaGenerator


class Qwen2Generator(LlamaGenerator):
    """Skippable ``Qwen2ForCausalLM`` (the layer body, module map and FLOPs model of :class:`LlamaGenerator`)."""

    family = "qwen2"
    architectures = ("Qwen2ForCausalLM",)
