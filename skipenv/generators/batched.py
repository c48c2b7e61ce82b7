"""Batched teacher-forced scoring of many (input, target, plan) rows: padded forward passes over several rows
instead of one or two per row (decoder-only models; what the vector env's ``batch_plans=True`` step uses).

Each row ``r`` is run exactly as the single-row path of :mod:`skipenv.generators.reuse` runs it, with the rows of a
group padded on the right into one batch (which rows share a call is decided by a cost model, :func:`group_rows`:
a call has a fixed cost, padding costs the positions it adds):

- its reuse point ``(s_r, j_r)`` (:func:`~skipenv.generators.reuse.plan_reuse_point`) against the full model's
  stored state of its input (a row without a state has ``j_r = 0``: from scratch);
- **phase 1** (rows with ``j_r > 0`` and a tail, ``s_r < N_r``): the tails ``ids_r[s_r:]`` in one call of the
  unmodified model, every row attending to its own stored keys / values of positions ``< s_r`` (a KV cache whose
  rows are the prefixes, left-padded to the longest; the 0/1 attention mask covers prefix and tail, so every row's
  position ids continue from ``s_r``). The call runs to the last layer when a row skips only tokens (its logits
  come from here) and stops at the largest ``j_r`` otherwise; the residual stream entering layer ``j_r`` is taken
  per row (a row run past its ``j_r`` wastes that work but is not changed by it);
- **phase 2** (rows with ``j_r < L``): all positions of the group's rows in one call, each layer running per row:
  a row with ``j_r > i`` passes layer ``i`` through, at layer ``j_r`` its hidden states are replaced by the stored
  residual stream (positions ``< s_r``) followed by its phase-1 tail, and from there on the layer's attention and
  FFN sublayers run only on the rows that keep them (gathered; the rows' attention masks and position embeddings
  are gathered with them), the others pass the residual stream through unchanged.

Logits are computed only at the positions that predict target tokens (the model's final norm, then its output
embedding on the gathered positions). Results equal the single-row path up to float round-off: log-probabilities
within ``1e-4`` and identical argmax on the property tests (``tests/generators/test_batched.py``). The FLOPs an
environment charges do not change (they are the plan's from scratch); this is the simulator's speed only.

Where it pays: when a call's fixed cost is large against the work per row (an accelerator, or short rows). On one
CPU thread a SmolLM2 call's fixed cost is about 30 tokens' work while a row recomputes tens to hundreds of positions
and rows of different documents differ in length by more than that, so batching gains little there (README
"Speed").
"""

from __future__ import annotations

from typing import Sequence

import torch

from ..inputs import PromptInput
from ..plan import SkipPlan
from .adapter import SkipAwareCache, cache_kwarg, replaced_forwards
from .reuse import PrefixState, _hidden_of, _Stop, compute_state, plan_reuse_point

__all__ = ["score_plans", "group_rows", "DEFAULT_FIXED_TOKENS"]

#: Fixed cost of one forward call of the embedded SmolLM2 on one CPU thread, in tokens of its per-token cost:
#: ~0.15 s per call against ~4.5 ms per token (``benchmarks/bench_env.py --forward-costs``: 1 token 0.12 s, 8 tokens
#: 0.20 s, 64 tokens 0.28 s, 400 tokens 2.0 s). On a GPU it is in the thousands (use ``float("inf")``).
DEFAULT_FIXED_TOKENS = 32.0


def _state_for(generator, inp: PromptInput, target: Sequence[int]) -> PrefixState | None:
    """The stored state of ``inp`` as the single-row :meth:`score` would use it (computed on the store's
    ``admit_after``-th request), or ``None`` (no store, input too long, not admitted yet)."""
    store = getattr(generator, "prefix_store", None)
    if store is None:
        return None
    key = tuple(int(i) for i in inp.input_ids)
    full_ids = key + tuple(int(i) for i in target)
    limit = generator._max_positions()
    if limit is not None and len(full_ids) > limit:
        return None
    state = store.get(key)
    if state is None and store.admit(key):
        state = compute_state(generator, full_ids)
        state = store.put(state, key)
    return state


