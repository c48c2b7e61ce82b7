"""How much of the oracle's headroom is reachable from the observation at all (issue 21, item 4's ceiling).

    OMP_NUM_THREADS=1 python benchmarks/table_ceiling.py --table xsum-v1 --out /tmp/learners/ceiling

On the table's test documents (its own split): the static front and the per-document oracle at tau; the
cross-validated R^2 of each plan's quality loss from the observation (all covered documents); the in-sample bound
of the linear contextual class (loss models fitted on the *test* documents' own outcomes, lam chosen on them); a
fully informed learner trained on the train documents (every outcome seen); and the learning curve of that learner
over train-document counts (random splits of all covered documents). Functions: :mod:`skipenv.tables.ceiling`.
Prints Markdown tables; writes ``curve.csv`` and ``table_ceiling.png`` under ``--out``.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--table", default="xsum-v1", help="table folder or shipped name (default: xsum-v1)")
    p.add_argument("--tau", type=float, default=0.01)
    p.add_argument("--components", type=int, nargs="+", default=[2, 4, 8, 16])
    p.add_argument("--sizes", type=int, nargs="+", default=None,
                   help="train-document counts of the learning curve (default: 8, 16, ... up to D - 12)")
    p.add_argument("--repeats", type=int, default=20, help="random splits per train size")
    p.add_argument("--out", default="results/table_ceiling")
    a = p.parse_args(argv)

    import pandas as pd

    from skipenv.evaluation.stats import markdown_table
    from skipenv.tables.bandits import CostModel, FeatureMap
    from skipenv.tables.ceiling import fit_loss_models, loss_r2, rule_result, supervised_policy, train_size_curve
    from skipenv.tables.envs import load_table
    from skipenv.tables.learners import front_saved, headroom_share

    t0 = time.perf_counter()
    table = load_table(a.table)
    c = table.columns
    sig = table.config.get("env_defaults", {}).get("quality", table.signals[0])
    L = np.asarray(c[f"quality_full.{sig}"], dtype=np.float64) - np.asarray(c[f"quality.{sig}"], dtype=np.float64)
    S = 1.0 - np.asarray(c["cost"], dtype=np.float64)
    X = np.asarray(c["observations"], dtype=np.float64)
    tr, te = np.asarray(table.rows("train")), np.asarray(table.rows("test"))
    if len(tr) < 8 or len(te) < 4:
        p.error(f"the table covers {len(tr)} train / {len(te)} test documents; this needs >= 8 / >= 4")
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    st, orc = front_saved(L[te], S[te], a.tau)
    print(f"table {table.folder}: {table.num_documents} documents ({len(tr)} train / {len(te)} test) x "
          f"{table.num_plans} plans, signal {sig}, tau {a.tau}")
    print(f"test documents: static front {st:.3f} saved, oracle {orc:.3f} (headroom {orc - st:.3f})")
    cm = CostModel(FeatureMap(X[tr]), X[tr], S[tr])
    r2c = 1 - ((cm(X[te]) - S[te]) ** 2).sum(0) / ((S[te] - S[te].mean(0)) ** 2).sum(0)
    print(f"FLOPs saved from the length features (CostModel fitted on train, scored on test): R^2 min "
          f"{np.nanmin(r2c):.4f}, median {np.nanmedian(r2c):.4f} over the plans that save FLOPs\n")

    # 1. how predictable is each plan's loss?
    rows = []
    for k in a.components:
        r2 = loss_r2(X, L, components=k)
        ok = r2[~np.isnan(r2)]
        rows.append({"PCA components": k, "median R^2": np.median(ok), "best plan R^2": ok.max(),
                     "plans with R^2 > 0.1": f"{int((ok > 0.1).sum())}/{len(ok)}", "worst plan R^2": ok.min()})
    print(f"## Per-plan R^2 of the quality loss from the observation (10-fold CV over all {len(X)} documents)\n")
    print(markdown_table(pd.DataFrame(rows), ".3f"))

    # 2. the in-sample bound of the class vs the fully informed learner vs the true-loss rule, on the test documents
    rows = []
    h = rule_result(L[te], S[te], L[te], S[te], a.tau)
    rows.append({"policy (scored on the test documents)": "rule on the TRUE losses (deterministic oracle)",
                 "components": "-", **{k: h[k] for k in ("flops_saved", "mean_loss", "gain", "share")}})
    cm_te = CostModel(FeatureMap(X[te]), X[te], S[te])
    for k in a.components:
        for alpha, what in ((None, "RidgeCV"), (1e-2, "ridge 0.01")):
            m = fit_loss_models(X[te], L[te], components=k, alpha=alpha)
            h = rule_result(m(X[te]), cm_te(X[te]), L[te], S[te], a.tau)
            rows.append({"policy (scored on the test documents)": f"in-sample bound: fitted on the test outcomes "
                         f"({what}), lam on test", "components": k,
                         **{q: h[q] for q in ("flops_saved", "mean_loss", "gain", "share")}})
    for k in a.components:
        pol = supervised_policy(X[tr], L[tr], S[tr], a.tau, components=k)
        h = headroom_share(L[te], S[te], pol(X[te]))
        rows.append({"policy (scored on the test documents)": f"fully informed learner: all {len(tr)} train "
                     f"documents' outcomes, lam out of fold", "components": k,
                     **{q: h[q] for q in ("flops_saved", "mean_loss", "gain", "share")}})
    print(f"\n## The linear contextual class on the {len(te)} test documents (gain and share at equal quality)\n")
    print(markdown_table(pd.DataFrame(rows), ".3f"))

    # 3. learning curve over train-document counts (random splits of all covered documents)
    D = len(X)
    sizes = a.sizes or list(range(8, D - 11, 8))
    k = 8 if 8 in a.components else a.components[0]
    cur = pd.DataFrame(train_size_curve(X, L, S, sizes, tau=a.tau, repeats=a.repeats, components=k))
    cur.to_csv(out / "curve.csv", index=False)
    g = cur.groupby("train_docs")
    summ = pd.DataFrame({"train documents": g.gain.mean().index,
                         "headroom share": (g.gain.sum() / g.headroom.sum()).values,
                         "gain (FLOPs fraction)": g.gain.mean().values,
                         "+- 2 s.e.": 2 * g.gain.std().values / np.sqrt(g.size().values),
                         "mean loss": g.mean_loss.mean().values,
                         "share, lam chosen on the scored documents":
                             (g.gain_lam_in_sample.sum() / g.headroom.sum()).values})
    print(f"\n## Fully informed learner ({k} PCA components) vs train-document count: {a.repeats} random splits "
          f"of all {D} documents each, scored on the rest (share = total gain / total headroom at equal "
          f"quality)\n")
    print(markdown_table(summ, ".3f"))
    print(f"\n{time.perf_counter() - t0:.0f} s")
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.errorbar(summ["train documents"], 100 * summ["headroom share"],
                yerr=100 * summ["+- 2 s.e."] / (cur.groupby("train_docs").headroom.mean().values),
                    marker="o", label="fully informed learner (lam out of fold)")
        ax.plot(summ["train documents"], 100 * summ["share, lam chosen on the scored documents"], "s--",
                label="same models, lam chosen on the scored documents")
        ax.axhline(50, color="grey", ls=":", lw=0.8, label="issue 21's target (50 %)")
        ax.axhline(0, color="k", lw=0.8)
        ax.set(xlabel="train documents", ylabel="share of the oracle's headroom (%)",
               title=f"{table.folder.name}: headroom reachable from the observation")
        ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(out / "table_ceiling.png", dpi=110)
        print(f"wrote {out / 'curve.csv'}, {out / 'table_ceiling.png'}")
    except ImportError:
        print(f"wrote {out / 'curve.csv'} (no matplotlib: no plot)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
