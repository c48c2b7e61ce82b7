"""Richer observations for the skip decision, computed through the generator's public methods.

The env's own observation is the hidden state after the first layer, mean-pooled over the whole input, plus two
length features. Which documents tolerate which skip may depend on *where* the content sits and on deeper
representations, so this module offers other observation kinds:

- ``"pooled"`` — the env's observation (first layer, pooled over the input).
- ``"segments"`` — the same first-layer hidden states ``h`` ``[T, d]`` pooled separately over each of the ``K``
  document segments and over the rest of the prompt (template, instruction), each segment's length /
  ``max_input_tokens``, and the cosine similarity of each segment's pooled state to the last prompt position's
  state (which the first generated token is computed from). Shape ``[(K + 1) d + 2 K]``. It comes from the same
  first-layer pass the env already charges as observation overhead, so it costs no extra FLOPs.
- ``"layer:m"`` — the hidden state after ``m`` layers (``m >= 1``; ``layer:1`` equals ``pooled`` without the
  lengths), pooled over the input, plus the two lengths. Costs the FLOPs of layers ``1 … m-1`` over the full
  input on top of the charged first layer (:func:`extra_observation_flops`).
- ``"attention:m"`` — run the first ``m`` layers unmodified over the full input; in layer ``m`` (1-based) take the
  self-attention probabilities of the last ``min(8, T)`` input positions (:data:`ATTENTION_QUERIES`), average them
  over heads and those positions (a distribution over the ``T`` key positions) and sum it per document segment
  (the ``K`` segments of :meth:`~skipenv.inputs.PromptInput.segment_bounds`) and over every position outside the
  document (template, instruction). Features: the pooled hidden state after layer ``m`` ``[d]``, the ``K + 1``
  attention masses (segments, then outside; they sum to 1), the ``K`` segment lengths / ``max_input_tokens`` and
  the two lengths: shape ``[d + 2 K + 3]``. Costs what ``layer:m`` costs (the weights are part of layer ``m``'s
  attention). The weights are exact: the model's own forward with transformers' eager attention
  (:func:`skipenv.generators.adapter.attention_weights_through`), equal to ``output_attentions=True``.
- ``"units"`` — the env's pooled observation (``[d + 2]``) followed by three cheap text features per token unit
  (the ``K`` segments, equal token runs or sentence runs, see ``segment_boundaries``): its position (first token's
  offset in the document / document tokens, in [0, 1)), its length (tokens / ``max_input_tokens``) and its lexical
  similarity to the reference text — the question for QA tasks, else the document's first sentence
  (:func:`skipenv.tasks.units.sentence_spans`; XSum has no title): cosine of lower-cased word-count vectors
  (:func:`lexical_similarity`). Shape ``[d + 2 + 3 K]``; costs the first layer like ``"pooled"`` (the text
  features use no model FLOPs). Encoder-decoder generators too.

:func:`observation_features` computes one kind for one input; :func:`env_observation` the observation a
one-shot env with ``observation=kind`` returns (:func:`observation_size` its length), and
:func:`observation_flops` what computing it costs; :class:`SegmentObservation` is a Gymnasium
observation wrapper that appends the ``"segments"`` features to the env's observation (no cost change);
:func:`feature_table` builds the per-document feature table that :func:`skipenv.evaluation.probe.compare_observations` uses
to compare kinds by held-out R² of per-plan quality. Decoder-only generators only (the layerwise stepping behind it
is implemented for them).
"""

from __future__ import annotations

import re
from collections import Counter

import gymnasium as gym
import numpy as np
from gymnasium import spaces

__all__ = ["OBSERVATION_KINDS", "ATTENTION_QUERIES", "parse_observation_kind", "check_observation_kind",
           "observation_features", "attention_features", "env_observation", "observation_size", "passthrough_columns",
           "observation_flops", "extra_observation_flops", "SegmentObservation", "feature_table", "unit_features",
           "lexical_similarity"]

#: The observation kinds (``m`` = a layer number, 1-based).
OBSERVATION_KINDS = ("pooled", "segments", "layer:m", "attention:m", "units")
#: Last input positions whose attention ``"attention:m"`` averages (fewer when the input is shorter).
ATTENTION_QUERIES = 8