def _gather_kwargs(kwargs: dict, index: torch.Tensor, batch: int) -> dict:
    """``kwargs`` of a layer call with every per-row tensor (``ndim >= 2``, first dimension ``batch``; tuples of
    them, e.g. rotary ``position_embeddings``) restricted to the rows ``index``."""
    def pick(v):
        if isinstance(v, torch.Tensor) and v.ndim >= 2 and v.shape[0] == batch:
            return v.index_select(0, index)
        if isinstance(v, tuple) and v and all(isinstance(x, torch.Tensor) for x in v):
            return tuple(pick(x) for x in v)
        return v

    return {k: pick(v) for k, v in kwargs.items()}


def _base_call(generator, ids, mask, cache=None):
    """The model without its LM head over ``ids`` ``[B, t]`` (mask ``[B, T]``, ``T >= t``, position ids from the
    mask); returns the final (normed) hidden states ``[B, t, d]``."""
    from .base import _positions

    base = generator.model.base_model
    kwargs = {cache_kwarg(base): cache, "use_cache": cache is not None}
    out = base(input_ids=ids, attention_mask=mask, position_ids=_positions(mask)[:, -ids.shape[1]:], **kwargs)
    return out.last_hidden_state


def _lm_head(generator):
    """Final hidden states ``[.., d]`` → logits ``[.., V]`` as the model's ``forward`` computes them: the output
    embedding, then ``cap · tanh(logits / cap)`` when the config sets ``final_logit_softcapping`` (Gemma 2 / 3;
    source: ``Gemma3ForCausalLM.forward``)."""
    head = generator.model.get_output_embeddings()
    cap = getattr(generator.config, "final_logit_softcapping", None)
    if cap is None:
        return head

    def capped(hidden):
        return torch.tanh(head(hidden) / cap) * cap

    return capped


def _right_pad(rows: Sequence[Sequence[int]], pad_id: int, device) -> tuple[torch.Tensor, torch.Tensor]:
    """``[R, T]`` right-padded ids and their 0/1 attention mask."""
    from .base import _right_pad as pad

    return pad(rows, pad_id, device)


