"""Skippable execution of a frozen Hugging Face generator.

A :class:`SkippableGenerator` wraps a loaded model and tokenizer (no weights are copied) and runs it along the
computation path of a :class:`~skipenv.plan.SkipPlan`:

- a skipped ``attention`` / ``ffn`` sublayer is not called at all: the residual stream passes through unchanged
  (for pre-LN layers the sublayer's norm is not computed either; for post-LN layers such as BART's, the
  ``LayerNorm(x + sublayer(x))`` block is replaced by ``x``);
- skipped ``tokens`` segments are removed from the input ids before the embedding, so every layer sees the
  shorter sequence;
- the plan holds for the whole episode: prefill and every decoding step with the KV cache. A layer whose attention
  is skipped stores no keys / values; :class:`SkipAwareCache` answers sequence-length queries from a layer that
  does attend (transformers asks layer 0 by default).

Implementation: while a call runs, each layer's ``forward`` is replaced on the *instance* by a family-specific
function (see ``llama.py``, ``gpt2.py``, ``bart.py``, ``t5.py``) that skips the flagged sublayers; the original
``forward`` is restored afterwards, so the model is untouched between calls. Masks, positions and the cache are
built by the model's own ``forward``.
"""

from __future__ import annotations

import contextlib
import inspect
import types
from dataclasses import dataclass
from typing import Callable, Sequence

import numpy as np
import torch
from torch import nn
from transformers import DynamicCache

from ..inputs import PromptInput
from ..plan import PlanSpec, SkipPlan
from .flops import FlopsBreakdown, FlopsModel

__all__ = [
    "SkippableGenerator",
    "DecoderOnlyGenerator",
    "EncoderDecoderGenerator",
    "GenerationOutput",
    "ScoreOutput",
    "SkipAwareCache",
    "UnsupportedModelError",
]


class UnsupportedModelError(TypeError):
    """The model's architecture has no skippable wrapper."""


class _StopForward(Exception):
    """Raised by a hook to end a forward pass early (after the first layer)."""

    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


@dataclass
class GenerationOutput:
    """Result of :meth:`SkippableGenerator.generate` for a batch of ``B`` inputs.

    Attributes:
        tokens: ``B`` lists of generated token ids (greedy; ends with EOS if EOS was produced; no padding).
        texts: ``B`` decoded strings (special tokens removed, stripped).
        prompt_lengths: ``B`` input lengths actually processed (after token skipping).
        num_generated: ``B`` counts of generated tokens (``len(tokens[i])``).
    """

    tokens: list[list[int]]
    texts: list[str]
    prompt_lengths: list[int]

    @property
    def num_generated(self) -> list[int]:
        return [len(t) for t in self.tokens]


@dataclass
class ScoreOutput:
    """Teacher-forced scoring of one target under a plan (one forward pass).

    Attributes:
        logprobs: shape ``[m]`` float32, ``log p(target_t | input, target_<t)`` in nats.
        argmax: shape ``[m]`` int64, the most likely token at each target position.
        prompt_length: input tokens processed after token skipping.
    """

    logprobs: torch.Tensor
    argmax: torch.Tensor
    prompt_length: int


