"""The episode pipeline as named parts (codec → evaluator → quality signal → outcome → reward) on a tiny
random-weight Llama with the embedded SmolLM2 tokenizer and real XSum rows: a toy quality signal and a toy reward
defined here run in an env; one evaluator serves the one-shot env, the layerwise env and several taus; a tau sweep
over cached outcomes runs no forward pass."""

from __future__ import annotations

from collections import Counter

import numpy as np
import pytest

import skipenv
from skipenv.envs import (ActionCodec, Evaluator, LayerwiseCodec, LexicographicReward, Outcome, QualitySignal,
                          Reward, SwitchDecEnv, SwitchDecLayerwiseEnv, VectorReward, WeightedReward)
from skipenv.envs.quality import Measurement, get_signal
from skipenv.envs.rewards import lexicographic_reward, weighted_reward

pytestmark = pytest.mark.assets  # the embedded tokenizer and XSum rows


def evaluator(generator, task, **kw):
    kw = {"max_new_tokens": 6, "disk_cache": False, **kw}
    return Evaluator(generator, task, **kw)


def count_calls(generator, monkeypatch) -> Counter:
    """Count the generator's forward-running calls (generate, score, observe, layer_stepper) from now on."""
    calls: Counter = Counter()
    for name in ("generate", "score", "observe", "layer_stepper"):
        original = getattr(generator, name)

        def counted(*args, _name=name, _original=original, **kwargs):
            calls[_name] += 1
            return _original(*args, **kwargs)

        monkeypatch.setattr(generator, name, counted)
    return calls


# ---------------------------------------------------------------------------------------------------------------
# adding a quality signal or a reward = one class


class DocumentKept(QualitySignal):
    """Toy signal: the fraction of document tokens the plan keeps (no forward pass)."""

    name = "document-kept"
    default_tau = 0.3

    def measure(self, evaluator, example, plan, full) -> Measurement:
        prompt = evaluator.prompt(example)
        kept = len(prompt.kept_positions(plan.tokens)) - (len(prompt) - prompt.num_document_tokens)
        return Measurement(kept / max(prompt.num_document_tokens, 1), 1.0)


class SavingsOrNothing(Reward):
    """Toy reward: the FLOPs saved when the constraint holds, else -1."""

    name = "savings-or-nothing"

    def __call__(self, outcome) -> float:
        return outcome.flops_saved if outcome.quality >= outcome.quality_full - self.tau else -1.0


def test_toy_quality_signal_and_toy_reward_run_in_an_env(tiny_llama, monkeypatch):
    env = SwitchDecEnv("xsum", generator=tiny_llama, quality=DocumentKept(), reward=SavingsOrNothing(0.3),
                       num_examples=2, max_new_tokens=6, max_input_tokens=96, disk_cache=False, token_segments=4)
    assert env.quality == "document-kept" and env.tau == 0.3
    env.reset(options={"index": 0})
    prompt = env.prompt()
    n_doc = prompt.num_document_tokens
    a = env.plan_to_action(skipenv.SkipPlan.from_skips(env.plan_spec, tokens=[3]))
    _, reward, terminated, _, info = env.step(a)
    last = prompt.segment_bounds(4)[3]
    expected_q = (n_doc - (last[1] - last[0])) / n_doc  # hand count of the kept document tokens
    assert terminated and info["quality"] == pytest.approx(expected_q) and info["quality_full"] == 1.0
    assert expected_q >= 0.7 and reward == pytest.approx(1 - info["cost"]) and info["constraint_satisfied"]
    env.reset(options={"index": 0})
    _, reward, *_ = env.step(env.plan_to_action(skipenv.SkipPlan.from_skips(env.plan_spec, tokens=[1, 2, 3])))
    assert reward == -1.0


# ---------------------------------------------------------------------------------------------------------------
# outcomes are tau- and reward-independent; one evaluator serves many envs


def test_tau_sweep_over_cached_outcomes_runs_no_forward_pass(tiny_llama, xsum_task, monkeypatch):
    ev = evaluator(tiny_llama, xsum_task, quality="agreement")
    taus = (0.0, 0.05, 0.2, 0.5)
    envs = [SwitchDecEnv(evaluator=ev, tau=t, split="train", num_examples=3) for t in taus]
    rng = np.random.default_rng(0)
    actions = [(rng.random(envs[0].action_space.n) < 0.2).astype(np.int8) for _ in range(3)]
    calls = count_calls(tiny_llama, monkeypatch)
    first = []
    for i, a in enumerate(actions):
        envs[0].reset(options={"index": i})
        first.append(envs[0].step(a)[4])
    assert calls["score"] >= 1 and calls["generate"] == 3  # full outputs + teacher-forced scoring ran
    before = dict(calls)
    for env, tau in zip(envs[1:], taus[1:]):
        for i, a in enumerate(actions):
            env.reset(options={"index": i})
            _, reward, _, _, info = env.step(a)
            q, qf, c = first[i]["quality"], first[i]["quality_full"], first[i]["cost"]
            assert (info["quality"], info["cost"]) == (q, c)
            assert reward == lexicographic_reward(q, qf, c, tau)
            assert info["constraint_satisfied"] == (q >= qf - tau - 1e-9)
    assert dict(calls) == before  # no generate / score / observe for the other taus