@torch.inference_mode()
def score_plans(generator, inputs: Sequence[PromptInput], targets: Sequence[Sequence[int]],
                plans: Sequence[SkipPlan | None], *, reuse: bool = True,
                fixed_tokens: float | None = None):
    """Teacher-forced scoring of ``B`` rows, each under its own plan, in padded forward passes (at most two per
    group of rows; see :func:`group_rows`).

    Same results as ``[generator.score([inputs[r]], [targets[r]], plans[r], reuse=reuse)[0] for r in range(B)]``
    up to float round-off (see the module docstring), including the prefix store's admission counts.

    Args:
        generator: a decoder-only :class:`~skipenv.generators.SkippableGenerator`.
        inputs: ``B`` formatted inputs. targets: ``B`` target id lists (``m_r >= 1`` each).
        plans: ``B`` plans (``None`` = full model).
        reuse: start rows from the generator's :attr:`prefix_store` (when it has one).
        fixed_tokens: the fixed cost of one forward call in token-equivalents of the full model (``>= 0``; see
            :func:`group_rows`): rows are put in one padded call only where that is predicted to be cheaper than
            separate calls. ``float("inf")`` = every phase in one call. Default (``None``):
            :data:`DEFAULT_FIXED_TOKENS` on a CPU, ``inf`` on other devices.

    Returns:
        ``B`` :class:`~skipenv.generators.ScoreOutput` (log-probabilities ``[m_r]``, argmax ``[m_r]``).

    Raises:
        ValueError: different numbers of inputs / targets / plans, an empty target, or (as :meth:`score`) a row
            that does not fit the model or whose plan removes every token. TypeError: an encoder-decoder generator.
    """
    from .base import ScoreOutput, _check_inputs

    if generator.num_encoder_layers:
        raise TypeError("score_plans batches decoder-only models only; call score() per row for encoder-decoders")
    _check_inputs(inputs)
    if not (len(inputs) == len(targets) == len(plans)):
        raise ValueError(f"got {len(inputs)} inputs, {len(targets)} targets and {len(plans)} plans; one of each per "
                         f"row")
    if fixed_tokens is None:
        fixed_tokens = DEFAULT_FIXED_TOKENS if generator.device.type == "cpu" else float("inf")
    targets = [[int(x) for x in t] for t in targets]
    if any(len(t) == 0 for t in targets):
        raise ValueError("every target needs at least one token")
    rows = []
    for inp, t, plan in zip(inputs, targets, plans):
        plan, prompts = generator._prepare([inp], plan, len(t))
        rows.append((plan, prompts[0]))
    layers = generator._decoder_layers()
    L = len(layers)
    device = generator.device
    with generator._lock:
        states = [_state_for(generator, inp, t) if reuse else None for inp, t in zip(inputs, targets)]
        B = len(rows)
        ids = [p + t for (_, p), t in zip(rows, targets)]
        n = [len(x) for x in ids]
        m = [len(t) for t in targets]
        s, j = [0] * B, [0] * B
        for r, ((plan, _), state) in enumerate(zip(rows, states)):
            if state is not None:
                s[r], j[r] = plan_reuse_point(state.ids, ids[r], plan.decoder_attention, plan.decoder_ffn, m[r] + 1)
            if j[r] == 0:
                s[r] = 0
        head = _lm_head(generator)
        logits: list[torch.Tensor | None] = [None] * B
        entering: dict[int, torch.Tensor] = {}  # row -> residual stream entering layer j_r at its tail, [t_r, d]
        ctx = _Rows(generator, layers, states, ids, n, m, s, j, [plan for plan, _ in rows], head, logits, entering)
        # phase 1: the tails (work: tail length x layers up to j_r, or all of them for token-only rows)
        one = [r for r in range(B) if j[r] > 0 and s[r] < n[r]]
        for group in group_rows([n[r] - s[r] for r in one], [j[r] / L for r in one], fixed_tokens, gathered=False):
            _phase_one(ctx, [one[k] for k in group])
        # phase 2: every position, layers >= j_r (a row's layers < j_r are passed through: no work)
        two = [r for r in range(B) if j[r] < L]
        for group in group_rows([n[r] for r in two], [(L - j[r]) / L for r in two], fixed_tokens, gathered=True):
            _phase_two(ctx, [two[k] for k in group])

    out = []
    for (plan, p), t, lg in zip(rows, targets, logits):
        if not bool(torch.isfinite(lg).all()):
            with generator.skipping(plan):  # names the plan; the parameters holding NaN / inf are listed
                raise generator._nonfinite_error("the logits")
        logp = torch.log_softmax(lg.float(), dim=-1)
        tgt = torch.tensor(t, dtype=torch.long, device=logp.device)
        out.append(ScoreOutput(logprobs=logp.gather(-1, tgt[:, None]).squeeze(-1).cpu(),
                               argmax=logp.argmax(-1).cpu(), prompt_length=len(p)))
    return out


