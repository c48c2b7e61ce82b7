"""Analytic FLOPs model: hand-computed values for tiny configs, breakdown consistency, monotonicity in the plan.

Convention: 2 FLOPs per multiply-accumulate (as ``torch.utils.flop_counter.FlopCounterMode``). The agreement with
``FlopCounterMode`` on real forward passes of all four families is tested in ``test_generators.py``.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
import transformers
from torch.utils.flop_counter import FlopCounterMode
from transformers import (
    BartConfig,
    BartForConditionalGeneration,
    GPT2Config,
    GPT2LMHeadModel,
    LlamaConfig,
    LlamaForCausalLM,
    T5Config,
    T5ForConditionalGeneration,
)

from skipenv import PromptInput, SkipPlan
from skipenv.generators import FlopsBreakdown, StackCost, wrap
from skipenv.testing import ToyTokenizer

transformers.logging.set_verbosity_error()


pytestmark = pytest.mark.usefixtures("one_thread")


def Tok():
    # EOS outside the vocabulary: generation always runs to max_new_tokens
    return ToyTokenizer(vocab_size=10, eos_token_id=999, pad_token_id=0)


def tiny_llama():
    # d=8, 2 query heads of 4, 1 KV head, SwiGLU 12, 2 layers, vocab 10
    torch.manual_seed(0)
    cfg = LlamaConfig(vocab_size=10, hidden_size=8, intermediate_size=12, num_hidden_layers=2, num_attention_heads=2,
                      num_key_value_heads=1, max_position_embeddings=32, attn_implementation="eager")
    return wrap(LlamaForCausalLM(cfg), Tok())


def tiny_bart():
    # d=8, 2 heads, 1 encoder layer (FFN 12), 2 decoder layers (FFN 16), vocab 10
    torch.manual_seed(0)
    cfg = BartConfig(vocab_size=10, d_model=8, encoder_layers=1, decoder_layers=2, encoder_attention_heads=2,
                     decoder_attention_heads=2, encoder_ffn_dim=12, decoder_ffn_dim=16, max_position_embeddings=32,
                     pad_token_id=0, bos_token_id=2, eos_token_id=3, decoder_start_token_id=2,
                     forced_eos_token_id=None, attn_implementation="eager")
    return wrap(BartForConditionalGeneration(cfg), Tok())


def _counted(fn) -> int:
    with FlopCounterMode(display=False) as fc:
        fn()
    return fc.get_total_flops()


# ---------------------------------------------------------------------------------------------------- coefficients
def test_llama_coefficients_by_hand():
    fm = tiny_llama().flops_model
    assert fm.encoder is None
    assert fm.decoder == StackCost(
        num_layers=2,
        attn_proj=2 * 8 * 8 + 2 * 8 * 4 + 2 * 8 * 4 + 2 * 8 * 8,  # q (8→2·4), k, v (8→1·4), o = 384
        attn_pair=2 * 2 * 4 + 2 * 2 * 4,  # QKᵀ and AV over 2 query heads of 4 = 32
        ffn=3 * 2 * 8 * 12,  # gate, up, down = 576
    )
    assert fm.lm_head == 2 * 8 * 10  # 160


def test_gpt2_coefficients_by_hand():
    cfg = GPT2Config(vocab_size=10, n_embd=8, n_layer=2, n_head=2, n_positions=32)
    fm = wrap(GPT2LMHeadModel(cfg), Tok()).flops_model
    assert fm.decoder == StackCost(num_layers=2, attn_proj=2 * 8 * 24 + 2 * 8 * 8, attn_pair=4 * 8,
                                   ffn=2 * 8 * 32 + 2 * 32 * 8)  # c_attn (8→24), c_proj; c_fc (8→4·8), c_proj
    assert fm.lm_head == 160


@pytest.mark.parametrize("ffn_kind, ffn_flops", [("relu", 2 * (2 * 8 * 12)),  # wi, wo
                                                 ("gated-gelu", 3 * (2 * 8 * 12))])  # wi_0, wi_1, wo
def test_t5_coefficients_by_hand(ffn_kind, ffn_flops):
    cfg = T5Config(vocab_size=10, d_model=8, d_kv=3, num_heads=2, d_ff=12, num_layers=1, num_decoder_layers=2,
                   feed_forward_proj=ffn_kind, decoder_start_token_id=0)
    fm = wrap(T5ForConditionalGeneration(cfg), Tok()).flops_model
    inner = 2 * 3  # heads · d_kv (≠ d_model on purpose)
    assert fm.encoder == StackCost(num_layers=1, attn_proj=4 * 2 * 8 * inner, attn_pair=4 * inner, ffn=ffn_flops)
    assert fm.decoder == StackCost(num_layers=2, attn_proj=4 * 2 * 8 * inner, attn_pair=4 * inner, ffn=ffn_flops,
                                   cross_proj_q_o=2 * 2 * 8 * inner, cross_proj_k_v=2 * 2 * 8 * inner,
                                   cross_pair=4 * inner)
    assert fm.lm_head == 160


def test_t5_counter_matches_nonsquare_heads():
    """d_kv·heads ≠ d_model and a gated FFN: the analytic model equals FlopCounterMode."""
    torch.manual_seed(0)
    cfg = T5Config(vocab_size=10, d_model=8, d_kv=3, num_heads=2, d_ff=12, num_layers=1, num_decoder_layers=2,
                   feed_forward_proj="gated-gelu", decoder_start_token_id=0, attn_implementation="eager")
    g = wrap(T5ForConditionalGeneration(cfg).eval(), Tok())
    inp = PromptInput((4, 5, 6, 7, 8, 9), (1, 5), "x")
    for plan in [g.empty_plan(2), SkipPlan.from_skips(g.plan_spec(2), attention=[0], encoder_ffn=[0], tokens=[1])]:
        assert _counted(lambda: g.generate([inp], plan, max_new_tokens=3)) == g.flops(plan, inp, 3).total


# ---------------------------------------------------------------------------------------------------- totals by hand
def test_llama_generation_by_hand():
    g = tiny_llama()
    n, m = 5, 3
    f = g.flops(None, n, m)
    # prefill, per layer: projections 384·5 + pairs 32·5² + FFN 576·5 = 1920 + 800 + 2880 = 5600
    # decoding (2 calls attending over 6 and 7 keys), per layer: 384·2 + 32·(6+7) + 576·2 = 768 + 416 + 1152 = 2336
    # LM head: 160 once at prefill, 160 per decoding call
    assert f.prefill == 2 * 5600 + 160 == 11360
    assert f.decoding == 2 * 2336 + 2 * 160 == 4992
    assert f.total == 16352
    assert f.per_candidate["decoder.attention.0"] == 1920 + 800 + 768 + 416
    assert f.per_candidate["decoder.ffn.1"] == 2880 + 1152
    assert f.per_candidate["lm_head"] == 3 * 160

    # skip attention of layer 0 and the FFN of layer 1
    plan = SkipPlan.from_skips(g.plan_spec(2), attention=[0], ffn=[1])
    f = g.flops(plan, n, m)
    assert f.prefill == 2880 + (1920 + 800) + 160 == 5760
    assert f.decoding == 1152 + (768 + 416) + 320 == 2656
    assert f.per_candidate["decoder.attention.0"] == 0 and f.per_candidate["decoder.ffn.1"] == 0

    # and the real model agrees (eager attention; EOS never produced, so exactly m tokens)
    inp = PromptInput((3, 4, 5, 6, 7), (0, 5), "x")
    assert _counted(lambda: g.generate([inp], max_new_tokens=m)) == 16352
    assert _counted(lambda: g.generate([inp], plan, max_new_tokens=m)) == 5760 + 2656


def test_bart_generation_by_hand():
    g = tiny_bart()
    n, m = 4, 3
    f = g.flops(None, n, m)
    # encoder layer: projections 4·(2·8·8)=512 per token, pairs 32, FFN 2·2·8·12=384 per token
    enc = 512 * 4 + 32 * 4 * 4 + 384 * 4  # 2048 + 512 + 1536 = 4096
    # decoder call 1 (one token, 1 self key, 4 source keys), per layer:
    #   self 512 + 32·1 = 544; cross k,v over the source 256·4 + q,o 256 + pairs 32·4 = 1408; FFN 2·2·8·16 = 512
    first = 544 + 1408 + 512  # 2464
    # decoder calls 2 and 3 (2 and 3 self keys), per layer: self 512·2 + 32·5; cross (256 + 32·4)·2; FFN 512·2
    rest = (1024 + 160) + 768 + 1024  # 2976
    assert f.prefill == enc + 2 * first + 160 == 9184
    assert f.decoding == 2 * rest + 2 * 160 == 6272
    assert f.per_candidate["decoder.cross_attention.1"] == 1408 + 768
    assert f.per_candidate["encoder.attention.0"] == 2048 + 512
    inp = PromptInput((4, 5, 6, 7), (0, 4), "x")
    assert _counted(lambda: g.generate([inp], max_new_tokens=m)) == 9184 + 6272

    # skipping a decoder self-attention keeps its cross-attention
    plan = SkipPlan.from_skips(g.plan_spec(2), attention=[1], encoder_ffn=[0])
    f2 = g.flops(plan, n, m)
    assert f2.per_candidate["decoder.cross_attention.1"] == f.per_candidate["decoder.cross_attention.1"]
    assert f2.total == f.total - f.per_candidate["decoder.attention.1"] - f.per_candidate["encoder.ffn.0"]
    assert _counted(lambda: g.generate([inp], plan, max_new_tokens=m)) == f2.total


def test_edge_lengths():
    g = tiny_llama()
    plan = g.empty_plan(2)
    assert g.flops_model.prefill(plan, 5).total == g.flops_model.generation(plan, 5, 1).total
    zero = g.flops_model.generation(plan, 5, 0)  # prefill only, LM head on the last position
    assert zero.total == zero.prefill == 11360 - 0 and zero.decoding == 0
    assert g.flops_model.first_layer(5) == 5600
    b = tiny_bart()
    assert b.flops_model.generation(b.empty_plan(2), 4, 0).total == 4096  # encoder only
    with pytest.raises(ValueError, match="lengths must be >= 0"):
        g.flops_model.generation(plan, -1, 3)


# ---------------------------------------------------------------------------------------------------- consistency
@pytest.mark.parametrize("make", [tiny_llama, tiny_bart], ids=["decoder-only", "encoder-decoder"])
def test_breakdown_sums_to_totals(make):
    g = make()
    spec = g.plan_spec(3)
    rng = np.random.default_rng(0)
    for _ in range(20):
        plan = SkipPlan.from_action(rng.integers(0, 2, spec.action_size), spec)
        n, m = int(rng.integers(1, 30)), int(rng.integers(0, 12))
        f = g.flops(plan, n, m, observation=bool(rng.integers(0, 2)))
        assert sum(f.per_candidate.values()) == f.prefill + f.decoding
        assert f.total == f.prefill + f.decoding + f.observation
        d = f.to_dict()
        assert d["total"] == f.total and d["per_candidate"] == f.per_candidate
        labels = [lab for lab in spec.action_labels() if not lab.startswith("tokens")]
        for label, skipped in zip(labels, plan.sublayer_flags()):
            if skipped:
                assert f.per_candidate[label] == 0, label
            elif m or label.startswith("encoder") or not spec.is_encoder_decoder:
                assert f.per_candidate[label] > 0, label
    assert FlopsBreakdown().total == 0


@pytest.mark.parametrize("make", [tiny_llama, tiny_bart], ids=["decoder-only", "encoder-decoder"])
def test_cost_decreases_monotonically(make):
    g = make()
    spec = g.plan_spec(4)
    inp = PromptInput(tuple(range(3, 23)), (2, 18), "x")  # 16 document tokens: 4 non-empty segments
    rng = np.random.default_rng(1)
    for _ in range(5):
        action = np.zeros(spec.action_size, dtype=int)
        last = g.flops(SkipPlan.from_action(action, spec), inp, 6).total
        for bit in rng.permutation(spec.action_size):  # skip one more candidate at a time
            action[bit] = 1
            plan = SkipPlan.from_action(action, spec)
            cost = g.flops(plan, inp, 6).total
            # strictly cheaper, except removing tokens once every sublayer is skipped (only the LM head is left,
            # whose cost does not depend on the prompt length; cross-attention always does)
            only_lm_head = all(plan.sublayer_flags()) and not spec.is_encoder_decoder
            assert cost < last or (only_lm_head and cost == last), spec.action_labels()[bit]
            last = cost
    # more generated tokens or a longer prompt never cost less
    plan = SkipPlan.from_skips(spec, attention=[0])
    assert all(g.flops(plan, n, 5).total < g.flops(plan, n + 1, 5).total for n in range(1, 20))
    assert all(g.flops(plan, 10, m).total < g.flops(plan, 10, m + 1).total for m in range(1, 10))
    assert g.flops(plan, 10, 0).total <= g.flops(plan, 10, 1).total  # decoder-only: 0 and 1 tokens = one prefill
