"""Argument parsing shared by the runnable agents (each agent file stays a readable single script)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from skipenv.cli.args import output_folder
from skipenv.envs.registration import DEFAULT_ENV_ID


def parser(description: str, default_env: str = DEFAULT_ENV_ID, default_steps: int = 256) -> argparse.ArgumentParser:
    """The agents' shared arguments; ``--help`` shows every default (the same env id as ``skipenv train``)."""
    p = argparse.ArgumentParser(description=description, formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default=default_env,
                   help="registered skipenv id; the test-split report uses its formulation's metrics (v1: mean "
                        "quality loss against tau)")
    p.add_argument("--seed", type=int, default=0, help="seed of the agent and the env")
    p.add_argument("--total-timesteps", type=int, default=default_steps, help="environment steps")
    p.add_argument("--device", default="cpu", help="device of the generator and the policy")
    p.add_argument("--out", type=output_folder, default=None,
                   help="output folder (default runs/<agent>-<env>-s<seed>)")
    p.add_argument("--train-examples", type=int, default=64, help="train-split documents cycled in training")
    p.add_argument("--eval-examples", type=int, default=16, help="test-split documents evaluated at the end")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help='extra gym.make kwargs as JSON, e.g. \'{"tau": 0.05}\'')
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def out_dir(args, agent: str) -> Path:
    path = Path(args.out or f"runs/{agent}-{args.env}-s{args.seed}")
    path.mkdir(parents=True, exist_ok=True)
    (path / "args.json").write_text(json.dumps(vars(args), indent=2))
    return path


def make_env(args, split: str, num_examples: int, *, formulation: bool = False):
    """The env of ``--env`` over ``split``: the unwrapped SwitchDec env (agents that handle the constraint
    themselves, e.g. ConstrainedPG), or with ``formulation=True`` as ``gym.make`` wraps it (the id's registered
    formulation: v1's ExpectedConstraint gives a generic RL algorithm the Lagrangian reward)."""
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)

    env = gym.make(args.env, split=split, num_examples=num_examples, device=args.device, **args.env_kwargs)
    env.unwrapped.prefetch(progress=not args.no_progress)  # batched full-model outputs
    return env if formulation else env.unwrapped


def make_test_env(args):
    """The one-shot env over the test split that every agent is evaluated on."""
    import gymnasium as gym

    return gym.make(args.env.replace("-Layerwise", ""), split="test", num_examples=args.eval_examples,
                    device=args.device, **args.env_kwargs).unwrapped


def evaluate_and_save(policy, args, out: Path, env=None) -> None:
    """Evaluate ``policy`` on the test split (one-shot env, :func:`make_test_env` unless given) and write
    ``eval_episodes.csv`` / ``eval_summary.csv``."""
    from skipenv.evaluation.harness import evaluate_policy, summarize
    from skipenv.envs.registration import registered_formulation

    env = env if env is not None else make_test_env(args)
    episodes = evaluate_policy(policy, env, seed=args.seed, progress=not args.no_progress)
    one_shot = args.env.replace("-Layerwise", "")
    summary = summarize(episodes, formulation=registered_formulation(one_shot, args.env_kwargs), tau=env.tau)
    episodes.to_csv(out / "eval_episodes.csv", index=False)
    summary.to_csv(out / "eval_summary.csv", index=False)
    print(summary.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
