"""The Llama-contract families of issue 24 (Qwen2, Qwen3, Mistral, Gemma 3 text, Phi-3, and Llama 3 = Llama with
``rope_type="llama3"``) on tiny random-weight configs (3 layers, hidden 32; no hub), against independent references:

- the unmodified HF model: logits of the empty plan, ``model.generate`` tokens (batched, left padding), the model on
  a shortened input for token removal, the model with a sublayer's output zeroed by a hook for a skipped sublayer;
- module hooks: a skipped sublayer's modules are never called;
- the no-cache path: KV-cache generation under random plans (tokens and per-step logits);
- ``FlopCounterMode``: the analytic FLOPs of prefill and whole generations, exactly (decoding past the sliding
  windows included);
- the from-scratch path: prefix reuse (``reuse.py``) and batched scoring (``batched.py``), sliding windows included;
- the public checker ``skipenv.testing.check_generator``; the wrap()-time self-check; errors; loading a saved tiny
  Qwen2 through ``skipenv.make(..., model=<folder>)``.

Sliding windows are 6 tokens and inputs 9-24 tokens, so every sliding-window path (masks, KV-cache truncation,
FLOPs of decoding steps, the skipped-layer cache redirect) is crossed.
"""

from __future__ import annotations

import contextlib
import functools
import importlib

import numpy as np
import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode

from skipenv import PromptInput, SkipPlan
from skipenv.generators import GENERATOR_CLASSES, UnsupportedModelError, wrap
from skipenv.generators.batched import score_plans
from skipenv.generators.reuse import PrefixStore
from skipenv.testing import ToyTokenizer, check_generator, tiny_model

transformers.logging.set_verbosity_error()

pytestmark = pytest.mark.usefixtures("one_thread")

V, EOS, PAD = 96, 1, 0
W = 6  # sliding window of the tiny configs
LLAMA3_ROPE = {"rope_type": "llama3", "rope_theta": 500000.0, "factor": 8.0, "low_freq_factor": 1.0,
               "high_freq_factor": 4.0, "original_max_position_embeddings": 16}

#: family name -> (tiny_model family, overrides); 3 layers, sliding windows of W tokens where the family has them
FAMILIES = {
    "qwen2": ("qwen2", dict(max_window_layers=1, sliding_window=W)),  # layer 0 full, layers 1-2 sliding
    "qwen3": ("qwen3", dict(use_sliding_window=True, sliding_window=W, max_window_layers=2)),  # 0-1 full, 2 sliding
    "mistral": ("mistral", dict(sliding_window=W)),  # every layer sliding
    "gemma3": ("gemma3", dict(sliding_window=W, layer_types=["sliding_attention", "full_attention",
                                                             "sliding_attention"],
                              final_logit_softcapping=2.0, attn_logit_softcapping=3.0)),  # None in Gemma 3 checkpoints
    "phi3": ("phi3", dict(sliding_window=W)),
    "llama3": ("llama", dict(rope_parameters=LLAMA3_ROPE, max_position_embeddings=64)),
}
ARCHITECTURES = {"qwen2": "Qwen2ForCausalLM", "qwen3": "Qwen3ForCausalLM", "mistral": "MistralForCausalLM",
                 "gemma3": "Gemma3ForCausalLM", "phi3": "Phi3ForCausalLM", "llama3": "LlamaForCausalLM"}
LAYER_CLASSES = {"qwen2": ("qwen2", "Qwen2DecoderLayer"), "qwen3": ("qwen3", "Qwen3DecoderLayer"),
                 "mistral": ("mistral", "MistralDecoderLayer"), "gemma3": ("gemma3", "Gemma3DecoderLayer"),
                 "phi3": ("phi3", "Phi3DecoderLayer")}


def toy_tokenizer() -> ToyTokenizer:
    return ToyTokenizer(vocab_size=V, eos_token_id=EOS, pad_token_id=PAD)


def build_model(name: str, seed: int = 0):
    """A tiny random-weight model (eager attention: FlopCounterMode sees the attention products); the init scale is
    raised so that greedy outputs depend on the input and on skips."""
    family, overrides = FAMILIES[name]
    return tiny_model(family, vocab_size=V, seed=seed, num_hidden_layers=3, initializer_range=0.2, **overrides)


@functools.lru_cache(maxsize=None)
def _generator(name: str):
    return wrap(build_model(name), toy_tokenizer())


@pytest.fixture(params=sorted(FAMILIES))
def gen(request):
    return _generator(request.param)