def test_one_evaluator_serves_one_shot_and_layerwise(tiny_llama, xsum_task, monkeypatch):
    ev = evaluator(tiny_llama, xsum_task, token_segments=4)
    one = SwitchDecEnv(evaluator=ev, num_examples=2)
    lw = SwitchDecLayerwiseEnv(evaluator=ev, num_examples=2)
    assert one.evaluator is lw.evaluator is ev
    lw.reset(options={"index": 1})
    for a in [1, 0, 2, 3, 1]:
        *_, terminated, _, info = lw.step(a)
    assert terminated
    plan = lw.last_outcome.plan
    assert lw.plan_to_actions(plan) == [1, 0, 2, 3, 1]
    calls = count_calls(tiny_llama, monkeypatch)
    one.reset(options={"index": 1})  # observation memoised by the shared evaluator
    again = one.step(one.plan_to_action(plan))[4]
    assert again == info and sum(calls.values()) == 0


def test_outcome_is_what_is_cached_and_infos_are_fresh(tiny_llama, xsum_task):
    ev = evaluator(tiny_llama, xsum_task)
    env = SwitchDecEnv(evaluator=ev, num_examples=1)
    env.reset(options={"index": 0})
    a = np.zeros(env.action_space.n, dtype=np.int8)
    a[2] = 1
    info = env.step(a)[4]
    o = env.last_outcome
    assert isinstance(o, Outcome) and ev.outcome(env.example, o.plan) is o
    info["flops_breakdown"]["per_candidate"]["decoder.ffn.0"] = -1
    info["flops_breakdown"]["total"] = 0
    env.reset(options={"index": 0})
    again = env.step(a)[4]
    assert again["flops_breakdown"]["total"] == again["flops"] > 0
    assert again["flops_breakdown"]["per_candidate"]["decoder.ffn.0"] > 0
    with pytest.raises(TypeError):
        o.flops_breakdown["total"] = 1  # the cached outcome is read-only


def test_reward_objects_wrap_the_pure_functions():
    class O:
        quality, quality_full, cost = 0.85, 1.0, 0.6

    assert LexicographicReward(0.1)(O) == pytest.approx((0.85 - 0.9) / 1.0)
    assert LexicographicReward(0.2)(O) == pytest.approx(1 + (1 - 0.6))
    assert WeightedReward(cost_weight=0.25, tau=0.1)(O) == pytest.approx(0.85 - 0.25 * 0.6)
    assert VectorReward(0.2).info(O) == {"constraint_satisfied": True, "reward": pytest.approx(1.4),
                                         "formulation": "per_input", "reward_rule": "vector",
                                         "reward_vector": (0.85, 0.6)}
    with pytest.warns(DeprecationWarning, match="removed in skipenv 0.3; use cost_weight"):
        assert weighted_reward(0.8, 0.5, lam=0.4) == pytest.approx(0.6)
    for bad in (float("nan"), float("inf"), -0.1, "0.1", None):
        with pytest.raises(ValueError, match="tau"):
            LexicographicReward(bad)
    with pytest.raises(ValueError, match="cost_weight"):
        WeightedReward(float("nan"))


def test_quality_names():
    assert get_signal("rouge").name == get_signal("reference").name == "reference"
    assert get_signal("reference").generates and not get_signal("agreement").generates
    assert get_signal("reference").default_tau == 0.02 and get_signal("agreement").default_tau == 0.1
    with pytest.raises(ValueError, match="quality"):
        get_signal("bleu")


def test_codecs_validate_actions(tiny_llama):
    spec = tiny_llama.plan_spec(4)
    codec = ActionCodec(spec, ("attention", "tokens"), layer_block=2)
    assert codec.labels == ["decoder.attention.0-1", "decoder.attention.2-3", "tokens.0", "tokens.1", "tokens.2",
                            "tokens.3"]
    plan = codec.decode([1, 0, 0, 0, 1, 1])
    assert plan.decoder_attention == (True, True, False, False) and plan.tokens == (False, False, True, True)
    assert codec.encode(plan).tolist() == [1, 0, 0, 0, 1, 1]
    for bad, match in ((np.array([None] * 6), "numeric"), (np.zeros(5), "shape"), (np.full(6, 0.5), "0 or 1"),
                       ("101100", "numeric|shape")):
        with pytest.raises(ValueError, match=match):
            codec.decode(bad)
    lw = LayerwiseCodec(spec)
    for good, value in ((2, 2), (np.int64(3), 3), (np.array(1), 1), (2.0, 2)):
        assert lw.decode_step(good) == value
    for bad in (None, "1", 1.5, -1, 4, [1], np.array([1]), float("nan")):
        with pytest.raises(ValueError, match="Discrete"):
            lw.decode_step(bad)