def parse_observation_kind(kind: str) -> tuple[str, int]:
    """``(name, m)`` of an observation kind: ``("pooled", 1)``, ``("segments", 1)``, ``("layer", m)``,
    ``("attention", m)``, ``("units", 1)``.

    Raises:
        ValueError: an unknown kind or ``m < 1`` (the message lists the kinds).
    """
    if kind in ("pooled", "segments", "units"):
        return kind, 1
    if isinstance(kind, str) and kind.split(":", 1)[0] in ("layer", "attention") and ":" in kind:
        name, m = kind.split(":", 1)
        try:
            m = int(m)
        except ValueError:
            m = 0
        if m >= 1:
            return name, m
    raise ValueError(f"unknown observation kind {kind!r}; choose one of {OBSERVATION_KINDS} (m = a layer number "
                     f">= 1, e.g. 'layer:4', 'attention:4')")


_parse = parse_observation_kind


def check_observation_kind(kind: str, generator) -> str:
    """Validate ``kind`` for ``generator`` and return its canonical spelling (``"layer:04"`` → ``"layer:4"``).

    Raises:
        ValueError: an unknown kind, ``m`` above the generator's decoder layers, or a kind other than
            ``"pooled"`` for an encoder-decoder generator (its richer observations are not implemented).
    """
    name, m = parse_observation_kind(kind)
    if name in ("pooled", "units"):
        return name
    if generator.num_encoder_layers:
        raise ValueError(f"observation {kind!r} needs a decoder-only generator (Llama, GPT-2); encoder-decoder models "
                         f"({type(generator).__name__}) have only observation='pooled'")
    if m > generator.num_decoder_layers:
        raise ValueError(f"observation {kind!r}: m={m} exceeds the model's {generator.num_decoder_layers} layers")
    return name if name == "segments" else f"{name}:{m}"


def _hidden_after(generator, prompt, num_layers: int) -> np.ndarray:
    """Hidden states ``[T, d]`` (float32) after ``num_layers`` unmodified layers over the full input."""
    if generator.num_encoder_layers:
        raise NotImplementedError("richer observations need the layerwise prefill of a decoder-only generator "
                                  "(Llama, GPT-2); encoder-decoder models have only the 'pooled' observation")
    if num_layers > generator.num_decoder_layers:
        raise ValueError(f"layer:{num_layers} exceeds the model's {generator.num_decoder_layers} layers")
    stepper = generator.layer_stepper(prompt, (False,) * 1)
    for layer in range(num_layers):
        stepper.step(layer)
    return stepper.hidden[0].float().cpu().numpy()


def observation_features(generator, prompt, kind: str = "segments", *, token_segments: int = 8,
                         max_input_tokens: int = 1024) -> np.ndarray:
    """Features of one input (see the module docstring for each kind).

    Args:
        generator: a decoder-only :class:`~skipenv.generators.SkippableGenerator`.
        prompt: the :class:`~skipenv.inputs.PromptInput` (``task.format(example, generator.tokenizer)``).
        kind: ``"pooled"``, ``"segments"``, ``"layer:m"`` or ``"attention:m"``.
        token_segments: ``K``, as in the env.
        max_input_tokens: normaliser of the lengths (the task's ``max_input_tokens``).

    Returns:
        float32 vector: ``[d + 2]`` (pooled, layer:m), ``[(K + 1) d + 2 K]`` (segments) or ``[d + 2 K + 3]``
        (attention:m).

    Raises:
        ValueError: an unknown kind; NotImplementedError: an encoder-decoder generator.
    """
    name, m = _parse(kind)
    if name == "attention":
        return attention_features(generator, prompt, m, token_segments=token_segments,
                                  max_input_tokens=max_input_tokens)
    h = _hidden_after(generator, prompt, m)
    lengths = np.array([len(prompt), prompt.num_document_tokens], np.float32) / max_input_tokens
    if name != "segments":
        return np.concatenate([h.mean(0), lengths]).astype(np.float32)
    d = h.shape[1]
    bounds = prompt.segment_bounds(token_segments)
    outside = np.ones(len(h), bool)
    pools, sizes, cos = [], [], []
    last = h[-1] / max(np.linalg.norm(h[-1]), 1e-12)
    for s, e in bounds:
        outside[s:e] = False
        p = h[s:e].mean(0) if e > s else np.zeros(d, np.float32)
        pools.append(p)
        sizes.append((e - s) / max_input_tokens)
        cos.append(float(p @ last / max(np.linalg.norm(p), 1e-12)))
    rest = h[outside].mean(0) if outside.any() else np.zeros(d, np.float32)
    return np.concatenate([*pools, rest, np.array(sizes), np.array(cos)]).astype(np.float32)