def make_inputs(lengths=(20, 13), seed: int = 1) -> list[PromptInput]:
    rng = torch.Generator().manual_seed(seed)
    return [PromptInput(tuple(torch.randint(3, V, (n,), generator=rng).tolist()), (2, n - 2), f"ex{i}")
            for i, n in enumerate(lengths)]


def random_plans(g, n: int, seed: int, p: float = 0.4, token_segments: int = 4) -> list[SkipPlan]:
    spec = g.plan_spec(token_segments)
    rng = np.random.default_rng(seed)
    return [SkipPlan.from_action((rng.random(spec.action_size) < p).astype(int), spec) for _ in range(n)]


def cut_at_eos(row):
    return row[: row.index(EOS) + 1] if EOS in row else row


def left_pad(seqs):
    t = max(len(s) for s in seqs)
    ids = torch.full((len(seqs), t), PAD, dtype=torch.long)
    mask = torch.zeros((len(seqs), t), dtype=torch.long)
    for i, s in enumerate(seqs):
        ids[i, t - len(s):] = torch.tensor(s)
        mask[i, t - len(s):] = 1
    return ids, mask


def hf_greedy(model, seqs, max_new_tokens: int):
    """Greedy tokens of the plain HF ``generate`` (left padding; its own KV cache)."""
    ids, mask = left_pad(seqs)
    with torch.inference_mode():
        out = model.generate(input_ids=ids, attention_mask=mask, max_new_tokens=max_new_tokens, do_sample=False,
                             num_beams=1, eos_token_id=EOS, pad_token_id=PAD)
    return [cut_at_eos(r) for r in out[:, ids.shape[1]:].tolist()]


def hf_logprobs(model, ids, target):
    """log p(target_t | ids, target_<t) from one plain HF forward (no padding)."""
    with torch.inference_mode():
        logits = model(input_ids=torch.tensor([list(ids) + list(target)])).logits[0]
    n = len(ids)
    logp = torch.log_softmax(logits[n - 1: n - 1 + len(target)].float(), -1)
    return logp.gather(-1, torch.tensor(target)[:, None]).squeeze(-1)


@contextlib.contextmanager
def hooks(*handles):
    try:
        yield
    finally:
        for h in handles:
            h.remove()


def core(g, i: int, kind: str):
    """The module that computes sublayer ``kind`` of layer ``i`` (self_attn / mlp): zeroing its output is the
    independent model of skipping that sublayer (every family's norms after it map 0 to 0: Gemma 3's post-norms
    ``0 · rsqrt(eps) · (1 + w)``, Phi-3's dropout)."""
    layer = g._decoder_layers()[i]
    return layer.self_attn if kind == "attention" else layer.mlp


def zero_output(module, args, output):
    if isinstance(output, tuple):
        return (torch.zeros_like(output[0]), *output[1:])
    return torch.zeros_like(output)


# ==================================================================================================== registry
def test_registry_maps_each_architecture_to_its_family():
    for name, arch in ARCHITECTURES.items():
        assert arch in GENERATOR_CLASSES
        g = _generator(name)
        assert type(g) is GENERATOR_CLASSES[arch] and type(g.model).__name__ == arch
        assert arch in type(g).architectures
    assert _generator("llama3").model.model.rotary_emb.rope_type == "llama3"


def test_sliding_windows_are_read_from_the_cache_transformers_builds():
    expected = {"qwen2": (None, W, W), "qwen3": (None, None, W), "mistral": (W, W, W), "gemma3": (W, None, W),
                "phi3": (W, W, W), "llama3": ()}
    for name, windows in expected.items():
        assert _generator(name).flops_model.decoder.sliding_windows == windows, name


# ==================================================================================================== empty plan
def test_empty_plan_logprobs_match_hf_forward(gen):
    inputs = make_inputs((20, 13))
    targets = [[5, 17, 40, 77, 9], [33, 3, 81]]
    for inp, t, s in zip(inputs, targets, gen.score(inputs, targets)):  # batched: left padding
        torch.testing.assert_close(s.logprobs, hf_logprobs(gen.model, inp.input_ids, t), atol=1e-4, rtol=1e-4)


def test_empty_plan_greedy_matches_hf_generate(gen):
    inputs = make_inputs((20, 13, 17), seed=3)
    ref = hf_greedy(gen.model, [list(i.input_ids) for i in inputs], 10)
    assert len({tuple(r) for r in ref}) > 1  # outputs depend on the input
    assert gen.generate(inputs, max_new_tokens=10).tokens == ref
    for inp, r in zip(inputs, ref):
        assert gen.generate([inp], max_new_tokens=10).tokens == [r]


