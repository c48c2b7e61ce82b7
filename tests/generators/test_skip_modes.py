"""Skip modes (issue 22 item 1): calibrated bypasses of skipped sublayers, checked against an independent
implementation — forward hooks on the plain Hugging Face model that replace the sublayer's output — on tiny random
models of every decoder-only family, and their FLOPs against FlopCounterMode."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from skipenv.generators.batched import score_plans
from skipenv.generators.bypass import Bypasses, SkipModeError, bypass_flops_per_token, calibrate
from skipenv.generators.reuse import PrefixStore
from skipenv.inputs import PromptInput
from skipenv.plan import SkipPlan
from skipenv.testing import tiny_generator

DECODER_FAMILIES = ["llama", "qwen2", "qwen3", "mistral", "gemma3", "phi3", "gpt2"]


def _inputs(n: int, seed: int, length: int = 20) -> list[PromptInput]:
    rng = np.random.default_rng(seed)
    out = []
    for k in range(n):
        t = length + int(rng.integers(0, 6))
        ids = tuple(int(x) for x in rng.integers(2, 64, size=t))
        out.append(PromptInput(ids, (2, t), f"doc{k}"))
    return out


def _hooked_logits(gen, bypasses, plan: SkipPlan, ids: list[int]) -> torch.Tensor:
    """Logits ``[T, V]`` of the plain HF model over ``ids`` (one forward, no cache), with a forward hook on the
    last module of every skipped sublayer that replaces its output by the bypass (mean, or the affine map of the
    output of the sublayer's first module, captured by another hook). Identity: the output is replaced by 0."""
    handles, captured = [], {}
    for i in range(gen.num_decoder_layers):
        mods = gen.sublayer_modules("decoder", i)
        for kind, seq, skipped in (("attention", mods.attention, plan.decoder_attention[i]),
                                   ("ffn", mods.ffn, plan.decoder_ffn[i])):
            if not skipped:
                continue
            label = f"decoder.{kind}.{i}"

            def grab(module, args, output, label=label):
                captured[label] = output

            def replace(module, args, output, label=label):
                u = output[0] if isinstance(output, tuple) else output
                if bypasses is None:
                    new = torch.zeros_like(u)
                elif bypasses.mode == "mean":
                    new = bypasses.params[label]["mean"].to(u.dtype).expand_as(u).clone()
                else:
                    p = bypasses.params[label]
                    x = captured[label].float()
                    w = p["W"] if "W" in p else p["U"] @ p["V"]
                    new = (x @ w + p["bias"]).to(u.dtype)
                return (new, *output[1:]) if isinstance(output, tuple) else new

            handles.append(seq[0].register_forward_hook(grab))
            handles.append(seq[-1].register_forward_hook(replace))
    try:
        with torch.inference_mode():
            t = torch.tensor([ids])
            return gen.model(input_ids=t, attention_mask=torch.ones_like(t), use_cache=False).logits[0].float()
    finally:
        for h in handles:
            h.remove()


def _plan(gen, attention=(), ffn=()) -> SkipPlan:
    return SkipPlan.from_skips(gen.plan_spec(4), attention=list(attention), ffn=list(ffn))


@pytest.fixture(scope="module", params=DECODER_FAMILIES)
def family_setup(request):
    gen = tiny_generator(request.param)
    calib = _inputs(6, seed=1)
    return gen, {"mean": calibrate(gen, calib, "mean", progress=False),
                 "linear": calibrate(gen, calib, "linear", rank=4, progress=False)}


@pytest.mark.parametrize("mode", ["mean", "linear"])
def test_exact_against_hooks_every_family(family_setup, mode):
    """score (from scratch and from the prefix store), generate (with and without the KV cache) and the batched
    scorer all equal the hooked HF model under the same bypasses."""
    gen, byps = family_setup
    bypasses = byps[mode]
    plan = _plan(gen, attention=[1, 3], ffn=[0, 2])
    inp = _inputs(1, seed=7)[0]
    target = [5, 9, 11, 3, 17]
    ref = _hooked_logits(gen, bypasses, plan, list(inp.input_ids) + target)
    ref_lp = torch.log_softmax(ref, -1)[len(inp) - 1: len(inp) - 1 + len(target)]
    ref_lp = ref_lp.gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
    # the bypass changes the result (else the test could not fail): identity differs
    ident = _hooked_logits(gen, None, plan, list(inp.input_ids) + target)
    assert (ident - ref).abs().max() > 1e-3
    with gen.bypassing(bypasses):
        scratch = gen.score([inp], [target], plan, reuse=False)[0].logprobs
        gen.prefix_store = PrefixStore(admit_after=1)
        try:
            reused = gen.score([inp], [target], plan)[0].logprobs
            assert len(gen.prefix_store) == 1
            late = _plan(gen, attention=[3], ffn=[2])  # reuse point inside the model: layers < 2 from the store
            late_ref = _hooked_logits(gen, bypasses, late, list(inp.input_ids) + target)
            late_lp = torch.log_softmax(late_ref, -1)[len(inp) - 1: len(inp) - 1 + len(target)]
            late_lp = late_lp.gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
            reused_late = gen.score([inp], [target], late)[0].logprobs
            batch = score_plans(gen, [inp, inp, inp], [target, target, target], [plan, late, None],
                                fixed_tokens=float("inf"))
        finally:
            gen.prefix_store = None
        cached = gen.generate([inp], plan, max_new_tokens=5, use_cache=True).tokens[0]
        uncached = gen.generate([inp], plan, max_new_tokens=5, use_cache=False).tokens[0]
    torch.testing.assert_close(scratch, ref_lp, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(reused, ref_lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(reused_late, late_lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch[0].logprobs, ref_lp, atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(batch[1].logprobs, late_lp, atol=1e-4, rtol=1e-4)
    # greedy decoding of the hooked model, recomputing the whole sequence each step
    seq, greedy = list(inp.input_ids), []
    for _ in range(5):
        nxt = int(_hooked_logits(gen, bypasses, plan, seq)[-1].argmax())
        greedy.append(nxt)
        seq.append(nxt)
    eos = gen.eos_token_id
    greedy = greedy[: greedy.index(eos) + 1] if eos in greedy else greedy
    assert cached == greedy == uncached


def test_batched_rows_get_their_own_bypass(family_setup):
    """Rows of one padded call that skip different sublayers (so the bypass is added to some rows only)."""
    gen, byps = family_setup
    b = byps["mean"]
    inputs = _inputs(3, seed=11)
    targets = [[4, 5, 6], [7, 8], [9, 10, 11, 12]]
    plans = [_plan(gen, attention=[0]), _plan(gen, ffn=[1, 3]), _plan(gen)]
    with gen.bypassing(b):
        rows = score_plans(gen, inputs, targets, plans, reuse=False, fixed_tokens=float("inf"))
        single = [gen.score([i], [t], p, reuse=False)[0].logprobs for i, t, p in zip(inputs, targets, plans)]
    for r, s in zip(rows, single):
        torch.testing.assert_close(r.logprobs, s, atol=1e-4, rtol=1e-4)


def test_flops_against_flop_counter():
    """The analytic FLOPs of a plan under each mode equal FlopCounterMode's count of the run (eager attention),
    plus, for mean, the ``d`` additions per token and skipped sublayer that FlopCounterMode does not count."""
    gen = tiny_generator("llama")
    calib = _inputs(4, seed=2)
    d = gen.hidden_size
    inp = _inputs(1, seed=3)[0]
    plan = _plan(gen, attention=[1, 2], ffn=[3])
    for mode, rank in (("identity", None), ("mean", None), ("linear", 4), ("linear", 16)):
        b = None if mode == "identity" else calibrate(gen, calib, mode, rank=rank, progress=False)
        with gen.bypassing(b), FlopCounterMode(display=False) as counter:
            out = gen.generate([inp], plan, max_new_tokens=4, reuse=False)
        m = out.num_generated[0]
        analytic = gen.flops(plan, inp, m, bypasses=b).total
        tokens = len(inp) + m - 1  # prefill positions + one per decoding step
        uncounted = 3 * tokens * d if mode == "mean" else 0
        assert analytic - uncounted == counter.get_total_flops(), mode
        expected_per_token = {"identity": 0, "mean": d, "linear": 4 * d * 4 if rank == 4 else 2 * d * d}[mode]
        assert (b.flops_per_token if b else 0) == expected_per_token
        ident = gen.flops(plan, inp, m).total
        assert analytic - ident == 3 * tokens * expected_per_token
    assert bypass_flops_per_token("linear", 576, 64) == 4 * 576 * 64


def test_linear_fit_recovers_a_linear_sublayer():
    """On a sublayer whose update is an exact affine map of its normalised input, least squares recovers it:
    held-out R² of the full-rank fit is 1 (a hand-made case: the FFN of layer 0 replaced by a linear layer)."""
    gen = tiny_generator("llama")
    layer = gen._decoder_layers()[0]
    torch.manual_seed(5)
    lin = torch.nn.Linear(gen.hidden_size, gen.hidden_size)
    old = layer.mlp
    layer.mlp = lin
    try:
        gen.__dict__.pop("_layer_indices", None)
        b = calibrate(gen, _inputs(8, seed=4, length=40), "linear", rank=32, ridge=0.0, progress=False)
    finally:
        layer.mlp = old
    p = b.params["decoder.ffn.0"]
    torch.testing.assert_close(p["W"], lin.weight.detach().T, atol=1e-3, rtol=1e-3)
    torch.testing.assert_close(p["bias"], lin.bias.detach(), atol=1e-3, rtol=1e-3)
    assert b.report["decoder.ffn.0"]["heldout_r2"]["32"] > 0.9999


def test_mean_is_the_mean_update_and_calibration_is_deterministic():
    gen = tiny_generator("gpt2")
    calib = _inputs(4, seed=8)
    b1 = calibrate(gen, calib, "mean", progress=False)
    b2 = calibrate(gen, calib, "mean", progress=False)
    assert b1.digest == b2.digest
    assert b1.digest != calibrate(gen, calib[:3], "mean", progress=False).digest
    # the mean of the attention update of layer 2, computed by a hook on the plain model
    seen = []
    h = gen._decoder_layers()[2].attn.register_forward_hook(lambda m, a, o: seen.append(o[0][0].double()))
    try:
        with torch.inference_mode():
            for inp in calib:
                gen.model(input_ids=torch.tensor([inp.input_ids]))
    finally:
        h.remove()
    torch.testing.assert_close(b1.params["decoder.attention.2"]["mean"].double(), torch.cat(seen).mean(0),
                               atol=1e-6, rtol=1e-6)
    again = Bypasses.from_bytes(b1.to_bytes())
    assert again.digest == b1.digest


def test_bad_modes_are_refused():
    gen = tiny_generator("llama")
    calib = _inputs(3, seed=9)
    with pytest.raises(SkipModeError, match="unknown skip_mode 'zero'"):
        calibrate(gen, calib, "zero")
    with pytest.raises(SkipModeError, match="needs an integer rank"):
        calibrate(gen, calib, "linear")
    with pytest.raises(SkipModeError, match="encoder-decoder"):
        calibrate(tiny_generator("bart"), calib, "mean")
    b = calibrate(gen, calib, "mean", progress=False)
    other = tiny_generator("llama", seed=1)
    with pytest.raises(SkipModeError, match="calibrated on model"):
        with other.bypassing(b):
            pass
    with pytest.raises(SkipModeError, match="encoder-decoder"):
        with tiny_generator("t5").bypassing(b):
            pass
    data = bytearray(b.to_bytes())
    with pytest.raises(SkipModeError):
        Bypasses.from_bytes(bytes(data[: len(data) // 2]))


@pytest.mark.assets
def test_smollm2_exact_against_hooks():
    """The embedded SmolLM2 (Llama family, 30 layers, d = 576): teacher-forced scoring under each calibrated mode
    (from scratch and with prefix reuse) equals the hooked HF model."""
    from skipenv.envs.switchdec import shared_generator
    from skipenv.tasks import make_task

    gen = shared_generator("smollm2-135m-instruct")
    task = make_task("xsum", max_input_tokens=96)
    prompts = [task.format(ex, gen.tokenizer, encoder_decoder=False) for ex in task.examples("train")[:3]]
    inp, target = prompts[2], [1, 504, 3033, 28, 260]
    plan = SkipPlan.from_skips(gen.plan_spec(8), attention=[3, 20], ffn=[7, 25])
    for mode, rank in (("mean", None), ("linear", 32)):
        b = calibrate(gen, prompts[:2], mode, rank=rank, progress=False)
        ref = torch.log_softmax(_hooked_logits(gen, b, plan, list(inp.input_ids) + target), -1)
        ref = ref[len(inp) - 1: len(inp) - 1 + len(target)].gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
        with gen.bypassing(b):
            scratch = gen.score([inp], [target], plan, reuse=False)[0].logprobs
            store, gen.prefix_store = gen.prefix_store, PrefixStore(admit_after=1)
            try:
                reused = gen.score([inp], [target], plan)[0].logprobs
            finally:
                gen.prefix_store = store
        torch.testing.assert_close(scratch, ref, atol=1e-4, rtol=1e-4)
        torch.testing.assert_close(reused, ref, atol=1e-4, rtol=1e-4)
