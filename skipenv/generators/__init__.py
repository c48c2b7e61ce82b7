"""Skippable generators: one wrapper class per model family, an analytic FLOPs model, and :func:`wrap`.

transformers internals (cache argument name, layer call binding, KV caches for skipped attention, the self-check
run by :func:`wrap`) live in :mod:`skipenv.generators.adapter`.
"""

from __future__ import annotations

from .adapter import SUPPORTED_TRANSFORMERS, SkipAwareCache, UnsupportedModelError
from .bart import BartGenerator
from .base import GenerationOutput, NonFiniteError, ScoreOutput, SkippableGenerator, SublayerModules
from .decoder_only import DecoderOnlyGenerator, LayerStepper
from .encoder_decoder import EncoderDecoderGenerator
from .flops import FlopsBreakdown, FlopsModel, StackCost
from .gemma3 import Gemma3Generator
from .gpt2 import GPT2Generator
from .llama import LlamaGenerator
from .mistral import MistralGenerator
from .phi3 import Phi3Generator
from .qwen2 import Qwen2Generator
from .qwen3 import Qwen3Generator
from .t5 import T5Generator
from ..util.registry import Registry

#: Hugging Face architecture class name → skippable wrapper class (a :class:`~skipenv.util.registry.Registry`: add
#: a family with ``GENERATOR_CLASSES.register("MyForCausalLM", MyGenerator)``; a name registered twice is an error).
GENERATOR_CLASSES: Registry = Registry("architecture", {
    "LlamaForCausalLM": LlamaGenerator,  # Llama 2 / 3.x (rope_type "llama3"), SmolLM2
    "Qwen2ForCausalLM": Qwen2Generator,  # Qwen2, Qwen2.5
    "Qwen3ForCausalLM": Qwen3Generator,
    "MistralForCausalLM": MistralGenerator,
    "Gemma3ForCausalLM": Gemma3Generator,  # Gemma 3 text
    "Phi3ForCausalLM": Phi3Generator,  # Phi-3, Phi-3.5-mini, Phi-4-mini
    "GPT2LMHeadModel": GPT2Generator,
    "BartForConditionalGeneration": BartGenerator,
    "T5ForConditionalGeneration": T5Generator,
})


def wrap(model, tokenizer) -> SkippableGenerator:
    """Wrap a loaded Hugging Face model and its tokenizer (no weights are copied).

    Wrapping runs a self-check: the skippable replacement of every layer, with nothing skipped, must reproduce the
    real layer on a 3-token input (prefill and one cached decoding step), so a transformers release that changed
    the layer contract fails here instead of giving wrong numbers later.

    Args:
        model: an instance of one of the classes in :data:`GENERATOR_CLASSES`: ``LlamaForCausalLM``,
            ``Qwen2ForCausalLM``, ``Qwen3ForCausalLM``, ``MistralForCausalLM``, ``Gemma3ForCausalLM``,
            ``Phi3ForCausalLM``, ``GPT2LMHeadModel``, ``BartForConditionalGeneration`` or
            ``T5ForConditionalGeneration``.
        tokenizer: the model's tokenizer.

    Raises:
        UnsupportedModelError: any other architecture (the message lists the supported ones); a failed self-check
            (the message names the layer, the installed transformers version and the supported range
            :data:`SUPPORTED_TRANSFORMERS`); a layer with an instance-level ``forward`` other than an accelerate hook.
    """
    cls = GENERATOR_CLASSES.get(type(model).__name__)
    if cls is None:
        hint = ""
        if type(model).__name__ == "Gemma3ForConditionalGeneration":
            hint = " (multimodal; skipenv wraps the text-only Gemma3ForCausalLM, e.g. google/gemma-3-1b-it)"
        raise UnsupportedModelError(
            f"{type(model).__name__} is not supported{hint}; skipenv can wrap: "
            f"{', '.join(sorted(GENERATOR_CLASSES))}"
        )
    return cls(model, tokenizer)


__all__ = [
    "wrap", "GENERATOR_CLASSES", "SkippableGenerator", "DecoderOnlyGenerator", "EncoderDecoderGenerator",
    "LlamaGenerator", "Qwen2Generator", "Qwen3Generator", "MistralGenerator", "Gemma3Generator", "Phi3Generator",
    "GPT2Generator", "BartGenerator", "T5Generator", "GenerationOutput", "ScoreOutput",
    "SublayerModules", "LayerStepper", "SkipAwareCache", "UnsupportedModelError", "NonFiniteError",
    "SUPPORTED_TRANSFORMERS",
    "FlopsModel", "FlopsBreakdown", "StackCost",
]
