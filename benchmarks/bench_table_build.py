"""Where a replay-table row's time goes, and the staged prefix reuse of ``skipenv table build`` against the plain
per-plan path, side by side in one process (issue 21 item 3).

    OMP_NUM_THREADS=1 python benchmarks/bench_table_build.py                  # train document 100, both paths
    OMP_NUM_THREADS=1 python benchmarks/bench_table_build.py --docs 2 --split train --start 200

For each document the row (the observation and the 38 plans x 2 signals of ``xsum-v1``'s grammar) is computed by
:meth:`skipenv.tables.build.TableBuilder.compute_row` twice, in the same process and on the same warm model:

- ``plain``: ``staged=False``, the live env's path (each plan from the full model's stored prefix state:
  ``skipenv.generators.reuse``);
- ``staged``: ``staged=True``, the build's default (a plan that skips sublayers *and* drops tokens restarts from
  the stored computation of the plan that skips the same sublayers on the whole input:
  :class:`skipenv.generators.reuse.StagedStates`).

Before timing, the document's full output is generated once (it is the same for both paths and is cached on disk by
the evaluator), and both builders' outcome caches and prefix stores are emptied, so each timed row computes every
forward pass of the row. Printed: per plan, the reuse point ``(s, j)`` (common-prefix length with the full input and
first recomputed layer, see :func:`~skipenv.generators.reuse.plan_reuse_point`), the tokens recomputed, and the
seconds of each path; then seconds per document of both paths and the speed-up; and the largest |difference| of the
two rows' qualities (both signals) against the 1e-4 reuse tolerance.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))


def _timed_row(builder, split: str, index: int, staged: bool):
    """``(row arrays, per-plan seconds, per-plan reuse points, seconds of the whole row)``."""
    import skipenv.generators.decoder_only as dec
    from skipenv.generators.reuse import plan_reuse_point

    for env in builder.envs.values():
        env.evaluator.outcomes.clear()
    builder._memo.clear()
    builder.generator.prefix_store.clear()
    builder.staged = staged
    points: list = []
    real = dec.reused_forward

    def spy(generator, state, ids, plan, **kw):
        points.append(plan_reuse_point(state.ids, ids, plan.decoder_attention, plan.decoder_ffn,
                                       kw.get("num_logits", 1), state_attention=getattr(state, "attention", None),
                                       state_ffn=getattr(state, "ffn", None)) + (len(ids),))
        return real(generator, state, ids, plan, **kw)

    per_plan: list[float] = []
    per_point: list = []
    signal = builder.config["signals"][0]
    ev = builder.envs[signal].evaluator
    real_outcome = ev.outcome

    def timed_outcome(example, plan):
        t0 = time.perf_counter()
        n = len(points)
        out = real_outcome(example, plan)
        per_plan.append(time.perf_counter() - t0)
        per_point.append(points[n] if len(points) > n else None)
        return out

    dec.reused_forward = spy
    ev.outcome = timed_outcome
    t0 = time.perf_counter()
    try:
        row = builder.compute_row(split, index)
    finally:
        dec.reused_forward = real
        del ev.outcome
    return row, per_plan, per_point, time.perf_counter() - t0


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--split", default="train")
    p.add_argument("--start", type=int, default=100, help="index of the first document in the split")
    p.add_argument("--docs", type=int, default=1)
    args = p.parse_args(argv)
    from skipenv.tables.build import TableBuilder, table_config

    with tempfile.TemporaryDirectory() as tmp:
        builder = TableBuilder(table_config(), work_dir=tmp)
        names = builder.grammar.plan_names
        totals = {"plain": [], "staged": []}
        worst = 0.0
        for index in range(args.start, args.start + args.docs):
            ex = builder.examples(args.split)[index]
            for env in builder.envs.values():
                env.evaluator.full_output(ex)
            rows, times, pts = {}, {}, {}
            for mode in ("plain", "staged"):
                rows[mode], times[mode], pts[mode], total = _timed_row(builder, args.split, index, mode == "staged")
                totals[mode].append(total)
            for s in builder.config["signals"]:
                for q in ("quality", "quality_full"):
                    worst = max(worst, float(np.max(np.abs(rows["plain"][f"{q}.{s}"] - rows["staged"][f"{q}.{s}"]))))
            for k in ("cost", "flops", "num_generated"):
                if not np.array_equal(rows["plain"][k], rows["staged"][k]):
                    raise SystemExit(f"column {k} differs between the two paths on {ex.id}")
            print(f"\n## {args.split} document {index} ({ex.id}): seconds per plan (first signal's outcome; the "
                  f"second signal reuses its forward pass)\n")
            print("| plan | plain (s, j, tokens) | plain s | staged (s, j, tokens) | staged s |")
            print("|---|---|---|---|---|")
            for i, name in enumerate(names):
                print(f"| {name} | {pts['plain'][i]} | {times['plain'][i]:.3f} | {pts['staged'][i]} | "
                      f"{times['staged'][i]:.3f} |")
            print(f"| (sum over plans) | | {sum(times['plain']):.2f} | | {sum(times['staged']):.2f} |")
            print(f"| (whole row: observation, full output from disk, both signals) | | {totals['plain'][-1]:.2f} "
                  f"| | {totals['staged'][-1]:.2f} |")
        a, b = float(np.mean(totals["plain"])), float(np.mean(totals["staged"]))
        print(f"\n| path | seconds per document (mean of {args.docs}) |\n|---|---|")
        print(f"| plain (per-plan prefix reuse, the live env's) | {a:.2f} |")
        print(f"| staged (the build's default) | {b:.2f} |")
        print(f"\nspeed-up {a / b:.2f}x; largest |quality difference| between the paths {worst:.2e} "
              f"(tolerance 1e-4); cost, FLOPs and output lengths equal")


if __name__ == "__main__":
    main()
