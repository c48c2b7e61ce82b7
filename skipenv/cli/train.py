"""``skipenv train``: the main job (:func:`skipenv.evaluation.main_job.run_main_job`) from the command line."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from .args import DEFAULT_ENV_ID, check_device, nonnegative_int, output_folder, positive_int

__all__ = ["configure_parser", "main"]


def configure_parser(p: argparse.ArgumentParser) -> None:
    """Arguments of ``skipenv train`` (every one with help text; ``skipenv train --help`` shows the defaults)."""
    p.add_argument("--out", type=output_folder, default="runs/ppo-xsum",
                   help="output folder: policy.zip, summary.csv/json, episodes.csv, quality_vs_flops.png, "
                        "monitor.csv (one row per training episode) and tensorboard/")
    p.add_argument("--total-timesteps", type=positive_int, default=384, help="PPO environment steps (= episodes)")
    p.add_argument("--train-examples", type=positive_int, default=96,
                   help="XSum train documents: the probe's menu is evaluated on them (see --static-examples) and "
                        "training cycles through them; the probe policy needs about this many (README, \"Choosing "
                        "the defaults\")")
    p.add_argument("--test-examples", type=positive_int, default=40, help="XSum test documents evaluated")
    p.add_argument("--rouge", action="store_true",
                   help="also generate every evaluation episode's output and report ROUGE-L against the reference "
                        "(one greedy generation per episode: ~4-5 more minutes at the defaults)")
    p.add_argument("--static-examples", type=nonnegative_int, default=None,
                   help="train documents the probe's menu is evaluated on: the best static plan (and, under the "
                        "expected formulation, the static mixture and the probe policy the margins are reported "
                        "against) and the warm-start targets (default: all --train-examples; 0 = no menu, no "
                        "static baseline)")
    p.add_argument("--seed", type=nonnegative_int, default=0, help="seed of PPO, the env and the random baseline")
    p.add_argument("--device", default="cpu", help="torch device of the generator and PPO (e.g. cpu, cuda)")
    p.add_argument("--model", default="smollm2-135m-instruct",
                   help="generator: the embedded short name, a Hugging Face Hub id or a local model folder")
    p.add_argument("--env", default=DEFAULT_ENV_ID,
                   help="environment id (one-shot); its registered formulation is used (v1: expected, v0: "
                        "per_input)")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars (phase lines and the time estimate are still printed to stderr)")
    from ..policies.learners import LEARNERS

    p.add_argument("--algo", default=None, choices=list(LEARNERS),
                   help="learner (skipenv.policies.learners; default ppo-bc under the expected formulation, ppo under "
                        "per_input): ppo, a2c, the ConstrainedPG handlers, the group-baseline rloo / grpo "
                        "(policy.pt instead of policy.zip), or ppo-bc / rloo-bc (behaviour cloning of the probe "
                        "policy's plans first)")


def main(args: argparse.Namespace) -> int:
    """Run the main job with parsed :func:`configure_parser` arguments; prints its table; returns 0."""
    from ..evaluation.main_job import format_table, run_main_job

    check_device(args.device)  # before anything loads (meta, a missing GPU)
    summary = run_main_job(args.out, total_timesteps=args.total_timesteps, train_examples=args.train_examples,
                           test_examples=args.test_examples, seed=args.seed, device=args.device, model=args.model,
                           env_id=args.env, progress_bar=not args.no_progress, algo=args.algo,
                           static_examples=args.static_examples, rouge=args.rouge)
    meta = json.loads((Path(args.out) / "summary.json").read_text())
    print(format_table(summary, meta["quality"], meta["formulation"], meta["tau"]))
    sb3 = meta["algo"] in ("ppo", "a2c", "ppo-bc")
    logs = (f"monitor.csv, tensorboard/ (view: tensorboard --logdir {Path(args.out) / 'tensorboard'})" if sb3 else
            "progress.csv (one row per training episode)")
    print(f"\nsaved: {Path(args.out) / ('policy.zip' if sb3 else 'policy.pt')}, summary.csv, summary.json, "
          f"episodes.csv, quality_vs_flops.png, {'menu/, ' if meta.get('best_static') else ''}{logs}")
    return 0