class SkipAwareCache(DynamicCache):
    """A :class:`transformers.DynamicCache` for plans that skip attention sublayers.

    A layer whose attention is skipped stores no keys / values, but transformers derives the processed sequence
    length (for masks and positions) from layer 0 by default. This cache redirects ``get_seq_length``,
    ``get_mask_sizes`` and ``get_query_offset`` for skipped layers to the first layer that attends. If every
    attention is skipped no layer stores anything, so the generator reports each call's new tokens with
    :meth:`advance` and the cache answers length queries from that count (BART's decoder derives its positions
    from ``get_seq_length()``).

    Args:
        config: the model config (passed to :class:`DynamicCache`).
        attention_skipped: one flag per layer of this stack, ``True`` = that layer's attention is skipped.
    """

    def __init__(self, config, attention_skipped: Sequence[bool]):
        super().__init__(config=config)
        self.attention_skipped = tuple(bool(s) for s in attention_skipped)
        self.reference_layer = next((i for i, s in enumerate(self.attention_skipped) if not s), None)
        self.unattended_length = 0  # tokens processed so far, counted only when no layer attends

    def advance(self, num_tokens: int) -> None:
        """Record that a forward call processed ``num_tokens`` new positions (only counted when every attention is
        skipped; otherwise the reference layer's keys hold the length)."""
        if self.reference_layer is None:
            self.unattended_length += int(num_tokens)

    def _redirect(self, layer_idx: int) -> int | None:
        if layer_idx < len(self.attention_skipped) and self.attention_skipped[layer_idx]:
            return self.reference_layer
        return layer_idx

    def get_seq_length(self, layer_idx: int = 0) -> int:
        ref = self._redirect(layer_idx)
        return self.unattended_length if ref is None else super().get_seq_length(ref)

    def get_mask_sizes(self, query_length: int, layer_idx: int) -> tuple[int, int]:
        ref = self._redirect(layer_idx)
        return (self.unattended_length + query_length, 0) if ref is None else super().get_mask_sizes(query_length, ref)

    def get_query_offset(self, layer_idx: int = 0) -> int:
        ref = self._redirect(layer_idx)
        return self.unattended_length if ref is None else super().get_query_offset(ref)


