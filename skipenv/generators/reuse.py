"""Prefix reuse: run a plan from what the full model already computed for the same input (decoder-only models).

In a causal decoder, position ``p`` of layer ``i`` depends only on the input ids at positions ``<= p`` and on the
layers ``< i``. So for a plan whose processed input first differs from the full input at position ``s`` (the first
removed token; the common prefix of the two id lists) and whose first skipped sublayer is in layer ``j``
(``j = L`` when only tokens are skipped):

- positions ``< s`` of every layer ``< j`` are the full model's computation: their keys / values and the residual
  stream entering layer ``j`` can be taken from the full model's run on the same input;
- only positions ``>= s`` of layers ``< j`` (the rest of the prompt and the target / new tokens) and all positions of
  layers ``>= j`` have to be computed.

A :class:`PrefixState` holds, for one sequence of ``T`` tokens (the input for generation; the input followed by the
scored target for teacher-forced scoring, so that a plan skipping only sublayers scores the full output from the
stored layers ``< j`` of *every* position), the full model's keys / values of every layer and
the residual stream entering every layer ``>= 1`` (float tensors in the model's dtype: for the embedded
SmolLM2-135M at float32, 30 layers × (2 × 192 + 576) floats × 4 bytes = 115 200 bytes per token, about 46 MB for a
400-token input). A :class:`PrefixStore` keeps them in a byte-capped LRU (default :data:`DEFAULT_MAX_BYTES`, 2 GiB:
about 46 such inputs, enough for the 32 training documents of ``skipenv train``); the state of an input is computed lazily, by one single-row forward pass of the full model
over the input (and the scored target), the second time a call on that input needs it (see
:class:`PrefixStore`).

The reused path runs in at most two model calls, both the model's own ``forward`` (masks, rotary / learned positions
and the KV cache are built by transformers):

1. the tail ``ids[s:]`` through layers ``< j`` with a KV cache holding the stored keys / values of positions
   ``< s`` (position ids continue from ``s``); stopped before layer ``j`` (or run to the logits when ``j = L``);
   skipped when ``s = N``;
2. when ``j < L``: all positions through layers ``>= j``, the residual stream entering layer ``j`` being the stored
   one for positions ``< s`` and the output of call 1 for the rest (layers ``< j`` are replaced by bodies that
   return it); their keys / values (from call 1) are put into the cache afterwards, for decoding.

This is the simulator's speed only: the FLOPs an environment charges for a plan are those of running it from scratch
(:meth:`~skipenv.generators.SkippableGenerator.flops` does not change). Results equal the from-scratch path up to
float round-off (the stored prefix was computed in a pass of another length): log-probabilities agree to ``1e-4``
and argmax / generated tokens are identical on the property tests (``tests/generators/test_reuse.py``).

Who turns it on: a bare generator has no store (``generator.prefix_store is None``: every call runs from scratch, so
the FLOPs it executes are the plan's); an :class:`~skipenv.envs.Evaluator` (so every SwitchDec env) attaches a
:class:`PrefixStore` unless ``reuse=False`` or ``SKIPENV_REUSE=0`` is set in the environment. ``generate`` /
``score`` take ``reuse=False`` to bypass the store for one call.
"""

from __future__ import annotations

import os
import threading
from collections import OrderedDict
from dataclasses import dataclass
from typing import Sequence

import torch

from .adapter import SkipAwareCache, replaced_forwards

__all__ = ["DEFAULT_MAX_BYTES", "PrefixState", "PrefixStore", "StagedStates", "reuse_enabled_by_default",
           "plan_reuse_point"]

#: Default byte cap of a :class:`PrefixStore` (2 GiB): the 32 training documents of ``skipenv train`` need about
#: 1.3 GiB of float32 SmolLM2 states; at 1 GiB the LRU evicted states before PPO came back to them (README "Speed").
DEFAULT_MAX_BYTES = 2 << 30


def reuse_enabled_by_default() -> bool:
    """``False`` if the environment variable ``SKIPENV_REUSE`` is ``0`` / ``false`` / ``no`` / ``off``, else
    ``True``."""
    return os.environ.get("SKIPENV_REUSE", "1").strip().lower() not in ("0", "false", "no", "off")


