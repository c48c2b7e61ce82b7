"""Non-finite values anywhere in a forward pass are errors naming the layer (issue 20 M8), for every quality
signal, the reused and the batched paths — on the tiny random Llama saved with ``save_pretrained``."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import skipenv
from skipenv.envs import SwitchDecEnv
from skipenv.generators import NonFiniteError
from skipenv.generators.reuse import PrefixStore
from skipenv.envs import SwitchDecLayerwiseEnv
from skipenv.testing import tiny_generator

pytestmark = [pytest.mark.assets, pytest.mark.usefixtures("one_thread")]

KW = dict(split="train", num_examples=2, max_new_tokens=6, max_input_tokens=96, token_segments=4, disk_cache=False)
BAD = "model.layers.3.mlp.down_proj.weight"


def with_nan(folder, name=BAD, index=(0, 0)):
    g = skipenv.load_generator(folder)
    with torch.no_grad():
        g.model.get_parameter(name)[index] = float("nan")
    return g


def step(env, action=None):
    env.reset(options={"index": 0})
    return env.step(np.zeros(env.action_space.shape, np.int8) if action is None else action)


@pytest.mark.parametrize("quality", ["agreement", "rouge", "fidelity", "likelihood", "probability"])
def test_nan_in_a_late_weight_is_an_error_naming_the_layer(quality, tiny_model_dir):
    env = SwitchDecEnv("xsum", generator=with_nan(tiny_model_dir), quality=quality, **KW)
    env.reset(options={"index": 0})  # the observation (first layer) is finite: no error yet
    with pytest.raises(NonFiniteError, match=r"decoder layer 3 \(model\.layers\.3\).*"
                                             r"model\.layers\.3\.mlp\.down_proj\.weight \(1 of \d+ values\)") as e:
        env.step(np.zeros(env.action_space.shape, np.int8))
    assert e.value.layer == "decoder layer 3 (model.layers.3)" and e.value.parameters == (BAD,)


def test_a_plan_skipping_the_broken_ffn_still_errors(tiny_model_dir):
    """The reference (the full model) is broken, so no reward can be computed for any plan."""
    from skipenv.plan import SkipPlan

    env = SwitchDecEnv("xsum", generator=with_nan(tiny_model_dir), quality="agreement", **KW)
    action = SkipPlan.from_skips(env.unwrapped.plan_spec, ffn=[3]).to_action()
    with pytest.raises(NonFiniteError, match="model.layers.3"):
        step(env, action)


def test_the_generator_calls_raise_directly(tiny_model_dir, xsum_task):
    g = with_nan(tiny_model_dir)
    prompt = xsum_task.format(xsum_task.examples("train")[0], g.tokenizer, encoder_decoder=False)
    with pytest.raises(NonFiniteError, match="decoder layer 3"):
        g.generate([prompt], max_new_tokens=3)
    with pytest.raises(NonFiniteError, match="decoder layer 3"):
        g.score([prompt], [[1, 2, 3]])
    assert torch.isfinite(g.observe([prompt])).all()  # the first layer is fine


def test_reused_and_batched_paths_raise(tiny_model_dir, xsum_task):
    from skipenv.generators.batched import score_plans
    from skipenv.plan import SkipPlan

    g = skipenv.load_generator(tiny_model_dir)
    g.prefix_store = PrefixStore(admit_after=1)
    prompt = xsum_task.format(xsum_task.examples("train")[0], g.tokenizer, encoder_decoder=False)
    late = SkipPlan.from_skips(g.plan_spec(4), attention=[3])  # layers 0-2 come from the stored state
    g.score([prompt], [[1, 2, 3]], late)  # a state of the healthy weights is stored
    assert len(g.prefix_store) == 1
    with torch.no_grad():
        g.model.get_parameter("model.layers.1.mlp.down_proj.weight")[0, 0] = float("nan")
    # the stale state (healthy layers 0-2) would give finite logits; the dropped one is recomputed and fails
    with pytest.raises(NonFiniteError, match=r"decoder layer 1 \(model\.layers\.1\)"):
        g.score([prompt], [[1, 2, 3]], late)
    with pytest.raises(NonFiniteError, match=r"model\.layers\.1\.mlp\.down_proj\.weight"):
        score_plans(g, [prompt, prompt], [[1, 2], [3, 4]], [late, None], fixed_tokens=float("inf"))


def test_nan_in_the_first_layer_errors_at_the_observation(tiny_model_dir):
    env = SwitchDecEnv("xsum", generator=with_nan(tiny_model_dir, "model.layers.0.mlp.down_proj.weight"), **KW)
    with pytest.raises(NonFiniteError, match=r"the observation.*decoder layer 0 \(model\.layers\.0\)"):
        env.reset(options={"index": 0})


def test_nan_in_the_embedding_names_the_embedding(tiny_model_dir, xsum_task):
    g = skipenv.load_generator(tiny_model_dir)
    prompt = xsum_task.format(xsum_task.examples("train")[0], g.tokenizer, encoder_decoder=False)
    with torch.no_grad():
        g.model.get_input_embeddings().weight[prompt.input_ids[3]] = float("nan")
    with pytest.raises(NonFiniteError, match="the embedding .*model.embed_tokens.weight"):
        g.score([prompt], [[1, 2, 3]])


def test_an_overflow_names_the_dtype_and_the_layer(tiny_model_dir, xsum_task):
    g = skipenv.load_generator(tiny_model_dir)
    prompt = xsum_task.format(xsum_task.examples("train")[0], g.tokenizer, encoder_decoder=False)
    with torch.no_grad():
        g.model.get_parameter("model.layers.2.mlp.down_proj.weight").mul_(1e37)  # finite weights, inf activations
    with pytest.raises(NonFiniteError, match=r"decoder layer 2 .*no parameter or buffer holds NaN / inf, so the "
                                             r"activations overflowed torch.float32") as e:
        g.score([prompt], [[1, 2, 3]])
    assert e.value.parameters == ()


def test_healthy_model_unchanged(tiny_model_dir, xsum_task):
    """The check changes nothing on finite weights: the score equals the unmodified HF model's log-softmax."""
    g = skipenv.load_generator(tiny_model_dir)
    prompt = xsum_task.format(xsum_task.examples("train")[0], g.tokenizer, encoder_decoder=False)
    target = [5, 6, 7]
    out = g.score([prompt], [target])[0]
    ids = torch.tensor([list(prompt.input_ids) + target])
    with torch.no_grad():
        logp = torch.log_softmax(g.model(input_ids=ids).logits[0].float(), -1)
    n = len(prompt.input_ids)
    want = logp[n - 1: n - 1 + len(target)].gather(-1, torch.tensor(target)[:, None]).squeeze(-1)
    torch.testing.assert_close(out.logprobs, want, atol=1e-4, rtol=0)


# ----------------------------------------------------------------------------------------------------
# moved here from the hardening campaign (tests/test_hardening.py, dissolved by issue 19)


SMALL_KW = {"num_examples": 2, "max_new_tokens": 6, "max_input_tokens": 96, "disk_cache": False}


def make(generator, cls=SwitchDecEnv, **kw):
    return cls("xsum", generator=generator, **{**SMALL_KW, **kw})


@pytest.mark.hardening
@pytest.mark.parametrize("cls,layer", [(SwitchDecEnv, 0), (SwitchDecLayerwiseEnv, 2)], ids=["one-shot", "layerwise"])
def test_non_finite_hidden_states_are_an_error_not_an_observation(cls, layer, smollm2_tokenizer):
    """A NaN weight gave NaN observations outside the observation space while the agreement quality reported 1.0."""
    import torch

    g = tiny_generator("llama", smollm2_tokenizer, seed=3)
    with torch.no_grad():
        g.model.model.layers[layer].self_attn.q_proj.weight[0, 0] = float("nan")
    env = make(g, cls)
    with pytest.raises(RuntimeError, match="not finite.*float32"):
        env.reset(seed=0)
        for _ in range(layer + 2):  # layerwise: the NaN shows once layer `layer` has run
            env.step(0)
