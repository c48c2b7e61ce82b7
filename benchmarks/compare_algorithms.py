"""Every baseline and every learning algorithm on the embedded SwitchDec-XSum-v0, same budget, several seeds:
the README's comparison table.

    python benchmarks/compare_algorithms.py --seeds 0 1 2 --timesteps 96 --train-examples 16 --test-examples 12

One process, one model copy. One-shot learners (PPO, A2C, ConstrainedPG with Lagrangian / dynamic barrier) train
for ``--timesteps`` episodes; DQN on the layerwise env trains for ``--timesteps`` *episodes* as well
(``--timesteps × (L + 1)`` env steps). Everything is evaluated deterministically on the same test documents
(agreement quality, the default tau). Writes ``episodes.csv``, ``summary.csv``, ``pareto.png`` and
``learning_curves.png`` to ``--out`` and prints the summary.
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import numpy as np
import pandas as pd


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    p.add_argument("--timesteps", type=int, default=96, help="training episodes per learner and seed")
    p.add_argument("--train-examples", type=int, default=16)
    p.add_argument("--test-examples", type=int, default=12)
    p.add_argument("--oracle", action="store_true", help="add the per-input greedy oracle over token segments")
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args(argv)

    import gymnasium as gym

    import skipenv
    from skipenv import baselines as B
    from skipenv.algorithms import ConstrainedPG, PGConfig
    from skipenv.benchmark import evaluate_policy, markdown_table, plot_learning_curves, plot_pareto, summarize
    from skipenv.sb3 import monitor_curve, train_sb3

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    train = gym.make("SwitchDec-XSum-v0", split="train", num_examples=args.train_examples).unwrapped
    test = gym.make("SwitchDec-XSum-v0", split="test", num_examples=args.test_examples).unwrapped
    train.prefetch()
    test.prefetch()
    # the layerwise envs share the one-shot envs' evaluators: full outputs, observations and outcomes
    lw_train = skipenv.make("SwitchDec-XSum-Layerwise-v0", evaluator=train.evaluator, split="train",
                            num_examples=args.train_examples).unwrapped
    lw_test = skipenv.make("SwitchDec-XSum-Layerwise-v0", evaluator=test.evaluator, split="test",
                           num_examples=args.test_examples).unwrapped

    frames, curves, times = [], {}, {}

    def run(policy, name, seed):
        df = evaluate_policy(policy, test, seed=seed, progress=False)
        df["policy"] = name
        frames.append(df)

    calib_env = train
    static = [B.SkipNothing(test), B.every_other_layer(test, "attention"), B.every_other_layer(test, "ffn"),
              B.lead_truncation(test, 6), B.lead_truncation(test, 4)]
    calibrated = B.calibrate_static_drop(calib_env, 4, num_examples=8)
    static.append(B.StaticPlan(test, calibrated.plan, name="calibrated:4"))
    for pol in static:
        run(pol, pol.name, 0)
    for seed in args.seeds:
        run(B.RandomPolicy(test, 0.5, seed=seed), "random:0.5", seed)
    if args.oracle:
        bits = list(range(test.action_space.n - test.plan_spec.token_segments, test.action_space.n))
        run(B.OraclePolicy(test, max_skips=4, candidate_bits=bits), "oracle-tokens (upper ref.)", 0)

    for seed in args.seeds:
        for algo in ("ppo", "a2c"):
            t0 = time.perf_counter()
            d = out / f"{algo}-s{seed}"
            model = train_sb3(algo, train, total_timesteps=args.timesteps, seed=seed, out_dir=d, progress_bar=False)
            times.setdefault(algo, []).append(time.perf_counter() - t0)
            curves[f"{algo} s{seed}"] = monitor_curve(d / "monitor.csv")
            run(B.SB3Policy(model, algo), algo, seed)
        for handler in ("lagrangian", "barrier"):
            t0 = time.perf_counter()
            agent = ConstrainedPG(train, PGConfig(handler=handler, batch_size=16), seed=seed)
            hist = agent.learn(args.timesteps, progress_bar=False)
            times.setdefault(f"pg-{handler}", []).append(time.perf_counter() - t0)
            curves[f"pg-{handler} s{seed}"] = hist[["timestep", "reward"]]
            run(agent, f"pg-{handler}", seed)
        t0 = time.perf_counter()
        steps = args.timesteps * (lw_train.num_layers + 1)
        d = out / f"dqn-s{seed}"
        dqn = train_sb3("dqn", lw_train, total_timesteps=steps, seed=seed, out_dir=d, progress_bar=False)
        times.setdefault("dqn-layerwise", []).append(time.perf_counter() - t0)
        c = monitor_curve(d / "monitor.csv")
        curves[f"dqn-layerwise s{seed}"] = c.assign(timestep=np.arange(1, len(c) + 1))

        run(B.LayerwiseRollout(dqn, lw_test, test, name="dqn-layerwise"), "dqn-layerwise", seed)
        print(f"seed {seed} done", flush=True)

    episodes = pd.concat(frames, ignore_index=True)
    summary = summarize(episodes)
    summary["train_s"] = summary["policy"].map(lambda n: np.mean(times[n]) if n in times else 0.0)
    episodes.to_csv(out / "episodes.csv", index=False)
    summary.to_csv(out / "summary.csv", index=False)
    plot_pareto(summary, out / "pareto.png", title="SwitchDec-XSum-v0 test split: agreement vs FLOPs saved")
    plot_learning_curves(curves, out / "learning_curves.png", window=16)
    cols = ["policy", "seeds", "quality", "constraint_satisfied", "flops_saved", "reward_mean", "reward_ci_low",
            "reward_ci_high", "reward_iqm_over_seeds", "train_s"]
    print(markdown_table(summary[cols]))


if __name__ == "__main__":
    main()