def _cache_kwarg(model: nn.Module) -> str:
    """Name of the cache argument of ``model.forward``: ``cache`` (transformers ≥ 5.2x) or ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


class SkippableGenerator:
    """Base class: a frozen Hugging Face generator that runs along a :class:`SkipPlan`.

    Build one with :func:`skipenv.generators.wrap`; subclasses exist per model family. All methods run under
    ``torch.inference_mode()``; the model is put in eval mode and never modified between calls.

    Args:
        model: a loaded ``*ForCausalLM`` / ``*ForConditionalGeneration`` model (any device / dtype).
        tokenizer: its tokenizer (needs ``eos_token_id``; ``pad_token_id`` falls back to EOS).

    Attributes:
        flops_model: the analytic :class:`~skipenv.generators.flops.FlopsModel` of this model.
    """

    family: str = ""
    #: Hugging Face architecture classes (names) this wrapper supports.
    architectures: tuple[str, ...] = ()

    def __init__(self, model: nn.Module, tokenizer):
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = model.config
        self._cache_kw = _cache_kwarg(model)
        self.flops_model = self._build_flops_model()
        eos = getattr(tokenizer, "eos_token_id", None)
        if eos is None:
            eos = getattr(model.generation_config, "eos_token_id", None) or getattr(self.config, "eos_token_id", None)
        if isinstance(eos, (list, tuple)):
            eos = eos[0]
        self.eos_token_id = eos
        pad = getattr(tokenizer, "pad_token_id", None)
        self.pad_token_id = pad if pad is not None else (eos if eos is not None else 0)

    # ------------------------------------------------------------------ per-family hooks
    def _encoder_layers(self) -> Sequence[nn.Module]:
        return ()

    def _decoder_layers(self) -> Sequence[nn.Module]:
        raise NotImplementedError

    def _layer_forward(self, stack: str, layer: nn.Module, skip_attention: bool, skip_ffn: bool) -> Callable:
        """Return a replacement ``forward(hidden_states, **kwargs)`` for ``layer`` that skips the flagged
        sublayers. ``stack`` is ``"encoder"`` or ``"decoder"``. Keyword arguments are those the model's own
        forward passes to the layer (normalised by name)."""
        raise NotImplementedError

    def _build_flops_model(self) -> FlopsModel:
        raise NotImplementedError

    # ------------------------------------------------------------------ plan handling
    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_encoder_layers(self) -> int:
        return len(self._encoder_layers())

    @property
    def num_decoder_layers(self) -> int:
        return len(self._decoder_layers())

    @property
    def hidden_size(self) -> int:
        """Width ``d`` of the residual stream (size of the observation vector)."""
        return int(self.config.get_text_config().hidden_size if hasattr(self.config, "get_text_config")
                   else self.config.hidden_size)

    def plan_spec(self, token_segments: int = 8) -> PlanSpec:
        """The candidate layout of this model with ``token_segments`` document segments."""
        return PlanSpec(self.config.model_type, self.num_encoder_layers, self.num_decoder_layers, token_segments)

    def empty_plan(self, token_segments: int = 8) -> SkipPlan:
        return self.plan_spec(token_segments).empty_plan()

    def _check_plan(self, plan: SkipPlan | None, token_segments: int = 8) -> SkipPlan:
        if plan is None:
            return self.empty_plan(token_segments)
        if not isinstance(plan, SkipPlan):
            raise TypeError(f"expected a SkipPlan, got {type(plan).__name__}; build one with SkipPlan.from_action")
        plan.check(self.plan_spec(plan.spec.token_segments))
        return plan

    @contextlib.contextmanager
    def skipping(self, plan: SkipPlan):
        """Context manager: while active, the model's layers skip the sublayers flagged in ``plan``.

        Token skipping is not applied here (it changes the inputs; see :meth:`prepare_ids`).
        Layers with nothing skipped keep their original ``forward``.
        """
        plan = self._check_plan(plan)
        patched: list[nn.Module] = []
        try:
            for stack, layers, attn, ffn in (
                ("encoder", self._encoder_layers(), plan.encoder_attention, plan.encoder_ffn),
                ("decoder", self._decoder_layers(), plan.decoder_attention, plan.decoder_ffn),
            ):
                for layer, a, f in zip(layers, attn, ffn):
                    if not (a or f):
                        continue
                    fn = self._layer_forward(stack, layer, a, f)
                    sig = inspect.signature(type(layer).forward)

                    def forward(self_layer, *args, _fn=fn, _sig=sig, **kwargs):
                        bound = _sig.bind(self_layer, *args, **kwargs)
                        arguments = dict(bound.arguments)
                        arguments.pop("self", None)
                        extra = arguments.pop("kwargs", {})
                        hidden = arguments.pop("hidden_states")
                        return _fn(hidden, **arguments, **extra)

                    layer.forward = types.MethodType(forward, layer)
                    patched.append(layer)
            yield plan
        finally:
            for layer in patched:
                del layer.forward  # back to the class's forward

    @staticmethod
    def prepare_ids(inputs: Sequence[PromptInput], plan: SkipPlan) -> list[list[int]]:
        """Token ids of each input after removing the plan's skipped segments (``[T_i']`` each)."""
        return [inp.apply_token_skips(plan.tokens) for inp in inputs]

    # ------------------------------------------------------------------ FLOPs
    def flops(self, plan: SkipPlan | None, inp: PromptInput | int, num_generated: int,
              observation: bool = False) -> FlopsBreakdown:
        """Analytic FLOPs of generating ``num_generated`` tokens for ``inp`` under ``plan`` (see ``flops.py``).

        Args:
            plan: the plan (``None`` = full model).
            inp: the input (token skipping is applied) or directly the processed prompt length.
            num_generated: tokens generated, EOS included.
            observation: also charge the observation overhead (first layer over the *full* input).
        """
        plan = self._check_plan(plan)
        if isinstance(inp, PromptInput):
            n_full = len(inp)
            n = len(inp.kept_positions(plan.tokens))
        else:
            n = n_full = int(inp)
        out = self.flops_model.generation(plan, n, num_generated)
        if observation:
            out.observation = self.flops_model.first_layer(n_full)
        return out

    # ------------------------------------------------------------------ operations (per architecture type)
    def generate(self, inputs: Sequence[PromptInput], plan: SkipPlan | None = None, *, max_new_tokens: int = 32,
                 use_cache: bool = True) -> GenerationOutput:
        raise NotImplementedError

    def score(self, inputs: Sequence[PromptInput], targets: Sequence[Sequence[int]],
              plan: SkipPlan | None = None) -> list[ScoreOutput]:
        raise NotImplementedError

    def observe(self, inputs: Sequence[PromptInput]) -> torch.Tensor:
        raise NotImplementedError

    def _update_finished(self, generated, nxt, finished, lengths, stop) -> None:
        """Mark rows that produced EOS (or satisfy ``stop``) as finished and record their lengths, in place."""
        step = generated.shape[1]
        for i in range(generated.shape[0]):
            if lengths[i] is not None:
                continue
            done = self.eos_token_id is not None and int(nxt[i]) == self.eos_token_id
            if not done and stop is not None:
                done = bool(stop(self.tokenizer.decode(generated[i].tolist(), skip_special_tokens=True)))
            if done:
                lengths[i] = step
                finished[i] = True

    def _finish(self, generated: torch.Tensor, seqs, lengths) -> GenerationOutput:
        rows = generated.tolist()
        tokens = [row if n is None else row[:n] for row, n in zip(rows, lengths)]
        texts = [self.tokenizer.decode(t, skip_special_tokens=True).strip() for t in tokens]
        return GenerationOutput(tokens=tokens, texts=texts, prompt_lengths=[len(s) for s in seqs])

    def _first_layer(self) -> nn.Module:
        enc = self._encoder_layers()
        return enc[0] if len(enc) else self._decoder_layers()[0]

    def _pooled_first_layer(self, run: Callable[[], None], mask: torch.Tensor) -> torch.Tensor:
        """Run ``run`` until the first layer's output is available, then mean-pool it over ``mask``."""

        def hook(module, args, output):
            raise _StopForward(output[0] if isinstance(output, tuple) else output)

        handle = self._first_layer().register_forward_hook(hook)
        try:
            run()
        except _StopForward as stop:
            hidden = stop.hidden
        else:  # pragma: no cover - the hook always fires
            raise RuntimeError("the first layer was never called")
        finally:
            handle.remove()
        m = mask.to(hidden.dtype).unsqueeze(-1)
        return ((hidden * m).sum(1) / m.sum(1).clamp(min=1)).float()

    def __repr__(self) -> str:
        return (f"{type(self).__name__}({type(self.model).__name__}, layers="
                f"{self.num_encoder_layers}+{self.num_decoder_layers}, d={self.hidden_size})")