def attention_features(generator, prompt, m: int, *, token_segments: int = 8,
                       max_input_tokens: int = 1024) -> np.ndarray:
    """The ``"attention:m"`` features of one input (see the module docstring).

    Args:
        generator: a decoder-only generator.
        prompt: the formatted input (``T`` tokens, nothing skipped).
        m: the layer (1-based) whose self-attention is read; layers ``1 … m`` run unmodified.
        token_segments: ``K``.
        max_input_tokens: normaliser of the lengths.

    Returns:
        float32 ``[d + 2 K + 3]``: pooled hidden state after layer ``m`` ``[d]``; attention mass of each segment
        ``[K]`` and of the positions outside the document ``[1]`` (fractions summing to 1); segment lengths /
        ``max_input_tokens`` ``[K]``; input length and document length / ``max_input_tokens`` ``[2]``.

    Raises:
        NotImplementedError: an encoder-decoder generator; ValueError: ``m`` not in ``1 … L`` or an input that
            does not fit the model.
    """
    import torch

    from ..generators.adapter import attention_weights_through

    if generator.num_encoder_layers:
        raise NotImplementedError("attention observations need a decoder-only generator (Llama, GPT-2)")
    if not 1 <= m <= generator.num_decoder_layers:
        raise ValueError(f"attention:{m}: m must lie in 1 … {generator.num_decoder_layers} (the model's layers)")
    seqs = [list(prompt.input_ids)]
    generator._check_length(seqs, 0, [prompt])
    ids, mask = generator._pad(seqs)
    layer = generator._decoder_layers()[m - 1]
    attention = generator.sublayer_modules("decoder", m - 1).attention[-1]
    with torch.inference_mode(), generator._lock:
        hidden, weights = attention_weights_through(generator.model, layer, attention,
                                                    lambda: generator._run_to_first_layer(ids, mask))
    t = len(seqs[0])
    queries = min(ATTENTION_QUERIES, t)
    # [H, q, T] -> mean over heads and the last q query positions -> [T] (float64 sums)
    a = weights[0, :, t - queries:, :].double().mean(dim=(0, 1)).cpu().numpy()
    bounds = prompt.segment_bounds(token_segments)
    outside = np.ones(t, bool)
    masses, sizes = [], []
    for s, e in bounds:
        outside[s:e] = False
        masses.append(a[s:e].sum())
        sizes.append((e - s) / max_input_tokens)
    masses.append(a[outside].sum())
    pooled = hidden[0].float().mean(0).cpu().numpy()
    lengths = np.array([t, prompt.num_document_tokens], np.float64) / max_input_tokens
    return np.concatenate([pooled, np.array(masses), np.array(sizes, np.float64), lengths]).astype(np.float32)


def observation_size(kind: str, hidden_size: int, token_segments: int) -> int:
    """Length of the one-shot env's observation for ``kind`` (``d`` = ``hidden_size``, ``K`` = ``token_segments``):
    ``d + 2`` (pooled, layer:m), ``d + 2 + (K + 1) d + 2 K`` (segments: the pooled observation followed by the
    segment features, as :class:`SegmentObservation`), ``d + 2 K + 3`` (attention:m), ``d + 2 + 3 K`` (units)."""
    name, _ = parse_observation_kind(kind)
    d, k = int(hidden_size), int(token_segments)
    return {"pooled": d + 2, "layer": d + 2, "segments": d + 2 + (k + 1) * d + 2 * k,
            "attention": d + 2 * k + 3, "units": d + 2 + 3 * k}[name]


def env_observation(generator, prompt, kind: str, *, pooled: np.ndarray, token_segments: int,
                    max_input_tokens: int, example=None) -> np.ndarray:
    """The one-shot env's observation for a kind other than ``"pooled"`` (unclipped float32, length
    :func:`observation_size`).

    Args:
        pooled: the env's pooled first-layer state ``[d]`` of this input (reused by ``"segments"`` and
            ``"units"``).
        example: the input's example (``"units"`` reads its document and question).

    Raises:
        ValueError: ``"units"`` without ``example``.
    """
    name, _ = parse_observation_kind(kind)
    kw = dict(token_segments=token_segments, max_input_tokens=max_input_tokens)
    if name in ("layer", "attention"):
        return observation_features(generator, prompt, kind, **kw)
    lengths = np.array([len(prompt), prompt.num_document_tokens], np.float32) / max_input_tokens
    base = np.concatenate([np.asarray(pooled, np.float32), lengths])
    if name == "pooled":
        return base.astype(np.float32)
    if name == "units":
        if example is None:
            raise ValueError("observation 'units' needs the example (its document and question text)")
        return np.concatenate([base, unit_features(generator.tokenizer, prompt, example, **kw)]).astype(np.float32)
    return np.concatenate([base, observation_features(generator, prompt, "segments", **kw)]).astype(np.float32)


