"""Learners trained from scratch on a replay table, many seeds, the same test documents (issue 21, item 4).

    OMP_NUM_THREADS=1 python benchmarks/compare_tables.py --table xsum-v1 --seeds 10 --episodes 2000 \
        --workers 2 --out results/compare_tables

Every learner of :data:`skipenv.tables.learners.LEARNERS` trains on the table env under the expected formulation
(``SwitchDec-XSum-v1``'s: tau 0.01, probability signal), then its deterministic policy is scored on the held-out
documents: FLOPs saved, mean quality loss, the gain over the static front at equal quality (the best static mixture
at the policy's own test loss, fitted on the test documents) and the share of the oracle's headroom it captures
(:func:`skipenv.tables.learners.headroom_share`), cumulative regret against the per-document oracle on the
training episodes, IQM and probability of improvement with stratified-bootstrap CIs (:mod:`skipenv.evaluation.stats`,
rliable). Documents: the table's own train / test split when it covers >= ``--min-train`` train documents, else
``--folds``-fold cross-validation over all covered documents (printed; :func:`~skipenv.tables.learners.make_folds`).

Prints Markdown tables; writes ``runs.csv`` (one row per learner x seed), ``curves.csv``, ``gains.npz`` (per-document
gains at equal quality, ``[seeds, documents]`` per learner) and ``compare_tables.png``
(learning curves; final test FLOPs saved vs mean loss with the static and oracle fronts) under ``--out``.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

DEFAULT_LEARNERS = ("ppo", "a2c", "dqn", "rloo", "pg-lagrangian", "eps-greedy", "linucb", "lints", "lagrangian-ts")


def _job(args):
    name, seed, fold_index, table_dir, episodes, checkpoints, min_train, folds, fold_seed = args
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    import torch

    torch.set_num_threads(1)
    from skipenv.tables.learners import make_folds, train_learner_on_table
    from skipenv.tables.store import Table

    fold = make_folds(Table.load(table_dir), min_train=min_train, folds=folds, seed=fold_seed)[0][fold_index]
    res = train_learner_on_table(name, fold.table, episodes=episodes, seed=seed, checkpoints=checkpoints)
    return name, seed, fold_index, res


def _pooled(table, folds):
    """Test documents of all folds, in fold order: ids, loss [D, P], saved [D, P]."""
    ids, rows = [], []
    for f in folds:
        for e in f.test_ids:
            ids.append(e)
            rows.append(table.row_of(e))
    sig = table.config.get("env_defaults", {}).get("quality", table.signals[0])
    q = np.asarray(table.columns[f"quality.{sig}"])[rows]
    qf = np.asarray(table.columns[f"quality_full.{sig}"])[rows]
    return ids, qf - q, 1.0 - np.asarray(table.columns["cost"])[rows]


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="xsum-v1", help="table folder or shipped name (default: xsum-v1)")
    p.add_argument("--learners", nargs="+", default=list(DEFAULT_LEARNERS))
    p.add_argument("--seeds", type=int, default=10)
    p.add_argument("--episodes", type=int, default=2000, help="training episodes per run")
    p.add_argument("--checkpoints", type=int, default=4, help="test evaluations along training (learning curve)")
    p.add_argument("--min-train", type=int, default=20,
                   help="below this many train documents, use k-fold (the shipped table's 24 train documents pass)")
    p.add_argument("--folds", type=int, default=3)
    p.add_argument("--fold-seed", type=int, default=0)
    p.add_argument("--workers", type=int, default=2)
    p.add_argument("--reps", type=int, default=2000, help="bootstrap replications")
    p.add_argument("--out", default="results/compare_tables")
    a = p.parse_args(argv)

    import pandas as pd

    from skipenv.evaluation.stats import interval_estimates, iqm, probability_of_improvement
    from skipenv.evaluation.stats import markdown_table
    from skipenv.policies.menu import mixture_lp
    from skipenv.tables.envs import load_table
    from skipenv.tables.learners import LEARNERS, front_saved, headroom_share, make_folds

    bad = [n for n in a.learners if n not in LEARNERS]
    if bad:
        p.error(f"unknown learners {bad}; choose from {sorted(LEARNERS)}")
    table = load_table(a.table)
    folds, how = make_folds(table, min_train=a.min_train, folds=a.folds, seed=a.fold_seed)
    tau = 0.01
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    print(f"table {table.folder}: {table.num_documents} documents x {table.num_plans} plans; documents: {how}")
    print(f"{len(a.learners)} learners x {a.seeds} seeds x {len(folds)} fold(s), {a.episodes} episodes each, "
          f"{a.workers} worker(s)", flush=True)
    jobs = [(n, s, k, str(table.folder), a.episodes, a.checkpoints, a.min_train, a.folds, a.fold_seed)
            for s in range(a.seeds) for n in a.learners for k in range(len(folds))]
    t0 = time.perf_counter()
    results = {}
    if a.workers > 1:
        import multiprocessing as mp

        with mp.get_context("spawn").Pool(a.workers) as pool:
            for i, (n, s, k, r) in enumerate(pool.imap_unordered(_job, jobs)):
                results[n, s, k] = r
                if (i + 1) % 20 == 0:
                    print(f"  {i + 1}/{len(jobs)} runs, {time.perf_counter() - t0:.0f} s", flush=True)
    else:
        for j in jobs:
            n, s, k, r = _job(j)
            results[n, s, k] = r
    wall = time.perf_counter() - t0

    ids, L, S = _pooled(table, folds)
    D = len(ids)
    pos = {e: i for i, e in enumerate(ids)}
    # reference points on the pooled test documents
    st_tau, or_tau = front_saved(L, S, tau)
    # best static mixture fitted on each fold's train documents (what a deployer would ship), applied to its test
    mix_saved, mix_loss = np.zeros(D), np.zeros(D)
    for f in folds:
        _, Ltr, Str = _pooled(table, [type(f)(f.name, f.table, [], f.train_ids)])
        pi = mixture_lp(Ltr.mean(0), Str.mean(0), tau)
        for e in f.test_ids:
            mix_saved[pos[e]] = pi @ S[pos[e]]
            mix_loss[pos[e]] = pi @ L[pos[e]]

    rows, curves, gains, plans_all = [], [], {}, {}
    for n in a.learners:
        G = np.zeros((a.seeds, D))
        for s in range(a.seeds):
            plan = np.zeros(D, dtype=int)
            regret, secs, ck = 0.0, 0.0, None
            for k in range(len(folds)):
                r = results[n, s, k]
                idx = [pos[e] for e in r["test_ids"]]
                plan[idx] = r["plans"]
                regret += float(r["log"][:, 5].sum()) / len(folds)
                secs += r["seconds"]
                ck = [(ep, ck[i][1] if ck else np.zeros(D, dtype=int)) for i, (ep, _) in enumerate(r["curve"])]
                for i, (ep, pl) in enumerate(r["curve"]):
                    ck[i][1][idx] = pl
            h = headroom_share(L, S, plan)
            pi_eq = mixture_lp(L.mean(0), S.mean(0), max(h["mean_loss"], 0.0))
            G[s] = S[np.arange(D), plan] - S @ pi_eq  # per-document gain over the static front at equal quality
            rows.append({"learner": n, "seed": s, **h, "within_tau": h["mean_loss"] <= tau + 1e-12,
                         "cum_regret_per_1k": 1000 * regret / a.episodes, "seconds": secs})
            for ep, pl in ck:
                hc = headroom_share(L, S, pl)
                curves.append({"learner": n, "seed": s, "episodes": ep, "flops_saved": hc["flops_saved"],
                               "mean_loss": hc["mean_loss"], "gain": hc["gain"]})
        gains[n] = G
    runs = pd.DataFrame(rows)
    runs.to_csv(out / "runs.csv", index=False)
    cdf = pd.DataFrame(curves)
    cdf.to_csv(out / "curves.csv", index=False)

    ci = interval_estimates(gains, metric="mean", reps=a.reps, seed=0).set_index("policy")
    summ = []
    for n in a.learners:
        g = runs[runs.learner == n]
        summ.append({"learner": n, "FLOPs saved": g.flops_saved.mean(), "mean loss": g.mean_loss.mean(),
                     "runs within tau": f"{int(g.within_tau.sum())}/{len(g)}",
                     "gain at equal quality": ci.loc[n, "mean"],
                     "95% CI": f"[{ci.loc[n, 'ci_low']:+.3f}, {ci.loc[n, 'ci_high']:+.3f}]",
                     "IQM gain": iqm(gains[n]),
                     "headroom share": float(g.gain.sum() / g.headroom.sum()) if g.headroom.sum() > 0 else np.nan,
                     "regret / 1k ep": g.cum_regret_per_1k.mean(), "s / run": g.seconds.mean() / len(folds)})
    summ = pd.DataFrame(summ).sort_values("gain at equal quality", ascending=False)
    print(f"\n## From scratch, {a.seeds} seeds, {D} test documents (pooled over {len(folds)} fold(s)), tau {tau}\n")
    print(f"reference (test documents): static front at tau {st_tau:.3f} saved, oracle at tau {or_tau:.3f} "
          f"(headroom {or_tau - st_tau:.3f}); best static mixture fitted on train: {mix_saved.mean():.3f} saved at "
          f"mean loss {mix_loss.mean():.4f}\n")
    print(markdown_table(summ, ".3f"))
    # per-document gains [seeds, D] of every learner, written before the (slow) bootstrap of the probability of
    # improvement, so the comparison's results survive an interrupted POI step (it took 44 min at load ~15)
    np.savez(out / "gains.npz", **gains)
    best = summ.learner.iloc[0]
    pairs = [(best, n) for n in summ.learner if n != best]
    poi = probability_of_improvement(gains, pairs, reps=a.reps, seed=0)
    print(f"\n### Probability of improvement (per-document gain at equal quality), {best} vs each\n")
    print(markdown_table(poi, ".2f"))
    print(f"\nall runs: {wall:.0f} s wall ({len(jobs)} runs, {a.workers} workers)")

    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(1, 2, figsize=(12, 4.5))
        for n in a.learners:
            m = cdf[cdf.learner == n].groupby("episodes").gain.mean()
            ax[0].plot(m.index, 100 * m.values, marker="o", label=n)
        ax[0].axhline(0, color="k", lw=0.8)
        ax[0].set(xlabel="training episodes", ylabel="test gain over static front at equal quality (FLOPs %)",
                  title="learning curves (mean over seeds)")
        ax[0].legend(fontsize=7)
        lv = np.linspace(0, max(0.05, runs.mean_loss.max() * 1.1), 25)
        fr = np.array([front_saved(L, S, v) for v in lv])
        ax[1].plot(lv, 100 * fr[:, 0], "k-", label="static front (test)")
        ax[1].plot(lv, 100 * fr[:, 1], "k--", label="per-document oracle (test)")
        for n in a.learners:
            g = runs[runs.learner == n]
            ax[1].scatter(g.mean_loss, 100 * g.flops_saved, s=14, label=n)
        ax[1].axvline(tau, color="grey", ls=":", lw=0.8)
        ax[1].set(xlabel="test mean quality loss", ylabel="test FLOPs saved (%)", title="final policies (one dot per seed)")
        ax[1].legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "compare_tables.png", dpi=110)
        print(f"wrote {out / 'runs.csv'}, {out / 'curves.csv'}, {out / 'compare_tables.png'}")
    except ImportError:
        print(f"wrote {out / 'runs.csv'}, {out / 'curves.csv'} (no matplotlib: no plot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
