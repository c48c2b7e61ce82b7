"""Gemma 3 text decoder-only generators (``Gemma3ForCausalLM``: the text-only checkpoints gemma-3-1b / -270m and
their instruction-tuned versions). Pre- *and* post-norm (Gemma RMSNorm, ``x · (1 + w)``) sublayers::

    h = h + post_attention_layernorm(self_attn(input_layernorm(h)))      # attention sublayer (q / k norms, GQA)
    h = h + post_feedforward_layernorm(mlp(pre_feedforward_layernorm(h))) # FFN sublayer (GeGLU: gate, up, down)

Skipping a sublayer drops its whole line (its two norms included): ``h`` passes through unchanged.
Source: ``transformers/models/gemma3/modeling_gemma3.py`` (``Gemma3DecoderLayer``, ``Gemma3Attention``,
``Gemma3TextModel``). What the installed transformers does, and how skipenv follows it:

- scaled embeddings (``Gemma3TextScaledWordEmbedding``: ``embed · sqrt(d)``) happen in the model's own forward,
  before the first layer; the stored residual streams of prefix reuse are taken after it;
- sliding-window layers: ``config.layer_types`` (default: 5 ``sliding_attention`` layers, window
  ``sliding_window``, then one ``full_attention`` layer) get their own mask and their own rotary table
  (``rope_parameters`` per layer type) from the model's forward, passed to each layer by name; the KV cache of a
  sliding layer keeps the last ``sliding_window - 1`` positions (counted by the FLOPs model), and
  :class:`~skipenv.generators.adapter.SkipAwareCache` answers a skipped layer's length queries from an attending
  layer of the same kind;
- ``final_logit_softcapping`` (``None`` in Gemma 3 configs) is applied by the model's forward and by the batched
  scorer (``batched._lm_head``); ``attn_logit_softcapping`` inside the attention module;
- ``use_bidirectional_attention=True`` (EmbeddingGemma-style encoders) is refused: KV-cache decoding and prefix
  reuse assume causal attention.

Multimodal ``Gemma3ForConditionalGeneration`` (gemma-3-4b / 12b / 27b) is not supported; :func:`wrap` says so.

FLOPs coefficients (2 per multiply-accumulate; norms, softcapping and the embedding scale are not counted):
``attn_proj = 2·d·(H·d_head)·2 + 2·d·(H_kv·d_head)·2`` (q, o + k, v; Gemma 3 sets ``head_dim`` explicitly, 256),
``attn_pair = 4·H·d_head``, ``ffn = 2·3·d·d_ff`` (gate, up, down), LM head ``2·d·V``.
"""

from __future__ import annotations

from .adapter import UnsupportedModelError
from .base import SublayerModules
from .llama import LlamaGenerator


class Gemma3Generator(LlamaGenerator):
    """Skippable ``Gemma3ForCausalLM`` (sandwich norms around each sublayer, local / global attention layers;
    FLOPs model of :class:`LlamaGenerator`).

    Raises:
        UnsupportedModelError: ``config.use_bidirectional_attention`` is set (not a causal decoder).
    """

    family = "gemma3"
    architectures = ("Gemma3ForCausalLM",)

    def __init__(self, model, tokenizer):
        if getattr(model.config, "use_bidirectional_attention", False):
            raise UnsupportedModelError(
                "Gemma 3 with use_bidirectional_attention=True is not a causal decoder; skipenv's KV-cache decoding "
                "and prefix reuse need causal attention (load a causal Gemma 3 checkpoint)")
        super().__init__(model, tokenizer)

    def _sublayers(self, stack, layer):
        return SublayerModules(
            attention=(layer.input_layernorm, layer.self_attn, layer.post_attention_layernorm),
            ffn=(layer.pre_feedforward_layernorm, layer.mlp, layer.post_feedforward_layernorm))

    def _layer_forward(self, stack, layer, skip_attention, skip_ffn):
        def forward(hidden_states, **kwargs):
            if not skip_attention:
                h, _ = layer.self_attn(hidden_states=layer.input_layernorm(hidden_states), **kwargs)
                hidden_states = hidden_states + layer.post_attention_layernorm(h)
            else:
                hidden_states = self._bypassed(stack, layer, "attention", hidden_states)
            if not skip_ffn:
                h = layer.mlp(layer.pre_feedforward_layernorm(hidden_states))
                hidden_states = hidden_states + layer.post_feedforward_layernorm(h)
            else:
                hidden_states = self._bypassed(stack, layer, "ffn", hidden_states)
            return hidden_states

        return forward
