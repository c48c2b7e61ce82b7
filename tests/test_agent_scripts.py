"""Every runnable agent in agents/ trains end to end on the default id (SwitchDec-XSum-v1, embedded) (real SmolLM2, real XSum)
at tiny settings, saves a policy, and the harness evaluates it."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parents[1]
TINY = ["--train-examples", "2", "--eval-examples", "2", "--no-progress",
        "--env-kwargs", json.dumps({"max_input_tokens": 128, "max_new_tokens": 12})]

pytestmark = [pytest.mark.assets, pytest.mark.slow]


def run_agent(script: str, out: Path, *extra: str, as_script: bool = False) -> pd.DataFrame:
    """Run ``agents/<script>`` at the tiny settings and return its eval summary. In-process by default (the
    script's ``main(argv)``, loaded from its file with ``agents/`` on ``sys.path`` as ``python agents/x.py`` has it):
    the agents then share one loaded SmolLM2 (:func:`skipenv.envs.switchdec.shared_generator`) and one interpreter
    instead of seven, which kept nothing that the runs check. ``as_script=True`` runs it as a subprocess, the way a
    user does (the ``__main__`` entry and the imports of a fresh interpreter): :func:`test_baselines_agent` does."""
    argv = ["--out", str(out), *TINY, *extra]
    if as_script:
        proc = subprocess.run([sys.executable, str(ROOT / "agents" / script), *argv], cwd=ROOT,
                              env={**os.environ, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True,
                              timeout=900)
        assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-5000:]
    else:
        import importlib.util

        sys.path.insert(0, str(ROOT / "agents"))
        try:
            spec = importlib.util.spec_from_file_location(f"_agent_{Path(script).stem}", ROOT / "agents" / script)
            module = importlib.util.module_from_spec(spec)
            spec.loader.exec_module(module)
            module.main(argv)
        finally:
            sys.path.remove(str(ROOT / "agents"))
    summary = pd.read_csv(out / "eval_summary.csv")
    assert summary.loc[0, "episodes"] == 2
    assert summary.loc[0, "reward_mean"] >= -1.0 and summary.loc[0, "flops_saved"] <= 1.0
    return summary


@pytest.mark.parametrize("script,policy_file", [("ppo.py", "policy.zip"), ("a2c.py", "policy.zip")])
def test_sb3_one_shot_agents(script, policy_file, tmp_path):
    run_agent(script, tmp_path, "--total-timesteps", "16")
    assert (tmp_path / policy_file).stat().st_size > 0
    monitor = pd.read_csv(tmp_path / "monitor.csv", skiprows=1)
    assert len(monitor) >= 16 and {"quality", "cost"} <= set(monitor.columns)
    assert any((tmp_path / "tensorboard").rglob("events.out.tfevents*"))


def test_dqn_layerwise_agent(tmp_path):
    run_agent("dqn_layerwise.py", tmp_path, "--total-timesteps", "96")
    assert (tmp_path / "policy.zip").exists()


@pytest.mark.parametrize("handler", ["lagrangian", "barrier"])
def test_constrained_pg_agent(handler, tmp_path):
    run_agent("constrained_pg.py", tmp_path, "--total-timesteps", "8", "--batch-size", "4", "--handler", handler)
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert len(progress) == 8 and (tmp_path / "policy.pt").exists()


def test_baselines_agent(tmp_path):
    summary = run_agent("baselines.py", tmp_path, "--policies", "skip-nothing", "lead:4", "calibrated:2",
                        as_script=True)
    assert list(summary["policy"]) == ["skip-nothing", "lead:4", "calibrated:2"]
    nothing = summary.set_index("policy").loc["skip-nothing"]
    # the default id is v1 (probability signal, expected constraint): skip nothing reproduces the full model exactly
    assert nothing["quality"] == nothing["quality_full"] and nothing["constraint_satisfied"] == 1.0
    assert nothing["mean_quality_loss"] == 0.0 and nothing["mean_loss_within_tau"]


def test_group_pg_agent_with_warm_start(tmp_path):
    run_agent("group_pg.py", tmp_path, "--total-timesteps", "8", "--groups-per-update", "1", "--warm-start", "oracle")
    progress = pd.read_csv(tmp_path / "progress.csv")
    assert len(progress) == 8 and (progress.groupby(progress.index // 4)["document"].nunique() == 1).all()
    assert (tmp_path / "policy.pt").exists() and (tmp_path / "probe_table" / "outcomes.csv").exists()
