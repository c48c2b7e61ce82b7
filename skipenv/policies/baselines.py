"""Non-learning reference policies for the one-shot :class:`~skipenv.envs.SwitchDecEnv`.

Every policy is a callable ``policy(observation) -> action`` (an ``int8`` array of the env's ``MultiBinary``
shape) with a ``name``; build them with the env whose action layout they target. They are what a learned policy
must beat to be worth anything.

- :class:`SkipNothing` — the full model.
- :class:`RandomPolicy` — each bit skipped independently with probability ``rate``.
- :class:`StaticPlan` — the same plan for every input; :func:`every_other_layer` (LayerDrop-style) and
  :func:`lead_truncation` (keep the first document segments) build common ones.
- :func:`calibrate_static_drop` — skips the sublayers that change their input least on the train split
  (cosine similarity of the residual stream before / after each sublayer: the ShortGPT / LLM-Drop idea).
- :class:`OraclePolicy` — per-input greedy search with the environment's own evaluator: repeatedly skip the
  candidate that keeps the constraint and saves the most FLOPs (an upper reference; expensive; uses cached
  outcomes through ``env.outcome``).
"""

from __future__ import annotations

from typing import Callable, Sequence

import numpy as np
import torch

from ..plan import SkipPlan

__all__ = ["SkipNothing", "RandomPolicy", "StaticPlan", "every_other_layer", "lead_truncation",
           "sublayer_similarity", "calibrate_static_drop", "OraclePolicy", "CallablePolicy", "SB3Policy",
           "LayerwiseRollout"]


class _Policy:
    name = "policy"

    def __call__(self, observation) -> np.ndarray:  # pragma: no cover - interface
        raise NotImplementedError

    def __repr__(self) -> str:
        return f"<{type(self).__name__} {self.name}>"


class SkipNothing(_Policy):
    """Always the empty plan (the full model)."""

    def __init__(self, env):
        self.n = env.action_space.n
        self.name = "skip-nothing"

    def __call__(self, observation):
        return np.zeros(self.n, dtype=np.int8)


class RandomPolicy(_Policy):
    """Skip each action bit independently with probability ``rate`` (seeded).

    Raises:
        ValueError: ``rate`` outside [0, 1].
    """

    def __init__(self, env, rate: float = 0.5, seed: int = 0):
        if not 0.0 <= rate <= 1.0:
            raise ValueError(f"rate must be in [0, 1], got {rate}")
        self.n, self.rate = env.action_space.n, float(rate)
        self.rng = np.random.default_rng(seed)
        self.name = f"random:{rate:g}"

    def __call__(self, observation):
        return (self.rng.random(self.n) < self.rate).astype(np.int8)


class StaticPlan(_Policy):
    """The same action for every input."""

    def __init__(self, env, plan: SkipPlan, name: str = "static"):
        self.action = env.plan_to_action(plan)
        self.plan, self.name = plan, name

    def __call__(self, observation):
        return self.action.copy()


def every_other_layer(env, kind: str = "attention", start: int = 1) -> StaticPlan:
    """LayerDrop-style static plan: skip ``kind`` (``"attention"``, ``"ffn"`` or ``"both"``) in every other
    decoder layer starting at ``start`` (layer 0 is kept by default: it is vital in small models)."""
    if kind not in ("attention", "ffn", "both"):
        raise ValueError(f"kind must be 'attention', 'ffn' or 'both', got {kind!r}")
    idx = list(range(start, env.plan_spec.num_decoder_layers, 2))
    plan = SkipPlan.from_skips(env.plan_spec, attention=idx if kind in ("attention", "both") else (),
                               ffn=idx if kind in ("ffn", "both") else ())
    return StaticPlan(env, plan, name=f"every-other:{kind}")


def lead_truncation(env, keep_segments: int) -> StaticPlan:
    """Keep only the first ``keep_segments`` of the ``K`` document segments (the lead)."""
    k = env.plan_spec.token_segments
    if not 0 <= keep_segments <= k:
        raise ValueError(f"keep_segments must be in [0, {k}], got {keep_segments}")
    plan = SkipPlan.from_skips(env.plan_spec, tokens=range(keep_segments, k))
    return StaticPlan(env, plan, name=f"lead:{keep_segments}")


@torch.inference_mode()
def sublayer_similarity(generator, inputs) -> dict[str, np.ndarray]:
    """Mean cosine similarity between the residual stream before and after every decoder sublayer.

    For each input the full model runs once; for layer ``l`` the attention similarity compares the layer input with
    the stream after the attention sublayer and the FFN similarity compares that with the layer output
    (ShortGPT, Men et al. 2024; LLM-Drop, He et al. 2024). Similarities are averaged over tokens and inputs.

    Args:
        generator: a decoder-only :class:`~skipenv.generators.SkippableGenerator`.
        inputs: formatted inputs (e.g. from the train split).

    Returns:
        ``{"attention": [L], "ffn": [L]}`` float arrays; 1.0 = the sublayer leaves its input unchanged.
    """
    layers = generator._decoder_layers()
    n = len(layers)
    sums = {"attention": np.zeros(n), "ffn": np.zeros(n)}
    for inp in inputs:
        stepper = generator.layer_stepper(inp, ())
        for i in range(n):
            start = stepper.hidden  # [1, T, d]
            stepper.step(i, skip_attention=False, skip_ffn=True)
            mid = stepper.hidden[0].float()
            stepper.hidden = start
            stepper.step(i)
            before, after = start[0].float(), stepper.hidden[0].float()
            sums["attention"][i] += torch.nn.functional.cosine_similarity(before, mid, dim=-1).mean().item()
            sums["ffn"][i] += torch.nn.functional.cosine_similarity(mid, after, dim=-1).mean().item()
    return {k: v / max(len(inputs), 1) for k, v in sums.items()}


