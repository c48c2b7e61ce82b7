"""Analytic FLOPs model of a (skippable) transformer generator.

Convention: 2 FLOPs per multiply-accumulate, the convention of ``torch.utils.flop_counter.FlopCounterMode``.

**Counted** (everything FlopCounterMode counts for these models with eager attention):

- every linear projection (``mm`` / ``addmm``): attention q, k, v, o; FFN up / gate / down; cross-attention
  q, o per decoder token and k, v once per source token; the LM head (``2·d·V`` per position whose logits are
  computed — the last prompt position at prefill and one per decoding step);
- attention score and value products (``QKᵀ`` and ``AV``): ``2·2·H·d_head`` per (query, key) pair. Prefill counts
  the full ``n × n`` square, as eager attention computes it (the causal mask is applied by addition, not by
  skipping work); grouped-query attention counts all ``H`` query heads (keys and values are repeated per head).

**Not counted** (FlopCounterMode does not count them either, and they are < 1 % of the total for these models):
embedding look-ups, position embeddings / rotary, norms, activations, softmax, residual additions, biases of
``nn.Linear`` (fused into ``addmm``), masking, sampling / argmax.

Note: ``FlopCounterMode`` counts 0 FLOPs for the fused CPU kernel of ``torch.nn.functional.scaled_dot_product_attention``
(torch 2.13), so comparisons with it use ``attn_implementation="eager"``; the analytic model counts the attention
products whatever kernel runs them.

Phases of one greedy generation of ``m`` tokens from an ``n``-token input, with the KV cache:

- decoder-only: one prefill call over ``n`` tokens (yields token 1), then ``m − 1`` decoding calls of one token
  each, the ``j``-th attending over ``n + j`` keys (``min(n + j, W)`` in a layer with a sliding window ``W``:
  Mistral, Phi-3, Gemma 3's local layers, Qwen2 / Qwen3 with ``use_sliding_window``);
- encoder-decoder: the encoder over ``n`` tokens, then ``m`` decoder calls of one token each (the first consumes
  the decoder start token), the ``k``-th attending over ``k`` self-attention keys and ``n`` source keys;
  cross-attention keys / values are projected once.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ..plan import SkipPlan

__all__ = ["StackCost", "FlopsModel", "FlopsBreakdown"]


@dataclass(frozen=True)
class StackCost:
    """Per-layer FLOPs coefficients of one layer stack (all layers of a stack have the same shape).

    Attributes:
        num_layers: layers in the stack.
        attn_proj: FLOPs per token of the self-attention projections (q, k, v, o).
        attn_pair: FLOPs per (query, key) pair of ``QKᵀ`` plus ``AV`` = ``4·H·d_head``.
        ffn: FLOPs per token of the feed-forward sublayer.
        cross_proj_q_o: FLOPs per decoder token of the cross-attention q and o projections (0 if none).
        cross_proj_k_v: FLOPs per source token of the cross-attention k and v projections (0 if none).
        cross_pair: FLOPs per (decoder token, source token) pair of cross-attention (0 if none).
        sliding_windows: per layer, the sliding window ``W`` of its KV cache (``None`` = full attention); ``()`` =
            every layer full. A sliding layer's decoding step attends over at most ``W`` keys (its cache keeps the
            last ``W − 1``, see :func:`~skipenv.generators.adapter.sliding_windows`); its prefill still counts the
            full ``n × n`` square (eager attention masks the window by addition).
    """

    num_layers: int
    attn_proj: int
    attn_pair: int
    ffn: int
    cross_proj_q_o: int = 0
    cross_proj_k_v: int = 0
    cross_pair: int = 0
    sliding_windows: tuple = ()

    def window(self, layer: int) -> int | None:
        """The sliding window of ``layer`` (``None`` = full attention)."""
        return self.sliding_windows[layer] if self.sliding_windows else None


def _decode_pairs(n: int, steps: int, window: int | None) -> int:
    """(query, key) pairs of ``steps`` one-token decoding calls after an ``n``-token prefill: the ``j``-th call
    attends over ``n + j`` keys, or ``min(n + j, window)`` for a sliding-window layer."""
    if window is None:
        return steps * n + steps * (steps + 1) // 2
    k = min(max(window - n, 0), steps)  # calls before the window is full
    return k * n + k * (k + 1) // 2 + (steps - k) * window


@dataclass
class FlopsBreakdown:
    """FLOPs of one run, split by phase and by candidate.

    Attributes:
        prefill: FLOPs of the prefill (decoder-only) or encoder + first decoder call (encoder-decoder).
        decoding: FLOPs of the remaining decoding calls.
        per_candidate: FLOPs per unit, keyed like the action labels (``"decoder.attention.3"``,
            ``"encoder.ffn.0"``) plus ``"decoder.cross_attention.i"`` and ``"lm_head"``. Skipped units are 0
            (under a calibrated skip mode: their bypass's FLOPs).
        observation: FLOPs of computing the agent's observation (charged as overhead; 0 unless requested).
    """

    prefill: int = 0
    decoding: int = 0
    per_candidate: dict[str, int] = field(default_factory=dict)
    observation: int = 0

    @property
    def total(self) -> int:
        """All FLOPs: prefill + decoding + observation."""
        return self.prefill + self.decoding + self.observation

    def to_dict(self) -> dict:
        return {"total": self.total, "prefill": self.prefill, "decoding": self.decoding,
                "observation": self.observation, "per_candidate": dict(self.per_candidate)}


@dataclass(frozen=True)
class FlopsModel:
    """Analytic FLOPs of prefill and greedy decoding under a :class:`~skipenv.plan.SkipPlan`.

    Attributes:
        decoder: coefficients of the decoder stack (all layers of a decoder-only model).
        lm_head: FLOPs per position whose logits are computed (``2·d·V``).
        encoder: coefficients of the encoder stack, or ``None`` for decoder-only models.
    """

    decoder: StackCost
    lm_head: int
    encoder: StackCost | None = None

    @property
    def is_encoder_decoder(self) -> bool:
        return self.encoder is not None

    def generation(self, plan: SkipPlan, prompt_length: int, num_generated: int,
                   bypass_per_token: int = 0) -> FlopsBreakdown:
        """FLOPs of greedily generating ``num_generated`` tokens with the KV cache.

        Args:
            plan: the plan; only its sublayer flags are used (token skipping is already in ``prompt_length``).
            prompt_length: input tokens actually processed, i.e. after removing skipped segments.
            num_generated: tokens generated (including a final EOS), ``>= 0``. With 0 only the prefill /
                encoder is counted, with the LM head on one position (decoder-only) as in :meth:`prefill`.
            bypass_per_token: FLOPs per token a skipped decoder sublayer costs (its skip mode's bypass,
                :func:`skipenv.generators.bypass.bypass_flops_per_token`; 0 = identity), charged on the ``n``
                prefill tokens and each decoding step (decoder-only models).

        Raises:
            ValueError: negative lengths, or a bypass cost on an encoder-decoder model.
        """
        if bypass_per_token and self.encoder is not None:
            raise ValueError("skip-mode bypasses are decoder-only; an encoder-decoder plan costs no bypass")
        if prompt_length < 0 or num_generated < 0:
            raise ValueError(f"lengths must be >= 0, got prompt_length={prompt_length}, num_generated={num_generated}")
        n, m = int(prompt_length), int(num_generated)
        out = FlopsBreakdown()
        pc = out.per_candidate
        if self.encoder is None:
            d = self.decoder
            decode_steps = max(m - 1, 0)
            for i in range(d.num_layers):
                # keys attended over all decoding calls: sum_{j=1}^{m-1} (n + j), capped per call by a sliding window
                decode_pairs = _decode_pairs(n, decode_steps, d.window(i))
                by = int(bypass_per_token)  # a skipped sublayer's bypass, per token
                pre_a = by * n if plan.decoder_attention[i] else d.attn_proj * n + d.attn_pair * n * n
                dec_a = by * decode_steps if plan.decoder_attention[i] \
                    else d.attn_proj * decode_steps + d.attn_pair * decode_pairs
                pre_f = by * n if plan.decoder_ffn[i] else d.ffn * n
                dec_f = by * decode_steps if plan.decoder_ffn[i] else d.ffn * decode_steps
                pc[f"decoder.attention.{i}"] = pre_a + dec_a
                pc[f"decoder.ffn.{i}"] = pre_f + dec_f
                out.prefill += pre_a + pre_f
                out.decoding += dec_a + dec_f
            pc["lm_head"] = self.lm_head * max(m, 1)
            out.prefill += self.lm_head
            out.decoding += self.lm_head * decode_steps
            return out

        e, d = self.encoder, self.decoder
        for i in range(e.num_layers):
            a = 0 if plan.encoder_attention[i] else e.attn_proj * n + e.attn_pair * n * n
            f = 0 if plan.encoder_ffn[i] else e.ffn * n
            pc[f"encoder.attention.{i}"], pc[f"encoder.ffn.{i}"] = a, f
            out.prefill += a + f
        if m == 0:  # encoder only; the decoder entries are listed with 0 FLOPs
            for i in range(d.num_layers):
                for kind in ("attention", "ffn", "cross_attention"):
                    pc[f"decoder.{kind}.{i}"] = 0
            pc["lm_head"] = 0
            return out
        # decoder call k (1..m) processes one token attending over k self-attention keys and n source keys
        for i in range(d.num_layers):
            first_a = 0 if plan.decoder_attention[i] else d.attn_proj + d.attn_pair * 1
            rest_a = 0 if plan.decoder_attention[i] else d.attn_proj * (m - 1) + d.attn_pair * (m * (m + 1) // 2 - 1)
            first_f = 0 if plan.decoder_ffn[i] else d.ffn
            rest_f = 0 if plan.decoder_ffn[i] else d.ffn * (m - 1)
            first_x = d.cross_proj_k_v * n + d.cross_proj_q_o + d.cross_pair * n
            rest_x = (d.cross_proj_q_o + d.cross_pair * n) * (m - 1)
            pc[f"decoder.attention.{i}"] = first_a + rest_a
            pc[f"decoder.ffn.{i}"] = first_f + rest_f
            pc[f"decoder.cross_attention.{i}"] = first_x + rest_x
            out.prefill += first_a + first_f + first_x
            out.decoding += rest_a + rest_f + rest_x
        pc["lm_head"] = self.lm_head * m
        out.prefill += self.lm_head
        out.decoding += self.lm_head * (m - 1)
        return out

    def prefill(self, plan: SkipPlan, prompt_length: int) -> FlopsBreakdown:
        """FLOPs of one prefill forward with logits for the last position only (decoder-only), or the encoder
        plus one decoder call (encoder-decoder) — i.e. :meth:`generation` with one generated token."""
        return self.generation(plan, prompt_length, 1)

    def first_layer(self, prompt_length: int) -> int:
        """FLOPs of the first layer (attention + FFN) over ``prompt_length`` tokens: the cost of the agent's
        observation (pooled hidden states after the first layer; encoder layer 0 for encoder-decoder models)."""
        s = self.encoder if self.encoder is not None else self.decoder
        n = int(prompt_length)
        return s.attn_proj * n + s.attn_pair * n * n + s.ffn * n
