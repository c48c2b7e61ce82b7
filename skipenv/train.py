"""The main job: train stable-baselines3 PPO on ``SwitchDec-XSum-v0`` (embedded SmolLM2, real XSum train split),
save the policy, evaluate it on the XSum test split against the random policy and "skip nothing", and write a
table (CSV + JSON) and a quality-vs-FLOPs scatter plot next to the policy.

Command line: ``skipenv train`` (see ``skipenv train --help``). Default budget: about 10 minutes on 2 CPU cores.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pandas as pd

__all__ = ["train_ppo", "run_main_job", "configure_parser", "main"]


def train_ppo(env, *, total_timesteps: int, seed: int = 0, out_dir: str | Path | None = None,
              device: str = "cpu", progress_bar: bool = True, **overrides):
    """Train PPO (``MlpPolicy``, :data:`skipenv.sb3.ALGORITHMS` defaults) on a one-shot env and return the model.

    Episodes are one step long, so ``gamma`` and ``gae_lambda`` do not matter; the advantage is the reward minus
    the value baseline. ``learning_rate=1e-3`` (3× SB3's default) because budgets here are a few hundred
    episodes. Logs ``monitor.csv`` (per-episode reward, quality, cost) and TensorBoard under ``out_dir``.
    """
    from .sb3 import train_sb3

    return train_sb3("ppo", env, total_timesteps=total_timesteps, seed=seed, device=device, out_dir=out_dir,
                     progress_bar=progress_bar, **overrides)


def run_main_job(out_dir: str | Path = "runs/ppo-xsum", *, total_timesteps: int = 256, train_examples: int = 32,
                 test_examples: int = 20, seed: int = 0, device: str = "cpu", model: str = "smollm2-135m-instruct",
                 env_id: str = "SwitchDec-XSum-v0", progress_bar: bool = True) -> pd.DataFrame:
    """Train PPO, evaluate against baselines on the test split, save policy / tables / plot. Returns the summary.

    Defaults fit about 10 minutes on 2 CPU cores: the full-model reference (one greedy summary) of each of the
    ``train_examples`` + ``test_examples`` documents is computed once and cached on disk; a PPO step is then one
    teacher-forced forward pass; evaluation generates one summary per (policy, test document) for ROUGE-L.
    """
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)
    from .baselines import RandomPolicy, SB3Policy, SkipNothing
    from .benchmark import evaluate_policy, plot_pareto, summarize

    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    env_kwargs = {"model": model, "device": device}
    train_env = gym.make(env_id, split="train", num_examples=train_examples, **env_kwargs).unwrapped
    train_env.prefetch(progress=progress_bar)  # batched full-model outputs
    train_env.reset(seed=seed)
    ppo = train_ppo(train_env, total_timesteps=total_timesteps, seed=seed, out_dir=out, device=device,
                    progress_bar=progress_bar)
    t_train = time.perf_counter() - t0

    test_env = gym.make(env_id, split="test", num_examples=test_examples, **env_kwargs).unwrapped
    policies = [SB3Policy(ppo, name="ppo"), RandomPolicy(test_env, 0.5, seed=seed), SkipNothing(test_env)]
    episodes = pd.concat([evaluate_policy(p, test_env, seed=seed, extra_quality=("rouge",), progress=progress_bar)
                          for p in policies], ignore_index=True)
    summary = summarize(episodes)
    episodes.to_csv(out / "episodes.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    meta = {"env_id": env_id, "model": model, "total_timesteps": total_timesteps, "train_examples": train_examples,
            "test_examples": test_examples, "seed": seed, "train_seconds": round(t_train, 1),
            "total_seconds": round(time.perf_counter() - t0, 1), "tau": test_env.tau,
            "quality": test_env.quality, "summary": summary.to_dict(orient="records")}
    (out / "summary.json").write_text(json.dumps(meta, indent=2, default=float))
    plot_pareto(summary, out / "quality_vs_flops.png", quality_col="quality", episodes=episodes,
                title=f"{env_id}: agreement vs FLOPs saved (test split)")
    return summary


def format_table(summary: pd.DataFrame) -> str:
    """The main job's printed table."""
    cols = {"policy": "policy", "quality": "agreement", "quality_rouge": "ROUGE-L",
            "quality_full_rouge": "ROUGE-L (full)", "flops_saved": "FLOPs saved",
            "constraint_satisfied": "constraint ok", "reward_mean": "reward mean", "reward_std": "reward std"}
    t = summary[[c for c in cols if c in summary.columns]].rename(columns=cols)
    return t.to_string(index=False, float_format=lambda v: f"{v:.3f}")


def configure_parser(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="runs/ppo-xsum", help="output folder (policy.zip, summary.csv/json, plot)")
    p.add_argument("--total-timesteps", type=int, default=256, help="PPO environment steps (= episodes)")
    p.add_argument("--train-examples", type=int, default=32, help="XSum train documents cycled during training")
    p.add_argument("--test-examples", type=int, default=20, help="XSum test documents evaluated")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--device", default="cpu")
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--env", default="SwitchDec-XSum-v0")
    p.add_argument("--no-progress", action="store_true")


def main(args: argparse.Namespace) -> int:
    summary = run_main_job(args.out, total_timesteps=args.total_timesteps, train_examples=args.train_examples,
                           test_examples=args.test_examples, seed=args.seed, device=args.device, model=args.model,
                           env_id=args.env, progress_bar=not args.no_progress)
    print(format_table(summary))
    print(f"\nsaved: {Path(args.out) / 'policy.zip'}, summary.csv, summary.json, episodes.csv, quality_vs_flops.png")
    return 0