@dataclass
class PrefixState:
    """The full model's computation on one input that later plans can reuse.

    Attributes:
        ids: the full input ids, ``T`` of them.
        keys, values: per layer, the keys / values of the ``T`` positions, ``[1, kv_heads, T, head_dim]`` each
            (GPT-2: ``[1, heads, T, head_dim]``).
        hidden: per layer ``i``, the residual stream entering layer ``i``, ``[1, T, d]`` (``hidden[0]`` is ``None``:
            a plan that skips a sublayer of layer 0 reuses nothing).
        attention, ffn: the skip flags (one per decoder layer) of the plan the state was computed under; ``None``
            (the default) = the full model. A staged state (:class:`StagedStates`) is computed under a plan that
            skips sublayers: its keys / values are ``None`` at the layers whose attention it skips, and its
            ``hidden`` holds only what :func:`reused_forward` reads for a plan of the same flags (nothing).
    """

    ids: tuple[int, ...]
    keys: list[torch.Tensor | None]
    values: list[torch.Tensor | None]
    hidden: list[torch.Tensor | None]
    attention: tuple[bool, ...] | None = None
    ffn: tuple[bool, ...] | None = None

    @property
    def nbytes(self) -> int:
        """Bytes held by the tensors of this state."""
        return sum(t.numel() * t.element_size() for t in (*self.keys, *self.values, *self.hidden) if t is not None)

    def to(self, dtype: torch.dtype) -> "PrefixState":
        """This state with every tensor in ``dtype`` (itself when they already are)."""
        if all(t is None or t.dtype == dtype for t in (*self.keys, *self.values, *self.hidden)):
            return self
        return PrefixState(self.ids, [None if k is None else k.to(dtype) for k in self.keys],
                           [None if v is None else v.to(dtype) for v in self.values],
                           [None if h is None else h.to(dtype) for h in self.hidden], self.attention, self.ffn)


