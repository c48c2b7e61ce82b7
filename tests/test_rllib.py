"""agents/rllib_ppo.py: Ray RLlib PPO trains for two iterations with one env runner process on a local Ray with 2
CPUs, on a tiny random-weight Llama saved to disk (each runner builds its own env from the files)."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

pytest.importorskip("ray.rllib", reason='Ray RLlib is not installed: pip install -e ".[ray]"')

from _tiny_local import tiny_env_kwargs, write_tiny_assets  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


def test_multibinary_seen_as_multidiscrete_keeps_the_bits(tmp_path):
    sys.path.insert(0, str(ROOT / "agents"))
    try:
        import rllib_ppo
    finally:
        sys.path.remove(str(ROOT / "agents"))
    import gymnasium as gym

    model, data = write_tiny_assets(tmp_path, num_documents=12)
    kw = tiny_env_kwargs(model, data, disk_cache=False)
    kw.pop("split")
    env = rllib_ppo.env_creator({"env_id": "SwitchDec-XSum-v0", "num_examples": 3, "device": "cpu", "env_kwargs": kw})
    assert env.action_space == gym.spaces.MultiDiscrete([2] * 12)
    a = np.array([1, 0, 1, 1, 0, 0, 0, 0, 0, 0, 1, 0])
    env.reset(options={"index": 0})
    _, _, _, _, info = env.step(a)
    assert info["plan"] == env.unwrapped.action_to_plan(a).to_json()


def test_rllib_ppo_two_iterations_one_env_runner(tmp_path):
    model, data = write_tiny_assets(tmp_path, num_documents=30)  # 27 train / 2 validation / 1 test documents
    kw = tiny_env_kwargs(model, data, disk_cache=False)
    kw.pop("split")
    out = tmp_path / "run"
    cmd = [sys.executable, str(ROOT / "agents" / "rllib_ppo.py"), "--out", str(out), "--num-env-runners", "1",
           "--num-cpus", "2", "--total-timesteps", "32", "--train-batch-size", "16", "--train-examples", "4",
           "--eval-examples", "1", "--no-progress", "--env-kwargs", json.dumps(kw)]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    progress = pd.read_csv(out / "progress.csv")
    assert list(progress["env_steps"]) == [16, 32] and (progress["env_steps_per_s"] > 0).all()
    # the initial policy starts near "skip nothing" (RLlib's default would be 0.5 per bit)
    init = json.loads((out / "initial_policy.json").read_text())
    assert 0.002 < init["mean_skip_probability_on_train_docs"] < 0.1
    summary = pd.read_csv(out / "eval_summary.csv")
    assert summary.loc[0, "policy"] == "rllib-ppo" and summary.loc[0, "episodes"] == 1
    assert 0.0 <= summary.loc[0, "flops_saved"] <= 1.0
    assert (out / "checkpoint").is_dir()
