"""``skipenv leaderboard``: evaluate policies on one env and write a comparison table and plot
(:func:`skipenv.evaluation.harness.leaderboard`)."""

from __future__ import annotations

import argparse

from .args import DEFAULT_ENV_ID, ENV_FROM_RUN_HELP, DefaultEnv, check_device, check_env_kwargs, check_policy_file, \
    env_for_policies, json_object, nonnegative_int, output_folder, positive_int

__all__ = ["configure_parser", "main"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    from ..policies import POLICY_SPECS  # light module: pandas / torch load only when evaluating

    p.add_argument("policies", nargs="+", metavar="POLICY",
                   help="policy specs, each one of: " + ", ".join(POLICY_SPECS) + " (one-shot policies only; a "
                   "layerwise DQN of agents/dqn_layerwise.py is not supported: evaluate it with that script)")
    p.add_argument("--env", default=DefaultEnv(DEFAULT_ENV_ID), help="environment id (one-shot)" + ENV_FROM_RUN_HELP)
    p.add_argument("--split", default="test", help="split evaluated (train, validation or test)")
    p.add_argument("--episodes", type=positive_int, default=20, help="evaluate the first N examples of the split")
    p.add_argument("--seeds", type=nonnegative_int, nargs="+", default=[0, 1, 2],
                   help="seeds of stochastic policies (random:RATE); deterministic policies run once")
    p.add_argument("--extra-quality", nargs="*", default=[], metavar="SIGNAL",
                   help="also report these quality signals, e.g. rouge (one generation per episode)")
    p.add_argument("--out", type=output_folder, default="runs/leaderboard",
                   help="output folder: episodes.csv (one row per episode), summary.csv (all columns), pareto.png")
    p.add_argument("--device", default="cpu", help="torch device of the generator")
    p.add_argument("--env-kwargs", type=json_object, default={},
                   help='further gym.make kwargs as JSON (use the ones the agents were trained with), '
                        'e.g. \'{"max_input_tokens": 256}\'')
    p.add_argument("--no-progress", action="store_true", help="no progress bars")


def main(args: argparse.Namespace) -> int:
    from ..evaluation.harness import format_summary, leaderboard

    for spec in args.policies:  # everything that can be checked without the model first
        check_policy_file(spec)
    check_device(args.device)
    env_id = env_for_policies(args.env, args.policies, "leaderboard")
    check_env_kwargs(env_id, args.env_kwargs, reserved={"split": "is set with --split"})
    _, summary = leaderboard(args.policies, env_id=env_id, split=args.split, episodes=args.episodes,
                             seeds=args.seeds, out_dir=args.out, extra_quality=args.extra_quality,
                             env_kwargs={"device": args.device, **args.env_kwargs},
                             progress=not args.no_progress)
    print(format_summary(summary))
    print(f"\nsaved: {args.out}/episodes.csv, summary.csv (all columns), pareto.png")
    return 0