# ==================================================================================================== skipping
@pytest.mark.parametrize("kind", ["attention", "ffn"])
def test_skipped_sublayer_is_never_called_and_equals_the_zeroed_model(gen, kind):
    spec = gen.plan_spec(4)
    L = gen.num_decoder_layers
    for i in range(L):
        plan = SkipPlan.from_skips(spec, **{kind: [i]})
        calls: dict[tuple, int] = {}
        handles = []
        for k in range(L):
            m = gen.sublayer_modules("decoder", k)
            for sub, mods in (("attention", m.attention), ("ffn", m.ffn)):
                for j, mod in enumerate(mods):
                    calls[(k, sub, j)] = 0
                    handles.append(mod.register_forward_pre_hook(
                        lambda mod_, a, key=(k, sub, j): calls.__setitem__(key, calls[key] + 1)))
        inputs = make_inputs((18, 11), seed=4)
        with hooks(*handles):
            out = gen.generate(inputs, plan, max_new_tokens=8)
        for (k, sub, j), n in calls.items():
            assert (n == 0) == (k == i and sub == kind), (k, sub, j, n)
        with hooks(core(gen, i, kind).register_forward_hook(zero_output)):
            ref = hf_greedy(gen.model, [list(x.input_ids) for x in inputs], 8)
            ref_logp = hf_logprobs(gen.model, inputs[0].input_ids, [5, 17, 40])
        assert out.tokens == ref, (kind, i)
        torch.testing.assert_close(gen.score(inputs[:1], [[5, 17, 40]], plan)[0].logprobs, ref_logp, atol=1e-5,
                                   rtol=1e-5)
        assert not torch.allclose(ref_logp, hf_logprobs(gen.model, inputs[0].input_ids, [5, 17, 40]))


def test_token_removal_equals_hf_on_the_shortened_input(gen):
    inp = make_inputs((22,), seed=5)[0]  # document = positions 2..20 → 4 segments
    for tokens in ([1], [0, 3], [2]):
        plan = SkipPlan.from_skips(gen.plan_spec(4), tokens=tokens)
        short = inp.apply_token_skips(plan.tokens)
        assert len(short) < len(inp)
        out = gen.generate([inp], plan, max_new_tokens=8)
        assert out.prompt_lengths == [len(short)]
        assert out.tokens == hf_greedy(gen.model, [list(short)], 8)
        target = [7, 30, 61]
        torch.testing.assert_close(gen.score([inp], [target], plan)[0].logprobs,
                                   hf_logprobs(gen.model, short, target), atol=1e-4, rtol=1e-4)


# ==================================================================================================== KV cache
def test_cache_equals_no_cache_under_random_plans(gen):
    inputs = make_inputs((20, 13), seed=6)
    spec = gen.plan_spec(4)
    L = gen.num_decoder_layers
    plans = random_plans(gen, 2, seed=7) + [SkipPlan.from_skips(spec, attention=[0]),
                                            SkipPlan.from_skips(spec, attention=range(L)),
                                            SkipPlan.from_skips(spec, attention=[i for i in range(L) if i != 1])]
    for plan in plans:
        rec = {True: [], False: []}
        for use_cache in (True, False):
            h = gen.model.lm_head.register_forward_hook(
                lambda m, a, o, r=rec[use_cache]: r.append(o[:, -1].detach().clone()))
            with hooks(h):
                tokens = gen.generate(inputs, plan, max_new_tokens=10, use_cache=use_cache).tokens
            rec[use_cache].append(tokens)
        assert rec[True][-1] == rec[False][-1], plan
        for x, y in zip(rec[True][:-1], rec[False][:-1]):
            torch.testing.assert_close(x, y, atol=1e-4, rtol=1e-4)


# ==================================================================================================== FLOPs
def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


def test_flops_match_flop_counter_exactly(gen):
    """Prefill and whole generations (8 new tokens after a 13-token prompt, or 5 kept tokens: decoding starts inside
    and runs past the sliding windows of 6), under the empty plan, skipped attention / FFN / tokens and a random
    plan."""
    spec = gen.plan_spec(4)
    plans = [gen.empty_plan(4), SkipPlan.from_skips(spec, attention=[1], ffn=[0, 2]),
             SkipPlan.from_skips(spec, tokens=[0, 1, 2], attention=[2]), *random_plans(gen, 1, seed=8)]
    inp = make_inputs((13,), seed=9)[0]  # document 2..11: segments of 2-3 tokens
    for k, plan in enumerate(plans):
        n = len(inp.kept_positions(plan.tokens))
        if k < 2:
            assert _counted(lambda: gen.generate([inp], plan, max_new_tokens=1)) == \
                gen.flops_model.prefill(plan, n).total, plan
        out = []
        counted = _counted(lambda: out.append(gen.generate([inp], plan, max_new_tokens=8)))
        m = out[0].num_generated[0]
        analytic = gen.flops(plan, inp, m)
        assert counted == analytic.total, (plan, n, m)
        assert analytic.total == sum(analytic.per_candidate.values())


