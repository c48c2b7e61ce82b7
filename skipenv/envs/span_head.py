"""The span head's forward pass, decoding and fitting (``QATask(scoring="head")``, ``SwitchDec-DisflQA-v2``).

:func:`passage_states` runs one forward pass of the generator under a plan (its token drops and sublayer skips, the
calibrated skip mode's bypasses included) and returns the hidden states of the passage tokens it kept;
:func:`head_decode` turns them into the answer span (:class:`skipenv.tasks.span_head.SpanHead`); :func:`fit_span_head`
fits a head on train examples, on states drawn under the full model *and* under random plans (token drops and
sublayer skips), so that the head still reads the states a plan perturbs (issue 23: a head fitted on full-model
states only collapsed under skipping for Rotten Tomatoes).
"""

from __future__ import annotations

import random

import numpy as np
import torch

from ..plan import SkipPlan
from ..tasks.span_head import NUM_LEXICAL, SpanHead, best_span, lexical_features, word_starts
from .spans import passage_tokens

__all__ = ["passage_states", "head_decode", "answer_token_span", "random_plan", "fit_span_head"]


def passage_states(generator, prompt, plan: SkipPlan | None, layers) -> tuple[np.ndarray, np.ndarray]:
    """Hidden states of the passage tokens ``plan`` keeps, one forward pass (decoder-only generators).

    Returns:
        ``(positions, features)``: ``[n]`` passage token indices kept (int64, increasing) and ``[n, F]`` float32,
        the hidden states at ``layers`` (``output_hidden_states`` numbering) concatenated, ``F = len(layers) * d``.

    Raises:
        ValueError: an encoder-decoder generator, a plan that keeps no passage token, or the generator's own errors
            (an input that does not fit, a plan for another model).
    """
    if generator.num_encoder_layers:
        raise ValueError("the span head reads a decoder-only model's passage states; this generator is "
                         "encoder-decoder")
    plan, seqs = generator._prepare([prompt], plan, 1)
    ids, mask = generator._pad(seqs)
    with generator.skipping(plan), torch.inference_mode():
        out = generator.model(input_ids=ids, attention_mask=mask, logits_to_keep=1, output_hidden_states=True)
    kept = prompt.kept_positions(plan.tokens)
    a, b = prompt.document_span
    cols = [k for k, p in enumerate(kept) if a <= p < b]
    if not cols:
        raise ValueError(f"example {prompt.example_id!r}: the plan keeps no passage token, the span head has nothing "
                         f"to point at")
    offset = ids.shape[1] - len(kept)  # left padding (none for one input)
    idx = torch.tensor([offset + c for c in cols])
    feats = torch.cat([out.hidden_states[i][0, idx].float() for i in layers], dim=-1)
    return np.array([kept[c] - a for c in cols], dtype=np.int64), feats.cpu().numpy()


def head_decode(generator, prompt, plan: SkipPlan | None, head: SpanHead, question: str = ""
                ) -> tuple[list[int], str, int]:
    """The answer of the span head under ``plan``: ``(span token ids, span text, passage tokens scored)``.

    ``question`` feeds the head's :func:`~skipenv.tasks.span_head.lexical_features` (when it has them).

    The span always lies in the passage (:func:`~skipenv.tasks.span_head.best_span`); its text is decoded without
    special tokens and stripped. The third value is the ``n`` of :meth:`SpanHead.flops`.
    """
    doc = passage_tokens(prompt)
    positions, feats = passage_states(generator, prompt, plan, head.layers)
    if head.num_lexical:
        lex = lexical_features(generator.tokenizer, doc, question)
        feats = np.concatenate([feats, lex[positions]], axis=1)
    i, j = best_span(head.scores(feats), positions, word_starts(generator.tokenizer, doc), head.max_answer_tokens)
    span = doc[i: j + 1]
    return span, generator.tokenizer.decode(span, skip_special_tokens=True).strip(), len(positions)