def _left_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-pad ``B`` id lists to ``[B, T]`` ids and a ``[B, T]`` 0/1 attention mask."""
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        if len(s):
            ids[i, t - len(s):] = torch.tensor(list(s), dtype=torch.long)
            mask[i, t - len(s):] = 1
    return ids.to(device), mask.to(device)


def _right_pad(seqs: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), pad_id, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, : len(s)] = torch.tensor(list(s), dtype=torch.long)
        mask[i, : len(s)] = 1
    return ids.to(device), mask.to(device)


def _positions(mask: torch.Tensor) -> torch.Tensor:
    """Position ids ``[B, T]`` for a left-padded 0/1 mask (0 on padding), as transformers' ``generate`` uses."""
    pos = mask.long().cumsum(-1) - 1
    return pos.masked_fill(mask == 0, 1)


def _check_inputs(inputs: Sequence[PromptInput]) -> None:
    if len(inputs) == 0:
        raise ValueError("no inputs given: pass a non-empty sequence of PromptInput")
    for inp in inputs:
        if not isinstance(inp, PromptInput):
            raise TypeError(f"expected PromptInput (from Task.format), got {type(inp).__name__}")


class DecoderOnlyGenerator(SkippableGenerator):
    """Shared implementation for decoder-only (causal LM) families: left-padded batches, explicit position ids,
    a :class:`SkipAwareCache` per call."""

    def _max_positions(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None) or getattr(self.config, "n_positions", None)

    def _check_length(self, ids: Sequence[Sequence[int]], extra: int, inputs: Sequence[PromptInput]) -> None:
        limit = self._max_positions()
        for s, inp in zip(ids, inputs):
            if limit is not None and len(s) + extra > limit:
                raise ValueError(
                    f"example {inp.example_id!r}: {len(s)} input tokens + {extra} new tokens exceed the model's "
                    f"context of {limit} positions; lower the task's max_input_tokens or max_new_tokens"
                )
            if len(s) == 0:
                raise ValueError(f"example {inp.example_id!r}: the plan removes every input token")

    def _forward(self, ids, mask, cache, plan, *, logits_to_keep: int = 0) -> torch.Tensor:
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        if logits_to_keep:
            kwargs["logits_to_keep"] = logits_to_keep
        with self.skipping(plan):
            out = self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)[:, -ids.shape[1]:],
                             **kwargs)
        if cache is not None:
            cache.advance(ids.shape[1])
        return out.logits

    @torch.inference_mode()
    def generate(self, inputs: Sequence[PromptInput], plan: SkipPlan | None = None, *, max_new_tokens: int = 32,
                 use_cache: bool = True, stop: Callable[[str], bool] | None = None) -> GenerationOutput:
        """Greedy generation for a batch under one plan (token segments are removed per input).

        Args:
            inputs: ``B`` formatted inputs.
            plan: the plan (``None`` = full model); one plan for the whole batch.
            max_new_tokens: generation stops at EOS or after this many tokens.
            use_cache: decode with the KV cache (default) or recompute the whole sequence every step; both give
                the same tokens.
            stop: optional stop rule on the decoded text so far (e.g. :meth:`skipenv.tasks.Task.output_complete`);
                a row stops after the token that makes it true.

        Returns:
            :class:`GenerationOutput`.

        Raises:
            ValueError: an input that does not fit the model's context, or a plan that removes every token.
        """
        _check_inputs(inputs)
        plan = self._check_plan(plan)
        seqs = self.prepare_ids(inputs, plan)
        self._check_length(seqs, max_new_tokens, inputs)
        ids, mask = _left_pad(seqs, self.pad_token_id, self.device)
        bsz = ids.shape[0]
        cache = SkipAwareCache(self.config, plan.decoder_attention) if use_cache else None
        generated = torch.empty((bsz, 0), dtype=torch.long, device=ids.device)
        finished = torch.zeros(bsz, dtype=torch.bool, device=ids.device)
        step_ids, full_ids, full_mask = ids, ids, mask
        lengths = [None] * bsz
        for _ in range(max_new_tokens):
            if use_cache:
                logits = self._forward(step_ids, full_mask, cache, plan, logits_to_keep=1)
            else:
                logits = self._forward(full_ids, full_mask, None, plan, logits_to_keep=1)
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, self.pad_token_id), nxt)
            generated = torch.cat([generated, nxt[:, None]], dim=1)
            self._update_finished(generated, nxt, finished, lengths, stop)
            if bool(finished.all()):
                break
            step_ids = nxt[:, None]
            full_ids = torch.cat([full_ids, step_ids], dim=1)
            full_mask = torch.cat([full_mask, torch.ones((bsz, 1), dtype=full_mask.dtype, device=ids.device)], 1)
        return self._finish(generated, seqs, lengths)

    @torch.inference_mode()
    def score(self, inputs: Sequence[PromptInput], targets: Sequence[Sequence[int]],
              plan: SkipPlan | None = None) -> list[ScoreOutput]:
        """Teacher-forced scoring: one forward pass over ``input + target`` per example under ``plan``.

        Args:
            inputs: ``B`` formatted inputs.
            targets: ``B`` target token-id lists (e.g. the full model's greedy output, or a tokenised reference).
            plan: the plan (``None`` = full model).

        Returns:
            ``B`` :class:`ScoreOutput` (log-probabilities and argmax at the ``m_i`` target positions).
        """
        _check_inputs(inputs)
        if len(targets) != len(inputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(targets)} targets")
        plan = self._check_plan(plan)
        prompts = self.prepare_ids(inputs, plan)
        self._check_length(prompts, max(len(t) for t in targets), inputs)
        seqs = [list(p) + list(t) for p, t in zip(prompts, targets)]
        ids, mask = _left_pad(seqs, self.pad_token_id, self.device)
        # logits only where targets are predicted: the last max(m)+1 columns (skips the LM head over the prompt)
        keep = max(len(t) for t in targets) + 1
        logits = self._forward(ids, mask, None, plan, logits_to_keep=keep)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out, total = [], logp.shape[1]
        for i, (p, t) in enumerate(zip(prompts, targets)):
            m = len(t)
            # target token j sits at (kept) column total - m + j and is predicted by the column before it
            cols = torch.arange(total - m - 1, total - 1, device=ids.device)
            tgt = torch.tensor(list(t), dtype=torch.long, device=ids.device)
            lp = logp[i, cols].gather(-1, tgt[:, None]).squeeze(-1) if m else logp.new_zeros(0)
            am = logp[i, cols].argmax(-1) if m else tgt
            out.append(ScoreOutput(logprobs=lp.cpu(), argmax=am.cpu(), prompt_length=len(p)))
        return out

    @torch.inference_mode()
    def observe(self, inputs: Sequence[PromptInput]) -> torch.Tensor:
        """Mean-pooled hidden states after the first layer over each *full* input (nothing skipped).

        Returns:
            float32 tensor ``[B, d]`` on the CPU. Costs :meth:`FlopsModel.first_layer` FLOPs per input.
        """
        _check_inputs(inputs)
        seqs = [list(inp.input_ids) for inp in inputs]
        self._check_length(seqs, 0, inputs)
        ids, mask = _left_pad(seqs, self.pad_token_id, self.device)
        run = lambda: self.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask),  # noqa: E731
                                 use_cache=False)
        return self._pooled_first_layer(run, mask).cpu()

    def layer_stepper(self, inp: PromptInput, token_flags: Sequence[bool]) -> "LayerStepper":
        """A :class:`LayerStepper` over the prefill of ``inp`` with the given token segments removed."""
        return LayerStepper(self, inp, token_flags)