class PrefixStore:
    """A byte-capped LRU of :class:`PrefixState` (encoder-decoder models:
    :class:`~skipenv.generators.encoder_decoder.EncoderState`), keyed by the input ids (thread-safe).

    Computing a state costs one forward pass of the full model, which pays only if the input comes back: by default
    a state is computed on the second call that needs it (``admit_after=2``), so inputs seen once (e.g. one
    evaluation episode per test document) cost no more than without reuse.

    Args:
        max_bytes: the cap (``>= 0``; default :data:`DEFAULT_MAX_BYTES`); a state larger than the cap is not kept.
        admit_after: compute an input's state on its ``admit_after``-th request (integer ``>= 1``; default 2).
        dtype: keep decoder-only states in this dtype (``torch.float16`` / ``torch.bfloat16`` halve the bytes of a
            float32 model's states; ``None``, the default: the model's dtype, exact). States are cast back to the
            model's dtype when used, so a lower precision changes results by the rounding of the stored keys /
            values / residual stream. Measured on the embedded SmolLM2 (float32) against the from-scratch path
            over XSum train documents and the plan mixes of ``benchmarks/bench_env.py`` (30 plans, 1,311 agreement
            positions; README "Speed"): float16 max |Δ log-probability| 0.03 nats, 1 argmax and 1 agreement value
            changed; bfloat16 0.40 nats, 10 argmax and 5 agreement values; float32 1.2e-5 nats, none. Both lower
            precisions are outside the 1e-4 exactness tolerance, so the default keeps the model's dtype; float16 is
            usable where a few-hundredths-of-a-nat error and a rare changed argmax are acceptable (tested bound on
            SmolLM2: 0.05 nats).
            Encoder-decoder encoder outputs are always kept in the model's dtype.

    Attributes:
        nbytes: bytes held now. peak_bytes: the most held at once. hits, misses: lookups that found / did not find
            a state. evictions: states dropped to stay under the cap.
        identity: the :func:`~skipenv.envs.cache.identity_token` (fingerprint and change epoch) of the model
            whose states the store holds (``None`` until first used). A generator's :attr:`~skipenv.generators.SkippableGenerator.prefix_store`
            binds it to its model's current fingerprint on every access (:meth:`bind`), so states computed before a
            weight edit are dropped, never served.
        invalidations: how many times :meth:`bind` dropped the states for another identity.

    Raises:
        ValueError: a negative or non-integer ``max_bytes``, ``admit_after < 1``, a ``dtype`` that is not a
            floating torch dtype (or its name: ``"float32"``, ``"float16"``, ``"bfloat16"``).
    """

    #: inputs whose request count is remembered (oldest forgotten first)
    _SEEN_LIMIT = 1 << 16

    def __init__(self, max_bytes: int = DEFAULT_MAX_BYTES, admit_after: int = 2,
                 dtype: torch.dtype | str | None = None):
        if isinstance(max_bytes, bool) or not isinstance(max_bytes, int) or max_bytes < 0:
            raise ValueError(f"max_bytes must be an integer >= 0, got {max_bytes!r}")
        if isinstance(admit_after, bool) or not isinstance(admit_after, int) or admit_after < 1:
            raise ValueError(f"admit_after must be an integer >= 1, got {admit_after!r}")
        if isinstance(dtype, str):
            name = dtype
            dtype = getattr(torch, name, None) if name in ("float32", "float16", "bfloat16", "float64") else None
            if dtype is None:
                raise ValueError(f"dtype must be float32, float16, bfloat16 or float64, got {name!r}")
        if dtype is not None and not (isinstance(dtype, torch.dtype) and dtype.is_floating_point):
            raise ValueError(f"dtype must be a floating torch dtype (e.g. torch.float16) or None, got {dtype!r}")
        self.max_bytes, self.admit_after, self.dtype = int(max_bytes), int(admit_after), dtype
        self._states: OrderedDict[tuple[int, ...], PrefixState] = OrderedDict()
        self._seen: OrderedDict[int, int] = OrderedDict()
        self._lock = threading.Lock()
        self.nbytes = self.peak_bytes = self.hits = self.misses = self.evictions = self.invalidations = 0
        self.identity: str | None = None

    def bind(self, identity: str) -> None:
        """Declare the model identity the next states belong to: when it differs from :attr:`identity`, every state
        and admission count is dropped first (they were computed by other weights)."""
        with self._lock:
            if identity == self.identity:
                return
            had = bool(self._states) or bool(self._seen)
            self._states.clear()
            self._seen.clear()
            self.nbytes = 0
            self.identity = identity
            self.invalidations += had

    def admit(self, ids: Sequence[int]) -> bool:
        """Count a request for the state of ``ids``; ``True`` when it should be computed now (the
        ``admit_after``-th request or later)."""
        key = hash(tuple(int(i) for i in ids))
        with self._lock:
            n = self._seen.pop(key, 0) + 1
            self._seen[key] = n
            while len(self._seen) > self._SEEN_LIMIT:
                self._seen.popitem(last=False)
            return n >= self.admit_after

    def __len__(self) -> int:
        return len(self._states)

    def get(self, ids: Sequence[int]) -> PrefixState | None:
        key = tuple(int(i) for i in ids)
        with self._lock:
            state = self._states.get(key)
            if state is None:
                self.misses += 1
                return None
            self._states.move_to_end(key)
            self.hits += 1
            return state

    def put(self, state: PrefixState, key: Sequence[int] | None = None) -> PrefixState:
        """Keep ``state`` under ``key`` (default: its ids), in the store's :attr:`dtype`, evicting the least recently
        used states over the cap. Returns the state as kept (use it: it is what later requests get)."""
        if self.dtype is not None and isinstance(state, PrefixState):
            state = state.to(self.dtype)
        size = state.nbytes
        key = state.ids if key is None else tuple(int(i) for i in key)
        with self._lock:
            old = self._states.pop(key, None)
            if old is not None:
                self.nbytes -= old.nbytes
            if size > self.max_bytes:
                return state
            while self._states and self.nbytes + size > self.max_bytes:
                _, evicted = self._states.popitem(last=False)
                self.nbytes -= evicted.nbytes
                self.evictions += 1
            self._states[key] = state
            self.nbytes += size
            self.peak_bytes = max(self.peak_bytes, self.nbytes)
        return state

    def clear(self) -> None:
        """Drop every state and admission count."""
        with self._lock:
            self._states.clear()
            self._seen.clear()
            self.nbytes = 0

    def __getstate__(self) -> dict:  # the states are a cache: a pickled copy starts empty
        return {"max_bytes": self.max_bytes, "admit_after": self.admit_after, "dtype": self.dtype}

    def __setstate__(self, state: dict) -> None:
        self.__init__(state["max_bytes"], state.get("admit_after", 2), state.get("dtype"))

    def __repr__(self) -> str:
        return (f"PrefixStore({len(self)} inputs, {self.nbytes / 2**20:.1f} of {self.max_bytes / 2**20:.0f} MiB, "
                f"hits={self.hits}, misses={self.misses})")