def answer_token_span(tokenizer, doc: list[int], answers) -> tuple[int, int] | None:
    """Passage token indices ``(i, j)`` (inclusive) of the first occurrence of the first answer found verbatim in
    the decoded passage, or ``None`` if none occurs (then the row has no training label)."""
    text = tokenizer.decode(doc)
    ends = [len(tokenizer.decode(doc[: k + 1])) for k in range(len(doc))]
    for ans in answers:
        c = text.find(ans) if ans else -1
        if c < 0:
            continue
        i = int(np.searchsorted(ends, c, side="right"))
        j = int(np.searchsorted(ends, c + len(ans) - 1, side="right"))
        if i < len(doc) and j < len(doc):
            return i, j
    return None


def random_plan(spec, rng: random.Random, kind: int) -> SkipPlan:
    """One augmentation plan: ``kind % 3`` = 0: 1-3 random sublayer skips; 1: 1-3 dropped token segments; 2: one
    dropped segment plus one attention and one FFN skip (what the agent's plans look like)."""
    layers = spec.num_decoder_layers
    att, ffn, tok = [], [], []
    if kind % 3 == 0:
        for _ in range(rng.randint(1, 3)):
            (att if rng.random() < 0.5 else ffn).append(rng.randrange(layers))
    elif kind % 3 == 1 and spec.token_segments:
        tok = rng.sample(range(spec.token_segments), min(spec.token_segments, rng.randint(1, 3)))
    else:
        tok = rng.sample(range(spec.token_segments), 1) if spec.token_segments else []
        att, ffn = [rng.randrange(layers)], [rng.randrange(layers)]
    return SkipPlan.from_skips(spec, attention=att, ffn=ffn, tokens=tok)


def fit_span_head(generator, task, examples, *, layers=None, plans_per_example: int = 1, l2: float = 1e-2,
                  components: int | None = 16, lexical: bool = True, max_answer_tokens: int = 8,
                  token_segments: int = 8, seed: int = 0, max_iter: int = 100, progress: bool = False) -> SpanHead:
    """Fit a :class:`SpanHead` on ``examples`` (train rows only: the caller's responsibility and the docs' claim).

    Per example: the passage states under the full model and under ``plans_per_example`` random plans
    (:func:`random_plan`, seeded by ``seed`` and the row's position); the gold span's start / end token (the first
    verbatim occurrence of an answer, :func:`answer_token_span`) is the target of a softmax over the passage tokens
    the plan kept (rows whose answer tokens the plan dropped are left out). Features: the states projected on their
    first ``components`` principal directions (of the full-model states; ``None`` = no projection), then the
    :func:`~skipenv.tasks.span_head.lexical_features` if ``lexical``; all standardised. Loss: mean cross-entropy of
    start and end plus ``l2 * ||W||^2``, minimised by L-BFGS from zero (deterministic). The projection and the
    standardisation are folded into the returned head's weight (one ``[F, 2]`` map of the raw features).

    Args:
        layers: hidden-state indices; default ``(L,)``, the final normed layer.

    Raises:
        ValueError: no example with an answer in its passage.
    """
    from .cache import model_fingerprint

    layers = (generator.num_decoder_layers,) if layers is None else tuple(int(x) for x in layers)
    spec = generator.plan_spec(token_segments)
    hs, lex, starts, ends, full_rows = [], [], [], [], []
    no_span = dropped = 0
    for r, ex in enumerate(examples):
        prompt = task.format(ex, generator.tokenizer, encoder_decoder=False)
        doc = passage_tokens(prompt)
        gold = answer_token_span(generator.tokenizer, doc, ex.answers or (ex.target,))
        if gold is None:  # the answer is not verbatim in the (possibly truncated) passage tokens: no label
            no_span += 1
            continue
        lx = lexical_features(generator.tokenizer, doc, ex.question or "") if lexical else None
        rng = random.Random(seed * 1_000_003 + r)
        for k, plan in enumerate([None] + [random_plan(spec, rng, r + k) for k in range(plans_per_example)]):
            try:
                pos, feats = passage_states(generator, prompt, plan, layers)
            except ValueError:
                continue
            where = {int(p): c for c, p in enumerate(pos)}
            if gold[0] not in where or gold[1] not in where:
                dropped += 1  # the plan dropped the answer's tokens: nothing to point at
            else:
                if k == 0:
                    full_rows.append(len(hs))
                hs.append(torch.from_numpy(feats).double())
                lex.append(torch.from_numpy(lx[pos]).double() if lexical else None)
                starts.append(where[gold[0]])
                ends.append(where[gold[1]])
        if progress:
            print(f"span head features: {r + 1}/{len(examples)} examples", flush=True)
    if no_span:
        import warnings

        warnings.warn(f"fit_span_head: {no_span} of {len(examples)} examples left out, their answer is not verbatim "
                      f"in the passage tokens (e.g. the passage was truncated)", stacklevel=2)
    if not hs:
        raise ValueError("fit_span_head: no example has an answer verbatim in its passage")
    weight, bias = fit_head_weights(hs, lex if lexical else None, starts, ends, full_rows, l2=l2,
                                    components=components, max_iter=max_iter)
    meta = dict(examples=len(examples), rows=len(hs), no_answer_span=no_span, answer_dropped_by_plan=dropped,
                plans_per_example=plans_per_example, l2=l2, seed=seed, components=components,
                task=getattr(task, "name", ""))
    return SpanHead(layers, weight, bias, max_answer_tokens, model_fingerprint(generator), meta,
                    NUM_LEXICAL if lexical else 0)