def calibrate_static_drop(env, num_sublayers: int, num_examples: int = 16, kinds: Sequence[str] = ("attention", "ffn")
                          ) -> StaticPlan:
    """Static plan skipping the ``num_sublayers`` sublayers with the highest input/output cosine similarity on the
    first ``num_examples`` examples of the env's split (use a train-split env).

    Raises:
        ValueError: encoder-decoder generators (calibration walks decoder-only layers).
    """
    if env.plan_spec.is_encoder_decoder:
        raise ValueError("calibrate_static_drop supports decoder-only generators")
    inputs = [env.prompt(ex) for ex in env.examples[:num_examples]]
    sim = sublayer_similarity(env.generator, inputs)
    scored = [(sim[k][i], k, i) for k in kinds for i in range(env.plan_spec.num_decoder_layers)]
    scored.sort(key=lambda t: -t[0])
    chosen = scored[:num_sublayers]
    plan = SkipPlan.from_skips(env.plan_spec, attention=[i for _, k, i in chosen if k == "attention"],
                               ffn=[i for _, k, i in chosen if k == "ffn"])
    policy = StaticPlan(env, plan, name=f"calibrated:{num_sublayers}")
    policy.similarity = sim
    return policy


class OraclePolicy(_Policy):
    """Per-input greedy search (an upper reference, not a deployable policy: it runs the model many times).

    Starting from the empty plan, repeatedly try every remaining action bit, keep the one whose plan still satisfies
    the constraint and has the lowest cost, and stop when no bit keeps the constraint (or after ``max_skips``).
    Uses the env's evaluator, so it never returns a plan that violates the constraint on that input.
    """

    def __init__(self, env, max_skips: int | None = None, candidate_bits: Sequence[int] | None = None):
        self.env, self.max_skips = env, max_skips
        self.bits = list(range(env.action_space.n)) if candidate_bits is None else list(candidate_bits)
        self.name = "oracle" if max_skips is None else f"oracle:{max_skips}"

    def __call__(self, observation):
        env = self.env
        ex = env.example
        action = np.zeros(env.action_space.n, dtype=np.int8)
        remaining = list(self.bits)
        while remaining and (self.max_skips is None or action.sum() < self.max_skips):
            best = None
            for b in remaining:
                trial = action.copy()
                trial[b] = 1
                outcome = env.outcome(env.action_to_plan(trial), ex)
                if env.reward.info(outcome)["constraint_satisfied"] and (best is None or outcome.cost < best[1]):
                    best = (b, outcome.cost)
            if best is None:
                break
            action[best[0]] = 1
            remaining.remove(best[0])
        return action


class CallablePolicy(_Policy):
    """Wrap any ``observation -> action`` callable (e.g. a user's policy) with a name."""

    def __init__(self, fn: Callable, name: str = "callable"):
        self.fn, self.name = fn, name

    def __call__(self, observation):
        return np.asarray(self.fn(observation)).astype(np.int8)


class SB3Policy(_Policy):
    """A stable-baselines3 model as a policy (deterministic ``predict``)."""

    def __init__(self, model, name: str = "sb3"):
        self.model, self.name = model, name

    def __call__(self, observation):
        action, _ = self.model.predict(observation, deterministic=True)
        return np.asarray(action).astype(np.int8)


class LayerwiseRollout(_Policy):
    """A layerwise-env agent (e.g. SB3 DQN on ``SwitchDec-XSum-Layerwise-v0``) as a one-shot policy: for the one-shot
    env's current example it rolls the agent out in ``layerwise_env`` (deterministic actions) and returns the
    resulting plan as a one-shot action, so both kinds of agents are evaluated by the same harness and reward.

    Args:
        model: anything with SB3's ``predict(observation, deterministic=True) -> (action, state)``.
        layerwise_env: a :class:`~skipenv.envs.SwitchDecLayerwiseEnv` over the same split as ``oneshot_env``.
        oneshot_env: the :class:`~skipenv.envs.SwitchDecEnv` being evaluated.
    """

    def __init__(self, model, layerwise_env, oneshot_env, name: str = "layerwise"):
        self.model, self.lw, self.env, self.name = model, layerwise_env, oneshot_env, name

    def __call__(self, observation):
        obs, _ = self.lw.reset(options={"example_id": self.env.example.id})
        done = False
        while not done:
            action, _ = self.model.predict(obs, deterministic=True)
            obs, _, done, _, _ = self.lw.step(int(action))
        return self.env.plan_to_action(self.lw.last_outcome.plan)