class LayerStepper:
    """Runs the prefill of one input layer by layer, so a sequential agent can decide each layer's skips on the
    hidden state actually produced so far (used by :class:`~skipenv.envs.SwitchDecLayerwiseEnv`).

    The embedding and the layer arguments (mask, positions) are produced by the model's own forward, stopped just
    before the first layer; each :meth:`step` then calls one layer (patched like :meth:`SkippableGenerator.skipping`).

    Args:
        generator: a decoder-only generator.
        inp: the input.
        token_flags: skipped token segments (applied before the embedding).
    """

    def __init__(self, generator: "DecoderOnlyGenerator", inp: PromptInput, token_flags: Sequence[bool]):
        self.generator = generator
        seqs = [inp.apply_token_skips(tuple(token_flags))]
        generator._check_length(seqs, 0, [inp])
        ids, mask = _left_pad(seqs, generator.pad_token_id, generator.device)
        layers = generator._decoder_layers()
        captured = {}

        def hook(module, args, kwargs):
            captured["args"], captured["kwargs"] = args, kwargs
            raise _StopForward(args[0] if args else kwargs["hidden_states"])

        handle = layers[0].register_forward_pre_hook(hook, with_kwargs=True)
        try:
            with torch.inference_mode():
                generator.model(input_ids=ids, attention_mask=mask, position_ids=_positions(mask), use_cache=False)
        except _StopForward as stop:
            self.hidden = stop.hidden
        finally:
            handle.remove()
        self._kwargs = dict(captured["kwargs"])
        self._kwargs.pop("hidden_states", None)
        self._extra_args = tuple(captured["args"][1:])
        self.num_tokens = ids.shape[1]

    def pooled(self) -> np.ndarray:
        """Mean over positions of the current hidden states: float32 ``[d]``."""
        return self.hidden[0].float().mean(0).cpu().numpy()

    @torch.inference_mode()
    def step(self, layer_idx: int, skip_attention: bool = False, skip_ffn: bool = False) -> np.ndarray:
        """Run decoder layer ``layer_idx`` (skipping the flagged sublayers) and return the pooled output ``[d]``."""
        layer = self.generator._decoder_layers()[layer_idx]
        if skip_attention or skip_ffn:
            fn = self.generator._layer_forward("decoder", layer, skip_attention, skip_ffn)
            sig = inspect.signature(type(layer).forward)
            bound = sig.bind(layer, self.hidden, *self._extra_args, **self._kwargs).arguments
            bound.pop("self", None)
            extra = bound.pop("kwargs", {})
            out = fn(bound.pop("hidden_states"), **bound, **extra)
        else:
            out = layer(self.hidden, *self._extra_args, **self._kwargs)
        self.hidden = out[0] if isinstance(out, tuple) else out
        return self.pooled()


