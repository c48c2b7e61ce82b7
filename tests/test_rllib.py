"""agents/rllib_ppo.py: Ray RLlib PPO trains for two iterations with one env runner process on a local Ray with 2
CPUs, on a tiny random-weight Llama saved to disk (each runner builds its own env from the files)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray.rllib", reason='Ray RLlib is not installed: pip install -e ".[ray]"')

from _tiny_local import tiny_env_kwargs, write_tiny_assets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def kw(tmp_path_factory):
    """Env kwargs over a tiny saved model and 30 made-up documents (27 train / 2 validation / 1 test)."""
    model, data = write_tiny_assets(tmp_path_factory.mktemp("tiny"), num_documents=30)
    kw = tiny_env_kwargs(model, data, disk_cache=False)
    kw.pop("split")
    return kw


def test_multibinary_seen_as_multidiscrete_keeps_the_bits(kw):
    sys.path.insert(0, str(ROOT / "agents"))
    try:
        import rllib_ppo
    finally:
        sys.path.remove(str(ROOT / "agents"))
    import gymnasium as gym

    env = rllib_ppo.env_creator({"env_id": "SwitchDec-XSum-v0", "num_examples": 3, "device": "cpu", "env_kwargs": kw})
    assert env.action_space == gym.spaces.MultiDiscrete([2] * 12)
    a = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0])
    env.reset(options={"index": 0})
    _, _, _, _, info = env.step(a)
    assert info["plan"] == env.unwrapped.action_to_plan(a).to_json()


def test_rllib_ppo_two_iterations_one_env_runner(kw, tmp_path):
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "agents" / "rllib_ppo.py"), "--out", str(out), "--num-env-runners", "1",
           "--num-cpus", "2", "--total-timesteps", "16", "--train-batch-size", "8", "--train-examples", "4",
           "--eval-examples", "1", "--no-progress", "--env-kwargs", json.dumps(kw)]
    proc = subprocess.run(cmd, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    progress = pd.read_csv(out / "progress.csv")
    assert list(progress["env_steps"]) == [8, 16] and (progress["env_steps_per_s"] > 0).all()
    # the initial policy starts near "skip nothing" (RLlib's default would be 0.5 per bit)
    init = json.loads((out / "initial_policy.json").read_text())
    assert 0.002 < init["mean_skip_probability_on_train_docs"] < 0.1
    summary = pd.read_csv(out / "eval_summary.csv")
    assert summary.loc[0, "policy"] == "rllib-ppo" and summary.loc[0, "episodes"] == 1
    # the evaluated episode is what the env gives for the trained policy's plan on that test document
    import gymnasium as gym

    from skipenv.plan import SkipPlan

    episode = pd.read_csv(out / "eval_episodes.csv").iloc[0]
    env = gym.make("SwitchDec-XSum-v0", split="test", num_examples=1, **kw).unwrapped
    env.reset(options={"example_id": str(episode["example_id"])})
    _, reward, _, _, info = env.step(env.plan_to_action(SkipPlan.from_json(episode["plan"], env.plan_spec)))
    assert reward == pytest.approx(episode["reward"]) and info["cost"] == pytest.approx(episode["cost"])
    assert (out / "checkpoint").is_dir()