def plan_reuse_point(full_ids: Sequence[int], ids: Sequence[int], decoder_attention: Sequence[bool],
                     decoder_ffn: Sequence[bool], num_logits: int = 1, *,
                     state_attention: Sequence[bool] | None = None,
                     state_ffn: Sequence[bool] | None = None) -> tuple[int, int]:
    """``(s, j)`` for running ``ids`` from the state of ``full_ids``: ``j`` = the first layer whose sublayer flags
    differ from the state's (``state_attention`` / ``state_ffn``; ``None`` = the full model's: the first layer with
    a skipped sublayer), ``L`` if none; ``s`` = length of the common prefix of the two id lists, capped at
    ``len(ids) - num_logits`` when ``j = L`` (the positions whose logits are needed are computed; with ``j < L``
    every position's logits come from layers ``>= j`` anyway)."""
    s = 0
    for a, b in zip(full_ids, ids):
        if a != b:
            break
        s += 1
    n_layers = len(decoder_attention)
    sa = tuple(state_attention) if state_attention is not None else (False,) * n_layers
    sf = tuple(state_ffn) if state_ffn is not None else (False,) * n_layers
    j = next((i for i, (a, f, a0, f0) in enumerate(zip(decoder_attention, decoder_ffn, sa, sf))
              if bool(a) != bool(a0) or bool(f) != bool(f0)), n_layers)
    if j == len(decoder_attention):
        s = min(s, len(ids) - num_logits)
    return max(s, 0), j


class _Stop(Exception):
    def __init__(self, hidden: torch.Tensor):
        self.hidden = hidden


def _hidden_of(args, kwargs) -> torch.Tensor:
    return args[0] if args else kwargs["hidden_states"]


def compute_state(generator, ids: Sequence[int]) -> PrefixState:
    """Run the full model once over ``ids`` (one row, no padding) and collect its :class:`PrefixState`.
    Call under ``torch.inference_mode()`` and the generator's lock, with no layer bodies replaced."""
    layers = generator._decoder_layers()
    hidden: list[torch.Tensor | None] = [None] * len(layers)

    def hook(i):
        def record(module, args, kwargs):
            hidden[i] = _hidden_of(args, kwargs).detach()
        return record

    handles = [layer.register_forward_pre_hook(hook(i), with_kwargs=True) for i, layer in enumerate(layers) if i]
    # no config: every cache layer is a full DynamicLayer, so sliding-window layers (Gemma 3, Mistral, ...) keep
    # the keys / values of all T positions too (their mask still applies the window: same outputs)
    cache = SkipAwareCache(None, [False] * len(layers))
    tensor = torch.tensor([list(ids)], dtype=torch.long, device=generator.device)
    try:
        generator._forward(tensor, torch.ones_like(tensor), cache, logits_to_keep=1)
    finally:
        for h in handles:
            h.remove()
    keys = [cache.layers[i].keys for i in range(len(layers))]
    values = [cache.layers[i].values for i in range(len(layers))]
    return PrefixState(tuple(int(i) for i in ids), keys, values, hidden)


