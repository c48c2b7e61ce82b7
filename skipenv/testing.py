"""Public test helpers for people who write generators, tasks or agents against skipenv (like ``pettingzoo.test``).

- :func:`tiny_generator` — a random-weight model of a supported family built from a tiny config (no download),
  wrapped and ready; with :class:`ToyTokenizer` unless you pass a tokenizer (its vocabulary then sizes the model).
- :class:`ToyTokenizer` (ids are their own text) and :func:`toy_bpe_tokenizer` (a real BPE tokenizer trained in
  memory) — the tokenizers for tests that must not download one.
- :func:`check_generator` — asserts the core contracts of a :class:`~skipenv.generators.SkippableGenerator`:
  the empty plan reproduces the unmodified model, skipped sublayers call none of their modules (the family's
  module map), KV-cache generation equals uncached generation under a plan, and the analytic FLOPs match
  ``FlopCounterMode`` (with eager attention).
- :func:`check_task` — formats examples of a task with a tokenizer and checks the document span and scoring.
"""

from __future__ import annotations

from typing import Sequence

import numpy as np
import torch

from .generators import SkippableGenerator, wrap
from .inputs import PromptInput
from .plan import SkipPlan

__all__ = ["TINY_CONFIGS", "tiny_model", "tiny_generator", "check_generator", "check_task", "ToyTokenizer",
           "toy_bpe_tokenizer", "random_span_head"]

#: Tiny configs per family (hidden size 32, 4 layers) — seconds to build, milliseconds per forward.
TINY_CONFIGS = {
    "llama": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True),
    # the Llama-contract families (tests/generators/test_families.py): small sliding windows (8 tokens) wherever the
    # family has them, so that short test inputs cross the window (masks, KV-cache truncation, FLOPs of decoding steps)
    "qwen2": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True,
                  use_sliding_window=True, sliding_window=8, max_window_layers=2),  # layers 0-1 full, 2-3 sliding
    "qwen3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                  num_key_value_heads=2, head_dim=16, max_position_embeddings=1024, tie_word_embeddings=True),
    "mistral": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                    num_key_value_heads=2, max_position_embeddings=1024, tie_word_embeddings=True, sliding_window=8),
    "gemma3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                   num_key_value_heads=2, head_dim=8, query_pre_attn_scalar=8, max_position_embeddings=1024,
                   sliding_window=8, layer_types=["sliding_attention", "full_attention", "sliding_attention",
                                                  "full_attention"]),
    "phi3": dict(hidden_size=32, intermediate_size=64, num_hidden_layers=4, num_attention_heads=4,
                 num_key_value_heads=2, max_position_embeddings=1024, original_max_position_embeddings=1024,
                 tie_word_embeddings=True, sliding_window=8),
    "gpt2": dict(n_embd=32, n_layer=4, n_head=4, n_positions=1024),
    "bart": dict(d_model=32, encoder_layers=2, decoder_layers=2, encoder_attention_heads=4,
                 decoder_attention_heads=4, encoder_ffn_dim=64, decoder_ffn_dim=64, max_position_embeddings=1024),
    "t5": dict(d_model=32, d_kv=8, d_ff=64, num_layers=2, num_decoder_layers=2, num_heads=4),
}


class ToyTokenizer:
    """The one tokenizer stand-in for generator tests that need no real vocabulary: a token id is its own text.

    ``decode`` joins the ids with spaces (special ids dropped when ``skip_special_tokens``); calling it on text
    maps each character to one id in ``[2, vocab_size)``.

    Args:
        vocab_size: ids ``0 .. vocab_size - 1`` (``len(tokenizer)``).
        eos_token_id: the end-of-sequence id (may lie outside the vocabulary, so that a model never produces it and
            generation always runs to ``max_new_tokens``).
        pad_token_id: the padding id.
    """

    def __init__(self, vocab_size: int = 64, eos_token_id: int = 1, pad_token_id: int = 0):
        self.vocab_size, self.eos_token_id, self.pad_token_id = vocab_size, eos_token_id, pad_token_id

    def __len__(self) -> int:
        return self.vocab_size

    def decode(self, ids, skip_special_tokens: bool = True) -> str:
        special = (self.eos_token_id, self.pad_token_id)
        return " ".join(str(int(i)) for i in ids if not (skip_special_tokens and int(i) in special))

    def __call__(self, text: str, add_special_tokens: bool = False):
        return {"input_ids": [2 + (ord(c) % (self.vocab_size - 2)) for c in text]}


