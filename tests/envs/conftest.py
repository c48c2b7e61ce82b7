import pytest

from skipenv.testing import tiny_generator


@pytest.fixture(scope="module")
def generator(smollm2_tokenizer):
    """A tiny random Llama with SmolLM2's tokenizer (one per test module)."""
    return tiny_generator("llama", smollm2_tokenizer)
