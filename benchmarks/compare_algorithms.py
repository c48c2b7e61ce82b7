"""Every baseline and every learning algorithm on one env and constraint formulation, same budget, several seeds:
the README's comparison table, with rliable statistics.

    python benchmarks/compare_algorithms.py --formulation per_input --timesteps 96 --train-examples 16 \
        --test-examples 12 --out runs/compare            # 5 seeds (0-4) by default

One process, one model copy. One-shot learners (:data:`skipenv.policies.learners.LEARNERS`: PPO, A2C, ConstrainedPG with a
Lagrangian / dynamic-barrier handler, the group-baseline learners RLOO / GRPO, and the behaviour-cloning
warm-started ``rloo-bc`` / ``ppo-bc``) train for ``--timesteps`` episodes on the train documents, wrapped by the
formulation (:func:`skipenv.envs.wrappers.make_formulation`); DQN on the layerwise env (``dqn-layerwise``,
per-input formulation only) trains for ``--timesteps`` *episodes* as well. The ``-bc`` learners first clone the
plans of the per-input oracle (``--bc-source oracle``) or of the probe policy (``probe``) over the probe's default
menu, evaluated on the train documents (that table costs ``menu size × train documents`` extra episodes, reported
in the ``extra_episodes`` column).

Every policy is evaluated deterministically on the same test documents. The score of an episode is

- ``per_input``: the lexicographic reward at the env's tau;
- ``expected``: the FLOPs saved (fraction); the table also reports the mean quality loss and whether the mean
  constraint ``E[loss] <= tau`` holds on the test documents — compare scores only among policies where it holds;
- ``budget``: the lexicographic reward at each of ``--eval-taus`` (tasks are (document, tau) pairs).

Statistics (:mod:`skipenv.evaluation.stats`, rliable): IQM of the scores over seeds × test documents with a stratified-bootstrap
95 % CI (documents resampled too), and the probability of improvement (PoI) of each learner over the best static
baseline (highest IQM on the test documents, which favours the baseline; under ``expected`` the most FLOPs saved
among the static policies whose mean constraint holds) and over PPO, with stratified-bootstrap 95 % CIs that
resample seeds and test documents; ``*`` marks a PoI whose CI excludes 0.5 (a significant difference). Writes
``episodes.csv``, ``summary.csv``, ``poi.csv``, ``pareto.png``, ``learning_curves.png`` and
``performance_profiles.png`` to ``--out`` and prints the table.

Tiny smoke run (random-weight model; see tests/_tiny_local.py for the files)::

    python benchmarks/compare_algorithms.py --seeds 0 1 --timesteps 16 --train-examples 6 --test-examples 4 \
        --env-kwargs '{"model": "/tmp/tiny/model", "task_source": "/tmp/tiny/docs.jsonl", "max_new_tokens": 6,
        "max_input_tokens": 96, "token_segments": 4}' --out /tmp/compare-smoke
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import pandas as pd

STATIC = ("skip-nothing", "every-other:attention", "every-other:ffn", "lead:6", "lead:4", "calibrated:4")
#: env kwargs an evaluator fixes (not passed again when the layerwise env shares the one-shot env's evaluator)
EVALUATOR_KWARGS = ("model", "generator", "quality", "token_segments", "max_new_tokens", "max_input_tokens", "device")
DEFAULT_ALGOS = ("ppo", "a2c", "pg-lagrangian", "pg-barrier", "dqn-layerwise", "rloo", "rloo-bc")


def parse_args(argv=None) -> argparse.Namespace:
    from skipenv.policies.learners import LEARNERS

    from skipenv.envs.registration import DEFAULT_ENV_ID

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0],
                                formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    p.add_argument("--env", default=DEFAULT_ENV_ID, help="one-shot env id")
    p.add_argument("--env-kwargs", type=json.loads, default={}, help="further gym.make kwargs as JSON")
    p.add_argument("--formulation", choices=("per_input", "expected", "budget"), default=None,
                   help="constraint formulation (default: the env id's registered one: expected for "
                        "SwitchDec-XSum-v1, per_input for v0)")
    p.add_argument("--algos", nargs="+", default=list(DEFAULT_ALGOS),
                   choices=sorted([*LEARNERS, "dqn-layerwise"]), help="learners to train")
    p.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2, 3, 4])
    p.add_argument("--timesteps", type=int, default=96, help="training episodes per learner and seed")
    p.add_argument("--train-examples", type=int, default=16)
    p.add_argument("--test-examples", type=int, default=12)
    p.add_argument("--bc-source", choices=("oracle", "probe"), default="oracle",
                   help="targets of the behaviour-cloning warm start of the -bc learners")
    p.add_argument("--eval-taus", type=float, nargs="+", default=[0.05, 0.1, 0.2],
                   help="budget formulation: tolerances the policies are evaluated at")
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    p.add_argument("--oracle", action="store_true", help="add the per-input greedy oracle over token segments")
    p.add_argument("--out", default="runs/compare")
    args = p.parse_args(argv)
    import gymnasium as gym

    import skipenv  # noqa: F401  (registers the ids)
    from skipenv.envs.registration import resolve_env_id

    args.env = resolve_env_id(args.env)  # "SwitchDec-XSum": its latest version, as gym.make does
    if args.formulation is None:
        args.formulation = gym.spec(args.env).kwargs.get("formulation", "per_input")
    if args.formulation != "per_input" and "dqn-layerwise" in args.algos:
        print("note: dqn-layerwise runs only under the per_input formulation; left out")
        args.algos = [a for a in args.algos if a != "dqn-layerwise"]
    return args


def evaluate(policy, env, name: str, seed: int, *, formulation: str, taus, tau: float) -> pd.DataFrame:
    """One deterministic episode per test document (per tolerance under ``budget``); the ``score`` column is the
    formulation's score (see the module docstring)."""
    from skipenv.envs.rewards import constraint_satisfied, lexicographic_reward

    rows = []
    for i in range(len(env.unwrapped.examples)):
        for t in (taus if formulation == "budget" else [tau]):
            options = {"index": i, **({"tau": t} if formulation == "budget" else {})}
            obs, _ = env.reset(options=options)
            _, _, _, _, info = env.step(policy(obs))
            q, qf, c = info["quality"], info["quality_full"], info["cost"]
            reward = lexicographic_reward(q, qf, c, t)
            rows.append({"policy": name, "seed": seed, "example_id": info["example_id"], "tau": t, "reward": reward,
                         "quality": q, "quality_full": qf, "quality_loss": qf - q, "cost": c,
                         "flops_saved": info["flops_saved"],
                         "constraint_satisfied": bool(constraint_satisfied(q, qf, t)), "plan": info["plan"],
                         "score": info["flops_saved"] if formulation == "expected" else reward})
    return pd.DataFrame(rows)