def toy_bpe_tokenizer(vocab_size: int = 400):
    """A real byte-level BPE tokenizer with BART's special tokens (``<s>``=0, ``<pad>``=1, ``</s>``=2; single input
    ``<s> a </s>``, pair ``<s> a </s></s> b </s>``), trained in memory on a few sentences: for formatting tasks
    without a download. Returns a :class:`transformers.PreTrainedTokenizerFast`."""
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["The quick brown fox jumps over the lazy dog.", "A summary of the article in one sentence.",
              "What is the answer to the question? The passage says it is here."]
    tok.train_from_iterator(corpus * 20, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=1024)


def tiny_model(family: str = "llama", *, vocab_size: int = 64, seed: int = 0, attn_implementation: str = "eager",
               **overrides):
    """A random-weight Hugging Face model of ``family`` (a key of :data:`TINY_CONFIGS`: ``llama``, ``qwen2``,
    ``qwen3``, ``mistral``, ``gemma3``, ``phi3``, ``gpt2``, ``bart``, ``t5``) in eval mode.

    Raises:
        ValueError: an unknown family.
    """
    import transformers as tf

    classes = {"llama": (tf.LlamaConfig, tf.LlamaForCausalLM), "gpt2": (tf.GPT2Config, tf.GPT2LMHeadModel),
               "qwen2": (tf.Qwen2Config, tf.Qwen2ForCausalLM), "qwen3": (tf.Qwen3Config, tf.Qwen3ForCausalLM),
               "mistral": (tf.MistralConfig, tf.MistralForCausalLM),
               "gemma3": (tf.Gemma3TextConfig, tf.Gemma3ForCausalLM), "phi3": (tf.Phi3Config, tf.Phi3ForCausalLM),
               "bart": (tf.BartConfig, tf.BartForConditionalGeneration),
               "t5": (tf.T5Config, tf.T5ForConditionalGeneration)}
    if family not in classes:
        raise ValueError(f"unknown family {family!r}; choose one of {sorted(classes)}")
    cfg_cls, model_cls = classes[family]
    kw = dict(TINY_CONFIGS[family], vocab_size=vocab_size, **overrides)
    special = {"bos_token_id": 0, "eos_token_id": 1, "pad_token_id": 0}
    if family in ("bart", "t5"):
        special["decoder_start_token_id"] = 0 if family == "t5" else 1
        if family == "bart":
            special.update(bos_token_id=0, eos_token_id=2, pad_token_id=1, forced_eos_token_id=2)
    cfg = cfg_cls(**kw, **{k: v for k, v in special.items() if k not in kw})
    cfg._attn_implementation = attn_implementation
    torch.manual_seed(seed)
    return model_cls(cfg).eval()


def tiny_generator(family: str = "llama", tokenizer=None, *, seed: int = 0, attn_implementation: str = "eager",
                   **overrides) -> SkippableGenerator:
    """:func:`tiny_model` wrapped with ``tokenizer`` (default :class:`ToyTokenizer`; pass the embedded SmolLM2
    tokenizer to run real tasks — the model's vocabulary then matches it)."""
    if tokenizer is None:
        tokenizer = ToyTokenizer()
        vocab = tokenizer.vocab_size
    else:
        vocab = len(tokenizer)
    model = tiny_model(family, vocab_size=vocab, seed=seed, attn_implementation=attn_implementation, **overrides)
    if tokenizer is not None and getattr(tokenizer, "eos_token_id", None) is not None:
        model.config.eos_token_id = tokenizer.eos_token_id
        model.generation_config.eos_token_id = tokenizer.eos_token_id
    return wrap(model, tokenizer)


