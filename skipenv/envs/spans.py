"""Passage-constrained greedy decoding: the answer of an extractive-QA task as the passage span the LM scores
highest (issue 23: the embedded SmolLM2 writes "The passage provides ..." when it generates freely).

:func:`pointer_decode` runs the generator's own greedy loop (prefill, then one decoding step per token, under the
plan), but at each step only tokens that keep the output a contiguous run of the passage's tokens are allowed,
plus EOS once at least one token is out: step 1 may pick any passage token that starts a word, step ``k`` any token
that follows an occurrence of the ``k - 1`` tokens so far in the passage. The output is therefore always a span of
the passage, chosen token by token by the model's logits — no free text, no heuristic. The cost is that of
generating the span (one prefill plus one decoding step per token, the EOS step included), which is what the
evaluator charges (``num_generated`` = the tokens decoded).
"""

from __future__ import annotations

import contextlib

import torch

__all__ = ["pointer_decode", "passage_tokens"]


def passage_tokens(prompt) -> list[int]:
    """The document (passage) token ids of a formatted input (:attr:`~skipenv.inputs.PromptInput.document_span`),
    the answer vocabulary of :func:`pointer_decode` for every plan (a plan that drops passage segments still answers
    from the whole passage's tokens; it only reads less of it)."""
    a, b = prompt.document_span
    return [int(t) for t in prompt.input_ids[a:b]]


def _word_starts(tokenizer, doc: list[int]) -> list[bool]:
    """Whether each passage token starts a word: the first token, a token after whitespace, or a token whose text
    begins with a space or punctuation (byte-level BPE marks the leading space, SentencePiece ``▁``)."""
    pieces = tokenizer.convert_ids_to_tokens(doc)
    out = []
    for i, piece in enumerate(pieces):
        text = piece or ""
        out.append(i == 0 or text[:1] in ("Ġ", "▁", " ", "Ċ") or not text[:1].isalnum())
    return out


def _start_words(tokenizer, doc: list[int], starts: list[bool]) -> list[str]:
    """The SQuAD-normalised word (:func:`skipenv.metrics.normalize_answer`) that begins at each word-start token
    (``""`` elsewhere): the decoded tokens up to the next word start."""
    from ..metrics import normalize_answer

    idx = [i for i, s in enumerate(starts) if s] + [len(doc)]
    words = [""] * len(doc)
    for a, b in zip(idx, idx[1:]):
        words[a] = normalize_answer(tokenizer.decode(doc[a:b]))
    return words


def pointer_decode(generator, prompt, plan=None, *, max_new_tokens: int = 24, reuse: bool = True,
                   exclude_start_words=frozenset(), eos_bias: float = 0.0,
                   trace: list | None = None) -> tuple[list[int], str]:
    """Greedy decoding restricted to spans of ``prompt``'s document (see the module docstring).

    Args:
        generator: a :class:`~skipenv.generators.SkippableGenerator`.
        prompt: the formatted input (:class:`~skipenv.inputs.PromptInput`); its document span is the passage.
        plan: the plan (``None`` = full model).
        max_new_tokens: at most this many tokens decoded, EOS included (the budget of
            :meth:`~skipenv.generators.SkippableGenerator.generate`); the span stops earlier at EOS.
        reuse: decoder-only models: start from the full model's stored computation on the input, as
            :meth:`~skipenv.generators.SkippableGenerator.generate` does (same tokens, less work).
        exclude_start_words: SQuAD-normalised words a span may not start with (e.g. the question's words: an
            answer rarely repeats the question; normalisation already drops articles, so a word that normalises to
            nothing — "The" — never starts a span).
        eos_bias: added to EOS's logit wherever EOS is allowed (nats; > 0 gives shorter spans). A length
            calibration fitted on train rows (docs/tasks.md): the continuation tokens chosen do not depend on it,
            only where the span stops.
        trace: if a list, one ``(token chosen among the passage continuations, its logit minus EOS's logit)`` pair
            is appended per step after the first (EOS's logit without ``eos_bias``), so the span under any other
            ``eos_bias`` can be read off one decode.

    Returns:
        ``(tokens, text)``: the decoded token ids (the span's, then EOS if the model chose it; ``1 <= len <=
        max_new_tokens``) and the span's text (decoded without special tokens, stripped).

    Raises:
        ValueError: a prompt without document tokens, ``max_new_tokens < 1``, or the generator's own errors
            (an input that does not fit its context, a plan for another model).
    """
    doc = passage_tokens(prompt)
    if not doc:
        raise ValueError(f"example {prompt.example_id!r}: pointer decoding needs passage tokens, the document span "
                         f"is empty")
    if max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
    eos = generator.eos_token_id
    starts = _word_starts(generator.tokenizer, doc)
    words = _start_words(generator.tokenizer, doc, starts)
    first = [s and bool(w) and w not in exclude_start_words for s, w in zip(starts, words)]
    if not any(first):  # every word is excluded: fall back to every word start
        first = starts
    reusing = getattr(generator, "_reusing", None)
    ctx = reusing([prompt], reuse, True, plan=plan) if reusing is not None else contextlib.nullcontext()
    with ctx:
        plan, seqs = generator._prepare([prompt], plan, max_new_tokens + 1)
        ids, mask = generator._pad(seqs)
        with generator.skipping(plan), torch.inference_mode():
            decoding = generator._begin_decoding(ids, mask, plan, True)
            out: list[int] = []
            ends = [j for j in range(len(doc)) if first[j]]  # positions where the next span token may come from
            for step in range(max_new_tokens + 1):
                logits = decoding.next_logits()[0].float()
                allowed = sorted({doc[j] for j in ends if j < len(doc)})
                if out and eos is not None:
                    allowed.append(int(eos))
                if not allowed:  # the span reached the passage's end
                    break
                if out and eos is not None:
                    logits[int(eos)] += float(eos_bias)
                idx = torch.tensor(allowed, device=logits.device)
                token = int(idx[int(torch.argmax(logits[idx]))])
                if trace is not None and out and eos is not None and len(allowed) > 1:
                    cont = torch.tensor(allowed[:-1], device=logits.device)
                    best = int(cont[int(torch.argmax(logits[cont]))])
                    trace.append((best, float(logits[best] - logits[int(eos)] + float(eos_bias))))
                out.append(token)
                if eos is not None and token == eos:
                    break
                ends = [j + 1 for j in ends if j < len(doc) and doc[j] == token]
                if step == max_new_tokens - 1:
                    break
                decoding.append(torch.tensor([token], device=ids.device))
    span = [t for t in out if t != eos]
    return out, generator.tokenizer.decode(span, skip_special_tokens=True).strip()
