"""The native vector env (``gym.make_vec(..., vectorization_mode="vector_entry_point")``) and its SB3 adapter, on a
tiny random-weight Llama with the embedded SmolLM2 tokenizer and real XSum rows: same observations, rewards and infos
as N single envs (run from scratch: reuse off), same-step autoreset, PPO trains on it."""

from __future__ import annotations

import gymnasium as gym
import numpy as np
import pytest

import skipenv
from skipenv.envs import Evaluator, SwitchDecEnv
from skipenv.envs.registration import sharing
from skipenv.envs.vector import SwitchDecVectorEnv
from skipenv.policies.sb3 import sb3_vec_env
from skipenv.tasks import make_task
from skipenv.testing import tiny_generator

pytestmark = pytest.mark.usefixtures("one_thread")

KW = dict(num_examples=5, max_new_tokens=6, max_input_tokens=96, disk_cache=False)


@pytest.fixture(scope="module")
def generator(smollm2_tokenizer):
    from skipenv.generators.reuse import PrefixStore

    g = tiny_generator("llama", smollm2_tokenizer)
    g.prefix_store = PrefixStore(admit_after=1)  # every row of the vector env takes the reused path
    return g


def make_vec(generator, n, **kw):
    with sharing(generator=generator):
        return gym.make_vec("SwitchDec-XSum-v0", num_envs=n, vectorization_mode="vector_entry_point", **KW, **kw)


@pytest.mark.parametrize("quality,batch_plans", [("agreement", False), ("rouge", False), ("agreement", True),
                                                  ("likelihood", True)])
def test_vector_env_equals_single_envs(generator, quality, batch_plans, monkeypatch):
    import skipenv.generators.batched as batched

    calls = []
    real = batched.score_plans
    monkeypatch.setattr(batched, "score_plans", lambda *a, **k: calls.append(len(a[1])) or real(*a, **k))
    n = 3
    vec = make_vec(generator, n, quality=quality, batch_plans=batch_plans)
    assert isinstance(vec.unwrapped, SwitchDecVectorEnv) and vec.num_envs == n
    assert vec.unwrapped.evaluator.reuse and vec.unwrapped.batch_plans == batch_plans
    # independent single envs, every plan run from scratch (their own evaluator, prefix reuse off)
    singles = []
    for _ in range(n):
        ev = Evaluator(generator, make_task("xsum", source="embedded", max_input_tokens=96), quality=quality,
                       max_new_tokens=6, disk_cache=False, reuse=False)
        singles.append(SwitchDecEnv("xsum", evaluator=ev, num_examples=KW["num_examples"]))
    obs, info = vec.reset(seed=7)
    for i, env in enumerate(singles):
        o, inf = env.reset(seed=7 + i)
        np.testing.assert_allclose(obs[i], o, atol=1e-6)
        assert info["example_id"][i] == inf["example_id"]
    rng = np.random.default_rng(0)
    for _ in range(3):
        actions = (rng.random((n, vec.single_action_space.n)) < 0.25).astype(np.int8)
        obs, rewards, terminated, truncated, infos = vec.step(actions)
        assert terminated.all() and not truncated.any()
        for i, env in enumerate(singles):
            o, r, term, trunc, inf = env.step(actions[i])
            np.testing.assert_allclose(infos["final_obs"][i], o, atol=1e-6)
            assert rewards[i] == pytest.approx(r, abs=1e-9)
            for key in ("example_id", "quality", "cost", "flops", "constraint_satisfied"):
                assert infos["final_info"][i][key] == inf[key]
                assert infos[key][i] == inf[key]
            assert infos["final_info"][i].get("text") == inf.get("text")
            o, inf = env.reset()  # same-step autoreset: the next episode's observation
            np.testing.assert_allclose(obs[i], o, atol=1e-6)
    # the batched path really ran (several rows per call) only when asked for
    assert (sum(calls) >= 2 * len(calls) > 0) if batch_plans else not calls


def test_flops_are_charged_as_from_scratch(generator):
    """The reuse is the simulator's speed: an outcome's FLOPs and cost do not depend on it."""
    task = make_task("xsum", source="embedded", max_input_tokens=96)
    on = Evaluator(generator, task, max_new_tokens=6, disk_cache=False)
    off = Evaluator(generator, task, max_new_tokens=6, disk_cache=False, reuse=False)
    ex = list(task.examples("train"))[0]
    spec = on.spec
    L = generator.num_decoder_layers
    plan = skipenv.SkipPlan(spec, (), (), (False,) * L, (False, False, True, False), (False,) * 6 + (True, True))
    a, b = on.outcome(ex, plan), off.outcome(ex, plan)
    assert (a.flops, a.cost, a.quality) == (b.flops, b.cost, b.quality)
    assert a.flops == generator.flops(plan, on.prompt(ex), on.full_output(ex).num_generated, observation=True).total
    with pytest.raises(ValueError, match="reuse"):
        Evaluator(generator, task, reuse="no")


def test_ppo_trains_on_the_sb3_adapter(generator):
    from stable_baselines3 import PPO

    vec = make_vec(generator, 2)
    venv = sb3_vec_env(vec.unwrapped, seed=3)
    model = PPO("MlpPolicy", venv, n_steps=4, batch_size=8, n_epochs=1, seed=0, device="cpu")
    model.learn(total_timesteps=16)
    # every step ends an episode in every row: 16 episodes, one step each
    assert venv.episode_count == 16
    obs = venv.reset()
    assert obs.shape == (2,) + vec.single_observation_space.shape
    venv.step_async(np.zeros((2, vec.single_action_space.n), dtype=np.int8))
    _, rewards, dones, infos = venv.step_wait()
    assert dones.all() and all(info["quality"] == 1.0 for info in infos)
    assert all("terminal_observation" in info and "episode" in info for info in infos)
    with pytest.raises(TypeError, match="SwitchDecVectorEnv"):
        sb3_vec_env(SwitchDecEnv("xsum", generator=generator, **KW))


def test_bad_num_envs(generator):
    with pytest.raises(ValueError, match="num_envs"):
        make_vec(generator, 0)
    with pytest.raises(ValueError, match="batch_plans"):
        make_vec(generator, 2, batch_plans="yes")