def _random_plans(generator: SkippableGenerator, n: int, seed: int, token_segments: int) -> list[SkipPlan]:
    rng = np.random.default_rng(seed)
    spec = generator.plan_spec(token_segments)
    plans = [spec.empty_plan()]
    for _ in range(n):
        a = (rng.random(spec.action_size) < 0.35).astype(np.int8)
        plans.append(SkipPlan.from_action(a, spec))
    return plans


def check_generator(generator: SkippableGenerator, inputs: Sequence[PromptInput], *, max_new_tokens: int = 6,
                    num_plans: int = 3, token_segments: int = 4, flops_tolerance: float = 0.02, seed: int = 0) -> None:
    """Assert the contracts every skippable generator must keep (raises ``AssertionError`` naming the broken one).

    1. Empty plan ≡ unmodified model: teacher-forced log-probabilities equal the plain model's (atol 1e-4) —
       checked on the first input.
    2. Skipping skips: with the attention of the first layer and the FFN of the last layer of each stack skipped,
       none of their modules (:meth:`~skipenv.generators.SkippableGenerator.sublayer_modules`) is called, and every
       module of every other sublayer is.
    3. Under random plans, generation with the KV cache equals generation without it, token for token.
    4. The analytic FLOPs of each generation are within ``flops_tolerance`` of ``FlopCounterMode`` (requires
       ``attn_implementation="eager"``: the fused CPU SDPA kernel is not counted by FlopCounterMode).
    """
    from torch.utils.flop_counter import FlopCounterMode

    inp = inputs[0]
    full = generator.generate([inp], None, max_new_tokens=max_new_tokens)
    target = full.tokens[0] or [generator.eos_token_id]
    ours = generator.score([inp], [target])[0].logprobs
    model = generator.model
    with torch.inference_mode():
        if generator.num_encoder_layers:
            ids = torch.tensor([inp.input_ids], device=generator.device)
            dec = torch.tensor([[generator.decoder_start_token_id] + list(target)[:-1]], device=generator.device)
            logits = model(input_ids=ids, decoder_input_ids=dec).logits[0]
        else:
            ids = torch.tensor([list(inp.input_ids) + list(target)], device=generator.device)
            logits = model(input_ids=ids).logits[0, len(inp) - 1: len(inp) - 1 + len(target)]
    ref = torch.log_softmax(logits.float(), -1).gather(-1, torch.tensor(target)[:, None].to(logits.device))[:, 0]
    assert torch.allclose(ours, ref.cpu(), atol=1e-4), f"empty plan differs from the unmodified model: {ours} vs {ref}"
    _check_skipped_modules(generator, inp, token_segments)
    for plan in _random_plans(generator, num_plans, seed, token_segments):
        try:
            cached = generator.generate(inputs, plan, max_new_tokens=max_new_tokens)
        except ValueError:  # plan removed every token of some input
            continue
        uncached = generator.generate(inputs, plan, max_new_tokens=max_new_tokens, use_cache=False)
        assert cached.tokens == uncached.tokens, f"KV-cache generation differs from uncached under {plan!r}"
        with FlopCounterMode(display=False) as counter:
            out = generator.generate([inp], plan, max_new_tokens=max_new_tokens)
        measured = counter.get_total_flops()
        analytic = generator.flops(plan, inp, out.num_generated[0]).total
        assert abs(analytic - measured) <= flops_tolerance * measured, (
            f"analytic FLOPs {analytic} vs FlopCounterMode {measured} under {plan!r}")


