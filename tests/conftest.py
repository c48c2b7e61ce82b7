"""Shared pytest fixtures (keep this file small: one fixture per concern)."""

from __future__ import annotations

import os

import pytest


@pytest.fixture(scope="session", autouse=True)
def _persistent_skipenv_cache():
    """Keep the embedded assets between runs: use ``$SKIPENV_CACHE`` if set, else the default user cache."""
    if not os.environ.get("SKIPENV_CACHE"):
        from skipenv.assets import cache_dir

        os.environ["SKIPENV_CACHE"] = str(cache_dir())
    yield


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """The embedded SmolLM2-135M-Instruct tokenizer (chat template included); needs ``@pytest.mark.assets``."""
    from transformers import AutoTokenizer

    from skipenv.assets import embedded_model_dir

    return AutoTokenizer.from_pretrained(str(embedded_model_dir(progress=False)))


@pytest.fixture(scope="session")
def tiny_bart_tokenizer():
    """A byte-level BPE tokenizer with BART's special tokens (``<s> a </s>``, pair ``<s> a </s></s> b </s>``).

    Trained in memory on a few sentences (vocabulary 400), so no download is needed.
    """
    from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers
    from transformers import PreTrainedTokenizerFast

    tok = Tokenizer(models.BPE(unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tok.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=400, special_tokens=["<s>", "<pad>", "</s>", "<unk>", "<mask>"],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
    )
    corpus = ["The quick brown fox jumps over the lazy dog.", "A summary of the article in one sentence.",
              "What is the answer to the question? The passage says it is here."]
    tok.train_from_iterator(corpus * 20, trainer)
    tok.post_processor = processors.RobertaProcessing(("</s>", 2), ("<s>", 0))
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<s>", eos_token="</s>", pad_token="<pad>",
                                   unk_token="<unk>", mask_token="<mask>", model_max_length=1024)


@pytest.fixture
def hf_offline(monkeypatch):
    """Hugging Face Hub offline mode for one test, also for modules that read the flag at import time."""
    import huggingface_hub.constants as hub_constants

    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(hub_constants, "HF_HUB_OFFLINE", True)
    try:
        import datasets.config

        monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    except ImportError:
        pass


@pytest.fixture(scope="module")
def one_thread():
    """Tiny models run fastest (and least disturbed by other load) on one intra-op thread; restored afterwards.
    Use with ``pytestmark = pytest.mark.usefixtures("one_thread")``."""
    import torch

    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