class EncoderDecoderGenerator(SkippableGenerator):
    """Shared implementation for encoder-decoder families (BART, T5): right-padded encoder batches, the decoder
    starts from ``config.decoder_start_token_id``; the decoder self-attention cache is a :class:`SkipAwareCache`
    inside an :class:`transformers.EncoderDecoderCache`."""

    def _max_positions(self) -> int | None:
        return getattr(self.config, "max_position_embeddings", None)

    def _check_length(self, ids, extra_decoder: int, inputs) -> None:
        limit = self._max_positions()
        for s, inp in zip(ids, inputs):
            if len(s) == 0:
                raise ValueError(f"example {inp.example_id!r}: the plan removes every input token")
            if limit is not None and (len(s) > limit or extra_decoder > limit):
                raise ValueError(
                    f"example {inp.example_id!r}: {len(s)} input tokens or {extra_decoder} decoder tokens exceed "
                    f"the model's {limit} positions; lower max_input_tokens or max_new_tokens"
                )

    def _new_cache(self, plan: SkipPlan):
        from transformers import EncoderDecoderCache

        # no config: layers are created lazily, one per decoder layer (T5's flat config would otherwise size the
        # caches by the *encoder* depth ``num_layers`` and fail when ``num_decoder_layers`` is larger)
        return EncoderDecoderCache(SkipAwareCache(None, plan.decoder_attention), DynamicCache())

    def _encode(self, ids, mask, plan):
        with self.skipping(plan):
            return self.model.get_encoder()(input_ids=ids, attention_mask=mask)

    def _decode(self, enc, mask, dec_ids, cache, plan) -> torch.Tensor:
        kwargs = {self._cache_kw: cache, "use_cache": cache is not None}
        with self.skipping(plan):
            out = self.model(encoder_outputs=enc, attention_mask=mask, decoder_input_ids=dec_ids, **kwargs)
        if cache is not None:
            cache.self_attention_cache.advance(dec_ids.shape[1])
        return out.logits

    @property
    def decoder_start_token_id(self) -> int:
        start = getattr(self.config, "decoder_start_token_id", None)
        if start is None:
            start = getattr(self.model.generation_config, "decoder_start_token_id", None)
        if start is None:
            raise ValueError("the model config has no decoder_start_token_id")
        return int(start)

    @torch.inference_mode()
    def generate(self, inputs: Sequence[PromptInput], plan: SkipPlan | None = None, *, max_new_tokens: int = 32,
                 use_cache: bool = True, stop: Callable[[str], bool] | None = None) -> GenerationOutput:
        """Greedy generation for a batch under one plan; see :meth:`DecoderOnlyGenerator.generate`."""
        _check_inputs(inputs)
        plan = self._check_plan(plan)
        seqs = self.prepare_ids(inputs, plan)
        self._check_length(seqs, max_new_tokens + 1, inputs)
        ids, mask = _right_pad(seqs, self.pad_token_id, self.device)
        enc = self._encode(ids, mask, plan)
        bsz = ids.shape[0]
        cache = self._new_cache(plan) if use_cache else None
        dec = torch.full((bsz, 1), self.decoder_start_token_id, dtype=torch.long, device=ids.device)
        step = dec
        generated = torch.empty((bsz, 0), dtype=torch.long, device=ids.device)
        finished = torch.zeros(bsz, dtype=torch.bool, device=ids.device)
        lengths = [None] * bsz
        for _ in range(max_new_tokens):
            logits = self._decode(enc, mask, step if use_cache else dec, cache, plan)
            nxt = logits[:, -1].argmax(-1)
            nxt = torch.where(finished, torch.full_like(nxt, self.pad_token_id), nxt)
            generated = torch.cat([generated, nxt[:, None]], 1)
            self._update_finished(generated, nxt, finished, lengths, stop)
            if bool(finished.all()):
                break
            step = nxt[:, None]
            dec = torch.cat([dec, step], 1)
        return self._finish(generated, seqs, lengths)

    @torch.inference_mode()
    def score(self, inputs: Sequence[PromptInput], targets: Sequence[Sequence[int]],
              plan: SkipPlan | None = None) -> list[ScoreOutput]:
        """Teacher-forced scoring: encoder once, decoder over ``[start] + target[:-1]``; see
        :meth:`DecoderOnlyGenerator.score`."""
        _check_inputs(inputs)
        if len(targets) != len(inputs):
            raise ValueError(f"got {len(inputs)} inputs but {len(targets)} targets")
        plan = self._check_plan(plan)
        seqs = self.prepare_ids(inputs, plan)
        self._check_length(seqs, max(len(t) for t in targets) + 1, inputs)
        ids, mask = _right_pad(seqs, self.pad_token_id, self.device)
        enc = self._encode(ids, mask, plan)
        dec_seqs = [[self.decoder_start_token_id] + list(t)[:-1] if len(t) else [self.decoder_start_token_id]
                    for t in targets]
        dec_ids, _ = _right_pad(dec_seqs, self.pad_token_id, self.device)
        logits = self._decode(enc, mask, dec_ids, None, plan)
        logp = torch.log_softmax(logits.float(), dim=-1)
        out = []
        for i, (p, t) in enumerate(zip(seqs, targets)):
            m = len(t)
            tgt = torch.tensor(list(t), dtype=torch.long, device=ids.device)
            lp = logp[i, :m].gather(-1, tgt[:, None]).squeeze(-1) if m else logp.new_zeros(0)
            out.append(ScoreOutput(logprobs=lp.cpu(), argmax=logp[i, :m].argmax(-1).cpu(), prompt_length=len(p)))
        return out

    @torch.inference_mode()
    def observe(self, inputs: Sequence[PromptInput]) -> torch.Tensor:
        """Mean-pooled hidden states after the first *encoder* layer over each full input: ``[B, d]`` float32."""
        _check_inputs(inputs)
        seqs = [list(inp.input_ids) for inp in inputs]
        self._check_length(seqs, 0, inputs)
        ids, mask = _right_pad(seqs, self.pad_token_id, self.device)
        run = lambda: self.model.get_encoder()(input_ids=ids, attention_mask=mask)  # noqa: E731
        return self._pooled_first_layer(run, mask).cpu()