def _check_skipped_modules(generator: SkippableGenerator, inp: PromptInput, token_segments: int) -> None:
    spec = generator.plan_spec(token_segments)
    stacks = [("encoder", spec.num_encoder_layers), ("decoder", spec.num_decoder_layers)]
    skipped = {(stack, 0, "attention") for stack, n in stacks if n} | {(stack, n - 1, "ffn") for stack, n in stacks if n}
    plan = SkipPlan.from_skips(spec, attention=[0], ffn=[spec.num_decoder_layers - 1],
                               encoder_attention=[0] if spec.num_encoder_layers else [],
                               encoder_ffn=[spec.num_encoder_layers - 1] if spec.num_encoder_layers else [])
    calls: dict[tuple, int] = {}
    handles = []
    for stack, n in stacks:
        for i in range(n):
            modules = generator.sublayer_modules(stack, i)
            for kind, mods in (("attention", modules.attention), ("ffn", modules.ffn),
                               ("cross_attention", modules.cross_attention)):
                for j, mod in enumerate(mods):
                    key = (stack, i, kind, j)
                    calls[key] = 0
                    handles.append(mod.register_forward_pre_hook(
                        lambda m, a, key=key: calls.__setitem__(key, calls[key] + 1)))
    try:
        generator.generate([inp], plan, max_new_tokens=2)
    finally:
        for h in handles:
            h.remove()
    for (stack, i, kind, j), n in calls.items():
        if (stack, i, kind) in skipped:
            assert n == 0, f"{stack} layer {i}: module {j} of the skipped {kind} sublayer was called"
        else:
            assert n > 0, f"{stack} layer {i}: module {j} of the {kind} sublayer was never called"


def check_task(task, tokenizer, *, split: str = "test", num_examples: int = 5, encoder_decoder: bool = False) -> None:
    """Assert that a task's examples format into valid inputs: a non-empty document span that decodes to text
    contained in the document (modulo whitespace), and that a perfect prediction scores 1.0."""
    examples = task.examples(split)[:num_examples]
    assert examples, f"task {task.name!r} has no examples in split {split!r}"
    for ex in examples:
        inp = task.format(ex, tokenizer, encoder_decoder=encoder_decoder)
        assert isinstance(inp, PromptInput) and inp.example_id == ex.id
        s, e = inp.document_span
        assert e > s, f"example {ex.id}: empty document span"
        doc = tokenizer.decode(list(inp.input_ids[s:e]), skip_special_tokens=True)
        squash = lambda t: "".join(t.split())  # noqa: E731
        assert squash(doc)[:50] in squash(ex.document), f"example {ex.id}: the span is not the document"
        perfect = ex.label if ex.label is not None else ex.reference
        assert task.score(perfect, ex) > 0.99, f"example {ex.id}: the reference does not score 1.0 against itself"


def random_span_head(generator, path, *, seed: int = 0, max_answer_tokens: int = 6):
    """Write a random-weight :class:`~skipenv.tasks.span_head.SpanHead` for ``generator`` (its fingerprint, its
    final layer, lexical features) to ``path`` and return it: the shipped DisflQA-v2 head is refused on any model
    but the embedded SmolLM2, so tests of ``SwitchDec-DisflQA-v2`` on tiny models pass
    ``task=make_task("disflqa_head", span_head=str(path))``. Fitting a real head: ``skipenv.envs.span_head``."""
    import numpy as np

    from .envs.cache import model_fingerprint
    from .tasks.span_head import NUM_LEXICAL, SpanHead

    rng = np.random.default_rng(seed)
    head = SpanHead((generator.num_decoder_layers,),
                    rng.standard_normal((generator.hidden_size + NUM_LEXICAL, 2)).astype(np.float32),
                    np.zeros(2, np.float32), max_answer_tokens, model_fingerprint(generator), {"random": seed},
                    NUM_LEXICAL)
    head.save(path)
    return head