def reused_forward(generator, state: PrefixState, ids: Sequence[int], plan, *, num_logits: int,
                   need_cache: bool = True) -> tuple[torch.Tensor, SkipAwareCache | None]:
    """The plan's forward pass over ``ids`` (one row: the processed input, followed by target tokens when scoring)
    starting from ``state``; the plan's layer bodies must be installed (inside ``generator.skipping(plan)``).

    Args:
        ids: processed ids ``[N]`` (the processed input, followed by the target tokens when scoring).
        num_logits: logits kept at the last positions (``1 <= num_logits <= N``).
        need_cache: return the KV cache of all positions (for decoding); ``False`` (scoring) saves building it.

    Returns:
        ``(logits [1, num_logits, V], cache)``: the cache holds keys / values of all ``N`` positions, ready for
        decoding (a :class:`SkipAwareCache` for the plan's skipped attention sublayers); ``None`` without
        ``need_cache`` when layers ``>= j`` ran without one.
    """
    layers = generator._decoder_layers()
    num_layers = len(layers)
    s, j = plan_reuse_point(state.ids, ids, plan.decoder_attention, plan.decoder_ffn, num_logits,
                            state_attention=state.attention, state_ffn=state.ffn)
    n = len(ids)
    device = generator.device
    full = torch.tensor([list(ids)], dtype=torch.long, device=device)
    mask = torch.ones_like(full)
    cache = SkipAwareCache(generator.config, plan.decoder_attention)
    if j == 0:  # nothing reusable: from scratch
        cache = cache if need_cache else None
        return generator._forward(full, mask, cache, logits_to_keep=num_logits), cache
    if j < num_layers and state.hidden[j] is None:
        raise ValueError(f"this prefix state keeps no residual stream entering layer {j}: a staged state serves "
                         f"only plans with its own sublayer flags (StagedStates.get)")
    # layers < j skip what the plan (and the state) skip: their attention stores nothing
    first_skipped = list(plan.decoder_attention[:j]) + [False] * (num_layers - j)
    first = SkipAwareCache(generator.config, first_skipped) if j < num_layers else cache
    dtype = generator.model.get_input_embeddings().weight.dtype  # a store may keep states in a lower precision
    if s < n:
        for i in range(min(j, num_layers)):
            if state.keys[i] is not None:
                first.update(state.keys[i][:, :, :s].to(dtype), state.values[i][:, :, :s].to(dtype), i)
    if j == num_layers:  # tokens only: one call over the tail
        return generator._forward(full[:, s:], mask, cache, logits_to_keep=num_logits), cache
    if s < n:  # call 1: the tail through layers < j
        def stop(module, args, kwargs):
            raise _Stop(_hidden_of(args, kwargs))

        handle = layers[j].register_forward_pre_hook(stop, with_kwargs=True)
        try:
            generator._forward(full[:, s:], mask, first, logits_to_keep=1)
        except _Stop as e:
            tail = e.hidden
        else:  # pragma: no cover - the hook always fires
            raise RuntimeError(f"layer {j} was never called")
        finally:
            handle.remove()
        stream = torch.cat([state.hidden[j][:, :s].to(tail.dtype), tail], 1)
    else:  # every position of layers < j is the full model's (scoring the sequence the state was computed on)
        stream = state.hidden[j][:, :n].to(dtype)

    # call 2: all positions through layers >= j (layers < j hand over the residual stream entering layer j)
    def inject(hidden_states, **kwargs):
        return stream

    def identity(hidden_states, **kwargs):
        return hidden_states

    bodies = [(layers[0], inject)] + [(layers[i], identity) for i in range(1, j)]
    if not need_cache:
        cache = None
    with replaced_forwards(bodies):
        logits = generator._forward(full, mask, cache, logits_to_keep=num_logits)
    if cache is not None:
        for i in range(j):
            if s < n:  # the layer object itself: a sliding-window layer keeps its count of processed tokens
                cache.layers[i] = first.layers[i]
            elif state.keys[i] is not None:
                cache.update(state.keys[i][:, :, :n].to(dtype), state.values[i][:, :, :n].to(dtype), i)
    return logits, cache