def main(argv=None) -> None:
    args = parse_args(argv)

    import gymnasium as gym

    import skipenv
    from skipenv.policies import baselines as B
    from skipenv.evaluation.plots import plot_learning_curves, plot_pareto
    from skipenv.evaluation.stats import markdown_table
    from skipenv.policies import load_policy
    from skipenv.envs.wrappers import DEFAULT_TAU_RANGE, make_formulation
    from skipenv.policies.learners import WARM_STARTED, train_learner
    from skipenv.policies.sb3 import monitor_curve, train_sb3
    from skipenv.evaluation.stats import performance_profile_figure

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    kw = {k: v for k, v in args.env_kwargs.items() if k not in ("split", "num_examples")}
    if {"formulation", "formulation_kwargs"} & set(kw):
        raise SystemExit("--env-kwargs must not hold formulation / formulation_kwargs: the script applies the "
                         "formulation itself; use --formulation")
    kw["formulation"] = "per_input"  # the bare envs; the script wraps them for --formulation itself
    train = gym.make(args.env, split="train", num_examples=args.train_examples, **kw).unwrapped
    test = gym.make(args.env, split="test", num_examples=args.test_examples, **kw).unwrapped
    del kw["formulation"]
    train.prefetch()
    test.prefetch()
    tau = float(train.tau)
    form = args.formulation

    def formulated(env, lam_init: float = 0.0):
        """A fresh formulation wrapper (own Lagrange multiplier, starting at ``lam_init``, / tolerance generator)
        around ``env``."""
        return make_formulation(env, form, **({"tau": tau, "lam_init": lam_init} if form == "expected" else {}))

    eval_env = formulated(test) if form == "budget" else test  # the budget observation carries tau
    taus = list(args.eval_taus)
    if form == "budget" and not all(DEFAULT_TAU_RANGE[0] <= t <= DEFAULT_TAU_RANGE[1] for t in taus):
        raise SystemExit(f"--eval-taus {taus} must lie in the budget formulation's tau range {DEFAULT_TAU_RANGE}")

    frames, curves, times, extra = [], {}, {}, {}

    def run(policy, name, seed):
        frames.append(evaluate(policy, eval_env, name, seed, formulation=form, taus=taus, tau=tau))

    for spec in STATIC:
        try:
            pol = load_policy(spec, test, calibration_env=train)
        except ValueError as e:  # e.g. lead:6 with fewer than 6 token segments
            print(f"note: static baseline {spec} left out ({e})")
            continue
        run(pol, pol.name, 0)
    for seed in args.seeds:
        run(B.RandomPolicy(test, 0.5, seed=seed), "random:0.5", seed)
    if args.oracle and form == "per_input":
        bits = list(range(test.action_space.n - test.plan_spec.token_segments, test.action_space.n))
        run(B.OraclePolicy(test, max_skips=4, candidate_bits=bits), "oracle-tokens (upper ref.)", 0)

    warm, warm_lam = None, 0.0
    if any(a in WARM_STARTED for a in args.algos):
        from skipenv.evaluation.probe import evaluate_menu
        from skipenv.policies.warm_start import warm_start_targets

        envs = {"train": train, "test": test}
        table = evaluate_menu(lambda split, n: envs[split], num_train=args.train_examples, num_test=2,
                              progress=False)
        fenv = formulated(train)
        bc_taus = list(np.linspace(*DEFAULT_TAU_RANGE, 7)) if form == "budget" else tau
        warm = warm_start_targets(table, bc_taus, env=fenv, source=args.bc_source,
                                  formulation="expected" if form == "expected" else "per_input",
                                  append_tau=form == "budget")
        n_table = len(table.plans) * args.train_examples
        print(f"warm start: {len(warm)} (observation, plan) targets from the {args.bc_source} over "
              f"{len(table.plans)} menu plans x {args.train_examples} train documents ({n_table} extra episodes)")
        for a in WARM_STARTED:
            extra[a] = n_table
        if form == "expected" and args.bc_source == "probe":
            # warm-started learners keep the cloned rule's trade-off: their multiplier starts at the probe rule's
            from skipenv.policies.menu import ProbePolicy

            tr = table.matrices("train")
            warm_lam = ProbePolicy(empty=table.plans.index(table.empty) if table.empty else None).fit(
                tr["X"], tr["loss"], tr["saved"], tr["quality_full"], tau).expected_multiplier()
            print(f"warm start: the Lagrange multiplier of the -bc learners starts at the probe rule's {warm_lam:.3g}")

    if "dqn-layerwise" in args.algos:
        # the layerwise envs share the one-shot envs' evaluators: full outputs, observations and outcomes
        import re

        lw_id = re.sub(r"-v\d+$", "-Layerwise-v0", args.env)
        if lw_id not in gym.registry:
            raise SystemExit(f"dqn-layerwise needs the layerwise id of {args.env} ({lw_id}), which is not registered")
        # the one-shot envs' tau: an id's registered tau (v1: 0.01) is not the layerwise id's, which would otherwise
        # take its evaluator quality signal's default and train DQN at another tolerance
        lw_kw = {**{k: v for k, v in kw.items() if k not in EVALUATOR_KWARGS}, "tau": tau}
        lw_train = skipenv.make(lw_id, evaluator=train.evaluator, split="train", num_examples=args.train_examples,
                                **lw_kw).unwrapped
        lw_test = skipenv.make(lw_id, evaluator=test.evaluator, split="test", num_examples=args.test_examples,
                               **lw_kw).unwrapped
    for seed in args.seeds:
        for algo in args.algos:
            t0 = time.perf_counter()
            d = out / f"{algo}-s{seed}"
            if algo == "dqn-layerwise":
                steps = args.timesteps * (lw_train.num_layers + 1)
                dqn = train_sb3("dqn", lw_train, total_timesteps=steps, seed=seed, out_dir=d, progress_bar=False)
                c = monitor_curve(d / "monitor.csv")
                curve = c.assign(timestep=np.arange(1, len(c) + 1))
                policy = B.LayerwiseRollout(dqn, lw_test, test, name="dqn-layerwise")
            else:
                lam0 = warm_lam if algo in WARM_STARTED else 0.0
                policy, curve = train_learner(algo, formulated(train, lam0), total_timesteps=args.timesteps, seed=seed,
                                              out_dir=d, warm_start=warm if algo in WARM_STARTED else None)
            times.setdefault(algo, []).append(time.perf_counter() - t0)
            curves[f"{algo} s{seed}"] = curve
            run(policy, algo, seed)
        print(f"seed {seed} done", flush=True)

    episodes = pd.concat(frames, ignore_index=True)
    episodes.to_csv(out / "episodes.csv", index=False)
    summary, poi, scores = statistics(episodes, args, times, extra)
    summary.to_csv(out / "summary.csv", index=False)
    poi.to_csv(out / "poi.csv", index=False)
    plot_pareto(summary.rename(columns={"mean_quality": "quality"}), out / "pareto.png",
                tau=tau if form != "budget" else None,
                title=f"{args.env} test split ({form}): quality vs FLOPs saved")
    plot_learning_curves({k: v for k, v in curves.items() if len(v)}, out / "learning_curves.png", window=16)
    performance_profile_figure(scores, path=out / "performance_profiles.png", reps=min(args.reps, 1000),
                               xlabel={"expected": "FLOPs saved (fraction)"}.get(form, "lexicographic reward"))
    print(markdown_table(table_for_print(summary, form)))
    print("\nPoI = probability of improvement (rliable); * = its 95 % CI excludes 0.5 (a significant difference).")
    if form == "expected":
        print("expected formulation: the score is FLOPs saved; only policies whose mean constraint holds "
              "(mean_constraint_holds) are comparable.")
    print(f"\nsaved: {out}/ (episodes.csv, summary.csv, poi.csv, pareto.png, learning_curves.png, "
          f"performance_profiles.png)")