def test_sliding_window_decoding_pairs_by_hand():
    """``n = 4`` prompt tokens, 5 decoding calls, window 6: the calls attend over 5, 6, 6, 6, 6 keys (full
    attention: 5, 6, 7, 8, 9)."""
    from skipenv.generators.flops import FlopsModel, StackCost

    plan = SkipPlan.from_skips(_generator("gemma3").plan_spec(1))
    stack = StackCost(num_layers=3, attn_proj=0, attn_pair=1, ffn=0, sliding_windows=(W, None, W))
    out = FlopsModel(decoder=stack, lm_head=0).generation(plan, 4, 6)
    assert out.per_candidate["decoder.attention.0"] == 16 + (5 + 6 + 6 + 6 + 6)
    assert out.per_candidate["decoder.attention.1"] == 16 + (5 + 6 + 7 + 8 + 9)
    assert out.decoding == 2 * 29 + 35


# ==================================================================================================== reuse, batching
def test_prefix_reuse_and_batched_scoring_equal_from_scratch(gen):
    """Prefix reuse (``reuse.py``) and batched scoring (``batched.py``) both work for every family: same
    log-probabilities (1e-4) and argmax / tokens as the from-scratch path, for prompts longer than the window."""
    g = wrap(gen.model, toy_tokenizer())
    g.prefix_store = PrefixStore(admit_after=1)
    inputs = make_inputs((24, 19, 15), seed=10)
    targets = [[5, 9, 11, 7], [33, 3], [8, 8, 21]]
    spec = g.plan_spec(4)
    L = g.num_decoder_layers
    plans = [SkipPlan.from_skips(spec, tokens=[2, 3]), SkipPlan.from_skips(spec, tokens=[1]),
             SkipPlan.from_skips(spec, ffn=[L - 1]), SkipPlan.from_skips(spec, tokens=[3], attention=[1]),
             SkipPlan.from_skips(spec, attention=range(L)), *random_plans(g, 1, seed=11)]
    for k, plan in enumerate(plans):
        for inp, t in [(inputs[k % 2], targets[k % 2]), (inputs[2], targets[2])]:
            ref = g.score([inp], [t], plan, reuse=False)[0]
            got = g.score([inp], [t], plan)[0]
            assert torch.allclose(got.logprobs, ref.logprobs, atol=1e-4, rtol=0), plan
            assert torch.equal(got.argmax, ref.argmax)
            assert g.generate([inp], plan, max_new_tokens=8).tokens == \
                g.generate([inp], plan, max_new_tokens=8, reuse=False).tokens, plan
    assert g.prefix_store.hits > 0
    rows = [(inputs[r % 3], targets[r % 3], plans[r % len(plans)]) for r in range(6)]
    batched = score_plans(g, [r[0] for r in rows], [r[1] for r in rows], [r[2] for r in rows],
                          fixed_tokens=float("inf"))
    for (inp, t, plan), got in zip(rows, batched):
        ref = g.score([inp], [t], plan, reuse=False)[0]
        assert torch.allclose(got.logprobs, ref.logprobs, atol=1e-4, rtol=0), plan
        assert torch.equal(got.argmax, ref.argmax)


def test_layer_stepper_matches_the_model_layer_by_layer(gen):
    """The layerwise env's stepper gives each layer its own arguments (Gemma 3 / Qwen2 sliding and full layers get
    different masks and rotary tables): with nothing skipped its pooled states equal the model's layer outputs, and
    a skipped FFN equals the model with that FFN zeroed."""
    inp = make_inputs((16,), seed=12)[0]
    L = gen.num_decoder_layers
    for skip_ffn_at in (None, 1):
        outs = []
        handles = [layer.register_forward_hook(lambda m, a, o: outs.append(o[0] if isinstance(o, tuple) else o))
                   for layer in gen._decoder_layers()]
        if skip_ffn_at is not None:
            handles.append(core(gen, skip_ffn_at, "ffn").register_forward_hook(zero_output))
        with hooks(*handles), torch.inference_mode():
            gen.model(input_ids=torch.tensor([inp.input_ids]))
        stepper = gen.layer_stepper(inp, (False,) * 4)
        for i in range(L):
            pooled = stepper.step(i, skip_ffn=i == skip_ffn_at)
            np.testing.assert_allclose(pooled, outs[i][0].mean(0).numpy(), atol=1e-5, rtol=1e-5)