def fit_head_weights(hs, lex, starts, ends, full_rows, *, l2: float = 1e-2, components: int | None = 16,
                     max_iter: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """The fitting step of :func:`fit_span_head` on given features: ``hs`` ``R`` tensors ``[n_r, d]`` (float64),
    ``lex`` ``R`` tensors ``[n_r, 16]`` or ``None``, the gold start / end row indices, and which rows are full-model
    states (the projection's reference). Returns ``(weight [d (+ 16), 2], bias [2])`` float32, projection and
    standardisation folded in."""
    lexical = lex is not None
    lex = lex if lexical else [None] * len(hs)
    d = hs[0].shape[1]
    ref = torch.cat([hs[k] for k in full_rows]) if full_rows else torch.cat(hs)
    center = ref.mean(0)
    if components is not None and components < d:
        _, _, vt = torch.linalg.svd(ref - center, full_matrices=False)
        proj = vt[: int(components)].T  # [d, k]
    else:
        proj = torch.eye(d, dtype=torch.float64)
    xs = [(h - center) @ proj if lx is None else torch.cat([(h - center) @ proj, lx], 1) for h, lx in zip(hs, lex)]
    allx = torch.cat(xs)
    mu, sd = allx.mean(0), allx.std(0, unbiased=False) + 1e-4
    xs = [(x - mu) / sd for x in xs]
    w = torch.zeros(allx.shape[1], 2, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([w], lr=1, max_iter=max_iter, history_size=20, line_search_fn="strong_wolfe")
    s_t, e_t = torch.tensor(starts), torch.tensor(ends)

    def closure():
        opt.zero_grad()
        loss = torch.zeros((), dtype=torch.float64)
        for k, x in enumerate(xs):
            lg = x @ w
            loss = loss - torch.log_softmax(lg[:, 0], 0)[s_t[k]] - torch.log_softmax(lg[:, 1], 0)[e_t[k]]
        loss = loss / len(xs) + l2 * (w ** 2).sum()
        loss.backward()
        return loss

    opt.step(closure)
    w = w.detach() / sd[:, None]  # ((z - mu) / sd) @ w = z @ (w / sd) - (mu / sd) @ w
    bias = -(mu @ w)
    kp = proj.shape[1]
    w_hidden = proj @ w[:kp]  # z = (h - center) @ proj
    bias = bias - center @ w_hidden
    weight = torch.cat([w_hidden, w[kp:]]) if lexical else w_hidden
    return weight.float().numpy(), bias.float().numpy()
