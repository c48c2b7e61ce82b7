"""skipenv.loading: the embedded default, local decoder-only / encoder-decoder folders, Hub errors, options."""

from __future__ import annotations

import sys
import types

import pytest
import torch

from skipenv.loading import (
    ModelUnavailableError,
    is_embedded_model,
    load_generator,
    load_model_and_tokenizer,
    resolve_device,
    resolve_dtype,
)


@pytest.fixture(scope="module")
def tiny_llama_dir(tmp_path_factory, smollm2_tokenizer):
    """A random 2-layer LlamaForCausalLM with the SmolLM2 tokenizer (pad token removed), saved to disk."""
    from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

    path = tmp_path_factory.mktemp("tiny-llama")
    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=len(smollm2_tokenizer), hidden_size=16, intermediate_size=32,
                         num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                         max_position_embeddings=256, tie_word_embeddings=True)
    LlamaForCausalLM(config).save_pretrained(str(path))
    smollm2_tokenizer.save_pretrained(str(path))
    tok = AutoTokenizer.from_pretrained(str(path))
    tok.pad_token = None
    tok.padding_side = "right"
    tok.save_pretrained(str(path))
    assert AutoTokenizer.from_pretrained(str(path)).pad_token is None
    return path


@pytest.fixture(scope="module")
def tiny_bart_dir(tmp_path_factory, tiny_bart_tokenizer):
    """A random 1+1-layer BartForConditionalGeneration with the tiny BPE tokenizer, saved to disk."""
    from transformers import BartConfig, BartForConditionalGeneration

    path = tmp_path_factory.mktemp("tiny-bart")
    torch.manual_seed(0)
    config = BartConfig(vocab_size=len(tiny_bart_tokenizer), d_model=16, encoder_layers=1, decoder_layers=1,
                        encoder_attention_heads=2, decoder_attention_heads=2, encoder_ffn_dim=32,
                        decoder_ffn_dim=32, max_position_embeddings=64, pad_token_id=1, bos_token_id=0,
                        eos_token_id=2, decoder_start_token_id=2, forced_eos_token_id=2)
    BartForConditionalGeneration(config).save_pretrained(str(path))
    tiny_bart_tokenizer.save_pretrained(str(path))
    return path


@pytest.mark.assets
def test_embedded_model_loads():
    model, tok = load_model_and_tokenizer()
    cfg = model.config
    assert type(model).__name__ == "LlamaForCausalLM"
    assert (cfg.num_hidden_layers, cfg.hidden_size, cfg.vocab_size) == (30, 576, 49152)
    assert (cfg.num_attention_heads, cfg.num_key_value_heads) == (9, 3)
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    assert next(model.parameters()).dtype == torch.float32
    assert model.lm_head.weight.data_ptr() == model.model.embed_tokens.weight.data_ptr()  # tied
    assert tok.chat_template and tok.padding_side == "left" and tok.pad_token is not None
    assert tok.model_max_length == 8192
    assert is_embedded_model("HuggingFaceTB/SmolLM2-135M-Instruct") and is_embedded_model("smollm2-135m-instruct")


@pytest.mark.assets
def test_tiny_llama_folder(tiny_llama_dir):
    model, tok = load_model_and_tokenizer(str(tiny_llama_dir), dtype="bfloat16")
    assert type(model).__name__ == "LlamaForCausalLM" and model.config.num_hidden_layers == 2
    assert next(model.parameters()).dtype == torch.bfloat16 and not model.training
    assert tok.pad_token == tok.eos_token and tok.padding_side == "left"
    assert tok.model_max_length == 256  # capped at max_position_embeddings
    ids = torch.tensor([tok("hello world", add_special_tokens=False)["input_ids"]])
    with torch.no_grad():
        assert model(ids).logits.shape == (1, ids.shape[1], len(tok))


def test_tiny_bart_folder(tiny_bart_dir):
    model, tok = load_model_and_tokenizer(tiny_bart_dir, attn_implementation="eager")
    assert type(model).__name__ == "BartForConditionalGeneration" and model.config.is_encoder_decoder
    assert model.config._attn_implementation == "eager"
    assert tok.padding_side == "right" and tok.pad_token == "<pad>" and tok.model_max_length == 64
    enc = tok("The quick brown fox.", return_tensors="pt")
    out = model.generate(**enc, max_new_tokens=3, do_sample=False)
    assert out.shape[0] == 1


def test_unreachable_hub_id_names_the_embedded_default(hf_offline):
    with pytest.raises(ModelUnavailableError) as info:
        load_model_and_tokenizer("no-such-org/no-such-model-skipenv-test")
    msg = str(info.value)
    assert "no-such-org/no-such-model-skipenv-test" in msg and "smollm2-135m-instruct" in msg
    assert "HF_HUB_OFFLINE is set" in msg


def test_local_folder_that_is_not_a_model(tmp_path):
    with pytest.raises(ValueError, match="not a model folder"):
        load_model_and_tokenizer(tmp_path)


def test_dtype_and_device_resolution():
    assert resolve_dtype("bfloat16") is torch.bfloat16 and resolve_dtype("fp32") is torch.float32
    assert resolve_dtype(torch.float16) is torch.float16
    with pytest.raises(ValueError, match="unknown dtype"):
        resolve_dtype("float8")
    with pytest.raises(ValueError, match="floating-point"):
        resolve_dtype(torch.int64)
    assert resolve_device("cpu").type == "cpu"
    assert resolve_device("auto").type == ("cuda" if torch.cuda.is_available() else "cpu")
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA is not available"):
            resolve_device("cuda")


def test_load_generator_wraps(tiny_bart_dir, monkeypatch):
    """load_generator hands (model, tokenizer) to skipenv.generators.wrap (a stand-in here)."""
    fake = types.ModuleType("skipenv.generators")
    fake.wrap = lambda model, tokenizer: ("wrapped", type(model).__name__, type(tokenizer).__name__)
    monkeypatch.setitem(sys.modules, "skipenv.generators", fake)
    out = load_generator(tiny_bart_dir)
    assert out[0] == "wrapped" and out[1] == "BartForConditionalGeneration"


def test_loading_prints_no_weight_loading_bar(tiny_llama_dir, capfd):
    """transformers' per-tensor "Loading weights" bar is silenced (it printed on every env creation); the caller's
    progress-bar setting is restored afterwards."""
    from transformers.utils import logging as hf_logging

    assert hf_logging.is_progress_bar_enabled()
    capfd.readouterr()
    load_model_and_tokenizer(str(tiny_llama_dir))
    err = capfd.readouterr().err
    assert "Loading weights" not in err, err
    assert hf_logging.is_progress_bar_enabled()
    # the bar really exists without the guard (so this test can fail)
    from transformers import AutoModelForCausalLM

    AutoModelForCausalLM.from_pretrained(str(tiny_llama_dir))
    assert "Loading weights" in capfd.readouterr().err


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


@pytest.mark.hardening
@pytest.mark.assets
def test_unknown_device_names_the_device():
    from skipenv.loading import resolve_device

    with pytest.raises(ValueError, match="unknown device 'tpu'"):
        resolve_device("tpu")