def statistics(episodes: pd.DataFrame, args, times: dict, extra: dict):
    """Summary table (one row per policy) and PoI table from the evaluated episodes (see the module docstring).

    Returns:
        ``(summary, poi, scores)`` — ``scores`` maps policy → ``[runs, tasks]`` score matrix.
    """
    from skipenv.evaluation.stats import interval_estimates, probability_of_improvement, score_matrix

    form = args.formulation
    task = ("example_id", "tau") if form == "budget" else ("example_id",)
    names = list(dict.fromkeys(episodes["policy"]))
    scores = {n: score_matrix(episodes, n, "score", task=task) for n in names}
    iqm = interval_estimates(scores, reps=args.reps).set_index("policy")
    rows = []
    for n in names:
        g = episodes[episodes["policy"] == n]
        rows.append({"policy": n, "runs": int(g["seed"].nunique()), "mean_quality": g["quality"].mean(),
                     "quality_full": g["quality_full"].mean(), "mean_quality_loss": g["quality_loss"].mean(),
                     "constraint_met_rate": g["constraint_satisfied"].mean(), "flops_saved": g["flops_saved"].mean(),
                     "mean_constraint_holds": bool(g["quality_loss"].mean() <= g["tau"].mean() + 1e-9),
                     "score_mean": g["score"].mean(), "score_iqm": iqm.loc[n, "iqm"],
                     "iqm_ci_low": iqm.loc[n, "ci_low"], "iqm_ci_high": iqm.loc[n, "ci_high"],
                     "train_s": float(np.mean(times[n])) if n in times else 0.0,
                     "extra_episodes": int(extra.get(n, 0))})
    summary = pd.DataFrame(rows)
    static = summary[summary["policy"].isin(STATIC)]
    if form == "expected":
        static = static[static["mean_constraint_holds"]]
    best_static = static.sort_values("score_iqm", ascending=False)["policy"].iloc[0]
    learners = [n for n in names if n in times]
    pairs = [(n, best_static) for n in learners] + [(n, "ppo") for n in learners if "ppo" in times and n != "ppo"]
    poi = probability_of_improvement(scores, pairs, reps=args.reps) if pairs else pd.DataFrame(
        columns=["x", "y", "poi", "ci_low", "ci_high", "significant"])
    summary["best_static"] = summary["policy"] == best_static
    for ref, col in ((best_static, "poi_vs_best_static"), ("ppo", "poi_vs_ppo")):
        sub = poi[poi["y"] == ref].set_index("x") if len(poi) else None
        for suffix, key in (("", "poi"), ("_ci_low", "ci_low"), ("_ci_high", "ci_high")):
            summary[col + suffix] = [float(sub.loc[n, key]) if sub is not None and n in sub.index else np.nan
                                     for n in summary["policy"]]
    return summary, poi, scores


