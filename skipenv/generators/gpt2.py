"""GPT-2 decoder-only generators (``GPT2LMHeadModel``). Pre-LN (LayerNorm) blocks::

    h = h + attn(ln_1(h))        # attention sublayer (fused c_attn: q, k, v; c_proj: o)
    h = h + mlp(ln_2(h))         # FFN sublayer (c_fc, c_proj)

Skipping a sublayer drops its whole line (norm included). Source: ``transformers/models/gpt2/modeling_gpt2.py``
(``GPT2Block``). Cross-attention blocks (``add_cross_attention``) are not supported.
"""

from __future__ import annotations

from .adapter import UnsupportedModelError
from .base import SublayerModules
from .decoder_only import DecoderOnlyGenerator
from .flops import FlopsModel, StackCost


class GPT2Generator(DecoderOnlyGenerator):
    """Skippable ``GPT2LMHeadModel`` (multi-head attention, GELU MLP, learned absolute positions)."""

    family = "gpt2"
    architectures = ("GPT2LMHeadModel",)

    def __init__(self, model, tokenizer):
        if getattr(model.config, "add_cross_attention", False):
            raise UnsupportedModelError("GPT-2 with add_cross_attention=True is not supported")
        super().__init__(model, tokenizer)

    def _decoder_layers(self):
        return self.model.transformer.h

    def _sublayers(self, stack, layer):
        return SublayerModules(attention=(layer.ln_1, layer.attn), ffn=(layer.ln_2, layer.mlp))

    def _layer_forward(self, stack, layer, skip_attention, skip_ffn):
        def forward(hidden_states, encoder_hidden_states=None, encoder_attention_mask=None, **kwargs):
            if not skip_attention:
                h, _ = layer.attn(layer.ln_1(hidden_states), **kwargs)
                hidden_states = hidden_states + h
            else:
                hidden_states = self._bypassed(stack, layer, "attention", hidden_states)
            if not skip_ffn:
                hidden_states = hidden_states + layer.mlp(layer.ln_2(hidden_states))
            else:
                hidden_states = self._bypassed(stack, layer, "ffn", hidden_states)
            return hidden_states

        return forward

    def _build_flops_model(self) -> FlopsModel:
        c = self.config
        d = c.n_embd
        inner = c.n_inner if c.n_inner is not None else 4 * d
        return FlopsModel(
            decoder=StackCost(
                num_layers=c.n_layer,
                attn_proj=2 * d * 3 * d + 2 * d * d,  # c_attn (q, k, v) + c_proj (o)
                attn_pair=4 * d,
                ffn=2 * 2 * d * inner,  # c_fc + c_proj
            ),
            lm_head=2 * d * c.vocab_size,
        )