def group_rows(lengths: Sequence[int], depths: Sequence[float], fixed_tokens: float, *, gathered: bool
               ) -> list[list[int]]:
    """Split rows into groups that each run as one padded call, by a cost model in token-equivalents.

    A call over a group ``G`` costs ``fixed_tokens + max_len(G) * sum(depth)`` when each layer runs only on the rows
    that need it (``gathered``: phase 2), else ``fixed_tokens + max_len(G) * |G| * max(depth)`` (phase 1). Rows are
    taken by increasing length and a row joins the current group when that costs no more than a call of its own.

    Args:
        lengths: per row, the positions it computes. depths: per row, the fraction of the layers it runs (0..1).
        fixed_tokens: the fixed cost of one call (``>= 0``, token-equivalents).

    Returns:
        Groups of row indices (into ``lengths``).

    Raises:
        ValueError: ``lengths`` / ``depths`` of different sizes or a negative ``fixed_tokens``.
    """
    if len(lengths) != len(depths):
        raise ValueError(f"got {len(lengths)} lengths and {len(depths)} depths")
    if not fixed_tokens >= 0:
        raise ValueError(f"fixed_tokens must be >= 0, got {fixed_tokens!r}")

    def cost(group):
        t = max(lengths[k] for k in group)
        work = sum(depths[k] for k in group) if gathered else len(group) * max(depths[k] for k in group)
        return fixed_tokens + t * work

    groups: list[list[int]] = []
    for k in sorted(range(len(lengths)), key=lambda k: (lengths[k], k)):
        if groups and cost(groups[-1] + [k]) <= cost(groups[-1]) + cost([k]):
            groups[-1].append(k)
        else:
            groups.append([k])
    return groups


class _Rows:
    """The per-row values shared by the two phases of :func:`score_plans`."""

    def __init__(self, generator, layers, states, ids, n, m, s, j, plans, head, logits, entering):
        self.generator, self.layers, self.states, self.ids = generator, layers, states, ids
        self.n, self.m, self.s, self.j, self.plans = n, m, s, j, plans
        self.head, self.logits, self.entering = head, logits, entering


def _phase_one(ctx: _Rows, one: list[int]) -> None:
    """The tails of rows ``one`` through the unmodified model, each from its own stored prefix (one call)."""
    gen, layers, states, s, j, n, m = ctx.generator, ctx.layers, ctx.states, ctx.s, ctx.j, ctx.n, ctx.m
    L, device = len(layers), gen.device
    stop = L if any(j[r] == L for r in one) else max(j[r] for r in one)
    tails = [ctx.ids[r][s[r]:] for r in one]
    tail_ids, tail_mask = _right_pad(tails, gen.pad_token_id, device)
    prefix = max(s[r] for r in one)
    cache = None
    if prefix:
        cache = SkipAwareCache(gen.config, [False] * L)
        for i in range(stop):
            k = _left_pad_states([states[r].keys[i][:, :, :s[r]] for r in one], prefix)
            v = _left_pad_states([states[r].values[i][:, :, :s[r]] for r in one], prefix)
            cache.update(k.to(_dtype(gen)), v.to(_dtype(gen)), i)
    prefix_mask = torch.zeros((len(one), prefix), dtype=tail_mask.dtype, device=device)
    for b, r in enumerate(one):
        prefix_mask[b, prefix - s[r]:] = 1
    mask = torch.cat([prefix_mask, tail_mask], 1)
    by_layer: dict[int, list[int]] = {}
    for b, r in enumerate(one):
        if j[r] < L:
            by_layer.setdefault(j[r], []).append(b)

    def capture(i):
        def hook(module, args, kwargs):
            h = _hidden_of(args, kwargs)
            for b in by_layer[i]:
                ctx.entering[one[b]] = h[b, : len(tails[b])]
            if i == stop:
                raise _Stop(h)
        return hook

    handles = [layers[i].register_forward_pre_hook(capture(i), with_kwargs=True) for i in sorted(by_layer)]
    try:
        hidden = _base_call(gen, tail_ids, mask, cache)
    except _Stop:
        return
    finally:
        for h in handles:
            h.remove()
    for b, r in enumerate(one):
        if j[r] == L:
            t = len(tails[b])
            ctx.logits[r] = ctx.head(hidden[b, t - m[r] - 1: t - 1])


