"""The one place that knows transformers internals beyond the per-family layer bodies.

Everything here depends on the transformers 5.x contract between a model's ``forward`` and its decoder layers, and
is re-checked for every wrapped model by :func:`check_replacement_layers` (run by :func:`skipenv.generators.wrap`):

- :func:`cache_kwarg` — the name of the KV-cache argument of ``model.forward`` (``cache`` or ``past_key_values``);
- :func:`layer_arguments` — how a layer call ``layer(*args, **kwargs)`` maps to ``(hidden_states, keyword
  arguments)`` for a replacement layer body (binding by the layer class's signature; the catch-all keyword parameter
  is found by kind, whatever its name);
- :func:`replaced_forwards` — installs replacement bodies on layer *instances* for the duration of a call and
  restores exactly what was there before (including an accelerate hook from ``device_map=`` / offloading, which
  keeps running around the replacement);
- :class:`SkipAwareCache` / :func:`encoder_decoder_cache` — KV caches for plans that skip attention sublayers;
- :func:`attention_weights_through` — hidden states and exact softmax attention weights of one layer, from the
  model's own forward run with transformers' eager attention and stopped after that layer;
- :func:`check_replacement_layers` — the self-check that the replacement bodies with nothing skipped reproduce the
  real layers (raises :class:`UnsupportedModelError` naming the installed transformers version otherwise).

The supported range is :data:`SUPPORTED_TRANSFORMERS` (also the bound in ``pyproject.toml``).
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import threading
import weakref
from typing import Callable, Iterable, Sequence

import torch
import transformers
from torch import nn
from transformers import DynamicCache

__all__ = [
    "SUPPORTED_TRANSFORMERS",
    "UnsupportedModelError",
    "SkipAwareCache",
    "encoder_decoder_cache",
    "cache_kwarg",
    "sliding_windows",
    "layer_arguments",
    "replaced_forwards",
    "model_lock",
    "attention_weights_through",
    "check_replacement_layers",
]

#: transformers versions whose layer contract the replacement bodies follow (same bound as ``pyproject.toml``).
SUPPORTED_TRANSFORMERS = ">=5.0,<6"


class UnsupportedModelError(TypeError):
    """The model cannot be run along a skip plan: its architecture has no skippable wrapper, its layers carry an
    instance-level ``forward`` skipenv cannot keep, or the installed transformers changed the layer contract."""


# ---------------------------------------------------------------------------------------------------- KV caches
class SkipAwareCache(DynamicCache):
    """A :class:`transformers.DynamicCache` for plans that skip attention sublayers.

    A layer whose attention is skipped stores no keys / values, but transformers derives the processed sequence
    length (for masks and positions) from layer 0 by default (the sliding-window mask from the first sliding
    layer). This cache redirects ``get_seq_length``, ``get_mask_sizes`` and ``get_query_offset`` for skipped layers
    to the first attending layer of the same kind (full attention, or a sliding window of the same size; any
    attending layer when none of that kind attends: the mask of that kind is then used by no layer). If every
    attention is skipped no layer stores anything, so the generator reports each call's new tokens with
    :meth:`advance` and the cache answers length queries from that count (BART's decoder derives its positions
    from ``get_seq_length()``).

    Args:
        config: the model config (passed to :class:`DynamicCache`; ``None`` = layers created lazily).
        attention_skipped: one flag per layer of this stack, ``True`` = that layer's attention is skipped.
    """

    def __init__(self, config, attention_skipped: Sequence[bool]):
        super().__init__(config=config)
        self.attention_skipped = tuple(bool(s) for s in attention_skipped)
        self.reference_layer = next((i for i, s in enumerate(self.attention_skipped) if not s), None)
        # a skipped layer answers like the first attending layer of its own kind (full / sliding window of the same
        # size): transformers builds the sliding-window mask from the first sliding layer's sizes (Gemma 3, Qwen2
        # with use_sliding_window, Mistral), so a full layer must not stand in for it while a sliding one attends
        kinds = [self._kind(i) for i in range(len(self.attention_skipped))]
        self._references = tuple(
            next((r for r, (k, s) in enumerate(zip(kinds, self.attention_skipped)) if not s and k == kinds[i]),
                 self.reference_layer)
            for i in range(len(self.attention_skipped)))
        self.unattended_length = 0  # tokens processed so far, counted only when no layer attends

    def _kind(self, layer_idx: int):
        if layer_idx >= len(self.layers):  # layers created lazily (no config): all full attention
            return None
        layer = self.layers[layer_idx]
        return type(layer), getattr(layer, "sliding_window", None)

    def advance(self, num_tokens: int) -> None:
        """Record that a forward call processed ``num_tokens`` new positions (only counted when every attention is
        skipped; otherwise the reference layer's keys hold the length)."""
        if self.reference_layer is None:
            self.unattended_length += int(num_tokens)

    def _redirect(self, layer_idx: int) -> int | None:
        if layer_idx < len(self.attention_skipped) and self.attention_skipped[layer_idx]:
            return self._references[layer_idx]
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


def encoder_decoder_cache(decoder_attention_skipped: Sequence[bool]):
    """An :class:`transformers.EncoderDecoderCache` whose self-attention part is a :class:`SkipAwareCache`.

    No config is passed: layers are created lazily, one per decoder layer (T5's flat config would otherwise size the
    caches by the *encoder* depth ``num_layers`` and fail when ``num_decoder_layers`` is larger).
    """
    from transformers import EncoderDecoderCache

    return EncoderDecoderCache(SkipAwareCache(None, decoder_attention_skipped), DynamicCache())


def self_attention_cache(cache) -> SkipAwareCache | None:
    """The :class:`SkipAwareCache` inside ``cache`` (itself, or the self-attention part of an encoder-decoder
    cache); ``None`` for no cache."""
    if cache is None:
        return None
    return getattr(cache, "self_attention_cache", cache)


def sliding_windows(config) -> tuple[int | None, ...]:
    """Per decoder layer, the sliding window (in tokens) its KV cache keeps, or ``None`` for full attention.

    Read from the cache transformers itself builds for ``config`` (``DynamicCache(config=config)``: its
    ``DynamicSlidingWindowLayer`` entries keep the last ``sliding_window - 1`` keys / values, so a decoding step
    attends over at most ``sliding_window`` keys). Sources: ``config.layer_types`` (Gemma 3; Qwen2 / Qwen3 with
    ``use_sliding_window``) or ``config.sliding_window`` on every layer (Mistral, Phi-3).
    """
    cache = DynamicCache(config=config)
    return tuple(int(layer.sliding_window) if getattr(layer, "is_sliding", False) else None
                 for layer in cache.layers)


def cache_kwarg(model: nn.Module) -> str:
    """Name of the KV-cache argument of ``model.forward``: ``cache`` (recent transformers 5.x) or
    ``past_key_values``."""
    params = inspect.signature(model.forward).parameters
    return "cache" if "cache" in params else "past_key_values"


# ---------------------------------------------------------------------------------------------------- layer calls
@functools.lru_cache(maxsize=64)
def _signature(forward: Callable) -> inspect.Signature:
    return inspect.signature(forward)


def layer_arguments(layer: nn.Module, args: tuple, kwargs: dict) -> tuple[torch.Tensor, dict]:
    """Bind a layer call ``layer(*args, **kwargs)`` by the signature of the layer class's ``forward``.

    Returns:
        ``(hidden_states, keyword_arguments)``: the first parameter after ``self`` (the hidden states, ``[B, T, d]``)
        and every other argument by name; the contents of the catch-all keyword parameter (whatever it is called:
        found by kind, ``inspect.Parameter.VAR_KEYWORD``) are merged in.

    Raises:
        UnsupportedModelError: the layer's ``forward`` takes ``*args`` beyond its named parameters, or the call does
            not fit the signature (the transformers layer contract changed).
    """
    sig = _signature(type(layer).forward)
    params = list(sig.parameters.values())
    if len(params) < 2 or params[1].kind not in (inspect.Parameter.POSITIONAL_ONLY,
                                                  inspect.Parameter.POSITIONAL_OR_KEYWORD):
        raise UnsupportedModelError(
            f"{type(layer).__name__}.forward{sig} does not take the hidden states as its first parameter "
            f"(transformers {transformers.__version__}; skipenv supports transformers{SUPPORTED_TRANSFORMERS})")
    try:
        bound = sig.bind(layer, *args, **kwargs)
    except TypeError as e:
        raise UnsupportedModelError(
            f"a call of {type(layer).__name__} does not fit its signature {sig}: {e} (transformers "
            f"{transformers.__version__}; skipenv supports transformers{SUPPORTED_TRANSFORMERS})") from e
    out: dict = {}
    for name, value in bound.arguments.items():
        kind = sig.parameters[name].kind
        if kind is inspect.Parameter.VAR_KEYWORD:
            out.update(value)
        elif kind is inspect.Parameter.VAR_POSITIONAL:
            if value:
                raise UnsupportedModelError(
                    f"{type(layer).__name__} was called with {len(value)} extra positional arguments that cannot be "
                    f"passed by name (transformers {transformers.__version__})")
        elif name != params[0].name:
            out[name] = value
    return out.pop(params[1].name), out


def _forward_attribute(layer: nn.Module) -> str:
    """The instance attribute a replacement body goes into: ``forward`` (no instance-level forward, or the class's
    own forward bound on the instance), or ``_old_forward`` under an accelerate hook (the hook's ``forward`` keeps
    running: device placement, offloaded weights). Any other instance-level ``forward`` is refused."""
    own = vars(layer)
    if "forward" not in own:
        return "forward"
    if getattr(layer, "_hf_hook", None) is not None and "_old_forward" in own:
        return "_old_forward"
    forward = own["forward"]
    if getattr(forward, "__self__", None) is layer and getattr(forward, "__func__", None) is type(layer).forward:
        return "forward"  # the class's own forward bound on the instance (left by accelerate's remove_hook)
    raise UnsupportedModelError(
        f"{type(layer).__name__} has an instance-level forward ({own['forward']!r}) that is not an accelerate hook; "
        f"skipenv would have to replace it to skip sublayers. Remove it (e.g. `del layer.forward`) before wrapping, "
        f"or apply your wrapper to the layer's submodules instead")


def check_layers_patchable(layers: Iterable[nn.Module]) -> None:
    """Raise :class:`UnsupportedModelError` if any layer has an instance-level ``forward`` that
    :func:`replaced_forwards` cannot keep (see :func:`_forward_attribute`)."""
    for layer in layers:
        _forward_attribute(layer)


@contextlib.contextmanager
def replaced_forwards(replacements: Iterable[tuple[nn.Module, Callable]]):
    """Context manager: while active, each ``layer`` runs ``body(hidden_states, **keyword_arguments)`` (arguments
    from :func:`layer_arguments`) instead of its own forward; hooks registered on the layer still fire.

    On exit (also on an exception) every layer gets back exactly the instance attributes it had: a layer without an
    instance-level ``forward`` returns to its class's ``forward``; a layer with an accelerate hook keeps the hook
    (the body replaces ``_old_forward``, the function the hook calls, and the original is put back).

    Raises:
        UnsupportedModelError: a layer with another kind of instance-level ``forward`` (nothing is changed then).
    """
    replacements = list(replacements)
    targets = [(layer, _forward_attribute(layer), body) for layer, body in replacements]  # refuse before changing
    restore: list[tuple[nn.Module, str, bool, object]] = []
    try:
        for layer, attr, body in targets:
            def forward(*args, _layer=layer, _body=body, **kwargs):
                hidden, arguments = layer_arguments(_layer, args, kwargs)
                return _body(hidden, **arguments)

            own = vars(layer)
            restore.append((layer, attr, attr in own, own.get(attr)))
            setattr(layer, attr, forward)
        yield
    finally:
        for layer, attr, had, old in reversed(restore):
            if had:
                setattr(layer, attr, old)
            else:
                delattr(layer, attr)


# ---------------------------------------------------------------------------------------------------- concurrency
_LOCKS: "weakref.WeakKeyDictionary[nn.Module, threading.RLock]" = weakref.WeakKeyDictionary()
_LOCKS_GUARD = threading.Lock()


def model_lock(model: nn.Module) -> threading.RLock:
    """The re-entrant lock shared by every generator wrapping ``model``.

    Layers are patched on the model instance for the duration of a call, so two calls on one model must not
    overlap; each generator call holds this lock (re-entrant: a call may call another on the same thread).
    """
    with _LOCKS_GUARD:
        lock = _LOCKS.get(model)
        if lock is None:
            lock = _LOCKS[model] = threading.RLock()
        return lock


# ---------------------------------------------------------------------------------------------------- attention weights
class _StopAfterLayer(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


@contextlib.contextmanager
def eager_attention(model: nn.Module):
    """While active, ``model`` computes attention with transformers' eager implementation (explicit
    ``softmax(q k^T / sqrt(d_head) + mask)``, returned by each attention module as its second output) and builds the
    eager attention mask; the previous implementation (e.g. ``sdpa``) is restored on exit. Hold the model's lock."""
    previous = model.config._attn_implementation
    if previous == "eager":
        yield
        return
    model.set_attn_implementation("eager")
    try:
        yield
    finally:
        model.set_attn_implementation(previous)


def attention_weights_through(model: nn.Module, layer: nn.Module, attention: nn.Module,
                              run_forward: Callable[[], object]) -> tuple[torch.Tensor, torch.Tensor]:
    """Run the model's own forward (``run_forward()``, unmodified layers) with eager attention until ``layer`` has
    run, and return its output hidden states and the attention weights of ``attention`` (that layer's
    self-attention module) in that call.

    Returns:
        ``(hidden [B, T, d], weights [B, H, T, T])``: the residual stream after ``layer`` and the softmax attention
        probabilities (query position × key position, per head; rows sum to 1 over the unmasked keys) — exactly
        what ``model(..., output_attentions=True)`` returns for that layer with ``attn_implementation="eager"``.

    Raises:
        UnsupportedModelError: the attention module returned no weights (the transformers attention contract changed).
        RuntimeError: ``layer`` was never called by ``run_forward``.
    """
    captured: dict = {}

    def attention_hook(module, args, output):
        captured["weights"] = output[1] if isinstance(output, tuple) and len(output) > 1 else None

    def layer_hook(module, args, output):
        raise _StopAfterLayer(output[0] if isinstance(output, tuple) else output)

    with eager_attention(model):
        handles = [attention.register_forward_hook(attention_hook), layer.register_forward_hook(layer_hook)]
        try:
            run_forward()
        except _StopAfterLayer as stop:
            hidden = stop.hidden
        else:
            raise RuntimeError(f"{type(layer).__name__} was never called by the forward pass")
        finally:
            for h in handles:
                h.remove()
    weights = captured.get("weights")
    if not isinstance(weights, torch.Tensor):
        raise UnsupportedModelError(
            f"{type(attention).__name__} returned no attention weights with eager attention under transformers "
            f"{transformers.__version__}; skipenv supports transformers{SUPPORTED_TRANSFORMERS}")
    return hidden, weights


# ---------------------------------------------------------------------------------------------------- self-check
def _close(a: torch.Tensor, b: torch.Tensor) -> bool:
    a, b = a.float(), b.float()
    tol = 1e-5 if a.dtype == torch.float32 and a.dtype == b.dtype else 1e-2
    return a.shape == b.shape and bool(torch.allclose(a, b, rtol=tol * 10, atol=tol))


def check_replacement_layers(generator) -> None:
    """Check that the generator's replacement layer bodies, with nothing skipped, reproduce the real layers.

    Runs a 3-token prefill and one decoding step with the KV cache twice — with the model's own layers, then with
    every layer replaced by its body from ``generator._layer_forward(stack, layer, False, False)`` — and compares
    every layer's output and the logits (float32: rtol 1e-4, atol 1e-5; lower precisions: rtol 0.1, atol 1e-2).
    This is the guard against a transformers release that changes what a layer computes or passes: such a change
    makes wrap() fail instead of giving wrong numbers. A model with the same contract key as one that passed in this
    process (same wrapper and layer classes and code, config, attention implementation, dtype, device; weights do
    not matter) is not run again; the check that no layer carries a foreign instance-level ``forward`` always runs.

    Raises:
        UnsupportedModelError: a layer output or the logits differ, or a replacement body fails; the message names
            the layer class, the installed transformers version and the supported range.
    """
    layers = [(stack, i, layer) for stack, ls in (("encoder", generator._encoder_layers()),
                                                  ("decoder", generator._decoder_layers()))
              for i, layer in enumerate(ls)]
    check_layers_patchable(layer for _, _, layer in layers)
    key = _contract_key(generator, [layer for _, _, layer in layers])
    if key in _PASSED:
        return
    vocab = int(getattr(generator.config.get_text_config(), "vocab_size", 0) or 0)
    ids = [(3 + k) % vocab if vocab else 3 + k for k in range(3)]

    def run(replace: bool) -> tuple[list[tuple[int, torch.Tensor]], list[torch.Tensor]]:
        outputs: list[tuple[int, torch.Tensor]] = []
        handles = [layer.register_forward_hook(
            lambda m, a, o, k=k: outputs.append((k, (o[0] if isinstance(o, tuple) else o).detach().clone())))
            for k, (_, _, layer) in enumerate(layers)]
        bodies = [(layer, generator._layer_forward(stack, layer, False, False)) for stack, _, layer in layers]
        try:
            with replaced_forwards(bodies if replace else ()):
                logits = generator._greedy_logits(ids, steps=2)
        finally:
            for h in handles:
                h.remove()
        return outputs, logits

    version = f"transformers {transformers.__version__}"
    supported = f"skipenv supports transformers{SUPPORTED_TRANSFORMERS}"
    with torch.inference_mode(), generator._lock:
        ref_outputs, ref_logits = run(False)
        try:
            outputs, logits = run(True)
        except Exception as e:  # a body that no longer fits the layer contract
            raise UnsupportedModelError(
                f"the skippable replacement of the {generator.family} layers fails under {version}: "
                f"{type(e).__name__}: {e}; {supported}") from e
    for (k, x), (_, y) in zip(ref_outputs, outputs):
        if not _close(x, y):
            stack, i, layer = layers[k]
            diff = (x.float() - y.float()).abs().max().item() if x.shape == y.shape else f"shape {tuple(y.shape)}"
            raise UnsupportedModelError(
                f"the skippable replacement of {stack} layer {i} ({type(layer).__name__}) does not reproduce the real "
                f"layer with nothing skipped under {version} (max |difference| {diff}); {supported}")
    if [k for k, _ in ref_outputs] != [k for k, _ in outputs] or not all(
            _close(x, y) for x, y in zip(ref_logits, logits)):
        raise UnsupportedModelError(
            f"the skippable replacement of the {generator.family} layers changes the logits with nothing skipped "
            f"under {version}; {supported}")
    _PASSED.add(key)


#: contract keys of models that passed :func:`check_replacement_layers` in this process
_PASSED: set = set()


def _contract_key(generator, layers: Sequence[nn.Module]) -> tuple:
    """What the layer contract depends on besides the weights: the wrapper class, the layer classes' code (a
    monkeypatched or reloaded forward is a new key), the config, the attention implementation, dtype and device."""
    param = next(generator.model.parameters())
    forwards = tuple(dict.fromkeys((type(layer), type(layer).forward) for layer in layers))
    return (type(generator), type(generator.model), forwards, generator.config.to_json_string(),
            getattr(generator.config, "_attn_implementation", None), param.dtype, param.device.type)
