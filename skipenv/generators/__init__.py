"""Skippable generators: one wrapper class per model family, an analytic FLOPs model, and :func:`wrap`."""

from __future__ import annotations

from .base import (
    DecoderOnlyGenerator,
    EncoderDecoderGenerator,
    GenerationOutput,
    ScoreOutput,
    SkipAwareCache,
    SkippableGenerator,
    UnsupportedModelError,
)
from .flops import FlopsBreakdown, FlopsModel, StackCost
from .gpt2 import GPT2Generator
from .llama import LlamaGenerator

GENERATOR_CLASSES: dict[str, type[SkippableGenerator]] = {
    "LlamaForCausalLM": LlamaGenerator,
    "GPT2LMHeadModel": GPT2Generator,
}

try:  # encoder-decoder families live in their own files
    from .bart import BartGenerator

    GENERATOR_CLASSES["BartForConditionalGeneration"] = BartGenerator
except ImportError:  # pragma: no cover - during development only
    pass
try:
    from .t5 import T5Generator

    GENERATOR_CLASSES["T5ForConditionalGeneration"] = T5Generator
except ImportError:  # pragma: no cover
    pass


def wrap(model, tokenizer) -> SkippableGenerator:
    """Wrap a loaded Hugging Face model and its tokenizer (no weights are copied).

    Args:
        model: a ``LlamaForCausalLM``, ``GPT2LMHeadModel``, ``BartForConditionalGeneration`` or
            ``T5ForConditionalGeneration`` instance.
        tokenizer: the model's tokenizer.

    Raises:
        UnsupportedModelError: any other architecture (the message lists the supported ones).
    """
    cls = GENERATOR_CLASSES.get(type(model).__name__)
    if cls is None:
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported; skipenv can wrap: {', '.join(sorted(GENERATOR_CLASSES))}"
        )
    return cls(model, tokenizer)


__all__ = [
    "wrap", "GENERATOR_CLASSES", "SkippableGenerator", "DecoderOnlyGenerator", "EncoderDecoderGenerator",
    "LlamaGenerator", "GPT2Generator", "GenerationOutput", "ScoreOutput", "SkipAwareCache",
    "UnsupportedModelError", "FlopsModel", "FlopsBreakdown", "StackCost",
]