def _phase_two(ctx: _Rows, two: list[int]) -> None:
    """Every position of rows ``two`` through layers ``>= j_r``, per-row sublayers (one call)."""
    gen, layers, states, s, j, n, m = ctx.generator, ctx.layers, ctx.states, ctx.s, ctx.j, ctx.n, ctx.m
    device = gen.device
    seq_ids, seq_mask = _right_pad([ctx.ids[r] for r in two], gen.pad_token_id, device)
    width, d = seq_ids.shape[1], gen.hidden_size
    streams: dict[int, torch.Tensor] = {}
    for b, r in enumerate(two):
        if j[r] == 0:
            continue
        stored = states[r].hidden[j[r]][0, : s[r]]
        row = stored if s[r] == n[r] else torch.cat([stored.to(ctx.entering[r].dtype), ctx.entering[r]], 0)
        padded = torch.zeros((width, d), dtype=_dtype(gen), device=device)
        padded[: n[r]] = row.to(padded.dtype)
        streams[b] = padded
    bodies = [(layers[i], _per_row_body(gen, layers[i], i, [j[r] for r in two], [ctx.plans[r] for r in two],
                                        streams)) for i in range(len(layers))]
    with replaced_forwards(bodies):
        hidden = _base_call(gen, seq_ids, seq_mask)
    for b, r in enumerate(two):
        ctx.logits[r] = ctx.head(hidden[b, n[r] - m[r] - 1: n[r] - 1])


def _dtype(generator) -> torch.dtype:
    return generator.model.get_input_embeddings().weight.dtype


def _left_pad_states(parts: Sequence[torch.Tensor], width: int) -> torch.Tensor:
    """``[1, h, s_r, hd]`` tensors → ``[R, h, width, hd]`` (zeros on the left; masked out)."""
    first = parts[0]
    out = first.new_zeros((len(parts), first.shape[1], width, first.shape[3]))
    for b, x in enumerate(parts):
        if x.shape[2]:
            out[b, :, width - x.shape[2]:] = x[0]
    return out


def _per_row_body(generator, layer, i: int, j: Sequence[int], plans: Sequence[SkipPlan], streams: dict):
    """Layer ``i``'s body in phase 2 (batch row ``b`` has reuse layer ``j[b]`` and plan ``plans[b]``): a row passes
    layers ``< j`` through, enters its stored stream (``streams[b]``) at layer ``j`` and runs the sublayers its plan
    keeps from there on (gathered when not every row runs them)."""
    B = len(j)
    inject = [b for b in range(B) if j[b] == i and b in streams]
    attn = [b for b in range(B) if j[b] <= i and not plans[b].decoder_attention[i]]
    ffn = [b for b in range(B) if j[b] <= i and not plans[b].decoder_ffn[i]]
    skip_attn = [b for b in range(B) if j[b] <= i and plans[b].decoder_attention[i]]
    skip_ffn = [b for b in range(B) if j[b] <= i and plans[b].decoder_ffn[i]]
    attention_only = generator._layer_forward("decoder", layer, False, True)
    ffn_only = generator._layer_forward("decoder", layer, True, False)

    def run(body, h, which, kwargs):
        with generator.bypassing(None):  # the one-sublayer bodies skip the other sublayer: its bypass is added below
            if len(which) == B:
                return body(h, **kwargs)
            index = torch.tensor(which, dtype=torch.long, device=h.device)
            sub = body(h.index_select(0, index), **_gather_kwargs(kwargs, index, B))
            return h.index_copy(0, index, sub)

    def forward(hidden_states, **kwargs):
        h = hidden_states
        if inject:
            index = torch.tensor(inject, dtype=torch.long, device=h.device)
            h = h.index_copy(0, index, torch.stack([streams[b] for b in inject]).to(h.dtype))
        if attn:
            h = run(attention_only, h, attn, kwargs)
        h = generator._bypassed("decoder", layer, "attention", h, skip_attn)  # skip modes other than identity
        if ffn:
            h = run(ffn_only, h, ffn, kwargs)
        h = generator._bypassed("decoder", layer, "ffn", h, skip_ffn)
        return h

    return forward
