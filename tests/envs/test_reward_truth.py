"""One reward truth: for every registered id and every constraint formulation, the reward ``step`` returns is the
``info["reward"]`` the env reports, ``info["formulation"]`` names the formulation, and the value equals the
formulation's formula recomputed here by hand from the episode's ``quality`` / ``quality_full`` / ``cost`` (and, under
the expected constraint, the multiplier's dual-ascent trajectory recomputed independently).

Offline ids run on the embedded datasets with a tiny random-weight Llama; the hub-only ids (CNN/DailyMail, SQuAD,
SST-2) run on a local file with the task's columns and a tiny Llama saved with ``save_pretrained``.
"""

from __future__ import annotations

import json

import gymnasium as gym
import numpy as np
import pytest

import skipenv
from skipenv.envs.rewards import lexicographic_reward, weighted_reward
from skipenv.envs.wrappers import FORMULATIONS

SMALL = dict(num_examples=2, max_new_tokens=4, max_input_tokens=96, token_segments=4, disk_cache=False)
#: a fast multiplier: one dual update per episode with a large step, so lam moves between the episodes checked
DUAL = {"lr": 20.0, "update_every": 1}
EPISODES = 2

#: rows with the columns of the hub-only tasks (``skipenv.tasks.TASKS``), written to a local file
_TEXT = "The council said the new bridge over the river would open next spring after years of delays."
HUB_ROWS = {
    "SwitchDec-CNNDM-v0": [{"id": f"c{i}", "article": _TEXT * (i + 1), "highlights": "The bridge opens."}
                           for i in range(3)],
    "SwitchDec-SQuAD-v0": [{"id": f"s{i}", "context": _TEXT, "question": "When will the bridge open?",
                            "answers": {"text": ["next spring"], "answer_start": [50]}} for i in range(3)],
    "SwitchDec-SST2-v0": [{"idx": i, "sentence": f"{_TEXT} A {'good' if i % 2 else 'bad'} plan.", "label": i % 2}
                          for i in range(3)],
}


def test_every_registered_id_is_covered():
    assert set(skipenv.ENV_IDS) == set(skipenv.OFFLINE_IDS) | set(HUB_ROWS)


#: ids whose prompt needs a larger input budget than SMALL's (RottenTomatoes-v1's 2-shot prompt alone is 105 tokens)
BUDGET = {"SwitchDec-RottenTomatoes-v1": {"max_input_tokens": 160},
          **dict.fromkeys(("SwitchDec-DisflQA-v1", "SwitchDec-DisflQA-v2", "SwitchDec-Mix-v0"),
                          {"max_input_tokens": 400})}  # QA shots; v2: the question before the passage


def _tiny_rt_head(generator, folder) -> str:
    """A label head for ``generator`` (full-model features of four train reviews), saved as JSON; its path."""
    from skipenv.envs import Evaluator
    from skipenv.envs.label_head import fit_label_head
    from skipenv.tasks import make_task

    task = make_task("rotten_tomatoes", scoring="verbalizer")
    train = task.examples("train")
    reviews = [e for e in train if e.label == "positive"][:2] + [e for e in train if e.label == "negative"][:2]
    path = folder / "tiny_rt_head.json"
    fit_label_head(Evaluator(generator, task, quality="label_agreement", disk_cache=False), reviews, []).save(path)
    return str(path)


