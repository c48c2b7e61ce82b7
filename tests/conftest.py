"""Shared pytest fixtures (keep this file small: one fixture per concern)."""

from __future__ import annotations

import os

import pytest


#: fixtures that read the embedded assets: a test using one (directly or through another fixture) is marked
#: ``assets`` at collection, so ``-m "not assets"`` runs offline on an empty cache
ASSET_FIXTURES = frozenset({"smollm2_tokenizer", "xsum_task"})


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    for item in items:
        if ASSET_FIXTURES & set(getattr(item, "fixturenames", ())) and item.get_closest_marker("assets") is None:
            item.add_marker(pytest.mark.assets)


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


@pytest.fixture(scope="module")
def tiny_llama(smollm2_tokenizer):
    """A tiny random-weight Llama generator with the embedded SmolLM2 tokenizer
    (:func:`skipenv.testing.tiny_generator`); one per test module, so a module's monkeypatching stays in it."""
    from skipenv.testing import tiny_generator

    return tiny_generator("llama", smollm2_tokenizer)


@pytest.fixture(scope="module")
def xsum_task():
    """The embedded XSum task with a 96-token input budget (short prompts for tiny models)."""
    from skipenv.tasks import make_task

    return make_task("xsum", max_input_tokens=96)


@pytest.fixture(scope="session")
def tiny_bart_tokenizer():
    """A byte-level BPE tokenizer with BART's special tokens, trained in memory (no download): see
    :func:`skipenv.testing.toy_bpe_tokenizer`."""
    from skipenv.testing import toy_bpe_tokenizer

    return toy_bpe_tokenizer()


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


@pytest.fixture(scope="session")
def tiny_model_dir(tmp_path_factory, smollm2_tokenizer):
    """A tiny random-weight Llama (initializer_range 0.5: sensitive to skips) saved with ``save_pretrained`` together
    with the embedded SmolLM2 tokenizer: a local model folder for ``model=`` / ``skipenv train --model``."""
    from skipenv.testing import tiny_generator

    folder = tmp_path_factory.mktemp("tiny_model")
    gen = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)
    gen.model.save_pretrained(str(folder))
    smollm2_tokenizer.save_pretrained(str(folder))
    return str(folder)


@pytest.fixture(scope="session")
def tiny_xsum_env_factory(smollm2_tokenizer):
    """``(split, n) -> SwitchDecEnv`` on XSum over one tiny random-weight Llama (initializer_range 0.5 makes it
    sensitive to skips, so plans differ in agreement per document); the factory the probe tests hand to
    :func:`skipenv.evaluation.probe.evaluate_menu`."""
    from skipenv.envs import SwitchDecEnv
    from skipenv.testing import tiny_generator

    g = tiny_generator("llama", smollm2_tokenizer, initializer_range=0.5)

    def make_env(split, n):
        return SwitchDecEnv("xsum", generator=g, split=split, num_examples=n, max_new_tokens=6,
                            max_input_tokens=96, disk_cache=False)

    return make_env