_WORD = re.compile(r"\w+")


def lexical_similarity(a: str, b: str) -> float:
    """Cosine similarity (a fraction in [0, 1]) of the lower-cased word-count vectors of two texts (words: runs of
    regex ``\\w`` characters); 0 when either has no word."""
    ca = Counter(w.lower() for w in _WORD.findall(a))
    cb = Counter(w.lower() for w in _WORD.findall(b))
    dot = sum(v * cb.get(w, 0) for w, v in ca.items())
    na, nb = sum(v * v for v in ca.values()), sum(v * v for v in cb.values())
    return float(dot / np.sqrt(na * nb)) if na and nb else 0.0


def unit_features(tokenizer, prompt, example, *, token_segments: int = 8, max_input_tokens: int = 1024) -> np.ndarray:
    """The per-unit text features of the ``"units"`` kind (see the module docstring): ``[3 K]`` float32 — the
    ``K`` positions, then the ``K`` lengths, then the ``K`` similarities. An empty unit has position 1, length 0
    and similarity 0.

    Args:
        tokenizer: the generator's tokenizer (decodes each unit's tokens).
        prompt: the formatted input; its :meth:`~skipenv.inputs.PromptInput.segment_bounds` are the units.
        example: its example (the reference text is ``example.question`` when set, else the first sentence of
            ``example.document``).
    """
    from ..tasks.units import sentence_spans

    question = getattr(example, "question", None)
    if question:
        reference = question
    else:
        spans = sentence_spans(example.document)
        reference = example.document[spans[0][0]:spans[0][1]] if spans else example.document
    start, end = prompt.document_span
    n = max(end - start, 1)
    pos, length, sim = [], [], []
    for s, e in prompt.segment_bounds(token_segments):
        pos.append((s - start) / n if e > s else 1.0)
        length.append((e - s) / max_input_tokens)
        sim.append(lexical_similarity(tokenizer.decode(list(prompt.input_ids[s:e])), reference) if e > s else 0.0)
    return np.array(pos + length + sim, np.float32)


def passthrough_columns(kind: str, token_segments: int) -> int:
    """Trailing columns of an observation that are not hidden states (lengths, attention masses, cosines), which
    :class:`skipenv.policies.menu.ProbePolicy` keeps out of its PCA: 2 (pooled, layer:m), ``2 K`` (segments: the env's
    observation and :func:`observation_features` both end with the segment lengths and cosines) or ``2 K + 3``
    (attention:m), ``3 K + 2`` (units: the two lengths and the unit features)."""
    name, _ = parse_observation_kind(kind)
    k = int(token_segments)
    return {"pooled": 2, "layer": 2, "segments": 2 * k, "attention": 2 * k + 3, "units": 3 * k + 2}[name]


def observation_flops(generator, prompt, kind: str) -> int:
    """FLOPs charged for computing the observation of ``kind`` on ``prompt`` (the full input, nothing skipped):
    the first layer (``generator.flops_model.first_layer``, what the env charges for ``"pooled"``) plus
    :func:`extra_observation_flops` — i.e. ``m`` whole layers for ``layer:m`` / ``attention:m`` (reading the
    attention weights is part of layer ``m``'s attention and costs nothing extra)."""
    n = len(prompt)
    return int(generator.flops_model.first_layer(n)) + extra_observation_flops(generator, prompt, kind)


def extra_observation_flops(generator, prompt, kind: str) -> int:
    """FLOPs a kind costs beyond the env's charged first layer: 0 for ``pooled`` / ``segments``; for ``layer:m`` and
    ``attention:m`` the analytic FLOPs of decoder layers ``1 … m-1`` (0-based, i.e. the 2nd … m-th) over the full
    input (``generator.flops`` per candidate)."""
    name, m = _parse(kind)
    if name not in ("layer", "attention") or m == 1:
        return 0
    br = generator.flops(None, prompt, 0)
    return int(sum(v for k, v in br.per_candidate.items()
                   if k.startswith("decoder.") and k.rsplit(".", 1)[1].isdigit()
                   and 1 <= int(k.rsplit(".", 1)[1]) < m and "cross" not in k))