# ==================================================================================================== checkers
@pytest.mark.parametrize("name", sorted(FAMILIES))
def test_check_generator_passes(name):
    g = _generator(name)
    rng = np.random.default_rng(0)
    inputs = [PromptInput(tuple(int(x) for x in rng.integers(3, V, n)), (2, n - 2), f"c{n}") for n in (18, 11)]
    check_generator(g, inputs, max_new_tokens=8)


@pytest.mark.parametrize("name", sorted(LAYER_CLASSES))
def test_self_check_refuses_a_changed_layer_contract(name, monkeypatch):
    module, cls_name = LAYER_CLASSES[name]
    cls = getattr(importlib.import_module(f"transformers.models.{module}.modeling_{module}"), cls_name)
    original = cls.forward

    @functools.wraps(original)
    def changed(self, *args, **kwargs):
        out = original(self, *args, **kwargs)
        return (out[0] * 1.5, *out[1:]) if isinstance(out, tuple) else out * 1.5

    model = build_model(name, seed=1)
    wrap(model, toy_tokenizer())
    monkeypatch.setattr(cls, "forward", changed)
    with pytest.raises(UnsupportedModelError) as err:
        wrap(model, toy_tokenizer())
    assert cls_name in str(err.value) and f"transformers {transformers.__version__}" in str(err.value)


# ==================================================================================================== errors
def test_unsupported_architecture_names_the_supported_ones():
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM

    model = GPTNeoXForCausalLM(GPTNeoXConfig(vocab_size=V, hidden_size=16, num_hidden_layers=1,
                                             num_attention_heads=2, intermediate_size=32))
    with pytest.raises(UnsupportedModelError) as err:
        wrap(model, toy_tokenizer())
    msg = str(err.value)
    assert "GPTNeoXForCausalLM is not supported" in msg
    for arch in ARCHITECTURES.values():
        assert arch in msg


def test_bidirectional_gemma3_is_refused():
    model = tiny_model("gemma3", vocab_size=V, num_hidden_layers=2, use_bidirectional_attention=True,
                       layer_types=["sliding_attention", "full_attention"])
    with pytest.raises(UnsupportedModelError, match="use_bidirectional_attention"):
        wrap(model, toy_tokenizer())


def test_longrope_caps_the_context_at_the_original_length():
    """Phi-3 LongRoPE switches every rotary frequency once a sequence passes original_max_position_embeddings:
    inputs are refused there (cache and no-cache would otherwise differ), with the example named."""
    hd = 8
    rope = {"rope_type": "longrope", "rope_theta": 10000.0, "short_factor": [1.0] * (hd // 2),
            "long_factor": [2.0] * (hd // 2), "original_max_position_embeddings": 24}
    model = tiny_model("phi3", vocab_size=V, num_hidden_layers=2, max_position_embeddings=96,
                       original_max_position_embeddings=24, rope_parameters=rope)
    g = wrap(model, toy_tokenizer())
    assert g._max_positions() == 24
    with pytest.raises(ValueError, match="doc-7"):
        g.generate([PromptInput(tuple(range(3, 23)), (0, 20), "doc-7")], max_new_tokens=6)
    assert g.generate([PromptInput(tuple(range(3, 19)), (0, 16), "ok")], max_new_tokens=6).prompt_lengths == [16]


# ==================================================================================================== loading
@pytest.mark.assets
def test_saved_tiny_qwen2_loads_through_make(tmp_path, smollm2_tokenizer):
    import skipenv
    from skipenv.generators import Qwen2Generator
    from skipenv.testing import tiny_generator

    folder = tmp_path / "tiny-qwen2"
    g = tiny_generator("qwen2", smollm2_tokenizer, initializer_range=0.2)
    g.model.save_pretrained(str(folder))
    smollm2_tokenizer.save_pretrained(str(folder))
    env = skipenv.make("SwitchDec-XSum-v0", model=str(folder), num_examples=2, max_new_tokens=4,
                       max_input_tokens=64, disk_cache=False)
    try:
        loaded = env.unwrapped.generator
        assert type(loaded) is Qwen2Generator and loaded.config.sliding_window == 8
        assert loaded.flops_model.decoder.sliding_windows == (None, None, 8, 8)
        for a, b in zip(loaded.model.state_dict().values(), g.model.state_dict().values()):
            assert torch.equal(a, b)
        obs, info = env.reset(seed=0)
        action = np.zeros(env.action_space.shape, dtype=env.action_space.dtype)
        _, reward, terminated, truncated, info = env.step(action)
        assert terminated and np.isfinite(reward)
    finally:
        env.close()