def table_for_print(summary: pd.DataFrame, formulation: str = "per_input") -> pd.DataFrame:
    """The printed columns: IQM with CI, PoI with CI and a ``*`` where the CI excludes 0.5; the mean constraint
    only under the expected formulation."""
    def poi(row, col):
        v = row[col]
        if not np.isfinite(v):
            return ""
        lo, hi = row[col + "_ci_low"], row[col + "_ci_high"]
        return f"{v:.2f} [{lo:.2f}, {hi:.2f}]{'*' if lo > 0.5 or hi < 0.5 else ''}"

    t = pd.DataFrame({
        "policy": [p + (" (best static)" if b else "") for p, b in zip(summary["policy"], summary["best_static"])],
        "runs": summary["runs"], "quality": summary["mean_quality"].map(lambda v: f"{v:.3f}"),
        "constraint ok": summary["constraint_met_rate"].map(lambda v: f"{v:.2f}"),
        "mean constraint": summary["mean_constraint_holds"].map(lambda v: "holds" if v else "violated"),
        "FLOPs saved": summary["flops_saved"].map(lambda v: f"{v:.3f}"),
        "score IQM [95% CI]": [f"{v:.3f} [{lo:.3f}, {hi:.3f}]" for v, lo, hi in
                               zip(summary["score_iqm"], summary["iqm_ci_low"], summary["iqm_ci_high"])],
        "PoI vs best static": [poi(r, "poi_vs_best_static") for _, r in summary.iterrows()],
        "PoI vs PPO": [poi(r, "poi_vs_ppo") for _, r in summary.iterrows()],
        "train s": summary["train_s"].map(lambda v: f"{v:.0f}"),
        "extra episodes": summary["extra_episodes"]})
    return t if formulation == "expected" else t.drop(columns="mean constraint")


if __name__ == "__main__":
    main()