class StagedStates:
    """States of plans that skip sublayers, computed on the full input, for the plans that skip the *same*
    sublayers and also drop tokens (decoder-only scoring; what ``skipenv table build`` turns on).

    A plan ``P`` that skips sublayers with first skipped layer ``j`` and drops tokens from position ``s`` on is run
    by :func:`reused_forward` from the full model's state as: positions ``>= s`` through layers ``< j``, then *all*
    positions through layers ``>= j``. By causality, the positions ``< s`` of every layer of ``P`` equal those of the
    plan ``S`` that skips the same sublayers on the whole input; so once ``S`` has been scored (its forward over the
    whole input and target is run anyway), its keys / values (a :class:`PrefixState` with ``attention`` / ``ffn``
    set to ``S``'s flags) let ``P`` compute only its positions ``>= s`` (through every layer: one model call over
    the tail, as a token-only plan from the full model's state). For the 32-plan factorial of ``xsum-v1`` (drop
    segment 7 + skip attention 25, say) that removes the ``L - j`` layers over the kept prefix from every combined
    plan. Results equal the per-plan path up to float round-off (the stored prefix was computed in a pass of another
    length), within the same 1e-4 bound as :class:`PrefixStore`'s reuse (``tests/tables/test_staged_reuse.py``).

    Used only while ``generator.staged_states`` is set (``None``, the default: the live env's path, unchanged). The
    states are tied to the model identity of the generator's :class:`PrefixStore` (:meth:`bind`) and kept for the
    ``max_states`` most recent (input, flags) pairs.

    Args:
        max_states: states kept (default 16; one is about 26 MB for a 560-token SmolLM2 input at float32).

    Attributes:
        hits: plans served from a staged state. captures: staged states computed.

    Raises:
        ValueError: ``max_states < 1``.
    """

    def __init__(self, max_states: int = 16):
        if isinstance(max_states, bool) or not isinstance(max_states, int) or max_states < 1:
            raise ValueError(f"max_states must be an integer >= 1, got {max_states!r}")
        self.max_states = max_states
        self._states: OrderedDict[tuple, PrefixState] = OrderedDict()
        self.identity: str | None = None
        self.hits = self.captures = 0

    @staticmethod
    def _key(ids: Sequence[int], plan) -> tuple:
        return (tuple(int(i) for i in ids), tuple(bool(a) for a in plan.decoder_attention),
                tuple(bool(f) for f in plan.decoder_ffn))

    def bind(self, identity: str | None) -> None:
        """Drop every state when the model identity changes (states of other weights are never served)."""
        if identity != self.identity:
            self._states.clear()
            self.identity = identity

    def get(self, ids: Sequence[int], plan) -> PrefixState | None:
        """The staged state of ``plan``'s sublayer flags on the full sequence ``ids``, or ``None``."""
        state = self._states.get(self._key(ids, plan))
        if state is not None:
            self.hits += 1
        return state

    def wants(self, base: PrefixState, ids: Sequence[int], plan) -> bool:
        """``True`` when scoring ``plan`` on ``ids`` from the full model's ``base`` state should also keep its
        staged state: ``plan`` keeps every token (``ids`` is ``base``'s sequence), skips a sublayer after layer 0,
        and its state is not kept yet."""
        if tuple(int(i) for i in ids) != base.ids or base.attention is not None or base.ffn is not None:
            return False
        j = next((i for i, (a, f) in enumerate(zip(plan.decoder_attention, plan.decoder_ffn)) if a or f), None)
        return j is not None and j > 0 and self._key(ids, plan) not in self._states

    def put(self, state: PrefixState) -> None:
        key = (state.ids, state.attention, state.ffn)
        self._states[key] = state
        self._states.move_to_end(key)
        while len(self._states) > self.max_states:
            self._states.popitem(last=False)
        self.captures += 1

    def clear(self) -> None:
        self._states.clear()

    def __len__(self) -> int:
        return len(self._states)


def capture_staged_state(generator, base: PrefixState, ids: Sequence[int], plan, *,
                         num_logits: int) -> tuple[torch.Tensor, PrefixState]:
    """Score ``plan`` on ``base``'s own sequence ``ids`` (no token dropped) from the full model's ``base`` state,
    exactly as :func:`reused_forward` does, and keep its keys / values as a staged :class:`PrefixState`.

    Returns:
        ``(logits [1, num_logits, V], state)``: the state's ``keys`` / ``values`` are ``[1, kv_heads, T, head_dim]``
        per layer (``None`` where ``plan`` skips the attention), ``attention`` / ``ffn`` are ``plan``'s flags.
    """
    logits, cache = reused_forward(generator, base, ids, plan, num_logits=num_logits, need_cache=True)
    n_layers = len(plan.decoder_attention)
    keys = [None if plan.decoder_attention[i] else cache.layers[i].keys for i in range(n_layers)]
    values = [None if plan.decoder_attention[i] else cache.layers[i].values for i in range(n_layers)]
    state = PrefixState(tuple(int(i) for i in ids), keys, values, [None] * n_layers,
                        tuple(bool(a) for a in plan.decoder_attention), tuple(bool(f) for f in plan.decoder_ffn))
    return logits, state