def _env(env_id, formulation, tiny_llama, tiny_model_dir, tmp_path, **extra):
    kwargs = {**SMALL, **BUDGET.get(env_id, {}), "formulation": formulation, **extra}
    if formulation == "expected":
        kwargs["formulation_kwargs"] = DUAL
    if env_id == "SwitchDec-XSum-v2":  # its registered linear_rank 64 exceeds the tiny model's hidden size (32)
        kwargs["linear_rank"] = 16
    if env_id == "SwitchDec-RottenTomatoes-v2":  # its shipped head is the embedded SmolLM2's: fit one for the tiny model
        kwargs["label_head"] = _tiny_rt_head(tiny_llama, tmp_path)
    if env_id in HUB_ROWS:
        data = tmp_path / f"{env_id}.jsonl"
        data.write_text("".join(json.dumps(r) + "\n" for r in HUB_ROWS[env_id]))
        return gym.make(env_id, model=tiny_model_dir, task_source=str(data), split="all", **kwargs)
    if env_id == "SwitchDec-DisflQA-v2":  # the shipped span head is the embedded SmolLM2's: a head for this model
        from skipenv.tasks import make_task
        from skipenv.testing import random_span_head

        random_span_head(tiny_llama, tmp_path / "head.npz")
        kwargs["task"] = make_task("disflqa_head", span_head=str(tmp_path / "head.npz"),
                                   max_input_tokens=kwargs.pop("max_input_tokens", 400))
    return skipenv.make(env_id, generator=tiny_llama, **kwargs)


def _episode(env, rng):
    """One episode of random actions; returns the terminal step's (reward, info) and the intermediate rewards."""
    env.reset(options={"index": int(rng.integers(2))})
    intermediate = []
    while True:
        _, reward, terminated, truncated, info = env.step(env.action_space.sample())
        if terminated or truncated:
            return reward, info, intermediate
        intermediate.append(reward)


@pytest.mark.parametrize("formulation", FORMULATIONS)
@pytest.mark.parametrize("env_id", skipenv.ENV_IDS)
def test_returned_reward_is_info_reward(env_id, formulation, tiny_llama, tiny_model_dir, tmp_path):
    env = _env(env_id, formulation, tiny_llama, tiny_model_dir, tmp_path)
    env.action_space.seed(0)
    rng = np.random.default_rng(0)
    tau_env = env.unwrapped.tau
    lam, buffer_updates = 0.0, 0
    for _ in range(EPISODES):
        reward, info, intermediate = _episode(env, rng)
        assert all(r == 0.0 for r in intermediate)  # layerwise: the reward comes at the last step
        assert reward == info["reward"], (env_id, formulation, reward, info["reward"])
        assert info["formulation"] == formulation
        q, qf, cost = info["quality"], info["quality_full"], info["cost"]
        if formulation == "per_input":
            assert reward == pytest.approx(lexicographic_reward(q, qf, cost, tau_env), abs=1e-12)
        elif formulation == "expected":
            assert info["lagrange_multiplier"] == pytest.approx(lam, abs=1e-12)
            assert reward == pytest.approx((1 - cost) - lam * ((qf - q) - tau_env), abs=1e-9)
            assert info["env_reward"] == pytest.approx(lexicographic_reward(q, qf, cost, tau_env), abs=1e-12)
            assert info["multiplier_updates"] == buffer_updates
            lam = min(100.0, max(0.0, lam + DUAL["lr"] * ((qf - q) - tau_env)))  # one dual step per episode
            buffer_updates += 1
        else:
            assert reward == pytest.approx(lexicographic_reward(q, qf, cost, info["tau"]), abs=1e-12)
            assert info["constraint_satisfied"] == (q >= qf - info["tau"] - 1e-9)
    env.close()


def test_weighted_reward_mode_is_info_reward(tiny_llama, tiny_model_dir, tmp_path):
    """The per-input formulation under ``reward_mode="weighted"``: still one truth, ``q - w * cost``."""
    env = _env("SwitchDec-XSum-v0", "per_input", tiny_llama, tiny_model_dir, tmp_path, reward_mode="weighted",
               cost_weight=0.3)
    env.action_space.seed(1)
    reward, info, _ = _episode(env, np.random.default_rng(1))
    assert reward == info["reward"] == pytest.approx(weighted_reward(info["quality"], info["cost"], 0.3))
    assert (info["formulation"], info["reward_rule"]) == ("per_input", "weighted")