class SegmentObservation(gym.ObservationWrapper):
    """Appends the ``"segments"`` features of the current input to a one-shot SwitchDec env's observation.

    Observation: ``Box`` ``[n + (K + 1) d + 2 K]`` (features clipped to the env's bound). The features come from
    the first-layer pass the env already charges, so ``cost`` is unchanged. Memoised per example id.

    Raises:
        ValueError: a non-1-D-Box observation space; NotImplementedError: an encoder-decoder generator.
    """

    def __init__(self, env: gym.Env):
        super().__init__(env)
        base = env.unwrapped
        space = env.observation_space
        if not isinstance(space, spaces.Box) or len(space.shape) != 1:
            raise ValueError(f"SegmentObservation needs a 1-D Box observation space, got {space}")
        if base.generator.num_encoder_layers:
            raise NotImplementedError("SegmentObservation supports decoder-only generators")
        self.token_segments = base.plan_spec.token_segments
        d, k = base.generator.hidden_size, self.token_segments
        n = (k + 1) * d + 2 * k
        bound = float(np.max(np.abs(space.high)))
        self.observation_space = spaces.Box(np.concatenate([space.low, np.full(n, -bound)]).astype(space.dtype),
                                            np.concatenate([space.high, np.full(n, bound)]).astype(space.dtype),
                                            dtype=space.dtype)
        self._bound = bound
        self._memo: dict[tuple[str, str], np.ndarray] = {}  # (model fingerprint, example id) -> features

    def observation(self, observation):
        base = self.env.unwrapped
        ex = base.example
        key = (base.generator.fingerprint, ex.id)  # a weight edit gives a new key: no features of old weights
        f = self._memo.get(key)
        if f is None:
            if len(self._memo) and next(iter(self._memo))[0] != key[0]:
                self._memo.clear()
            g = base.generator
            prompt = base.prompt(ex)  # the env's prompt: its token units (segment_boundaries)
            f = observation_features(g, prompt, "segments", token_segments=self.token_segments,
                                     max_input_tokens=base.task.max_input_tokens)
            self._memo[key] = f = np.clip(f, -self._bound, self._bound)
        return np.concatenate([np.asarray(observation), f]).astype(self.observation_space.dtype)


def feature_table(env_factory, table, kind: str, *, progress: bool = True):
    """Features of ``kind`` for every document of a :class:`~skipenv.evaluation.probe.ProbeTable`.

    Args:
        env_factory: ``(split, num_examples) -> env`` as given to :func:`skipenv.evaluation.probe.evaluate_menu`.
        table: the probe table (its ``observations`` give split, doc and example id).

    Returns:
        DataFrame with ``split, doc, f_0 … f_{n-1}``, ``extra_flops`` (see :func:`extra_observation_flops`) and
        ``flops_full`` (the full model's FLOPs on the document, from ``info`` of one skip-nothing step — served
        from the env's cached reference).
    """
    import pandas as pd
    from tqdm import tqdm

    rows = []
    for split, obs in table.observations.groupby("split", sort=False):
        env = env_factory(split, int(obs["doc"].max()) + 1)
        base = env.unwrapped
        g, k = base.generator, base.plan_spec.token_segments
        by_id = {str(ex.id): ex for ex in base.examples}
        for doc, ex_id in tqdm(list(zip(obs["doc"], obs["example_id"])), desc=f"{kind} features {split}",
                               disable=not progress, leave=False):
            ex = by_id[str(ex_id)]
            prompt = base.prompt(ex)  # the env's prompt: its token units (segment_boundaries)
            if kind == "units":
                f = np.concatenate([base.evaluator.observation_features(ex), unit_features(
                    g.tokenizer, prompt, ex, token_segments=k, max_input_tokens=base.task.max_input_tokens)])
            else:
                f = observation_features(g, prompt, kind, token_segments=k,
                                         max_input_tokens=base.task.max_input_tokens)
            env.reset(options={"index": int(doc)})
            *_, info = env.step(np.zeros(env.action_space.shape, dtype=env.action_space.dtype))
            rows.append({"split": split, "doc": int(doc), "extra_flops": extra_observation_flops(g, prompt, kind),
                         "flops_full": int(info["flops_full"]),
                         **{f"f_{j}": float(v) for j, v in enumerate(f)}})
        env.close()
    return pd.DataFrame(rows)
